"""Where a command's flow runs report: the Prefect server at ``PREFECT_API_URL`` when one is set, else a temporary
server started once for the command (Prefect's ephemeral mode, started here so that a failure is one line).

Commands call :func:`run_flow` only after every argument has been checked: a bad argument never starts a server.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from dinoseg.cli.options import EXIT_OK, EXIT_PARTIAL
from dinoseg_core.errors import DinosegError

STARTUP_TIMEOUT = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
#: Seconds a temporary server gets unless STARTUP_TIMEOUT is set: a fresh database's migrations take 10-13 s on
#: a quiet machine, so Prefect's 20 s fails on a busy one.
DEFAULT_STARTUP_TIMEOUT = 60


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


@contextmanager
def _temporary_server() -> Iterator[str]:
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings

    timeout = PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value()
    if STARTUP_TIMEOUT not in os.environ:
        timeout = max(timeout, DEFAULT_STARTUP_TIMEOUT)
    server = SubprocessASGIServer()  # the instance Prefect's own clients fall back to: no second server
    try:
        try:
            server.start(timeout=timeout)
        except Exception as exc:  # a time-out (RuntimeError), or the server process failing in any other way
            reason = str(exc).split(". ")[0].strip().rstrip(".")
            raise PrefectUnavailable(
                f"the temporary Prefect server did not come up within {timeout} s ({reason}); set PREFECT_API_URL to "
                f"a running server (`prefect server start`) or raise {STARTUP_TIMEOUT}"
            ) from None
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            yield server.api_url
            _drain()
    finally:
        server.stop()


def _drain() -> None:
    """Send the logs and events still queued before the server goes away (else they fail at exit)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        worker.drain_all(timeout=10, at_exit=False)


@contextmanager
def prefect_api() -> Iterator[str]:
    """Flows called in the ``with`` block report to the server at PREFECT_API_URL, or else to a temporary server
    started now and stopped at the end of the block. Yields the API URL."""
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
    or a :class:`DinosegError` with the flow's failure message."""
    with prefect_api():
        flow = getattr(importlib.import_module(module), name)
        state = flow(**parameters, return_state=True)
        result = state.result(raise_on_failure=False)
    if isinstance(result, DinosegError):  # the flow refused an input: its message names it and the fix
        raise result
    if not isinstance(result, dict):  # the flow failed otherwise (a parameter Prefect refused, a crash)
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
