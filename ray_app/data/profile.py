"""Reference profiles: summary statistics of a trusted dataset, and checks that new data still
looks like it (means and quantiles within tolerance, KS for numerics, chi-squared for
categoricals).

Statistics are mergeable partial counts (sums and histogram counts on the reference's bin
edges, category counts), so they are computed per Ray Data batch and summed on the driver.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

BINS = 100  # percentile edges: quantiles interpolate inside narrow bins, tails included
QUANTILES = (0.05, 0.5, 0.95)


def edges_for(values: pd.Series) -> list[float]:
    """Bin edges at the reference's quantiles (unique, so skewed columns get fewer bins)."""
    clean = pd.to_numeric(values, errors="coerce").dropna().astype(float)
    return (
        sorted(set(np.quantile(clean, np.linspace(0, 1, BINS + 1)).tolist())) if len(clean) else []
    )


def partial(
    typed: pd.DataFrame, numeric_edges: dict[str, list[float]], categorical: list[str]
) -> dict:
    """Mergeable statistics of one batch."""
    out: dict[str, Any] = {"numeric": {}, "categorical": {}}
    for column, edges in numeric_edges.items():
        values = pd.to_numeric(typed[column], errors="coerce").dropna().astype(float).to_numpy()
        bounds = [-math.inf, *edges, math.inf]
        out["numeric"][column] = {
            "n": len(values),
            "sum": float(values.sum()),
            "sumsq": float((values**2).sum()),
            "counts": np.histogram(values, bins=bounds)[0].tolist(),
        }
    for column in categorical:
        counts = typed[column].dropna().astype(str).value_counts()
        out["categorical"][column] = {str(k): int(v) for k, v in counts.items()}
    return out


def merge(parts: list[dict]) -> dict:
    total: dict[str, Any] = {"numeric": {}, "categorical": {}}
    for part in parts:
        for column, s in part["numeric"].items():
            t = total["numeric"].setdefault(
                column, {"n": 0, "sum": 0.0, "sumsq": 0.0, "counts": None}
            )
            t["n"] += s["n"]
            t["sum"] += s["sum"]
            t["sumsq"] += s["sumsq"]
            t["counts"] = (
                s["counts"] if t["counts"] is None else np.add(t["counts"], s["counts"]).tolist()
            )
        for column, counts in part["categorical"].items():
            t = total["categorical"].setdefault(column, {})
            for value, n in counts.items():
                t[value] = t.get(value, 0) + n
    return total


def finish(total: dict, numeric_edges: dict[str, list[float]]) -> dict:
    """Means, standard deviations and quantiles (interpolated from the histogram)."""
    for column, s in total["numeric"].items():
        n = max(s["n"], 1)
        s["mean"] = s["sum"] / n
        s["std"] = math.sqrt(max(s["sumsq"] / n - s["mean"] ** 2, 0.0))
        s["edges"] = numeric_edges[column]
        s["quantiles"] = {str(q): _quantile(s, q) for q in QUANTILES}
    return total


def _cdf(s: dict) -> np.ndarray:
    counts = np.asarray(s["counts"], dtype=float)
    return np.cumsum(counts)[:-1] / max(counts.sum(), 1.0)  # CDF at each edge


def _quantile(s: dict, q: float) -> float:
    edges = np.asarray(s["edges"], dtype=float)
    if not len(edges):
        return math.nan
    return float(np.interp(q, _cdf(s), edges))


def compare(reference: dict, current: dict, spec: Any) -> list[tuple[str, str, str]]:
    """(check, column, what differs) for every statistic outside the contract's tolerance."""
    # Imported here, on the driver that compares: every Ray Data worker that validates or
    # snapshots imports this module for `partial`, and SciPy's stats would add 0.7 s to each.
    from scipy import stats

    problems = []
    for column, ref in reference["numeric"].items():
        cur = current["numeric"].get(column)
        if not cur or not cur["n"]:
            continue
        scale = ref["std"] or 1.0
        if abs(cur["mean"] - ref["mean"]) > spec.mean_tolerance * scale:
            problems.append(
                (
                    "mean_within_tolerance",
                    column,
                    f"mean {cur['mean']:.4g} vs reference {ref['mean']:.4g}",
                )
            )
        for q, value in ref["quantiles"].items():
            if abs(cur["quantiles"][q] - value) > spec.quantile_tolerance * scale:
                problems.append(
                    (
                        "quantile_within_tolerance",
                        column,
                        f"q{q} {cur['quantiles'][q]:.4g} vs reference {value:.4g}",
                    )
                )
        d = float(np.max(np.abs(_cdf(cur) - _cdf(ref)))) if len(ref["edges"]) else 0.0
        n, m = cur["n"], ref["n"]
        p = float(stats.kstwobign.sf(d * math.sqrt(n * m / (n + m))))
        if p < spec.ks_pvalue:
            problems.append(("ks_same_distribution", column, f"KS D={d:.4f}, p={p:.2g}"))
    for column, ref in reference["categorical"].items():
        cur = current["categorical"].get(column, {})
        values = sorted(set(ref) | set(cur))
        table = np.array([[ref.get(v, 0) for v in values], [cur.get(v, 0) for v in values]])
        table = table[:, table.sum(axis=0) > 0]
        if table.shape[1] > 1 and table[1].sum():
            p = float(stats.chi2_contingency(table)[1])
            if p < spec.chi2_pvalue:
                problems.append(("chi2_same_distribution", column, f"chi-squared p={p:.2g}"))
    return problems


def build(typed: pd.DataFrame, numeric: list[str], categorical: list[str]) -> dict:
    """The profile of a trusted, typed frame: what `reference.profile` files hold."""
    edges = {column: edges_for(typed[column]) for column in numeric}
    total = finish(merge([partial(typed, edges, categorical)]), edges)
    total["rows"] = len(typed)
    return total
