"""Interrupting real commands (issue 10 item 6, issue 14 item 3): Ctrl-C (SIGINT to the process group, as a
terminal sends it), SIGTERM and kill -9 at random points. Each stops within seconds with its exit code (130, 143;
137 for kill -9), leaves every archive record sound, leaves no process behind (the temporary Prefect server
included), and the next run resumes: the masks end equal to an uninterrupted run's."""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import pytest

from dinoseg.cli import main
from tests.pipeline_data import write_collection
from tests.reliability.conftest import label_args
from tests.reliability.helpers import Command, command_env, verify_archive, wait_gone

pytestmark = pytest.mark.integration

#: Tiles of this module's collection: enough that labelling outlasts three interruptions on a quiet machine too
#: (after Ctrl-C the batch under way may still finish while the command stops).
TILES = 32
#: Seconds a command may take to stop after SIGINT/SIGTERM (the issue's bound).
STOP_WITHIN = 10.0
#: Seconds the temporary server may outlive a command killed with -9 (its watchdog: SIGTERM, SIGKILL 5 s later).
ORPHAN_WITHIN = 10.0


def published(archive: str) -> int:
    """Masks published in a local archive (records that name a version)."""
    count = 0
    for record in Path(archive, "masks").glob("*/*/zarr.json"):
        try:
            count += "version" in json.loads(record.read_text()).get("attributes", {})
        except (ValueError, OSError):  # being replaced right now
            pass
    return count



@pytest.fixture(scope="module")
def big_lake(tmp_path_factory):
    root = tmp_path_factory.mktemp("big-lake")
    write_collection(str(root), tiles=TILES, size=64, concepts=("roof",))
    return root


@pytest.fixture(scope="module")
def big_clean(api_url, big_lake, tmp_path_factory):
    archive = str(tmp_path_factory.mktemp("big-clean") / "a.zarr")
    assert main(label_args(big_lake, archive)) == 0
    return verify_archive(archive)


def interrupt(args, env, signum, archive, rng, timeout=240.0):
    """Start the command, wait for one more published mask, wait a random moment, send ``signum`` to its
    process group; (exit code, seconds to stop, processes it left)."""
    before = published(archive)
    command = Command(*args, env=env)
    command.wait_until(lambda: published(archive) > before, timeout, "new mask")
    time.sleep(rng.uniform(0.0, 0.3))  # a random point while the next tiles are read, labelled, written
    sent = command.signal_group(signum)
    code = command.finish(timeout=60)
    stopped = time.monotonic() - sent
    orphans = wait_gone(command.tree, ORPHAN_WITHIN)
    return code, stopped, orphans, command


def test_ctrl_c_sigterm_and_kill_9_then_a_rerun_equals_an_uninterrupted_run(api_url, prefect_home, big_lake,
                                                                             big_clean, tmp_path, capsys):
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    archive = str(tmp_path / "a.zarr")
    args = label_args(big_lake, archive)
    temporary = command_env(None, prefect_home)  # each command starts (and must stop) its own server
    running = command_env(api_url)
    timings = {}
    for name, env, signum, code in [("SIGINT", temporary, signal.SIGINT, 130),
                                    ("SIGTERM", running, signal.SIGTERM, 143),
                                    ("SIGKILL", temporary, signal.SIGKILL, 137)]:
        got, seconds, orphans, command = interrupt(args, env, signum, archive, rng)
        out = command.output()
        assert got == code, f"{name} (seed {seed}): exit {got}, not {code}:\n{out}"
        assert not orphans, f"{name} (seed {seed}): processes left behind: {orphans}"
        if env is temporary:
            assert command.tree, "the temporary server was never seen: the orphan check checked nothing"
        if signum != signal.SIGKILL:
            assert seconds < STOP_WITHIN, f"{name}: {seconds:.1f} s to stop"
            assert f"stopped by {name}; run the same command again to resume" in out, out
            assert "Traceback" not in out, out
        timings[name] = round(seconds, 2)
        verify_archive(archive)  # every published record sound after each interruption
    done = published(archive)
    assert 0 < done < TILES, f"the interruptions left {done} of {TILES} masks: the test interrupted nothing"

    assert main(args) == 0  # the re-run, in this process (its Prefect server is the harness)
    assert f"labelled {TILES - done}, skipped {done}, failed 0" in capsys.readouterr().err
    assert verify_archive(archive) == big_clean
    print(f"stop seconds after the signal: {timings} (seed {seed})")


# --------------------------------------------------------------------------------------------- train-ovss
@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from tests.ovseg_factory import write_shapes_folder

    return write_shapes_folder(str(tmp_path_factory.mktemp("shapes")), n=4, size=64)


def train_args(dataset: str, checkpoint: str) -> list[str]:
    return ["train-ovss", "--dataset", dataset, "--classes", "grass,red,blue,yellow", "--dinotxt", "random:tiny@0",
            "--checkpoint", checkpoint, "--steps", "100000", "--checkpoint-every", "2",
            "--device", "cpu", "--batch-size", "1", "--short-side", "64", "--crop", "64", "--templates", "a {}.",
            "--head-hidden", "16", "--head-early-blocks", "0", "--head-class-heads", "2",
            "--head-decoder-channels", "8"]


def test_ctrl_c_and_sigterm_stop_training_after_a_checkpoint_that_the_next_run_resumes(api_url, shapes, tmp_path):
    from dinoseg_core.io.heads import read_head_checkpoint

    checkpoint = str(tmp_path / "head.safetensors")
    env = command_env(api_url)
    steps = []
    for name, signum, code in [("SIGINT", signal.SIGINT, 130), ("SIGTERM", signal.SIGTERM, 143)]:
        before = os.stat(checkpoint).st_mtime_ns if os.path.exists(checkpoint) else None
        command = Command(*train_args(shapes, checkpoint), env=env)
        command.wait_until(lambda: os.path.exists(checkpoint) and os.stat(checkpoint).st_mtime_ns != before, 240,
                           "checkpoint (every 2 steps)")
        time.sleep(0.3)  # between checkpoints
        sent = command.signal_group(signum)
        got = command.finish(timeout=60)
        seconds = time.monotonic() - sent
        out = command.output()
        assert got == code and seconds < STOP_WITHIN, f"{name}: exit {got} after {seconds:.1f} s:\n{out}"
        assert f"stopped by {name}: training stopped after step" in out and "resumable from" in out, out
        assert not wait_gone(command.tree, ORPHAN_WITHIN)
        steps.append(read_head_checkpoint(checkpoint)[1]["step"])
    assert steps[0] >= 2 and steps[1] > steps[0], steps  # the second run resumed from the first's checkpoint  # the second run resumed from the first's checkpoint
