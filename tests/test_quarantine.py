"""Quarantine policy: few bad rows are set aside with reasons; too many stop the run."""

import pandas as pd
import pyarrow as pa
import pytest

from ray_app.config import rayapp_home
from ray_app.data import sources, synth
from ray_app.data.ingest import DataError
from ray_app.data.quarantine import REASON, _bad_rows
from ray_app.data.snapshot import read_snapshot


def _config(pipeline_config, fraction: float):
    data = pipeline_config.data.model_copy(
        update={"policy": "quarantine", "max_bad_fraction": fraction}
    )
    return pipeline_config.model_copy(update={"data": data})


def test_few_bad_rows_are_quarantined_with_reasons(
    ray_session, pipeline_config, contract, tmp_path
):
    corruption = synth.Corruption(negative_amounts=0.004, numbers_as_strings={"age": 0.003})
    path = synth.write(tmp_path / "few_bad.csv", 4_000, seed=12, corruption=corruption)
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    expected_bad = int(
        ((pd.to_numeric(raw.monthly_charge) < 0) | raw.age.str.endswith(" USD")).sum()
    )
    assert expected_bad > 10

    snap = sources.ingest(_config(pipeline_config, 0.01), contract, path, lambda m: None)
    assert snap.quarantined_rows == expected_bad and snap.rows == 4_000 - expected_bad
    assert read_snapshot(snap).count() == snap.rows

    held = pd.read_parquet(rayapp_home() / "quarantine" / snap.version)
    assert len(held) == expected_bad
    assert held[REASON].str.contains("monthly_charge|age").all()
    assert (
        held.loc[held.age.str.endswith(" USD"), REASON]
        .str.contains("age: not a valid integer")
        .all()
    )
    assert set(held.customer_id).isdisjoint(read_snapshot(snap).to_pandas().customer_id)


def test_too_many_bad_rows_stop_and_leave_nothing(ray_session, pipeline_config, contract, tmp_path):
    path = synth.write(
        tmp_path / "many_bad.csv",
        3_000,
        seed=13,
        corruption=synth.Corruption(negative_amounts=0.05),
    )
    with pytest.raises(DataError, match="more than the 1.00% the quarantine policy allows"):
        sources.ingest(_config(pipeline_config, 0.01), contract, path, lambda m: None)
    from ray_app.data.ingest import dataset_version

    version = dataset_version(path)
    assert not (rayapp_home() / "quarantine" / version).exists()
    assert not (rayapp_home() / "data" / version).exists()


def test_a_quarantined_row_keeps_a_null_as_null(contract):
    """Ray Data hands the quarantine pass Arrow-typed pandas batches; a null written as the
    text "<NA>" (or "nan", "None") would come back as a value when the row is fixed and
    ingested again."""
    frame = next(synth.generate(3, seed=1)).astype("string[pyarrow]")
    frame.loc[0, "monthly_charge"] = "-5"  # breaks the contract
    frame.loc[0, "gender"] = None
    held = _bad_rows(frame, contract.model_dump_json())
    assert held.num_rows == 1 and "monthly_charge" in held[REASON][0].as_py()
    assert held["gender"].to_pylist() == [None] and held["monthly_charge"].to_pylist() == ["-5"]
    # Text columns even where the bad rows are all null: every file of the folder alike.
    assert set(held.schema.types) == {pa.string()}


def test_the_rows_left_after_quarantine_must_pass_the_whole_table_checks(
    ray_session, pipeline_config, contract, tmp_path
):
    """Every churner's age broken: setting those rows aside leaves a table of one class, which
    the label check (judged on the whole table, before) would otherwise let into training."""
    path = synth.write(tmp_path / "no_churners_left.csv", 3_000, seed=14)
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    raw.loc[raw.churned == "1", "age"] = "17"
    raw.to_csv(path, index=False)
    with pytest.raises(DataError) as err:
        sources.ingest(_config(pipeline_config, 0.5), contract, path, lambda m: None)
    said = str(err.value)
    assert "churned" in said and "rows left once" in said and "were set aside" in said, said
