"""API keys from the environment and key files, and the per-key rate limiter."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from ray_app.auth import (
    ENV_KEYS,
    ApiKeys,
    AuthError,
    RateLimiter,
    create_key_file,
)

GOOD = "k3y-alice-0123456789"
OTHER = "k3y-bob-abcdefghijklmnop"


def _key_file(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_env_entries_named_and_bare():
    keys = ApiKeys.load(environ={ENV_KEYS: f"alice:{GOOD}, {OTHER},"})
    assert len(keys) == 2
    assert keys.identify(f"Bearer {GOOD}") == "alice"
    assert keys.identify(f"Bearer {OTHER}") == "key-2"  # named by its position


def test_no_source_means_no_keys():
    assert len(ApiKeys.load(environ={})) == 0


def test_file_entries_skip_comments_and_blanks_and_add_to_env(tmp_path):
    path = _key_file(tmp_path / "keys", f"# who may call\n\nbob:{OTHER}\n  # indented\n")
    keys = ApiKeys.load(path, environ={ENV_KEYS: f"alice:{GOOD}"})
    assert sorted(keys.digests.values()) == ["alice", "bob"]
    assert keys.identify(f"Bearer {OTHER}") == "bob"


def test_only_digests_are_held():
    keys = ApiKeys.load(environ={ENV_KEYS: f"alice:{GOOD}"})
    assert GOOD not in repr(keys) and GOOD not in str(keys.digests)


@pytest.mark.parametrize(
    "entries, where, why",
    [
        (f"alice:{GOOD[:15]}", "entry 1", "shorter than 16"),
        (f"alice:{GOOD},alice:{OTHER}", "entry 2", "'alice' is used twice"),
        (f"alice:{GOOD},bob:{GOOD}", "entry 2", "same key as 'alice'"),
        (f"bad name:{GOOD}", "entry 1", "letters, digits"),
        (f":{GOOD}", "entry 1", "letters, digits"),
    ],
)
def test_malformed_env_entries_say_where_and_why_but_not_the_key(entries, where, why):
    with pytest.raises(AuthError) as e:
        ApiKeys.load(environ={ENV_KEYS: entries})
    message = str(e.value)
    assert f"{ENV_KEYS} {where}" in message and why in message
    assert GOOD[:15] not in message and OTHER not in message


def test_malformed_file_line_is_named_without_the_key(tmp_path):
    short = "s3cr3t-short"
    path = _key_file(tmp_path / "keys", f"alice:{GOOD}\n# comment\nbob:{short}\n")
    with pytest.raises(AuthError, match=f"{path} line 3: key 'bob' is shorter") as e:
        ApiKeys.load(path, environ={})
    assert short not in str(e.value)


def test_missing_and_empty_files_are_refused(tmp_path):
    with pytest.raises(AuthError, match=f"not found: {tmp_path / 'nope'}"):
        ApiKeys.load(tmp_path / "nope", environ={})
    empty = _key_file(tmp_path / "empty", "# nothing yet\n")
    with pytest.raises(AuthError, match="holds no keys"):
        ApiKeys.load(empty, environ={})


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644])
def test_a_key_file_others_can_read_is_refused(tmp_path, mode):
    path = _key_file(tmp_path / "keys", f"alice:{GOOD}\n", mode)
    with pytest.raises(AuthError, match=f"chmod 600 {path}") as e:
        ApiKeys.load(path, environ={})
    assert GOOD not in str(e.value)


@pytest.mark.parametrize(
    "header, name",
    [
        (f"Bearer {GOOD}", "alice"),
        (f"bearer {GOOD}", "alice"),
        (f"BEARER   {GOOD} ", "alice"),
        (f"Bearer {GOOD}x", None),
        (f"Bearer {OTHER}", None),
        ("Bearer ", None),
        ("Bearer", None),
        (GOOD, None),
        (f"Basic {GOOD}", None),
        (f"Token {GOOD}", None),
        ("", None),
        (None, None),
    ],
)
def test_identify(header, name):
    keys = ApiKeys.load(environ={ENV_KEYS: f"alice:{GOOD}"})
    assert keys.identify(header) == name


def test_created_key_file_is_private_loads_and_is_never_overwritten(tmp_path):
    path = tmp_path / "secrets" / "api_keys"
    key = create_key_file(path, "ops")
    assert len(key) >= 40
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) & 0o077 == 0
    assert ApiKeys.load(path, environ={}).identify(f"Bearer {key}") == "ops"
    with pytest.raises(FileExistsError):
        create_key_file(path, "ops")
    assert path.read_text() == f"ops:{key}\n"
    assert create_key_file(tmp_path / "other") != key  # each key is new


def test_created_key_file_refuses_a_name_it_could_not_read_back(tmp_path):
    with pytest.raises(ValueError, match="key name"):
        create_key_file(tmp_path / "keys", "a:b")
    assert not os.path.exists(tmp_path / "keys")


def test_rate_limiter_admits_the_burst_then_asks_to_wait():
    limiter = RateLimiter(rate_per_s=2, burst=3)
    assert [limiter.acquire("alice", now=10.0) for _ in range(3)] == [0.0] * 3
    wait = limiter.acquire("alice", now=10.0)
    assert wait == pytest.approx(0.5)
    assert limiter.acquire("alice", now=10.2) == pytest.approx(0.3)  # 0.4 of a token
    assert limiter.acquire("alice", now=10.5) == 0.0  # the wait given was enough
    assert limiter.acquire("alice", now=10.5) > 0
    assert limiter.acquire("bob", now=10.5) == 0.0  # buckets are per key


def test_rate_limiter_refills_only_up_to_the_burst():
    limiter = RateLimiter(rate_per_s=1, burst=2)
    assert limiter.acquire("alice", now=0.0) == 0.0
    results = [limiter.acquire("alice", now=1000.0) for _ in range(3)]
    assert results[:2] == [0.0, 0.0] and results[2] == pytest.approx(1.0)


def test_rate_limiter_zero_rate_is_unlimited():
    limiter = RateLimiter(rate_per_s=0, burst=0)
    assert all(limiter.acquire("alice", now=0.0) == 0.0 for _ in range(1000))


def test_rate_limiter_needs_a_burst():
    with pytest.raises(ValueError, match="burst"):
        RateLimiter(rate_per_s=1, burst=0)
