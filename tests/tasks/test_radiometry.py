"""A run's radiometry in what masks depend on, and the collection stretch a run log keeps for the next runs."""

import dataclasses

from dinoseg_core.config import InsidConfig, SceneConfig
from dinoseg_core.io.archive import MaskArchive, config_digest
from dinoseg_core.io.radiometry import Radiometry
from tasks.concepts import ConceptSet, PreparedConcept
from tasks.radiometry import run_record, stored_radiometry
from tasks.runtime import BackboneSpec


def _concepts(scene=SceneConfig(), radiometry=None):
    concept = PreparedConcept("roof", InsidConfig(tau=0.9), "key", "hash")
    return ConceptSet(BackboneSpec("random:tiny@0"), "fingerprint", True, (concept,), scene, (3, 2, 1),
                      radiometry=radiometry)


def test_the_default_radiometry_keeps_the_digests_of_older_masks():
    fields = {f.name for f in dataclasses.fields(SceneConfig)}
    assert set(SceneConfig().to_dict()) == fields - {"radiometry"}
    older = {**InsidConfig(tau=0.9).to_dict(), "scene": {k: getattr(SceneConfig(), k) for k in fields - {"radiometry"}},
             "bands": [3, 2, 1]}  # a scene mask's config before radiometry was a choice
    stamp = _concepts().methods("scene")["roof"]
    assert stamp.config_digest == config_digest(older)
    assert _concepts(radiometry=Radiometry.parse("scene-percentile")).methods("scene")["roof"].config_digest == \
        config_digest(older)


def test_a_chosen_radiometry_and_a_collection_stretch_are_part_of_the_digest():
    default = _concepts().methods("scene")["roof"].config_digest
    fixed = _concepts(SceneConfig(radiometry="fixed:0,3000")).methods("scene")["roof"]
    assert fixed.config["scene"]["radiometry"] == "fixed:0,3000" and fixed.config_digest != default
    spec = Radiometry.parse("collection-percentile")
    one = _concepts(SceneConfig(radiometry="collection-percentile"), spec.with_ranges([(1, 2)] * 3))
    other = _concepts(SceneConfig(radiometry="collection-percentile"), spec.with_ranges([(1, 3)] * 3))
    assert one.methods("scene")["roof"].config["radiometry_ranges"] == [[1, 2]] * 3
    assert one.methods("scene")["roof"].config_digest != other.methods("scene")["roof"].config_digest
    assert one.methods("tile")["roof"].config == InsidConfig(tau=0.9).to_dict()  # tiles are 8-bit images


def test_the_newest_run_log_with_the_same_radiometry_and_bands_gives_the_stretch(tmp_path):
    archive = MaskArchive.open(str(tmp_path / "m.zarr"), mode="a")
    spec = Radiometry.parse("collection-percentile")
    assert stored_radiometry(archive, spec, (3, 2, 1)) is None
    logs = [("r1", "2026-01-01", spec.with_ranges([(1, 2)] * 3), (3, 2, 1)),
            ("r2", "2026-01-02", spec.with_ranges([(5, 6)] * 3), (3, 2, 1)),
            ("r3", "2026-01-03", spec.with_ranges([(7, 8)] * 3), (4, 3, 2)),  # other bands
            ("r4", "2026-01-04", Radiometry.parse("collection-percentile:1,99").with_ranges([(9, 10)] * 3), (3, 2, 1)),
            ("r5", "2026-01-05", Radiometry.parse("fixed:0,3000"), (3, 2, 1))]
    for run_id, start, radiometry, bands in logs:
        archive.write_run_log(run_id, {"start": start, "radiometry": run_record(radiometry, bands)})
    archive.write_run_log("r6", {"start": "2026-01-06"})  # a run of another flow
    found, run_id = stored_radiometry(archive, spec, (3, 2, 1))
    assert run_id == "r2" and found.ranges == ((5.0, 6.0),) * 3 and str(found) == "collection-percentile"
    assert stored_radiometry(archive, spec, (4, 3, 2))[1] == "r3"
    assert stored_radiometry(archive, Radiometry.parse("collection-percentile:1,99"), (3, 2, 1))[1] == "r4"
    assert stored_radiometry(archive, spec, None) is None


def test_png_references_with_a_16_bit_scene_warn_once_and_say_what_to_do(tmp_path, caplog):
    import logging

    import numpy as np

    from dinoseg_core.io.raster import open_raster
    from tasks import concepts
    from tests.dinoseg_core.geo_data import band_stack, write_geotiff

    source = open_raster(write_geotiff(tmp_path / "scene.tif", band_stack()))
    concept = PreparedConcept("roof", InsidConfig(), "key", f"hash-{np.random.default_rng().integers(1 << 30)}",
                              ("s3://lake/refs/a.png",))
    with caplog.at_level(logging.WARNING, logger="dinoseg.concepts"):  # outside a flow: the module's logger
        for _ in range(3):
            concepts._warn_image_references(concept, source)
    (message,) = [r.getMessage() for r in caplog.records if r.name == "dinoseg.concepts"]
    assert "'roof'" in message and "scene.tif is uint16" in message and "s3://lake/refs/a.png" in message
    assert "--radiometry" in message and "GeoTIFFs" in message
