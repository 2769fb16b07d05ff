"""A full disk, end to end through `dinoseg label` (issue 10, item 8): the run stops at once with exit code 3 and
says what was and was not written; what was published is sound; once there is room, the same command finishes
the rest. The full disk is a filesystem with a byte quota (``quota://``, tests/quota_fs.py: ENOSPC
as a full disk raises it, no root or mount needed)."""

from __future__ import annotations

import pytest

from dinoseg.cli import main
from dinoseg_core.io.archive import MaskArchive
from tests.quota_fs import QuotaFileSystem
from tests.reliability.conftest import TILES, label_args
from tests.reliability.helpers import verify_archive

pytestmark = pytest.mark.integration



def test_a_full_disk_stops_the_run_with_exit_3_naming_what_was_not_written_and_a_rerun_finishes(
        api_url, lake, clean, capsys):
    QuotaFileSystem.reset()
    archive = "quota://full/a.zarr"
    MaskArchive.open(archive, mode="a")
    QuotaFileSystem.limit(6000)  # room for a few masks of 64 x 64
    code = main(label_args(lake, archive))
    err = capsys.readouterr().err
    assert code == 3, err
    assert "No space left on device" in err or "full" in err.lower(), err
    assert "not written" in err, err
    partial = verify_archive(archive)
    assert len(partial) < TILES and all(clean[name] == sha for name, sha in partial.items())

    QuotaFileSystem.limit(1 << 30)  # room again
    assert main(label_args(lake, archive)) == 0, capsys.readouterr().err
    assert f"skipped {len(partial)}" in capsys.readouterr().err
    assert verify_archive(archive) == clean
