"""The ``dinoseg`` command line: one parser, one module per group of commands.

- :mod:`dinoseg.cli.segment`: ``segment``, ``basis``, ``correspond``: the method on images, no Prefect;
- :mod:`dinoseg.cli.label`: ``label`` (the ``label_collection`` flow), ``preview``, ``export``;
- :mod:`dinoseg.cli.text`: ``label-text``, ``train-ovss``, ``eval-ovss`` (the :mod:`flows.text` flows);
- :mod:`dinoseg.cli.quality`: ``evaluate``, ``calibrate`` (the :mod:`flows.evaluation` flows);
- :mod:`dinoseg.cli.serve`: ``serve``: the labelling flows served from this process (no work pool).

Options are generated from the configs (:mod:`dinoseg_core.config`, :mod:`dinoseg_core.ovseg.config`) and from
:class:`tasks.options.RunOptions`, so every default is written once. Building the parser imports neither torch nor
Prefect (``--help`` answers at once); a command imports them in its handler, after its arguments are checked, and
the flow commands start a Prefect server only then (:mod:`dinoseg.cli.prefect_api`).

Exit codes, for every command: 0 done; 1 some items failed (the others were written); 2 a bad argument, input or
configuration (a one-line error, nothing done); 3 infrastructure: the Prefect server did not start or answer,
storage unreachable after retries or full, or an internal error; 130 stopped by Ctrl-C (SIGINT), 143 by SIGTERM,
after stopping cleanly (:mod:`dinoseg_core.stop`): a re-run resumes.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import traceback
from collections.abc import Sequence
from typing import NoReturn

from dinoseg.cli import label, quality, segment, serve, text
from dinoseg.cli.options import EXIT_INFRA, EXIT_USAGE, Parser
from dinoseg.cli.prefect_api import PrefectUnavailable
from dinoseg_core import stop
from dinoseg_core.errors import DinosegError, StorageError

__all__ = ["build_parser", "exit_code", "main"]

DESCRIPTION = (
    "In-context (INSID3) and open-vocabulary segmentation with a frozen DINOv3 backbone: segment images directly "
    "(segment, basis, correspond), or label collections of tiles and GeoTIFF scenes into a Zarr mask archive "
    "through Prefect flows (label, label-text, train-ovss, eval-ovss) and inspect it (preview, export)."
)


def build_parser() -> Parser:
    parser = Parser(prog="dinoseg", description=DESCRIPTION)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (segment, label, text, quality, serve):
        group.add_commands(commands)
    return parser


class _Terminal(logging.Filter):
    """What the terminal shows of the records that reach it (Prefect's propagate here; its server log keeps them
    all): an error the command reports itself (a DinosegError: one line, its exit code) is not printed again with
    Prefect's traceback, a warning about one (a retry) loses its traceback, a run's "Finished in state" lines are
    left to the command's own summary, and Prefect's INFO lines show only when PREFECT_LOGGING_LEVEL asks. ``-v``
    shows everything."""

    def __init__(self, prefect_info: bool):
        super().__init__()
        self.prefect_info = prefect_info

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name.startswith("prefect"):
            if record.levelno < logging.WARNING and not self.prefect_info:
                return False
            if record.name in ("prefect.flow_runs", "prefect.task_runs") and str(record.msg).startswith(
                    "Finished in state"):
                return False
        if record.exc_info and isinstance(record.exc_info[1], DinosegError):
            if record.levelno >= logging.ERROR:
                return False
            record.exc_info, record.exc_text = None, None
        return True


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit code."""
    # Prefect's telemetry heartbeat locks a temporary server's SQLite database ("database is locked")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    args = build_parser().parse_args(argv)
    if "PREFECT_LOGGING_LEVEL" not in os.environ and args.command != "serve":
        # Prefect's INFO lines (a "Finished in state Completed()" per task) would bury the progress bar: the terminal
        # shows Prefect's warnings only, unless PREFECT_LOGGING_LEVEL is set; the server still gets every line
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
    level = logging.DEBUG if args.verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:
        terminal = _Terminal(prefect_info="PREFECT_LOGGING_LEVEL" in os.environ or args.command == "serve")
        for handler in logging.getLogger().handlers:
            handler.addFilter(terminal)
    for name in ("dinoseg", "dinoseg_core"):  # our progress at INFO; libraries (httpx, botocore...) only warn
        logging.getLogger(name).setLevel(logging.DEBUG if args.verbose else logging.INFO)
    stop.install()  # Ctrl-C and SIGTERM raise Stopped (training saves first); handled below
    try:
        return args.handler(args)
    except BaseException as exc:  # noqa: BLE001 - every way out gets its exit code and one line
        code = exit_code(exc)
        if code is None:
            raise
        print(f"dinoseg: {_describe(exc, code)}", file=sys.stderr)
        if code == EXIT_INFRA and not isinstance(exc, DinosegError) and args.verbose:
            traceback.print_exception(exc)
        if code > 128:
            _exit_now(code)
        return code


def exit_code(exc: BaseException) -> int | None:
    """The exit code for a command that ended with ``exc`` (None: let it through, e.g. ``SystemExit``)."""
    signum = getattr(exc, "signum", None) or getattr(exc, "signal", None)  # Stopped, Prefect's TerminationSignal
    if isinstance(signum, int) and isinstance(exc, BaseException) and not isinstance(exc, Exception):
        return stop.exit_code(signum)
    if isinstance(exc, KeyboardInterrupt):
        return stop.exit_code(signal.SIGINT)
    if not isinstance(exc, Exception):
        return None
    if isinstance(exc, PrefectUnavailable):
        return EXIT_INFRA
    if isinstance(exc, StorageError):
        from dinoseg_core.io.storage import failure_kind

        return EXIT_USAGE if failure_kind(exc) == "permanent" else EXIT_INFRA  # not found, denied: the arguments
    if isinstance(exc, DinosegError):
        return EXIT_USAGE
    return EXIT_INFRA  # out of memory, no space (OSError), a connection, a bug: not the inputs' fault


def _describe(exc: BaseException, code: int) -> str:
    if code > 128:
        said = str(exc) if isinstance(exc, stop.Stopped) else f"stopped by {signal.Signals(code - 128).name}"
        return f"{said}; run the same command again to resume"
    if isinstance(exc, DinosegError):
        return f"error: {exc}"
    return f"error: {type(exc).__name__}: {exc} (exit code 3; -v prints the traceback)"


def _exit_now(code: int) -> NoReturn:
    """End the process with ``code`` at once, once stopped by a signal: the work has stopped and the temporary
    server is down, and what is left (threads mid-batch, interpreter clean-up: 8-12 s measured on a busy machine)
    is not needed: a mask being written when the signal came is unpublished (records are written atomically) and
    a re-run redoes it."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
