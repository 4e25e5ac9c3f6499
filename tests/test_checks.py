"""The gate's checks against deliberately bad models, given as their predictions on real-shaped
data: each bad model fails its check, and the reason says why."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ray_app.evaluate import checks, gate


def _world(n: int = 20_000, rate: float = 0.3, seed: int = 0):
    """Labels drawn from known probabilities, so a perfectly calibrated model exists."""
    rng = np.random.default_rng(seed)
    logit = rng.normal(np.log(rate / (1 - rate)), 1.5, n)
    truth = 1 / (1 + np.exp(-logit))
    y = (rng.random(n) < truth).astype(int)
    frame = pd.DataFrame(
        {
            "plan": rng.choice(["basic", "premium"], n, p=[0.85, 0.15]),
            "age": rng.integers(18, 80, n),
        }
    )
    return y, truth, frame


def test_threshold_is_chosen_on_validation_to_maximise_f1():
    y, truth, _ = _world()
    threshold = checks.choose_threshold(y, truth)
    f1 = lambda t: checks.full_metrics(y, truth, t)["f1"]  # noqa: E731
    assert f1(threshold) >= max(f1(t) for t in (0.2, 0.3, 0.4, 0.5, 0.6)) - 1e-9


def test_full_metrics_add_pr_auc_and_the_confusion_matrix():
    m = checks.full_metrics(np.array([0, 0, 1, 1]), np.array([0.1, 0.6, 0.4, 0.9]), 0.5)
    assert m["confusion"] == {"tn": 1, "fp": 1, "fn": 1, "tp": 1}
    assert 0 < m[checks.PR_AUC] <= 1


def test_quality_floors_and_ceilings_name_the_metric():
    bounds = [gate.Bound("roc_auc", True, 0.8), gate.Bound("logloss", False, 0.6)]
    results = checks.quality({"roc_auc": 0.7, "logloss": 0.5}, bounds)
    assert [r.passed for r in results] == [False, True]
    assert results[0].reason == "roc_auc 0.7000 < floor 0.8000"


def test_majority_class_model_fails_the_naive_baseline_despite_high_accuracy():
    y, _, _ = _world(rate=0.05)
    pred = np.zeros_like(y)  # "no churn" for everyone
    assert (pred == y).mean() > 0.85
    results = checks.naive_baseline(y, pred, ["recall", "f1"])
    assert not any(r.passed for r in results)
    assert "majority-class predictor" in results[0].reason


def test_useful_model_beats_the_naive_baseline():
    y, truth, _ = _world(rate=0.05)
    pred = (truth >= checks.choose_threshold(y, truth)).astype(int)
    assert all(r.passed for r in checks.naive_baseline(y, pred, ["recall", "f1"]))


def test_a_metric_the_majority_predictor_scores_perfectly_on_is_not_judged():
    """Where positives are the majority, always predicting positive has recall 1.0, which no
    model can exceed: reported, not failed; F1 is still judged."""
    y, truth, _ = _world(rate=0.7)
    assert y.mean() > 0.5
    recall, f1 = checks.naive_baseline(y, (truth >= 0.5).astype(int), ["recall", "f1"])
    assert recall.passed and "not judged" in recall.reason and "by construction" in recall.reason
    assert f1.passed and "majority-class predictor's" in f1.reason
    (worse,) = checks.naive_baseline(y, np.ones_like(y), ["f1"])
    assert not worse.passed


def test_a_segment_where_the_model_is_blind_fails_and_is_named():
    y, truth, frame = _world()
    proba = truth.copy()
    blind = (frame.plan == "premium").to_numpy()
    proba[blind] = np.random.default_rng(1).random(blind.sum())  # noise for premium customers
    results = checks.slices(
        frame,
        y,
        proba,
        ["plan", "age"],
        gate.Slices(
            min_roc_auc=0.7, min_rows=50, min_class_rows=20, bins={"age": [18, 40, 60, 81]}
        ),
    )
    failed = [r for r in results if not r.passed]
    assert [r.name for r in failed] == ["plan=premium"]
    assert failed[0].reason.startswith("plan=premium: roc_auc 0.")
    assert {r.name for r in results} >= {"age=[18, 40)", "age=[40, 60)", "age=[60, 81)"}


def test_tiny_segments_are_reported_not_failed():
    y, truth, frame = _world(n=2_000)
    results = checks.slices(
        frame,
        y,
        truth,
        ["age"],
        gate.Slices(min_roc_auc=0.99, min_rows=10_000, min_class_rows=20, bins={}),
    )
    assert all(r.passed and "not judged" in r.reason for r in results)


def test_a_segment_with_a_handful_of_positives_is_reported_not_judged():
    """ROC-AUC on 5 positives swings by tenths between samples: a verdict would be noise."""
    y, truth, frame = _world(n=5_000)
    rare = (frame.plan == "premium").to_numpy()
    y[rare] = 0
    y[np.flatnonzero(rare)[:5]] = 1  # 5 churners among the premium customers
    proba = truth.copy()
    proba[rare] = np.random.default_rng(2).random(rare.sum())  # and the model blind there
    limits = gate.Slices(min_roc_auc=0.7, min_rows=50, min_class_rows=20, bins={})
    (premium,) = [
        r for r in checks.slices(frame, y, proba, ["plan"], limits) if "premium" in r.name
    ]
    assert premium.passed and premium.reason.endswith(
        "5 positive, not judged (needs 50 rows and 20 of each class)"
    ), premium.reason


def test_miscalibrated_model_fails_calibration_with_its_curve():
    y, truth, _ = _world()
    limits = gate.Calibration(max_ece=0.05, bins=10)
    good = checks.calibration(y, truth, limits)
    bad = checks.calibration(y, np.sqrt(truth), limits)  # over-confident in churn
    assert good.passed and not bad.passed
    assert bad.reason.startswith("ece ") and "> ceiling 0.0500" in bad.reason
    assert len(bad.details["reliability"]) >= 5


@pytest.fixture
def limits():
    return gate.Champion(min_improvement=0.005, tolerance={"logloss": 0.01})


def _noisy(truth: np.ndarray) -> np.ndarray:
    return np.clip(truth + np.random.default_rng(2).normal(0, 0.2, len(truth)), 0.001, 0.999)


def test_worse_challenger_fails_against_the_champion(limits):
    y, truth, _ = _world()
    champ = checks.full_metrics(y, truth, 0.5)
    challenger = checks.full_metrics(y, _noisy(truth), 0.5)
    results = checks.champion(challenger, champ, "3", limits, "roc_auc")
    assert not results[0].passed and "vs production v3" in results[0].reason


def test_better_challenger_passes_and_first_model_needs_no_champion(limits):
    y, truth, _ = _world()
    better, worse = checks.full_metrics(y, truth, 0.5), checks.full_metrics(y, _noisy(truth), 0.5)
    assert all(r.passed for r in checks.champion(better, worse, "3", limits, "roc_auc"))
    (first,) = checks.champion(better, None, None, limits, "roc_auc")
    assert first.passed and "no production model" in first.reason
    (itself,) = checks.champion(better, None, "4", limits, "roc_auc")
    assert itself.passed and "is production v4 itself" in itself.reason


FAIRNESS = gate.Fairness(
    min_demographic_parity_ratio=0.8,
    min_equalized_odds_ratio=0.7,
    min_rows=100,
    min_class_rows=20,
    columns={},
)


def test_model_biased_against_one_group_fails_fairness():
    y, truth, frame = _world()
    frame["gender"] = np.random.default_rng(3).choice(["female", "male"], len(y))
    fair = (truth >= 0.5).astype(int)
    biased = fair.copy()
    biased[(frame.gender == "female").to_numpy()] = 0  # never flags women
    assert all(r.passed for r in checks.fairness(frame, y, fair, ["gender"], FAIRNESS))
    results = checks.fairness(frame, y, biased, ["gender"], FAIRNESS)
    assert [r.passed for r in results] == [False, False]
    assert results[0].reason.startswith("gender: demographic parity ratio 0.000 < floor 0.8")
    assert "selection rate female 0.000" in results[0].reason


def test_a_group_with_few_of_a_class_counts_for_the_other_rate_only():
    """A group with no positives has no true-positive rate (fairlearn's 0 would make the
    equalized-odds ratio 0 for any model), and one with 5 a noisy one: it counts for the
    false-positive rate only."""
    y, truth, frame = _world()
    frame["region"] = np.where(np.arange(len(y)) % 10 == 0, "island", "mainland")
    island = (frame.region == "island").to_numpy()
    y[island] = 0
    y[np.flatnonzero(island)[:5]] = 1  # 5 churners there: a TPR of 0, 0.2 ... 1.0, noise
    fair = (truth >= 0.5).astype(int)
    alarms = fair[~island & (y == 0)].mean()  # as many false alarms there as elsewhere
    fair[island] = np.random.default_rng(5).random(island.sum()) < alarms
    limits = FAIRNESS.model_copy(update={"columns": {"region": ["equalized_odds"]}})
    (odds,) = checks.fairness(frame, y, fair, [], limits)
    assert odds.passed and "['island'] have under 20 of a class" in odds.reason, odds.reason
    never = np.zeros_like(y)  # no positives predicted at all: equal rates, not NaN
    parity, _ = checks.fairness(frame, y, never, ["region"], FAIRNESS)
    assert parity.value == 1.0 and parity.passed, parity.reason


def test_fairness_skips_groups_too_small_to_judge():
    y, truth, frame = _world(n=1_000)
    frame["gender"] = ["other"] * 50 + ["female"] * 950
    results = checks.fairness(frame, y, (truth >= 0.5).astype(int), ["gender"], FAIRNESS)
    assert len(results) == 1 and results[0].passed and "not judged" in results[0].reason


def test_fairness_criteria_can_be_chosen_per_column():
    y, truth, frame = _world()
    frame["gender"] = np.random.default_rng(3).choice(["female", "male"], len(y))
    pred = (truth >= 0.5).astype(int)
    columns = {"gender": ["equalized_odds"], "plan": ["demographic_parity"]}
    limits = FAIRNESS.model_copy(update={"columns": columns})
    results = checks.fairness(frame, y, pred, [], limits)
    assert [r.name for r in results] == ["gender equalized odds", "plan demographic parity"]


ROBUSTNESS = gate.Robustness.model_validate(
    {
        "seed": 0,
        "noise": {"std": 0.1, "max_drop": {"roc_auc": 0.03}},
        "missing": {"fraction": 0.2, "max_drop": {"roc_auc": 0.05}},
    }
)


def _robustness(score):
    rng = np.random.default_rng(4)
    frame = pd.DataFrame(
        {"visits": rng.integers(0, 200, 5_000), "plan": rng.choice(["a", "b"], 5_000)}
    )
    y = (frame.visits % 2).to_numpy()
    columns = {"numeric": ["visits"], "inputs": ["visits", "plan"]}
    return checks.robustness(frame, y, score, 0.5, columns, ROBUSTNESS)


def test_model_that_memorised_exact_values_fails_robustness():
    def fragile(frame: pd.DataFrame) -> np.ndarray:  # right only on the exact values it saw
        return np.where(frame.visits % 2 == 1, 0.9, 0.1)

    results = _robustness(fragile)
    assert [r.name for r in results] == ["noise std 0.1: roc_auc", "20% missing: roc_auc"]
    assert [r.passed for r in results] == [False, False]
    assert "under noise std 0.1 against 1.0000 clean" in results[0].reason
    assert "> allowed 0.0300" in results[0].reason


def test_model_with_smooth_response_passes_robustness():
    def smooth(frame: pd.DataFrame) -> np.ndarray:
        return 1 / (1 + np.exp(-(frame.visits.fillna(100) - 100) / 30))

    rng = np.random.default_rng(5)
    frame = pd.DataFrame({"visits": rng.integers(0, 200, 5_000), "plan": "a"})
    y = (rng.random(5_000) < smooth(frame)).astype(int)
    columns = {"numeric": ["visits"], "inputs": ["visits", "plan"]}
    results = checks.robustness(frame, y, smooth, 0.5, columns, ROBUSTNESS)
    assert all(r.passed for r in results), [r.reason for r in results]


def test_model_leaning_on_a_leaked_label_fails_explainability():
    import xgboost as xgb

    rng = np.random.default_rng(6)
    x = rng.normal(size=(4_000, 4))
    y = (x[:, 0] + x[:, 1] + rng.normal(0, 1, 4_000) > 0).astype(int)
    leak = y + rng.normal(0, 0.01, 4_000)
    names = ["a", "b", "c", "d", "refund_issued"]
    limits = gate.Explainability(sample_rows=100, max_top_feature_share=0.6)
    for data, leaked in ((x, False), (np.column_stack([x, leak]), True)):
        cols = names[: data.shape[1]]
        booster = xgb.train({"max_depth": 3}, xgb.DMatrix(data, y, feature_names=cols), 30)
        contribs = booster.predict(xgb.DMatrix(data, feature_names=cols), pred_contribs=True)
        result = checks.explainability(checks.global_importance(contribs, cols), limits)
        assert result.passed is not leaked, result.reason
    assert result.reason.startswith("refund_issued carries top feature share 0.9")
    assert [i["feature"] for i in result.details["importance"]][0] == "refund_issued"
