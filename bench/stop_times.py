"""How long it takes to stop a Prefect worker and a served flow (Prefect's ``serve``, what ``dinoseg serve`` runs),
with SIGTERM and with SIGINT, idle and with a flow run in progress; and what becomes of that run.

Starts its own ``prefect server start`` (SQLite, own PREFECT_HOME) on a free port, a process work pool, and a
40 s "sleepy" flow deployed from a temporary folder. Prints one Markdown table. Run from the repository root:

    .venv/bin/python bench/stop_times.py
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

PREFECT = str(Path(sys.executable).with_name("prefect"))
SLEEPY = '''
import time
from prefect import flow

@flow(name="sleepy")
def sleepy(seconds: float = 40.0):
    time.sleep(seconds)
    return seconds

if __name__ == "__main__":
    sleepy.serve(name="served")
'''


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(what: str, check, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except httpx.HTTPError:
            value = None
        if value:
            return value
        time.sleep(0.25)
    raise SystemExit(f"{what}: not within {timeout} s")


def stop_time(proc: subprocess.Popen, signum: int, limit: float = 90.0) -> str:
    started = time.monotonic()
    proc.send_signal(signum)
    try:
        proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return f"still running after {limit:.0f} s (killed)"
    return f"{time.monotonic() - started:.1f} s (exit {proc.returncode})"


def main() -> None:
    home = Path(tempfile.mkdtemp(prefix="stop-times-"))
    (home / "code").mkdir()
    (home / "code" / "sleepy.py").write_text(SLEEPY)
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home / "home"), PREFECT_API_URL=api, PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_RUNNER_POLL_FREQUENCY="1")
    log = open(home / "log.txt", "ab")

    def start(*args: str, cwd: Path = home) -> subprocess.Popen:
        return subprocess.Popen(list(args), env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)

    server = start(PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui",
                   "--no-services")
    rows = []
    try:
        wait_for("server", lambda: httpx.get(f"{api}/health", timeout=2).status_code == 200)
        subprocess.run([PREFECT, "--no-prompt", "work-pool", "create", "bench", "--type", "process"], env=env,
                       check=True, capture_output=True)
        deploy = ("from prefect import flow; flow.from_source(source=%r, entrypoint='sleepy.py:sleepy')"
                  ".deploy(name='pooled', work_pool_name='bench')" % str(home / "code"))
        subprocess.run([sys.executable, "-c", deploy], env=env, check=True, capture_output=True)

        def deployment_id(name: str) -> str:
            return wait_for(name, lambda: (r := httpx.get(f"{api}/deployments/name/sleepy/{name}", timeout=2))
                            .status_code == 200 and r.json()["id"])

        def trigger(name: str) -> str:
            response = httpx.post(f"{api}/deployments/{deployment_id(name)}/create_flow_run", json={}, timeout=10)
            response.raise_for_status()
            return response.json()["id"]

        def state(run_id: str) -> str:
            return httpx.get(f"{api}/flow_runs/{run_id}", timeout=5).json()["state"]["type"]

        def running(run_id: str) -> bool:
            return wait_for("run start", lambda: state(run_id) == "RUNNING", 120)

        def final(run_id: str) -> str:
            """The run's state once final (or as it is 60 s after the stop)."""
            deadline = time.monotonic() + 60
            while state(run_id) not in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") and time.monotonic() < deadline:
                time.sleep(1)
            return state(run_id)

        def workers() -> int:
            response = httpx.post(f"{api}/work_pools/bench/workers/filter", json={}, timeout=5)
            return sum(w["status"] == "ONLINE" for w in response.json())

        def ready(kind: str, before: int) -> None:
            if kind == "served flow":
                deployment_id("served")
                time.sleep(3)
            else:
                wait_for("worker online", lambda: workers() > before, 120)

        # as the README's walkthrough did: a worker started with & by a (non-interactive) bash script, `kill %1`
        for mode, prefix in (("bash script, `cmd &`", ""), ("bash script with `set -m`, `cmd &`", "set -m; ")):
            before = workers()
            script = (f"{prefix}{PREFECT} worker start --pool bench >> {home / 'log.txt'} 2>&1 & "
                      f"echo $! > {home / 'pid'}; wait")
            shell = start("bash", "-c", script)
            wait_for("worker online", lambda: workers() > before, 120)
            pid = int((home / "pid").read_text())
            started = time.monotonic()
            os.kill(pid, signal.SIGTERM)
            try:
                shell.wait(timeout=60)
                took = f"{time.monotonic() - started:.1f} s (exit {shell.returncode})"
            except subprocess.TimeoutExpired:
                took = "still running after 60 s"
                os.killpg(shell.pid, signal.SIGKILL)
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            rows.append((f"worker ({mode})", "SIGTERM (`kill`)", "idle", took, "-"))

        for kind, command in (("worker", (PREFECT, "worker", "start", "--pool", "bench")),
                              ("served flow", (sys.executable, "sleepy.py"))):
            cwd = home / "code"
            for signame in ("SIGTERM", "SIGINT"):
                signum = getattr(signal, signame)
                before = workers()
                proc = start(*command, cwd=cwd)
                ready(kind, before)
                rows.append((kind, signame, "idle", stop_time(proc, signum), "-"))
                before = workers()
                proc = start(*command, cwd=cwd)
                ready(kind, before)
                run_id = trigger("served" if kind == "served flow" else "pooled")
                running(run_id)
                time.sleep(2)
                took = stop_time(proc, signum)
                rows.append((kind, signame, "a 40 s run in progress", took, f"{state(run_id)}, then {final(run_id)}"))
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    load = os.getloadavg()
    print(f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; prefect {_version()}")
    print("| process | signal | when | exits after | the run's state at the exit, then final |")
    print("|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


def _version() -> str:
    import prefect

    return prefect.__version__


if __name__ == "__main__":
    main()
