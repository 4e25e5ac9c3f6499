"""The gate's checks, as pure functions of labels, probabilities and the rows they came from.

Robustness takes the scoring function itself, so it can feed it perturbed rows. Each returns
`CheckResult`s that say what was measured, against which limit, and why it passed
or failed, so the gate report can show a reason for every check. Limits are the typed entries
of `configs/gates.yaml` (`gate.GateLimits`); nothing here has a threshold of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from ray_app.evaluate import gate
from ray_app.evaluate.gate import DEMOGRAPHIC_PARITY, EQUALIZED_ODDS, FAIRNESS_CRITERIA
from ray_app.metrics import (
    ACCURACY,
    F1,
    LOWER_IS_BETTER,
    PR_AUC,
    PRECISION,
    RECALL,
    ROC_AUC,
    classification_metrics,
)


@dataclass
class CheckResult:
    dimension: str  # quality, baseline, slices, calibration, champion, ...
    name: str
    passed: bool
    reason: str
    value: float | None = None
    limit: float | None = None
    details: dict[str, Any] = field(default_factory=dict)


def full_metrics(y: np.ndarray, proba: np.ndarray, threshold: float) -> dict[str, Any]:
    """The named metrics at a threshold, plus PR-AUC and the confusion matrix."""
    out: dict[str, Any] = classification_metrics(y, proba, threshold)
    out[PR_AUC] = float(skm.average_precision_score(y, proba))
    tn, fp, fn, tp = skm.confusion_matrix(y, proba >= threshold, labels=[0, 1]).ravel()
    out["confusion"] = {"tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp)}
    return out


def choose_threshold(y_valid: np.ndarray, proba_valid: np.ndarray) -> float:
    """The decision threshold that maximises F1 on validation data (never on test)."""
    precision, recall, thresholds = skm.precision_recall_curve(y_valid, proba_valid)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
    return float(thresholds[int(np.argmax(f1[:-1]))])


def _floor(dimension: str, name: str, value: float, limit: float, higher: bool) -> CheckResult:
    ok = value >= limit if higher else value <= limit
    sign = (">=" if ok else "<") if higher else ("<=" if ok else ">")
    word = "floor" if higher else "ceiling"
    return CheckResult(
        dimension, name, ok, f"{name} {value:.4f} {sign} {word} {limit:.4f}", value, limit
    )


def quality(metrics: dict[str, Any], bounds: list[gate.Bound]) -> list[CheckResult]:
    """`min_<metric>` floors and `max_<metric>` ceilings on the test metrics."""
    return [_floor("quality", b.metric, float(metrics[b.metric]), b.limit, b.floor) for b in bounds]


def naive_baseline(y: np.ndarray, pred: np.ndarray, must_beat: list[str]) -> list[CheckResult]:
    """The model must beat always predicting the majority class on each named metric (recall
    and F1 by default): on imbalanced data that predictor's accuracy looks excellent."""
    majority = int(np.mean(y) >= 0.5)
    naive = np.full_like(y, majority)
    scores = {
        RECALL: lambda p: skm.recall_score(y, p, zero_division=0),
        F1: lambda p: skm.f1_score(y, p, zero_division=0),
        PRECISION: lambda p: skm.precision_score(y, p, zero_division=0),
        ACCURACY: lambda p: skm.accuracy_score(y, p),
    }
    out = []
    for name in must_beat:
        model, base = float(scores[name](pred)), float(scores[name](naive))
        if base == 1.0:  # e.g. recall where positives are the majority: no model can beat it
            reason = (
                f"{name}: not judged, the majority-class predictor ({majority}) scores 1.0 on "
                f"it by construction ({np.mean(y):.0%} of test rows are positive)"
            )
            out.append(CheckResult("baseline", name, True, reason, model, base))
            continue
        ok = model > base
        out.append(
            CheckResult(
                "baseline",
                name,
                ok,
                f"{name} {model:.4f} {'>' if ok else '<='} majority-class predictor's {base:.4f}",
                model,
                base,
            )
        )
    return out


