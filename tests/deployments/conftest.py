"""A real Prefect server (``prefect server start``) on 127.0.0.1 with its own PREFECT_HOME, and helpers to run the
``prefect`` command line against it and to stop every process a test started, children included."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psutil  # comes with distributed

REPO = Path(__file__).resolve().parents[2]
#: The ``prefect`` command of this interpreter's environment (the worker's flow runs use the same Python).
PREFECT = str(Path(sys.executable).with_name("prefect"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prefect_env(home: Path, api_url: str, **extra: str) -> dict[str, str]:
    """The environment of every Prefect process of a test: this one's, minus any PREFECT_* setting that could point
    elsewhere (profiles, a harness), plus its own home and server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_API_URL=api_url,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_LOGGING_LEVEL="INFO",
        PREFECT_CLI_WRAP_LINES="false",
        PWD=str(REPO),
        **extra,
    )
    return env


def start(args: list[str], env: dict[str, str], log: Path, cwd: Path = REPO) -> subprocess.Popen:
    """Start a background process in its own session (group), output to ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen(args, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """Stop ``proc`` and every process it started (flow-run subprocesses run in groups of their own): SIGTERM to
    all, then SIGKILL to what is left after ``grace`` seconds."""
    try:
        family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    for member in family:
        try:
            member.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(family, timeout=grace)
    for member in alive:
        try:
            member.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=5)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        pass


def tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def cli(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess:
    """``prefect ARGS`` from the repository root; fails the test with its output unless it exits 0."""
    done = subprocess.run([PREFECT, "--no-prompt", *args], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"prefect {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


@contextmanager
def running_prefect_server(tmp_path_factory) -> Iterator[dict[str, Any]]:
    """``prefect server start`` (SQLite, no UI, no background services) on a free port of 127.0.0.1.

    Yields ``api_url``, ``home`` (its PREFECT_HOME), ``env`` (for Prefect processes that use it) and ``logs`` (a
    folder for process logs). The server and all its children are stopped at the end, whatever happened. The
    session's ``prefect_server`` fixture (tests/conftest.py) is one such server, shared by the deployment, serve
    and docs tests: each test names its own deployments, so they do not meet.
    """
    home = tmp_path_factory.mktemp("prefect-home")
    logs = tmp_path_factory.mktemp("logs")
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = prefect_env(home, api_url)
    log = logs / "server.log"
    server = start([PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui",
                    "--no-services"], env, log)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert server.poll() is None, f"prefect server exited {server.returncode}:\n{tail(log)}"
            assert time.monotonic() < deadline, f"prefect server not healthy after 120 s:\n{tail(log)}"
            try:
                if httpx.get(f"{api_url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        yield {"api_url": api_url, "home": home, "env": env, "logs": logs}
    finally:
        stop(server)
