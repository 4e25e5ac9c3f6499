"""Step journals and run locks: what lets a long run be killed and then resumed.

A journal is a dataclass saved as JSON after each finished step, so the next run of the same
work reads where the last one stopped. Saving is atomic (a temporary file renamed over the
old one): a process killed while saving leaves the previous journal or the new one, never half
of one. A lock is an exclusive `flock`, which the kernel releases when its holder dies, so a
SIGKILLed run never leaves a stale lock behind. `retrain` and `pipeline` use both.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, TypeVar

from ray_app.errors import RayAppError

Entry = TypeVar("Entry")


class Busy(RayAppError, RuntimeError):
    """Another process holds the lock."""


def load_entry(cls: type[Entry], path: Path) -> Entry | None:
    """The journal at `path` as a `cls` dataclass, None if there is none. Fields the file lacks
    take their defaults and keys `cls` lacks are dropped: a journal from another release loads."""
    if not path.is_file():
        return None
    raw = json.loads(path.read_text())
    return cls(**{f.name: raw[f.name] for f in fields(cls) if f.name in raw})  # type: ignore[arg-type]


def save_entry(entry: Any, path: Path) -> None:
    """Atomically: a crash leaves the previous journal or this one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(asdict(entry), indent=2))
    tmp.replace(path)


@contextmanager
def hold(path: Path, what: str, busy: type[Busy] = Busy) -> Iterator[None]:
    """An exclusive lock on `path`, released by the kernel if its holder dies; `busy` is raised,
    naming `what` and the holder's pid, when another process has it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise busy(f"{what} is already running ({holder})") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} since {dt.datetime.now(dt.UTC):%F %T} UTC")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