def slice_labels(frame: pd.DataFrame, column: str, bins: list[float] | None) -> pd.Series:
    """Segment names for a slice column: its values, or bands for numbers (`bins` edges, or
    quartiles when a numeric column has many values and no edges are configured)."""
    values = frame[column]
    if bins:
        return pd.cut(values, bins=bins, right=False).astype(str)
    if pd.api.types.is_numeric_dtype(values) and values.nunique() > 10:
        return pd.qcut(values, 4, duplicates="drop").astype(str)
    return values.astype(str)


def slices(
    frame: pd.DataFrame,
    y: np.ndarray,
    proba: np.ndarray,
    columns: list[str],
    limits: gate.Slices,
) -> list[CheckResult]:
    """`min_roc_auc` per segment of every slice column; segments too small to judge
    (`min_rows`, or fewer than `min_class_rows` of either class) are reported, not failed."""
    floor, min_rows, min_class = limits.min_roc_auc, limits.min_rows, limits.min_class_rows
    out = []
    for column in columns:
        labels = slice_labels(frame, column, limits.bins.get(column))
        for segment in sorted(labels.unique()):
            mask = (labels == segment).to_numpy()
            name = f"{column}={segment}"
            positives = int(y[mask].sum())
            if mask.sum() < min_rows or min(positives, mask.sum() - positives) < min_class:
                reason = (
                    f"{name}: {int(mask.sum())} rows, {positives} positive, not judged (needs "
                    f"{min_rows} rows and {min_class} of each class)"
                )
                out.append(
                    CheckResult("slices", name, True, reason, details={"rows": int(mask.sum())})
                )
                continue
            auc = float(skm.roc_auc_score(y[mask], proba[mask]))
            result = _floor("slices", ROC_AUC, auc, floor, higher=True)
            result.name, result.reason = name, f"{name}: {result.reason}"
            result.details = {"rows": int(mask.sum())}
            out.append(result)
    return out


def fairness(
    frame: pd.DataFrame,
    y: np.ndarray,
    pred: np.ndarray,
    columns: list[str],
    limits: gate.Fairness,
) -> list[CheckResult]:
    """Fairlearn `MetricFrame` per sensitive column: the demographic parity ratio (lowest over
    highest selection rate between groups) and the equalized-odds ratio (the lower of the TPR
    and FPR ratios), each above its floor. Groups under `min_rows` are left out.
    `limits.columns` maps a column to the criteria that apply to it, for groups whose base
    rates truly differ; when empty, every column of `columns` is judged on both."""
    from fairlearn.metrics import (
        MetricFrame,
        false_positive_rate,
        selection_rate,
        true_positive_rate,
    )

    dp_floor = limits.min_demographic_parity_ratio
    eo_floor, min_rows = limits.min_equalized_odds_ratio, limits.min_rows
    criteria = limits.columns or dict.fromkeys(columns, FAIRNESS_CRITERIA)
    out = []
    for column, judged_on in criteria.items():
        groups = frame[column].astype("string").fillna("missing").to_numpy(dtype=object)
        counts = pd.Series(groups).value_counts()
        judged = counts[counts >= min_rows].index
        mask = np.isin(groups, judged)
        if len(judged) < 2:
            reason = f"{column}: fewer than two groups with {min_rows} rows, not judged"
            out.append(CheckResult("fairness", column, True, reason, details=counts.to_dict()))
            continue
        mf = MetricFrame(
            metrics={
                "selection_rate": selection_rate,
                "tpr": true_positive_rate,
                "fpr": false_positive_rate,
            },
            y_true=y[mask],
            y_pred=pred[mask],
            sensitive_features=groups[mask],
        )
        by_group = mf.by_group
        rates = ", ".join(f"{g} {v:.3f}" for g, v in by_group["selection_rate"].items())
        details = {"by_group": by_group.to_dict(), "rows": counts.to_dict()}
        # A group without positives has no TPR (fairlearn reports 0, a ratio of 0 that no
        # model could pass), and one with a handful a noisy one; likewise negatives and FPR.
        # Each rate compares the groups with `min_class_rows` of its class.
        classes = pd.crosstab(groups[mask], y[mask]).reindex(columns=[0, 1], fill_value=0)
        enough = classes >= limits.min_class_rows
        tpr = by_group.loc[classes.index[enough[1]], "tpr"]
        fpr = by_group.loc[classes.index[enough[0]], "fpr"]
        dp = _ratio(by_group["selection_rate"])
        eo = min(_ratio(tpr), _ratio(fpr))
        dp_ok, eo_ok = dp >= dp_floor, eo >= eo_floor
        short = [str(g) for g, row in enough.iterrows() if not row.all()]
        partial = (
            f"; {short} have under {limits.min_class_rows} of a class and count for one rate only"
            if short
            else ""
        )
        verdicts = {
            DEMOGRAPHIC_PARITY: (
                f"{column} demographic parity",
                dp_ok,
                f"{column}: demographic parity ratio {dp:.3f} "
                f"{'>=' if dp_ok else '<'} floor {dp_floor} (selection rate {rates})",
                dp,
                dp_floor,
            ),
            EQUALIZED_ODDS: (
                f"{column} equalized odds",
                eo_ok,
                f"{column}: equalized-odds ratio {eo:.3f} "
                f"{'>=' if eo_ok else '<'} floor {eo_floor}{partial}",
                eo,
                eo_floor,
            ),
        }
        out += [CheckResult("fairness", *verdicts[c], details) for c in judged_on]
    return out


