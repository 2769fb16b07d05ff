"""Where a command's flow runs report: the Prefect server at ``PREFECT_API_URL`` when one is set, else a temporary
server started once for the command and stopped with it.

The temporary server is Prefect's ephemeral server (``SubprocessASGIServer``: uvicorn on 127.0.0.1 over the
``PREFECT_HOME`` database), started here so that:

- it dies with its command, however the command ends: it runs in a session (process group) of its own, so a
  terminal's Ctrl-C reaches only the command, which stops its work first and the server after; and it holds the
  read end of a pipe whose only write end is the command's, so when the command is gone (even ``kill -9``) the
  server reads EOF and stops its whole process group (SIGTERM, then SIGKILL 5 s later);
- start-up tolerates a busy machine and a concurrent start: each try takes a port the kernel just found free, a
  try whose server exits early (port taken meanwhile, the database locked by another start) is retried on another
  port, and the health check waits up to :data:`DEFAULT_STARTUP_TIMEOUT` seconds in all;
- a failure is one line naming the fix (:class:`PrefectUnavailable`, exit code 3).

Commands call :func:`run_flow` only after every argument has been checked: a bad argument never starts a server.
"""

from __future__ import annotations

import atexit
import functools
import importlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dinoseg.cli.options import EXIT_OK, EXIT_PARTIAL
from dinoseg_core.errors import DinosegError

STARTUP_TIMEOUT = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
#: Seconds a temporary server gets in all (every try) unless STARTUP_TIMEOUT is set: a fresh database's migrations
#: take 10-17 s on a quiet machine and about 30 s when three start at once on 2 busy cores (Prefect's default: 20).
DEFAULT_STARTUP_TIMEOUT = 90
#: Tries of a temporary server that exits during start-up, each on a new port.
STARTUP_TRIES = 3
#: Seconds between SIGTERM and SIGKILL when a temporary server is stopped.
STOP_GRACE = 5.0

# Run as ``python -c WATCHED_SERVER FD uvicorn-args...`` in the server's own session: a daemon thread waits for EOF
# on FD (the command's pipe) and then stops the process group; the main thread runs uvicorn.
WATCHED_SERVER = """
import os, signal, sys, threading, time
def watch(fd):
    try:
        while os.read(fd, 64):
            pass
    except OSError:
        pass
    os.killpg(0, signal.SIGTERM)
    time.sleep(%r)
    os.killpg(0, signal.SIGKILL)
threading.Thread(target=watch, args=(int(sys.argv[1]),), name="dinoseg-parent-watch", daemon=True).start()
sys.argv = ["uvicorn", *sys.argv[2:]]
from uvicorn.main import main
main()
""" % (STOP_GRACE,)


class PrefectUnavailable(DinosegError, RuntimeError):
    """No Prefect server to report to: the configured one does not answer, or a temporary one did not start."""


def _check_server(url: str) -> None:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        problem = client.api_healthcheck()
    if problem is not None:
        raise PrefectUnavailable(
            f"no Prefect server answers at PREFECT_API_URL={url} ({type(problem).__name__}: {problem}); start it "
            "(`prefect server start`) or unset PREFECT_API_URL to use a temporary server"
        )


