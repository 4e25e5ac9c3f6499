"""The gate report's figures, as PNG bytes: the reliability curve and the SHAP summary."""

from __future__ import annotations

import io
from collections.abc import Collection
from typing import Any

import matplotlib
import numpy as np
import pandas as pd

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the non-interactive backend)

SUMMARY_FEATURES = 15


def _png(fig: Any) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight", dpi=90)
    plt.close(fig)
    return buffer.getvalue()


def reliability(curve: list[dict[str, float]]) -> bytes:
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect")
    ax.plot([p["predicted"] for p in curve], [p["observed"] for p in curve], "o-", label="model")
    ax.set(xlabel="predicted probability", ylabel="observed rate", title="reliability")
    ax.legend()
    return _png(fig)


def shap_summary(
    contribs: np.ndarray, frame: pd.DataFrame, categorical: Collection[str] = ()
) -> bytes:
    """Global importance (mean |SHAP|) beside a beeswarm: one dot per row and feature, placed
    by its SHAP value and coloured by the feature's value within its own range (grey: missing;
    categories have no order, so theirs are one colour). `frame` holds the model features the
    contributions were computed on."""
    mean_abs = np.abs(contribs[:, :-1]).mean(axis=0)
    top = np.argsort(-mean_abs, kind="stable")[:SUMMARY_FEATURES][::-1]
    names = [frame.columns[i] for i in top]
    fig, (bars, swarm) = plt.subplots(
        1, 2, figsize=(11, 0.4 * len(top) + 1.5), sharey=True, width_ratios=[1, 2]
    )
    bars.barh(range(len(top)), mean_abs[top], color="#4c72b0")
    bars.set(yticks=range(len(top)), yticklabels=names, xlabel="mean |SHAP| (log-odds)")
    bars.set_title("global importance")
    rng = np.random.default_rng(0)
    for row, i in enumerate(top):
        values = frame.iloc[:, i].to_numpy(dtype=float)
        colour = pd.Series(values).rank(pct=True).to_numpy()
        if frame.columns[i] in categorical:
            colour = np.full(len(values), 0.5)
        jitter = rng.uniform(-0.3, 0.3, len(values))
        missing = np.isnan(values)
        swarm.scatter(contribs[missing, i], row + jitter[missing], s=4, color="lightgrey")
        points = swarm.scatter(
            contribs[~missing, i],
            row + jitter[~missing],
            s=4,
            c=colour[~missing],
            cmap="coolwarm",
            vmin=0,
            vmax=1,
        )
    swarm.axvline(0, color="grey", lw=0.5)
    swarm.set(xlabel="SHAP value (log-odds): right pushes towards the positive label")
    swarm.set_title("per row")
    fig.colorbar(points, ax=swarm, label="feature value (low to high)", ticks=[])
    return _png(fig)
