"""The gate report's figures, as PNG bytes: the reliability curve and SHAP's own summary plot.

Figures are drawn on `matplotlib.figure.Figure` objects, never through a global backend, so
importing this module changes nothing for a notebook or a server that also plots.
"""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

SUMMARY_FEATURES = 15


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight", dpi=90)
    return buffer.getvalue()


def reliability(curve: list[dict[str, float]]) -> bytes:
    fig = Figure(figsize=(4, 4))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect")
    ax.plot([p["predicted"] for p in curve], [p["observed"] for p in curve], "o-", label="model")
    ax.set(xlabel="predicted probability", ylabel="observed rate", title="reliability")
    ax.legend()
    return _png(fig)


def shap_summary(contribs: np.ndarray, matrix: pd.DataFrame) -> bytes:
    """shap's beeswarm summary of XGBoost's TreeSHAP values (`contribs`, base value last) on
    the model features they were computed on: one dot per row and feature, placed by its SHAP
    value and coloured by the feature's value."""
    import shap  # seconds to import; only the gate draws this
    from matplotlib import pyplot as plt

    shap.summary_plot(
        contribs[:, :-1],
        matrix,
        max_display=SUMMARY_FEATURES,
        show=False,
        plot_size=(8, 6),
        rng=np.random.default_rng(0),  # the dots' jitter: the same report for the same model
    )
    fig = plt.gcf()
    try:
        return _png(fig)
    finally:
        plt.close(fig)
