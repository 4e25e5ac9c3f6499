"""Benchmark harness: a workload and its named baseline, timed in the same process run.

Machines here are noisy, so only the ratio of two timings taken side by side means anything.
Each benchmark writes its figures to `bench/out/<name>.json` and its table to its own section
of `bench/RESULTS.md` (between markers, so benchmarks don't overwrite each other).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "RESULTS.md"


@dataclass
class Comparison:
    name: str
    workload: str
    baseline: str
    workload_s: list[float]
    baseline_s: list[float]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """Best workload time over best baseline time (best = least disturbed by noise)."""
        return min(self.workload_s) / min(self.baseline_s)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def compare(
    name: str,
    workload: tuple[str, Callable[[], Any]],
    baseline: tuple[str, Callable[[], Any]],
    repeats: int = 1,
) -> Comparison:
    """Run baseline and workload alternately `repeats` times each."""
    result = Comparison(name, workload[0], baseline[0], [], [])
    for _ in range(repeats):
        result.baseline_s.append(timed(baseline[1])[0])
        result.workload_s.append(timed(workload[1])[0])
    return result


def record(c: Comparison, table: list[tuple[str, str]], notes: str = "") -> None:
    """Write the JSON figures and replace this benchmark's section of RESULTS.md."""
    stamp = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    out = BENCH_DIR / "out"
    out.mkdir(exist_ok=True)
    payload = {**asdict(c), "ratio": c.ratio, "when": stamp, "machine": machine}
    (out / f"{c.name}.json").write_text(json.dumps(payload, indent=2))

    rows = "\n".join(f"| {k} | {v} |" for k, v in table)
    section = (
        f"<!-- {c.name}:start -->\n## {c.name}\n\n"
        f"Workload: {c.workload}. Baseline: {c.baseline}. Run {stamp} on {machine}.\n\n"
        f"| figure | value |\n|---|---|\n{rows}\n"
        + (f"\n{notes}\n" if notes else "")
        + f"<!-- {c.name}:end -->"
    )
    text = (
        RESULTS.read_text()
        if RESULTS.exists()
        else "# Benchmark results\n\nLatest figures of `make bench` (`bench/*.py`); "
        "ratios are workload / baseline in the same run.\n"
    )
    start, end = f"<!-- {c.name}:start -->", f"<!-- {c.name}:end -->"
    if start in text:
        head, rest = text.split(start, 1)
        text = head + section + rest.split(end, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    RESULTS.write_text(text)
    print(section)
