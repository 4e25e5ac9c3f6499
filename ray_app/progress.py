"""Step-by-step progress lines for long commands: each with the seconds the step took."""

from __future__ import annotations

import time
from collections.abc import Callable


class Steps:
    """Reports each step with the seconds it took."""

    def __init__(self, log: Callable[[str], None] = print):
        self.log, self.started = log, time.perf_counter()

    def __call__(self, message: str) -> None:
        self.log(f"{message} ({time.perf_counter() - self.started:.1f}s)")
        self.started = time.perf_counter()
