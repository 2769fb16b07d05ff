"""What every reliability test checks, written once: the archive is sound (every record points at a complete
version whose sha256 matches), no process of a command outlives it, and commands run as a user runs them (a real
process in a process group of its own, as a terminal starts it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------------ the archive
def verify_archive(url: str, storage_options: dict[str, Any] | None = None) -> dict[str, str]:
    """Check every published record of the archive at ``url``: its version group exists, the mask has the
    record's shape and its sha256 equals the record's ``mask_sha256``. Returns ``{"concept/source file name":
    mask_sha256}`` (for comparing runs). Raises AssertionError naming the first torn record."""
    from dinoseg_core.io.archive import MaskArchive

    archive = MaskArchive.open(url, storage_options, mode="r")
    found = {}
    for concept in archive.list_concepts():
        for key, record in archive.records(concept).items():
            try:
                stored = archive.load(concept, key, attempts=1)  # checks shape and sha256 against the record
            except Exception as exc:  # noqa: BLE001 - any failure is a torn record
                raise AssertionError(f"torn record {concept}/{key}: {type(exc).__name__}: {exc}") from None
            assert stored.record["version"] == record["version"], f"{concept}/{key}: the record changed"
            name = f"{concept}/{record['source_uri'].rstrip('/').rsplit('/', 1)[-1]}"
            assert name not in found, f"two records for {name}"
            found[name] = record["mask_sha256"]
    return found


def unpublished_versions(url: str) -> int:
    """Version groups of a local archive that no record points at (left by an interrupted write)."""
    import json

    count = 0
    for record_file in Path(url, "masks").glob("*/*/zarr.json"):
        current = json.loads(record_file.read_text()).get("attributes", {}).get("version")
        count += sum(1 for version in record_file.parent.iterdir() if version.is_dir() and version.name != current)
    return count


# ---------------------------------------------------------------------------------------------- processes
def _stat(pid: int) -> tuple[int, int, str] | None:
    """(parent pid, process group, state) of ``pid`` from /proc, None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    fields = text[text.rindex(")") + 2:].split()
    return int(fields[1]), int(fields[2]), fields[0]


def alive(pids: set[int]) -> set[int]:
    """Those of ``pids`` still running (zombies count as gone: they hold no resources but their exit code)."""
    return {pid for pid in pids if (stat := _stat(pid)) is not None and stat[2] != "Z"}


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` now (children, their children, ...)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := _stat(int(entry))) is not None:
            parents.setdefault(stat[0], []).append(int(entry))
    out, todo = set(), [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def wait_gone(pids: set[int], timeout: float) -> set[int]:
    """Wait up to ``timeout`` s for ``pids`` to end; those still alive then (orphans)."""
    deadline = time.monotonic() + timeout
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    return alive(pids)


# ----------------------------------------------------------------------------------------------- commands
def command_env(api_url: str | None, prefect_home: str | None = None, **extra: str) -> dict[str, str]:
    """The environment of a command: this one without Prefect settings, then the server at ``api_url`` (None: the
    command starts a temporary server) and a Prefect home of its own unless one is given."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=prefect_home or tempfile.mkdtemp(prefix="prefect-home-"),
               PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_LOGGING_LEVEL="WARNING", OMP_NUM_THREADS="1")
    if api_url:
        env["PREFECT_API_URL"] = api_url
    env.update(extra)
    return env


class Command:
    """``dinoseg ARGS`` as a terminal runs it: a process group of its own (Ctrl-C goes to the whole group)."""

    def __init__(self, *args: str, env: dict[str, str]):
        self.args = args
        self.log = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen([sys.executable, "-m", "dinoseg", *args], cwd=ROOT, env=env,
                                        stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.started = time.monotonic()
        self.tree: set[int] = set()  # every process it started, as last seen (see watch())

    @property
    def pid(self) -> int:
        return self.process.pid

    def watch(self) -> None:
        """Remember the processes the command has started so far (a temporary server...)."""
        self.tree |= descendants(self.pid)

    def wait_until(self, condition, timeout: float, what: str) -> None:
        """Poll ``condition()`` (and the command's process tree) until true; fail naming ``what`` otherwise."""
        deadline = time.monotonic() + timeout
        while not condition():
            self.watch()
            if self.process.poll() is not None:
                raise AssertionError(f"the command ended ({self.process.returncode}) before {what}:\n{self.output()}")
            if time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"no {what} within {timeout} s:\n{self.output()}")
            time.sleep(0.1)
        self.watch()

    def signal_group(self, signum: int) -> float:
        """Send ``signum`` to the command's process group (a terminal's Ctrl-C is SIGINT to the group); the
        monotonic time it was sent."""
        self.watch()
        os.killpg(self.pid, signum)
        return time.monotonic()

    def finish(self, timeout: float) -> int:
        """The exit code (``128 + n`` for a death by signal n, as a shell reports it); kills it after
        ``timeout`` s (then fails)."""
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"still running {timeout} s later:\n{self.output()}") from None
        return 128 - code if code < 0 else code

    def kill(self) -> None:
        for pid in alive(self.tree | {self.pid}):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait()

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read()
