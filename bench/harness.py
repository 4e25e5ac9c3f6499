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
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "RESULTS.md"
RESULT = "RESULT "  # the line a child process reports its figures on


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


def peak_rss_mb() -> float:
    """This process's peak resident memory. Linux's `ru_maxrss` carries the parent's peak
    across fork and exec (a child of a driver that trained a model would start at its size),
    so the address space's own high-water mark is read instead."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def report(figures: dict[str, Any]) -> None:
    """A child process's figures, for `run_child` to read."""
    print(RESULT + json.dumps(figures), flush=True)


def run_child(
    module: str, *args: str, env: dict[str, str] | None = None, echo: bool = False
) -> dict[str, Any]:
    """`python -m module args` in a fresh process (its own memory, imports and Ray), and the
    figures it `report`ed; its output's tail when it fails (`echo`: its stderr's tail always,
    e.g. a profile)."""
    proc = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=BENCH_DIR.parent,
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **(env or {})},
    )
    if echo:
        print(proc.stderr[-12000:])
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT)]
    if proc.returncode or not lines:
        raise RuntimeError(
            f"{module} {' '.join(args)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
        )
    return json.loads(lines[-1][len(RESULT) :])


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
