"""Archive housekeeping: the vacuum_archive flow and `dinoseg vacuum` delete only old unpublished versions."""

import os

import numpy as np
import pytest

from dinoseg.cli import main as cli
from dinoseg_core.config import InsidConfig
from dinoseg_core.io.archive import MaskArchive
from flows.maintenance import vacuum_archive

ATTRS = dict(source_uri="s3://lake/tiles/a.png", source_sha256="src1", backbone="random:tiny",
             backbone_fingerprint="fp1", config=InsidConfig().to_dict(), reference_set_hash="refs1")


def archive_with_an_orphan(url: str, monkeypatch) -> tuple[MaskArchive, str]:
    """A published mask for key "k", plus a version a crashed writer left unpublished; returns its folder."""
    archive = MaskArchive.open(url, mode="a")
    published = archive.write_mask("roof", "k", np.ones((8, 8), bool), ATTRS)["version"]

    def crash(*args, **kwargs):
        raise RuntimeError("killed before publishing")

    with monkeypatch.context() as patch:
        patch.setattr(MaskArchive, "_publish", crash)
        with pytest.raises(RuntimeError):
            archive.write_mask("roof", "k", np.zeros((8, 8), bool), ATTRS)
    versions = sorted(os.listdir(os.path.join(url, "masks", "roof", "k")))
    orphan = next(v for v in versions if v.startswith("v") and v != published)
    return archive, os.path.join(url, "masks", "roof", "k", orphan)


def test_the_flow_spares_young_orphans_and_removes_old_ones(tmp_path, monkeypatch):
    url = str(tmp_path / "masks.zarr")
    archive, orphan = archive_with_an_orphan(url, monkeypatch)
    young = vacuum_archive(archive=url, older_than_hours=1.0)
    assert young == {"archive": url, "removed": 0} and os.path.exists(orphan)  # a writer may still publish it
    old = vacuum_archive(archive=url, older_than_hours=1e-9)
    assert old["removed"] == 1 and not os.path.exists(orphan)
    assert archive.load("roof", "k").mask.all()  # the published mask is untouched


def test_the_command(tmp_path, monkeypatch, capsys):
    url = str(tmp_path / "masks.zarr")
    _, orphan = archive_with_an_orphan(url, monkeypatch)
    assert cli(["vacuum", "--archive", url, "--older-than-hours", "0.0000001"]) == 0
    assert "removed 1 unpublished version(s)" in capsys.readouterr().err and not os.path.exists(orphan)
    with pytest.raises(SystemExit) as refused:  # argparse refuses it before anything is opened
        cli(["vacuum", "--archive", url, "--older-than-hours", "0"])
    assert refused.value.code == 2 and "above 0" in capsys.readouterr().err
    assert cli(["vacuum", "--archive", str(tmp_path / "none.zarr")]) == 2
