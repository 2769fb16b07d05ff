"""--radiometry through the labelling flow: a collection stretch is one for every scene of a run, reads the raster
references too, and is kept for the next runs of the archive; PNG references with 16-bit scenes draw a warning.
(A 16-bit scene under ``fixed:`` against the 8-bit one: tests/dinoseg_core/io/test_radiometry_iou.py.)"""

import logging

import numpy as np
import pytest
import yaml

from dinoseg_core.io.archive import MaskArchive
from dinoseg_core.synthetic import generate_scene
from flows.labelling import label_collection
from tests.dinoseg_core.geo_data import write_geotiff
from tests.pipeline_data import METHOD, write_collection

BACKBONE = "random:tiny@0"  # the plumbing is under test here, not mask quality
SCENE = {"overlap": 32}


def _write_scene(path, seed, dtype, offset=300.0, gain=6000.0):
    """An RGB scene of four generated 128 px tiles: 8-bit (value * 255) or 16-bit (offset + gain * value)."""
    tiles = [generate_scene(seed * 10 + k, 128) for k in range(4)]
    image = np.block([[tiles[0].image.transpose(2, 0, 1), tiles[1].image.transpose(2, 0, 1)],
                      [tiles[2].image.transpose(2, 0, 1), tiles[3].image.transpose(2, 0, 1)]])
    truth = np.block([[tiles[0].labels["roof"], tiles[1].labels["roof"]],
                      [tiles[2].labels["roof"], tiles[3].labels["roof"]]])
    data = (image * 255).round() if dtype == "uint8" else offset + gain * image
    write_geotiff(path, np.clip(data, 1, None).round().astype(dtype))  # never 0, the nodata value
    return truth


def _label(root, archive, images, radiometry=None, **scene):
    scene = {**SCENE, **scene, **({"radiometry": radiometry} if radiometry else {})}
    state = label_collection(references=f"{root}/refs.yaml", images=images, archive=str(archive), backbone=BACKBONE,
                             method=METHOD, scene=scene, run={"device": "cpu", "cache": str(root / "cache")},
                             return_state=True)
    assert state.is_completed(), state.message
    return state.result()


@pytest.mark.slow
def test_the_collection_stretch_is_one_for_every_scene_and_kept_for_later_runs(tmp_path, caplog):
    root = tmp_path / "lake"
    write_collection(str(root), tiles=0, size=128, concepts=("roof",))  # an 8-bit PNG reference
    mask = _write_scene(root / "refs" / "ref.tif", 1, "uint16")  # a raster reference: read with the same stretch
    write_geotiff(root / "refs" / "ref_roof.tif", mask.astype(np.uint8), nodata=None)
    (root / "refs.yaml").write_text(yaml.safe_dump({"version": 1, "config": METHOD, "concepts": {
        "roof": {"references": [{"image": "refs/ref.tif", "mask": "refs/ref_roof.tif"}]},
        "roof-png": {"references": [{"image": "refs/ref.png", "mask": "refs/roof.png"}]}}}))
    (root / "scenes").mkdir()
    _write_scene(root / "scenes" / "dark.tif", 2, "uint16", offset=200, gain=3000)
    _write_scene(root / "scenes" / "bright.tif", 3, "uint16", offset=2000, gain=6000)
    archive = tmp_path / "m.zarr"
    with caplog.at_level(logging.WARNING):
        first = _label(root, archive, f"{root}/scenes/*.tif", "collection-percentile")
    assert first["labelled"] == 2
    # PNG references with 16-bit scenes: one warning per concept that says what to do; none for raster references
    warnings = [r.getMessage() for r in caplog.records if "are 8-bit images" in r.getMessage()]
    assert len(warnings) == 1 and "'roof-png'" in warnings[0] and "--radiometry" in warnings[0], warnings
    store = MaskArchive.open(str(archive), mode="r")
    records = list(store.records("roof").values())
    stretch = records[0]["raster"]["stretch"]
    assert all(r["raster"]["stretch"] == stretch for r in records)  # one stretch for every scene of the run
    assert all(r["config"]["radiometry_ranges"] == stretch for r in records)  # and it is part of the digest
    assert stretch[0][0] < 600 and stretch[0][1] > 6000  # from both scenes: the dark one's low, the bright one's high
    (log,) = store.run_logs()
    assert log["radiometry"] == {"radiometry": "collection-percentile", "bands": None, "ranges": stretch}

    # a nightly re-run over a grown collection: the new scene gets the recorded stretch, the others stay up to date
    _write_scene(root / "scenes" / "brighter.tif", 5, "uint16", offset=9000, gain=6000)
    second = _label(root, archive, f"{root}/scenes/*.tif", "collection-percentile")
    assert (second["labelled"], second["skipped"]) == (1, 2)
    records = MaskArchive.open(str(archive), mode="r").records("roof")
    assert len(records) == 3 and all(r["raster"]["stretch"] == stretch for r in records.values())
