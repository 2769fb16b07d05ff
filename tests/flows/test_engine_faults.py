"""The labelling flow when storage fails for good: a full disk ends the run once, reported as such, with what was
and was not written, in the flow's error, the failures artifact and the CLI's output, even though the run log
cannot be written; a re-run that meets the same bad objects writes no new run log."""

from __future__ import annotations

import errno

import pytest

from dinoseg.cli import main as cli
from dinoseg_core.errors import OutOfSpaceError
from dinoseg_core.io import storage
from dinoseg_core.io.archive import MaskArchive
from flows.labelling import label_collection
from tests.pipeline_data import TINY, artifacts_of, write_collection
from tests.quota_fs import QuotaFileSystem


def _full_archive(url: str, room: int) -> None:
    """An archive at ``url`` (quota://) with ``room`` bytes left."""
    QuotaFileSystem.reset()
    MaskArchive.open(url, mode="a")
    QuotaFileSystem.limit(room)


@pytest.mark.integration
def test_a_full_disk_ends_the_run_once_naming_what_was_and_was_not_written(tmp_path, capsys):
    root = str(tmp_path / "c")
    urls = write_collection(root, tiles=6, size=64)
    archive = "quota://run/masks.zarr"
    _full_archive(archive, 2500)  # about one tile's two masks
    state = label_collection(references=f"{root}/refs.yaml", images=f"{root}/tiles/*.png", archive=archive,
                             backbone=TINY, run={"device": "cpu", "batch_size": 2, "workers": 1,
                                                 "cache": str(tmp_path / "cache")}, return_state=True)
    assert state.is_failed()
    error = state.result(raise_on_failure=False)
    assert isinstance(error, OutOfSpaceError) and error.errno == errno.ENOSPC
    message = str(error)
    assert message.startswith("the run stopped: ") and "No space left on device" in message
    assert message.count("the run stopped") == 1  # reported once, not once per image
    summary = error.summary
    assert summary["labelled"] + summary["failed"] == 6 and summary["failed"] >= 4
    assert summary["run_log"].startswith("not written")  # no room for it either
    unwritten = [f["uri"] for f in summary["failures"] if f["reason"].startswith("not written")]
    assert unwritten and all(f"not written: {uri}" in message for uri in unwritten)
    assert set(unwritten) <= set(urls)
    # the failures artifact lists them although the run log could not be written
    tables = [a for a in artifacts_of(state) if a["key"] and a["key"].endswith("-failures")]
    assert tables and all(uri in str(tables[0]["data"]) for uri in unwritten)

    # the command line: the same list, one reason, exit code 3 (infrastructure)
    _full_archive(archive, 2500)
    capsys.readouterr()
    code = cli(["label", "--references", f"{root}/refs.yaml", "--images", f"{root}/tiles/*.png",
                "--archive", archive, "--backbone", TINY, "--device", "cpu", "--batch-size", "2", "--workers", "1",
                "--cache", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == 3, err
    assert err.count("the run stopped") == 1 and "  not written: " in err and "Traceback" not in err


def test_a_rerun_that_meets_the_same_bad_objects_writes_no_new_run_log(tmp_path):
    root = str(tmp_path / "c")
    write_collection(root, tiles=2, size=64)
    storage.write_bytes(f"{root}/tiles/tile_bad.png", b"plain text, not a PNG")
    params = dict(references=f"{root}/refs.yaml", images=f"{root}/tiles/*.png", archive=str(tmp_path / "a.zarr"),
                  backbone=TINY, run={"device": "cpu", "cache": str(tmp_path / "cache")}, return_state=True)
    for _ in range(2):
        state = label_collection(**params)
        assert state.is_failed() and state.result(raise_on_failure=False)["failed"] == 1
    logs = MaskArchive.open(params["archive"], mode="r").run_logs()
    assert len(logs) == 1 and logs[0]["failures"][0]["uri"].endswith("tile_bad.png")
    storage.write_bytes(f"{root}/tiles/tile_bad2.png", b"")  # a new failure: a new log
    label_collection(**params)
    logs = MaskArchive.open(params["archive"], mode="r").run_logs()
    assert sorted(len(log["failures"]) for log in logs) == [1, 2]


@pytest.mark.integration
@pytest.mark.slow
def test_an_input_error_inside_the_flow_is_one_line_without_a_traceback(tmp_path):
    """``dinoseg label`` in its own process, on this session's Prefect server: a reference mask that marks nothing
    is refused inside the flow (exit 2), named by the mask file, and Prefect's traceback stays off the terminal."""
    import numpy as np
    from prefect.settings import PREFECT_API_URL

    from dinoseg_core.io import imageio
    from tests.dinoseg.subprocess_cli import dinoseg

    root = str(tmp_path / "c")
    write_collection(root, tiles=1, size=64)
    imageio.write_mask_png(f"{root}/refs/roof.png", np.zeros((64, 64), bool))
    code, err, _ = dinoseg("label", "--references", f"{root}/refs.yaml", "--images", f"{root}/tiles/*.png",
                           "--archive", str(tmp_path / "a.zarr"), "--backbone", TINY, "--device", "cpu",
                           env={"PREFECT_API_URL": PREFECT_API_URL.value(), "OMP_NUM_THREADS": "1"}, timeout=300)
    assert code == 2, err
    assert err[-1] == (f"dinoseg: error: mask '{root}/refs/roof.png' is empty (no pixel > 0): a reference mask must "
                       "mark at least one pixel of the concept")
    assert not any("Traceback" in line or "prefect" in line for line in err), err