def _ratio(rates: pd.Series) -> float:
    """Lowest over highest rate between groups; equal (1.0) when every rate is 0, and for
    fewer than two groups, which have nothing to differ from."""
    if len(rates) < 2 or rates.max() == 0:
        return 1.0
    return float(rates.min() / rates.max())


def calibration(y: np.ndarray, proba: np.ndarray, limits: gate.Calibration) -> CheckResult:
    """Expected calibration error over equal-width bins, with the reliability curve."""
    bins = limits.bins
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(proba, edges[1:-1]), 0, bins - 1)
    ece, curve = 0.0, []
    for b in range(bins):
        mask = which == b
        if mask.any():
            predicted, observed = float(proba[mask].mean()), float(y[mask].mean())
            ece += mask.mean() * abs(predicted - observed)
            curve.append({"predicted": predicted, "observed": observed, "rows": int(mask.sum())})
    result = _floor("calibration", "ece", float(ece), limits.max_ece, higher=False)
    result.details = {"reliability": curve}
    return result


def champion(
    challenger: dict[str, Any],
    champ: dict[str, Any] | None,
    champ_version: str | None,
    limits: gate.Champion,
    primary: str,
    incomparable: str | None = None,
) -> list[CheckResult]:
    """The candidate against the model behind `production` on the same test rows: better by
    `min_improvement` on the primary metric, and not worse than `tolerance` on the others.
    A champion that cannot be scored on those rows (`incomparable`, the reason) fails the
    check: nothing shows the candidate is better."""
    if incomparable:
        return [CheckResult("champion", "champion", False, incomparable)]
    if champ is None:
        reason = (
            f"the candidate is production v{champ_version} itself: absolute checks only"
            if champ_version
            else "no production model: absolute checks only"
        )
        return [CheckResult("champion", "champion", True, reason)]
    margin = limits.min_improvement
    out = []
    names = [primary, *limits.tolerance]
    for name in names:
        sign = -1 if name in LOWER_IS_BETTER else 1
        gain = sign * (float(challenger[name]) - float(champ[name]))
        if name == primary:
            ok, need = gain >= margin, f"needs +{margin:.4f}"
        else:
            allowed = limits.tolerance[name]
            ok, need = gain >= -allowed, f"may lose up to {allowed:.4f}"
        out.append(
            CheckResult(
                "champion",
                name,
                ok,
                f"{name} {challenger[name]:.4f} vs production v{champ_version} "
                f"{champ[name]:.4f} (change {gain:+.4f}, {need})",
                float(challenger[name]),
                float(champ[name]),
            )
        )
    return out


def add_noise(
    frame: pd.DataFrame, columns: list[str], std: float, rng: np.random.Generator
) -> pd.DataFrame:
    """Gaussian noise of `std` times each numeric column's own spread; integers stay whole."""
    out = frame.copy()
    for name in columns:
        values = pd.to_numeric(out[name], errors="coerce").astype(float)
        noisy = values + rng.normal(0.0, std * float(values.std() or 1.0), len(values))
        out[name] = noisy.round() if pd.api.types.is_integer_dtype(frame[name]) else noisy
    return out