def _free_port() -> int:
    """A port on 127.0.0.1 that the kernel has just found free (another process may still take it: retried)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@functools.cache
def _server_class() -> type:
    from prefect.server.api.server import SubprocessASGIServer

    class WatchedServer(SubprocessASGIServer):
        """Prefect's ephemeral server, in its own session, watching the command through a pipe.

        It is registered as the ``SubprocessASGIServer()`` instance, so a Prefect client that falls back to the
        ephemeral server (a thread without the command's settings) finds this one running instead of starting
        another."""

        log: Any = None
        _pipe: int | None = None

        def _run_uvicorn_command(self) -> subprocess.Popen[Any]:
            import prefect
            from prefect.settings import get_current_settings

            read_end, self._pipe = os.pipe()  # both ends close-on-exec: only the server inherits the read end
            self.log = tempfile.TemporaryFile(prefix="dinoseg-prefect-server-")
            env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
                   "PREFECT__SERVER_FINAL": "1",
                   **get_current_settings().to_environment_variables(exclude_unset=True)}
            try:
                return subprocess.Popen(
                    [sys.executable, "-c", WATCHED_SERVER, str(read_end), "--app-dir",
                     str(prefect.__module_path__.parent), "--factory", "prefect.server.api.server:create_app",
                     "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "error", "--lifespan", "on"],
                    env=env, pass_fds=(read_end,), start_new_session=True, stdin=subprocess.DEVNULL,
                    stdout=self.log, stderr=subprocess.STDOUT,
                )
            finally:
                os.close(read_end)

        def start(self, timeout: int | None = None) -> None:
            import httpx

            if self.running:
                return
            deadline = time.monotonic() + (DEFAULT_STARTUP_TIMEOUT if timeout is None else timeout)
            problem = "no answer"
            for attempt in range(1, STARTUP_TRIES + 1):
                self.port = _free_port()
                self.server_process = self._run_uvicorn_command()
                self.running = True
                atexit.register(self.stop)
                with httpx.Client(timeout=5.0) as client:
                    while time.monotonic() < deadline:
                        if self.server_process.poll() is not None:
                            problem = f"the server exited with code {self.server_process.returncode}: {self.tail()}"
                            break
                        try:
                            if client.get(f"{self.api_url}/health").status_code == 200:
                                return
                        except httpx.HTTPError:
                            pass
                        time.sleep(0.2)
                    else:
                        problem = f"no answer on port {self.port}"
                self.stop(unregister=False)
                if time.monotonic() >= deadline:
                    break
            raise RuntimeError(f"{problem} (after {attempt} tries)")

        def tail(self, limit: int = 300) -> str:
            """The end of the server's output (why it exited)."""
            if self.log is None:
                return ""
            self.log.seek(0)
            text = self.log.read().decode(errors="replace").strip()
            return " ".join(text[-limit:].split()) or "no output"

        def stop(self, unregister: bool = True) -> None:
            process, self.server_process = self.server_process, None
            if self._pipe is not None:
                os.close(self._pipe)  # EOF for the server's watch thread, in case the signals below go astray
                self._pipe = None
            if process is not None:
                _stop_group(process)
            if self.log is not None:
                self.log.close()
                self.log = None
            self.running = False
            if unregister and self._instances.get(self._instance_key) is self:
                del self._instances[self._instance_key]

    return WatchedServer


def _stop_group(process: subprocess.Popen[Any]) -> None:
    """SIGTERM to the process's group (it leads one), then SIGKILL after :data:`STOP_GRACE` seconds."""
    for sig, wait in ((signal.SIGTERM, STOP_GRACE), (signal.SIGKILL, None)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
        try:
            process.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    try:  # whatever the server started itself, should it outlive the server
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


@contextmanager
def _temporary_server() -> Iterator[str]:
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings

    timeout = PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()
    if STARTUP_TIMEOUT not in os.environ:
        timeout = max(timeout, DEFAULT_STARTUP_TIMEOUT)
    existing = SubprocessASGIServer._instances.get(None)
    if existing is not None and not existing.running:
        del SubprocessASGIServer._instances[None]
    server = _server_class()()  # the instance Prefect's own clients fall back to: no second server
    try:
        try:
            server.start(timeout=timeout)
        except Exception as exc:  # a time-out, or the server process failing in any other way
            reason = str(exc).strip().rstrip(".")
            raise PrefectUnavailable(
                f"the temporary Prefect server did not come up within {timeout} s ({reason}); set PREFECT_API_URL to "
                f"a running server (`prefect server start`) or raise {STARTUP_TIMEOUT}"
            ) from None
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            try:
                yield server.api_url
            except BaseException:
                _drain(timeout=2.0)  # stopping (Ctrl-C, an error): what is sent in 2 s, not more
                raise
            _drain(timeout=10.0)
    finally:
        server.stop()


def _drain(timeout: float) -> None:
    """Send the logs and events still queued before the server goes away: else Prefect's exit handlers retry
    them against the stopped server, for 10-15 s."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        worker.drain_all(timeout=timeout, at_exit=False)


@contextmanager
def prefect_api() -> Iterator[str]:
    """Flows called in the ``with`` block report to the server at PREFECT_API_URL, or else to a temporary server
    started now and stopped at the end of the block, however the block ends. Yields the API URL."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if url:
        _check_server(url)
        yield url
    else:
        with _temporary_server() as url:
            yield url


def run_flow(module: str, name: str, **parameters: Any) -> Any:
    """Run the flow ``name`` of ``module`` (imported only now: it brings torch) with ``parameters``; its result,
    or the error the flow ended with (a :class:`DinosegError` names the input and the fix)."""
    with prefect_api():
        flow = getattr(importlib.import_module(module), name)
        state = flow(**parameters, return_state=True)
        result = state.result(raise_on_failure=False)
    if isinstance(result, (DinosegError, OSError)):  # an input refused, storage unusable (named), disk full
        raise result
    if isinstance(result, Exception) and not type(result).__module__.startswith("prefect"):
        raise result  # a crash: exit code 3 and its message (a parameter Prefect refused is a usage error, below)
    if not isinstance(result, dict):  # the flow failed otherwise (a parameter Prefect refused)
        raise DinosegError(state.message or str(result))
    return result


def report_labelling(summary: dict[str, Any], archive: str, extra: str = "") -> int:
    """Print a labelling flow's summary; 0 if every image was done, 1 if some failed."""
    print(
        f"labelled {summary['labelled']}, skipped {summary['skipped']}, failed {summary['failed']} "
        f"in {summary['seconds']:.1f} s ({summary['seconds_per_labelled_image']:.2f} s per labelled image); "
        f"{extra}archive: {archive}",
        file=sys.stderr,
    )
    for failure in summary["failures"]:
        print(f"  failed: {failure['uri']}: {failure['reason']}", file=sys.stderr)
    return EXIT_PARTIAL if summary["failed"] else EXIT_OK
