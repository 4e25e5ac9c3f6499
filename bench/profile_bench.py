"""What the reference-profile checks cost: ray_app validation of the same built-in rows with
the contract as shipped and with a `reference:` profile (per-batch histograms and category
counts merged on the driver, then mean/quantile tolerance, KS and chi-squared checks).

Both sides run in fresh child processes through `bench.validate_bench`, in this one run.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from bench.harness import Comparison, record
from bench.validate_bench import CONTRACT, measure


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    args = parser.parse_args()
    from ray_app.data import synth
    from ray_app.data.infer import add_reference_profile

    with tempfile.TemporaryDirectory() as tmp:
        trusted = synth.write(Path(tmp) / "trusted.csv", 100_000, seed=2)
        profiled = Path(tmp) / "contract.yaml"
        shutil.copy(CONTRACT, profiled)
        add_reference_profile(profiled, trusted, 100_000)
        path = synth.write(Path(tmp) / "churn.csv", args.rows, seed=1)
        base, work = measure("ray", path), measure("ray", path, profiled)
    assert base["ok"] and work["ok"], "same-process data must pass its reference profile"
    c = Comparison(
        "profile_check_cost",
        "ray_app validate with a reference profile",
        "ray_app validate, same contract without `reference:`",
        [work["seconds"]],
        [base["seconds"]],
        extra={"rows": args.rows, "without": base, "with": work},
    )
    record(
        c,
        [
            ("rows", f"{args.rows:,}"),
            (
                "without profile",
                f"{base['seconds']:.1f} s, driver peak {base['peak_rss_mb']:,.0f} MB",
            ),
            ("with profile", f"{work['seconds']:.1f} s, driver peak {work['peak_rss_mb']:,.0f} MB"),
            ("**ratio** (with / without)", f"**{c.ratio:.2f}**"),
        ],
        notes="The profile is built from 100k trusted rows of another seed; the checked rows "
        "come from the same process, so every statistical check passes.",
    )


if __name__ == "__main__":
    main()