def drop_values(
    frame: pd.DataFrame, columns: list[str], fraction: float, rng: np.random.Generator
) -> pd.DataFrame:
    """Each cell of `columns` made missing with probability `fraction`."""
    out = frame.copy()
    for name in columns:
        out[name] = out[name].mask(rng.random(len(out)) < fraction)
    return out


def robustness(
    frame: pd.DataFrame,
    y: np.ndarray,
    score: Callable[[pd.DataFrame], np.ndarray],
    threshold: float,
    columns: dict[str, list[str]],
    limits: gate.Robustness,
) -> list[CheckResult]:
    """Metrics under Gaussian noise on the numeric inputs (`columns["numeric"]`) and under
    randomly missing inputs (`columns["inputs"]`), each against the clean rows: a metric may
    fall by at most its configured `max_drop`. Seeded, so a gate's verdict is repeatable."""
    rng = np.random.default_rng(limits.seed)
    noise, missing = limits.noise, limits.missing
    perturbed: dict[str, tuple[gate.Noise | gate.Missing, pd.DataFrame]] = {
        f"noise std {noise.std}": (noise, add_noise(frame, columns["numeric"], noise.std, rng)),
        f"{missing.fraction:.0%} missing": (
            missing,
            drop_values(frame, columns["inputs"], missing.fraction, rng),
        ),
    }
    clean = classification_metrics(y, score(frame), threshold)
    out = []
    for what, (conf, rows) in perturbed.items():
        shaken = classification_metrics(y, score(rows), threshold)
        for name, allowed in conf.max_drop.items():
            sign = -1 if name in LOWER_IS_BETTER else 1
            drop = sign * (clean[name] - shaken[name])
            ok = drop <= float(allowed)
            out.append(
                CheckResult(
                    "robustness",
                    f"{what}: {name}",
                    ok,
                    f"{name} {shaken[name]:.4f} under {what} against {clean[name]:.4f} clean "
                    f"(drop {drop:.4f} {'<=' if ok else '>'} allowed {float(allowed):.4f})",
                    shaken[name],
                    clean[name] - sign * float(allowed),
                    {"clean": clean[name], "perturbed": shaken[name]},
                )
            )
    return out


def global_importance(contribs: np.ndarray, names: list[str]) -> list[dict[str, Any]]:
    """Mean absolute SHAP value per feature and its share of the total, largest first."""
    mean_abs = np.abs(contribs[:, :-1]).mean(axis=0)
    total = float(mean_abs.sum()) or 1.0
    order = np.argsort(-mean_abs, kind="stable")
    return [
        {"feature": names[i], "mean_abs_shap": float(mean_abs[i]), "share": mean_abs[i] / total}
        for i in order
    ]


def explainability(importance: list[dict[str, Any]], limits: gate.Explainability) -> CheckResult:
    """No single feature may carry more than `max_top_feature_share` of the model's total
    attribution: one that does is the usual sign of a label leak or an ID the model memorised."""
    top = importance[0]
    result = _floor(
        "explainability",
        "top feature share",
        float(top["share"]),
        limits.max_top_feature_share,
        higher=False,
    )
    result.reason = f"{top['feature']} carries {result.reason}"
    result.details = {"importance": importance}
    return result


def latency(measured: dict[int, dict[str, float]], limits: gate.Latency) -> list[CheckResult]:
    """p95 of the serving path per batch size against the SLA (`max_p95_ms`)."""
    sla = limits.max_p95_ms
    out = []
    for batch, q in measured.items():
        ok = q["p95"] <= sla
        best = f"; best of {q['rounds']} rounds" if q["rounds"] > 1 else ""
        out.append(
            CheckResult(
                "latency",
                f"batch of {batch}",
                ok,
                f"batch of {batch}: p95 {q['p95']:.1f} ms {'<=' if ok else '>'} SLA {sla:.0f} ms "
                f"(p50 {q['p50']:.1f}, p99 {q['p99']:.1f}{best})",
                q["p95"],
                sla,
                q,
            )
        )
    return out
