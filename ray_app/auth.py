"""API keys and per-key rate limits for the HTTP prediction service.

Keys come from `RAYAPP_API_KEYS` and/or a key file that only its owner may read (as ssh
insists). Only their SHA-256 digests are held, and errors name where a bad entry is (variable
or file and line), never its text, so a key reaches neither memory dumps nor logs. The key file
is shared by the service, which checks keys, and its clients on the same machine (`rayapp
predict`, `rayapp keys create`, notebooks), so this module sits below both, outside `serve/`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from ray_app.config import rayapp_home
from ray_app.errors import RayAppError

ENV_KEYS = "RAYAPP_API_KEYS"
MIN_KEY_CHARS = 16
_NAME = re.compile(r"[\w.-]+")


class AuthError(RayAppError, ValueError):
    """A malformed key source; the message names the source and line, never a key."""


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def _env_entries(environ: Mapping[str, str]) -> Iterator[tuple[str, str]]:
    for i, entry in enumerate(environ.get(ENV_KEYS, "").split(","), 1):
        if entry.strip():
            yield f"{ENV_KEYS} entry {i}", entry.strip()


def _file_entries(path: Path) -> Iterator[tuple[str, str]]:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise AuthError(f"API key file not found: {path}") from None
    if mode & 0o077:
        raise AuthError(
            f"API key file {path} is readable by group or others (mode {mode & 0o777:o}): "
            f"chmod 600 {path}"
        )
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise AuthError(f"cannot read API key file {path}: {type(e).__name__}") from None
    found = False
    for n, line in enumerate(lines, 1):
        if line.strip() and not line.lstrip().startswith("#"):
            found = True
            yield f"{path} line {n}", line.strip()
    if not found:  # an empty file must not quietly leave the service open
        raise AuthError(f"API key file {path} holds no keys")


@dataclass(frozen=True)
class ApiKeys:
    """The known keys, as `sha256 hex digest -> key name`; the keys themselves are not kept."""

    digests: dict[str, str]

    @classmethod
    def load(
        cls, file: str | os.PathLike | None = None, environ: Mapping[str, str] = os.environ
    ) -> ApiKeys:
        """Keys from `RAYAPP_API_KEYS` (comma-separated) and then `file` (one per line, blank
        lines and whole-line `#` comments skipped). An entry is `name:key`, or a bare key named
        `key-<n>` by its position among all entries. Keys need `MIN_KEY_CHARS`; names, keys
        unique."""
        entries = list(_env_entries(environ))
        if file is not None:
            entries += _file_entries(Path(file))
        digests: dict[str, str] = {}
        for position, (where, entry) in enumerate(entries, 1):
            name, sep, key = entry.partition(":")
            name, key = (name.strip(), key.strip()) if sep else (f"key-{position}", name)
            if not _NAME.fullmatch(name):
                raise AuthError(f"{where}: a key name may hold only letters, digits, '_.-'")
            if len(key) < MIN_KEY_CHARS:
                raise AuthError(f"{where}: key {name!r} is shorter than {MIN_KEY_CHARS} chars")
            if name in digests.values():
                raise AuthError(f"{where}: key name {name!r} is used twice")
            if (digest := _digest(key)) in digests:
                raise AuthError(f"{where}: key {name!r} is the same key as {digests[digest]!r}")
            digests[digest] = name
        return cls(digests)

    def __len__(self) -> int:
        return len(self.digests)

    def identify(self, authorization: str | None) -> str | None:
        """The name of the key in an `Authorization: Bearer <key>` header; None when the header
        is missing, of another scheme, or holds no known key. Every digest is compared in
        constant time, so timing tells nothing about how close a guess came."""
        scheme, _, key = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return None
        digest, found = _digest(key.strip()), None
        for known, name in self.digests.items():
            if hmac.compare_digest(known, digest):
                found = name
        return found


def default_keys_file() -> Path:
    """The service's key file on this node: `$RAYAPP_HOME/api_keys`."""
    return rayapp_home() / "api_keys"


def create_key_file(path: str | os.PathLike, name: str = "default") -> str:
    """Write `name:<new key>` to a new file only its owner can read (its folder 0700) and
    return the key; an existing file is never overwritten (FileExistsError)."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"a key name may hold only letters, digits, '_.-', not {name!r}")
    path = Path(path)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"{name}:{key}\n")
    return key


class RateLimiter:
    """Token bucket per key name (rate per second, burst); per router replica.

    Callers pass only names of known keys, so the buckets stay as few as the keys.
    `rate_per_s <= 0` means unlimited."""

    def __init__(self, rate_per_s: float, burst: int):
        if rate_per_s > 0 and burst < 1:
            raise ValueError(f"burst must be at least 1, got {burst}")
        self.rate, self.burst = rate_per_s, burst
        self._buckets: dict[str, tuple[float, float]] = {}  # name -> (tokens, when counted)
        self._lock = threading.Lock()  # sync endpoints run in a thread pool

    def acquire(self, key: str, now: float | None = None) -> float:
        """0.0 when admitted (one token taken), else the seconds until a token is there."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, then = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + max(0.0, now - then) * self.rate)
            if tokens >= 1 - 1e-9:  # a caller that waited exactly the wait given gets in
                self._buckets[key] = (tokens - 1, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1 - tokens) / self.rate


def client_key(file: str | os.PathLike, environ: Mapping[str, str] = os.environ) -> str | None:
    """The key a client on this machine sends: `RAYAPP_API_KEY`, else the first key of the
    local key file (what `make run` created), else None."""
    if key := environ.get("RAYAPP_API_KEY"):
        return key
    path = Path(file)
    if not path.is_file():
        return None
    for _, entry in _file_entries(path):
        return entry.split(":", 1)[1] if ":" in entry else entry
    return None
