"""What interrupting `dinoseg label` costs: kill -9 at random moments, then a re-run; Ctrl-C and SIGTERM.

    python bench/interrupts.py [--kills 6] [--signals 2] [--tiles 16] [--repo PATH]

Each command is a real process in a process group of its own (as a terminal starts it) with a temporary Prefect
server of its own (no ``PREFECT_API_URL``; one Prefect home, migrated by a first clean run). Measured:

- kill -9 of the command, ``--kills`` times on one archive: every other kill at a moment drawn uniformly over a
  run's start-up (server, imports, model, listing, up to the first mask), the others 0-0.5 s after a new mask
  (while masks are written); after each: torn records (a record whose version is
  missing or whose mask's sha256 differs), unpublished versions, and processes of the command still alive 10 s
  later (orphans: the temporary server); then a re-run, whose masks are compared with the clean run's;
- Ctrl-C (SIGINT to the process group) and SIGTERM (to the command) once the first mask is written: exit code,
  seconds from the signal to the exit, orphans.

``--repo`` runs the commands from another checkout (e.g. ``git worktree add /tmp/old <commit>``) to measure the
code before a change. Prints Markdown tables and the load average.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.pipeline_data import write_collection  # noqa: E402
from tests.reliability import helpers  # noqa: E402
from tests.reliability.helpers import Command, command_env, unpublished_versions, verify_archive, wait_gone  # noqa: E402


def label_args(root: str, archive: str) -> list[str]:
    return ["label", "--references", f"{root}/refs.yaml", "--images", f"{root}/tiles/", "--archive", archive,
            "--backbone", "random:tiny@0", "--device", "cpu", "--workers", "1", "--batch-size", "1", "--tau", "0.9",
            "--cache", f"{root}/cache"]


def published(archive: str) -> int:
    return sum(1 for _ in Path(archive, "masks").glob("*/*/v*"))


def torn(archive: str) -> int:
    if not Path(archive).exists():  # killed before it created the archive
        return 0
    try:
        verify_archive(archive)
    except AssertionError as exc:
        print(f"  torn: {exc}", file=sys.stderr)
        return 1
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=6)
    parser.add_argument("--signals", type=int, default=2, help="Ctrl-C and SIGTERM runs of each")
    parser.add_argument("--tiles", type=int, default=24)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--repo", default=None, help="run the commands from this checkout")
    args = parser.parse_args()
    if args.repo:
        helpers.ROOT = Path(args.repo).resolve()
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    work = Path(tempfile.mkdtemp(prefix="dinoseg-interrupts-"))
    root = str(work / "lake")
    write_collection(root, tiles=args.tiles, size=64, concepts=("roof",))
    env = command_env(None, str(work / "prefect-home"))
    load = [os.getloadavg()]

    clean_archive = str(work / "clean.zarr")
    command = Command(*label_args(root, clean_archive), env=env)  # also migrates the Prefect home's database
    assert command.finish(timeout=900) == 0, command.output()
    clean = verify_archive(clean_archive)
    warm = str(work / "warm.zarr")  # a second run: how long start-up takes with the database in place
    command = Command(*label_args(root, warm), env=env)
    command.wait_until(lambda: published(warm) > 0, 900, "first mask")
    first_mask = time.monotonic() - command.started
    assert command.finish(timeout=900) == 0, command.output()
    clean_seconds = time.monotonic() - command.started
    print(f"warm run: {clean_seconds:.1f} s, first mask at {first_mask:.1f} s, {len(clean)} masks (seed {seed})",
          file=sys.stderr)

    archive = str(work / "killed.zarr")
    kills = orphans = torn_records = 0
    for index in range(args.kills):
        command = Command(*label_args(root, archive), env=env)
        if index % 2 == 0:  # anywhere in start-up: server, imports, model, listing, first batch
            moment = rng.uniform(0.0, first_mask)
            while time.monotonic() - command.started < moment and command.process.poll() is None:
                command.watch()
                time.sleep(0.05)
            where = f"at {moment:.1f} s"
        else:  # while masks are being written
            before = published(archive)
            command.wait_until(lambda: published(archive) > before or command.process.poll() is not None, 900,
                               "a new mask")
            time.sleep(rng.uniform(0.0, 0.5))
            where = f"{time.monotonic() - command.started:.1f} s, after mask {published(archive)}"
        if command.process.poll() is not None:
            print(f"  kill {index + 1}: the run ended first", file=sys.stderr)
            continue
        command.watch()
        os.kill(command.pid, signal.SIGKILL)
        command.finish(timeout=60)
        kills += 1
        left = wait_gone(command.tree, 10.0)
        orphans += len(left)
        torn_records += torn(archive)
        print(f"  kill {index + 1} {where}: {len(command.tree)} child process(es), {len(left)} alive 10 s later",
              file=sys.stderr)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
    unpublished = unpublished_versions(archive)
    command = Command(*label_args(root, archive), env=env)
    rerun = command.finish(timeout=600)
    equal = verify_archive(archive) == clean

    stops: dict[str, list[float]] = {"SIGINT": [], "SIGTERM": []}
    codes: dict[str, set[int]] = {"SIGINT": set(), "SIGTERM": set()}
    signal_orphans = {"SIGINT": 0, "SIGTERM": 0}
    for _ in range(args.signals):
        for name, signum in (("SIGINT", signal.SIGINT), ("SIGTERM", signal.SIGTERM)):
            target = str(work / f"signal-{name}-{len(stops[name])}.zarr")
            command = Command(*label_args(root, target), env=env)
            command.wait_until(lambda: published(target) > 0, 900, "first mask")
            sent = command.signal_group(signum) if signum == signal.SIGINT else time.monotonic()
            if signum == signal.SIGTERM:
                os.kill(command.pid, signum)
            codes[name].add(command.finish(timeout=120))
            stops[name].append(time.monotonic() - sent)
            signal_orphans[name] += len(wait_gone(command.tree, 10.0))
            torn_records += torn(target)
    load.append(os.getloadavg())

    print(f"\n{args.tiles} tiles of 64 px, random:tiny, one concept, a temporary Prefect server per command; "
          f"a run {clean_seconds:.1f} s; seed {seed}; load average {load[0][0]:.1f} -> {load[1][0]:.1f}\n")
    print("| kill -9 at random moments | torn records | orphaned processes | unpublished versions | re-run | "
          "masks equal to a clean run |")
    print("|---|---|---|---|---|---|")
    print(f"| {kills} | {torn_records} | {orphans} | {unpublished} | exit {rerun} | "
          f"{'yes' if equal else 'NO'} ({len(clean)} masks) |")
    print("\n| signal | runs | exit code | seconds to stop (median, max) | orphaned processes |")
    print("|---|---|---|---|---|")
    for name in stops if args.signals else ():
        print(f"| {name} | {len(stops[name])} | {sorted(codes[name])} | {statistics.median(stops[name]):.2f}, "
              f"{max(stops[name]):.2f} | {signal_orphans[name]} |")


if __name__ == "__main__":
    main()
