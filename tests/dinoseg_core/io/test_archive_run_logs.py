"""Run logs come back oldest first, whichever key the writer used for its start (the flows write ``started``)."""

from dinoseg_core.io.archive import MaskArchive


def test_run_logs_are_oldest_first_by_their_start(tmp_path):
    archive = MaskArchive.open(str(tmp_path / "a.zarr"), mode="a")
    # run ids in the opposite order of the runs
    archive.write_run_log("b-run", {"started": "2026-12-01T10:00:00+00:00", "labelled": 1})
    archive.write_run_log("a-run", {"started": "2026-12-01T11:00:00+00:00", "labelled": 2})
    archive.write_run_log("c-run", {"start": "2026-12-01T09:00:00+00:00", "labelled": 0})
    assert [log["run_id"] for log in archive.run_logs()] == ["c-run", "b-run", "a-run"]
    assert archive.run_logs()[-1]["labelled"] == 2  # "the run log of the last run" (docs/archive.md)
