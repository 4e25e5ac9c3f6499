"""A Ray head of a test's own, started the way users start one (`ray start --head --block`).

Other Ray clusters run on the same machine (other test sessions, `make run`), so the head gets
its own temp dir, its own ports (Ray's defaults, such as the dashboard agent's 52365, collide
with theirs) and token auth with its own token file. Every process of the cluster inherits a
marker in its environment; `stop` signals the head, then checks through /proc that no process
carrying the marker is left (workers and job drivers run in process groups of their own, so
the head's group alone does not find them), and never touches another cluster.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import requests
from conftest import free_port

RAY = Path(sys.executable).with_name("ray")
MARKER = "RAY_APP_TEST_HEAD"  # NAME=<id> in the environment of every process of one head
# Where a client or the head would find another cluster or another token.
FOREIGN = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_DASHBOARD_ADDRESS", "RAY_AUTH_TOKEN")


def _clean(env: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in FOREIGN}


@dataclass
class RayHead:
    process: subprocess.Popen
    temp_dir: Path
    dashboard: str  # http://127.0.0.1:PORT: the job API, what `--address` takes
    token_path: Path
    marker: str
    log: Path  # the output of `ray start`

    @property
    def token(self) -> str:
        return self.token_path.read_text()

    def client_env(self, **changes: str | None) -> dict[str, str]:
        """The environment of a client command, as the README says: RAY_AUTH_MODE=token and
        the head's token file; `changes` set (or, with None, remove) variables."""
        env = _clean(os.environ)
        env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(self.token_path))
        for key, value in changes.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        return env

    def ray(
        self, *args: str, env: Mapping[str, str] | None = None, timeout_s: float = 120
    ) -> subprocess.CompletedProcess:
        """`ray ARGS` as a client, from the repo root, output captured."""
        return subprocess.run(
            [str(RAY), *args],
            env=dict(env) if env is not None else self.client_env(),
            cwd=Path(__file__).resolve().parent.parent,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )

    def processes(self) -> dict[int, str]:
        """pid -> command line of every live process of this cluster (found by the marker)."""
        tag = f"{MARKER}={self.marker}".encode()
        found = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                if tag not in (entry / "environ").read_bytes().split(b"\0"):
                    continue
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue  # gone meanwhile, or a zombie
            if cmdline:  # a zombie's is empty: it holds nothing and waits for its parent
                found[int(entry.name)] = cmdline.decode(errors="replace").strip()
        return found

    def stop(self, timeout_s: float = 60) -> dict[int, str]:
        """SIGTERM to `ray start --block`, whose handler stops the processes it started; wait
        up to `timeout_s` for every process of the cluster to end. Returns those still alive
        then (each is SIGKILLed, so a failed stop leaves nothing behind either)."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=timeout_s)
        while (left := self.processes()) and time.monotonic() < deadline:
            time.sleep(0.5)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        return left


class HeadExited(RuntimeError):
    """`ray start` ended before its cluster took a job."""


def start_head(
    env: Mapping[str, str] | None = None,
    num_cpus: int = 4,
    object_store_mb: int = 300,
    ready_timeout_s: float = 240,
    attempts: int = 2,
) -> RayHead:
    """Start a head with token auth on (a fresh token of its own) and wait until its job agent
    takes jobs (a head answers the job API before its agent can: a no-op job is submitted until
    one is accepted, as `make cluster` does). `env` is added to the head's environment, which
    its job drivers, workers and Serve replicas inherit.

    `ray start` gives its raylet a fixed 30 s to register with the GCS and exits when it does
    not (seen on a 2-core machine under a load of 150): up to `attempts` heads are started."""
    attempt = 1
    while True:
        head = _start(env or {}, num_cpus, object_store_mb)
        try:
            _wait_for_jobs(head, ready_timeout_s)
            return head
        except HeadExited:
            if head.stop() or attempt >= attempts:
                raise
        except BaseException:
            head.stop()
            raise
        remove(head)
        attempt += 1


def _start(env: Mapping[str, str], num_cpus: int, object_store_mb: int) -> RayHead:
    temp = Path(tempfile.mkdtemp(prefix="rh"))  # short: Ray's socket paths must fit 107 bytes
    token_path = temp / "auth_token"
    token_path.write_text(secrets.token_hex(32))  # what `ray get-auth-token --generate` writes
    token_path.chmod(0o600)
    marker = uuid.uuid4().hex
    head_env = _clean(os.environ)
    head_env.update(
        {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(token_path),
            # job entry points run `python ...` from the head's PATH, as `make cluster` sets it
            "PATH": f"{RAY.parent}{os.pathsep}{os.environ.get('PATH', '')}",
            # SIGTERM stops at once instead of draining the node for up to 30 s first
            "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0",
            MARKER: marker,
            **env,
        }
    )
    dashboard_port = free_port()
    cmd = [
        str(RAY), "start", "--head", "--block", f"--temp-dir={temp}",
        "--node-ip-address=127.0.0.1", f"--port={free_port()}",
        "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard_port}",
        f"--num-cpus={num_cpus}", f"--object-store-memory={object_store_mb * 1024**2}",
        f"--ray-client-server-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
        "--disable-usage-stats",
    ]  # fmt: skip
    log = temp / "head.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            cmd, env=head_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    return RayHead(process, temp, f"http://127.0.0.1:{dashboard_port}", token_path, marker, log)


def _wait_for_jobs(head: RayHead, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    answer = "no answer"
    while time.monotonic() < deadline:
        if head.process.poll() is not None:
            tail = head.log.read_text()[-3000:]
            raise HeadExited(f"`ray start` exited with {head.process.returncode}:\n{tail}")
        try:
            r = requests.post(
                f"{head.dashboard}/api/jobs/",
                json={"entrypoint": "true"},
                headers={"Authorization": f"Bearer {head.token}"},
                timeout=10,
            )
            if r.ok:
                return
            answer = f"{r.status_code} {r.text[:300]}"
        except requests.RequestException as e:
            answer = type(e).__name__
        time.sleep(1)
    raise TimeoutError(f"the head's job agent took no job in {timeout_s:.0f}s (last: {answer})")


def remove(head: RayHead) -> None:
    """Delete the head's temp dir (its logs): only once its processes are gone."""
    shutil.rmtree(head.temp_dir, ignore_errors=True)
