"""Stopping on Ctrl-C (SIGINT) and SIGTERM: at once where nothing is lost by it, at the next safe point where
stopping mid-way would lose work.

The command line calls :func:`install` once: from then on the first SIGINT or SIGTERM raises :class:`Stopped` in
the main thread (a ``KeyboardInterrupt``: Prefect's engines record a crash and let it through). Labelling may stop
anywhere, because a mask is published by one atomic record write: an interrupted write leaves an unpublished
version, never a torn record, and a re-run skips what was published.

Loops that would lose work (training between checkpoints) run under :func:`safe_points`: there the first signal
only records the request, the loop checks :func:`requested` after each step, saves, and raises :class:`Stopped`
itself. A second signal inside :func:`safe_points` stops at once.

After the first signal, a repeat of it (Prefect re-sends SIGTERM to its own process when its flow engine
unwinds) is ignored for :data:`FORCE_AFTER` seconds, so that the command can stop its temporary server and
report; one after that ends the process at once (``os._exit``), since nothing it would still do is needed.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["FORCE_AFTER", "Stopped", "exit_code", "install", "requested", "safe_points"]

#: Seconds after the first signal from which a repeated signal ends the process at once.
FORCE_AFTER = 3.0
SIGNALS = (signal.SIGINT, signal.SIGTERM)

_requested: int | None = None
_first_at = 0.0
_deferring = 0


class Stopped(KeyboardInterrupt):
    """Work stopped on a signal; :attr:`signum` is the signal (the exit code is 128 + signum)."""

    def __init__(self, signum: int, detail: str = ""):
        super().__init__(f"stopped by {signal.Signals(signum).name}" + (f": {detail}" if detail else ""))
        self.signum = signum


def exit_code(signum: int) -> int:
    """The shell's code for a process ended by ``signum``: 130 for SIGINT, 143 for SIGTERM."""
    return 128 + int(signum)


def requested() -> int | None:
    """The signal that asked this process to stop, or None."""
    return _requested


def _handler(signum: int, frame: object) -> None:
    global _requested, _first_at
    if _requested is None:
        _requested, _first_at = signum, time.monotonic()
        if _deferring:
            return  # the loop stops at its next safe point
        raise Stopped(signum)
    if _deferring:
        raise Stopped(_requested, "a second signal: stopped at once")
    if time.monotonic() - _first_at >= FORCE_AFTER:
        sys.stderr.flush()
        os._exit(exit_code(_requested))


def install() -> None:
    """Route SIGINT and SIGTERM to :class:`Stopped` (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is threading.main_thread():
        for signum in SIGNALS:
            signal.signal(signum, _handler)


@contextmanager
def safe_points() -> Iterator[None]:
    """Inside the block (main thread), the first SIGINT/SIGTERM only sets :func:`requested`: the code checks it at
    points where it can stop without loss. Other threads: the handlers of the main thread apply unchanged."""
    global _deferring
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, _handler) for signum in SIGNALS}
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
        for signum, handler in previous.items():
            signal.signal(signum, handler)
