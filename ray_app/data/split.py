"""Deterministic train/valid/test split by hashing each row's id.

A row's split depends only on its id (or, without an id column, its content), never on its
position or on the number of blocks, so the same data always yields the same frozen test set.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import ray.data

from ray_app.config import SplitConfig

TRAIN, VALID, TEST = "train", "valid", "test"
SPLITS = (TRAIN, VALID, TEST)


def assign(batch: pd.DataFrame, id_column: str | None, split: SplitConfig) -> np.ndarray:
    keyed = batch[[id_column]] if id_column else batch
    bucket = pd.util.hash_pandas_object(keyed, index=False).to_numpy() % 10_000 / 10_000
    return np.where(
        bucket < split.train, TRAIN, np.where(bucket < split.train + split.valid, VALID, TEST)
    )


def _take(
    batch: pd.DataFrame, name: str, id_column: str | None, split: SplitConfig
) -> pd.DataFrame:
    return batch[assign(batch, id_column, split) == name]


def split_dataset(
    ds: ray.data.Dataset, id_column: str | None, split: SplitConfig
) -> dict[str, ray.data.Dataset]:
    """The three splits of `ds` as lazily filtered datasets."""
    return {
        name: ds.map_batches(
            _take,
            fn_kwargs={"name": name, "id_column": id_column, "split": split},
            batch_format="pandas",
        )
        for name in SPLITS
    }
