"""The calibrated manifest: what `dinoseg label` reads from it is what calibration measured."""

import pytest
import yaml

from dinoseg_core.errors import InputError
from dinoseg_core.io.manifest import parse_manifest
from tasks.evaluation import calibrated_manifest_text, write_calibrated_manifest


def result(concept, tau, alpha, base=(0.6, 0.2)):
    trial = {"tau": tau, "merge_threshold": alpha, "iou": 0.8}
    default = {"tau": base[0], "merge_threshold": base[1], "iou": 0.1}
    overrides = {k: v for k, v, b in (("tau", tau, base[0]), ("merge_threshold", alpha, base[1])) if v != b}
    return {"concept": concept, "mode": "leave-one-out", "folds": 2, "chosen": trial, "default": default,
            "overrides": overrides}


RAW = {"version": 1, "config": {"image_size": 256},
       "concepts": [{"name": "roof", "references": [{"image": "r.png", "mask": "r_roof.png"}],
                     "config": {"tau": 0.55, "image_size": 512}},
                    {"name": "water", "description": "lakes", "references": [{"image": "r.png", "mask": "w.png"}]},
                    {"name": "road", "references": [{"image": "r.png", "mask": "d.png"}], "config": {"tau": 0.8}}]}


def test_the_calibrated_manifest_gives_label_the_measured_configs():
    # the run's --tau 0.7 --image-size 128 won over the manifest's values while calibrating
    results = [result("roof", 0.7, 0.3, base=(0.7, 0.2)), result("water", 0.95, 0.2)]
    text = calibrated_manifest_text("/data/refs.yaml", RAW, results, {"tau": 0.7, "image_size": 128},
                                    "/data/calibrated.yaml", "random:tiny@0")
    manifest = parse_manifest(text.encode(), "/data/calibrated.yaml")
    roof, water, road = (manifest.config_for(n) for n in ("roof", "water", "road"))
    assert (roof.tau, roof.merge_threshold, roof.image_size) == (0.7, 0.3, 128)
    assert (water.tau, water.merge_threshold, water.image_size) == (0.95, 0.2, 128)
    assert (road.tau, road.image_size) == (0.8, 128)  # not calibrated: its own config, the run's image size
    assert manifest.concepts["water"].references[0].image_url == "/data/r.png"
    assert "# water: leave-one-out, 2 fold(s): IoU 0.800 with tau 0.95, merge_threshold 0.2; before: 0.100" in text
    assert manifest.concepts["water"].description == "lakes"

    moved = yaml.safe_load(calibrated_manifest_text("/data/refs.yaml", RAW, results, None, "/out/c.yaml", "x"))
    assert moved["concepts"]["roof"]["references"][0] == {"image": "/data/r.png", "mask": "/data/r_roof.png"}


def test_the_input_manifest_is_never_overwritten(tmp_path):
    refs = tmp_path / "refs.yaml"
    refs.write_text(yaml.safe_dump(RAW))
    with pytest.raises(InputError, match="is the input manifest"):
        write_calibrated_manifest.fn(str(refs), str(refs), [], None, "x")
    assert yaml.safe_load(refs.read_text()) == RAW


def test_geotiff_references_are_read_with_the_runs_bands_and_radiometry(tmp_path):
    from dinoseg_core.geo.synthetic import write_synthetic_geotiff
    from dinoseg_core.synthetic import generate_scene
    from tasks.evaluation import _read_shot

    write_synthetic_geotiff(tmp_path / "ref.tif", 128, tile=128, seed=3, labels_path=tmp_path / "ref_roof.tif")
    image, mask = _read_shot(str(tmp_path / "ref.tif"), str(tmp_path / "ref_roof.tif"), None, bands=[3, 2, 1],
                             radiometry="fixed:300,6300")
    expected = generate_scene(3 * 100_003, 128)  # what the GeoTIFF holds, stored as 300 + 6000 * value
    assert abs(image - expected.image).max() < 1e-3 and (mask == expected.labels["roof"]).all()


def test_a_searched_global_weight_goes_into_the_concepts_scene_block_with_its_iou():
    water = result("water", 0.95, 0.2)
    water["scene"] = {"searched": True, "scenes": 2, "chosen": {"global_weight": 0.25, "iou": 0.61},
                      "default": {"global_weight": 0.5, "iou": 0.55}}
    roof = {**result("roof", 0.7, 0.3, base=(0.7, 0.2)), "scene": {"searched": False, "reason": "no scene"}}
    raw = {**RAW, "concepts": [{**RAW["concepts"][1], "scene": {"threshold": 0.4}}, RAW["concepts"][0]]}
    text = calibrated_manifest_text("/data/refs.yaml", raw, [water, roof], None, "/data/calibrated.yaml", "x")
    manifest = parse_manifest(text.encode(), "/data/calibrated.yaml")
    assert manifest.concepts["water"].scene_overrides == {"threshold": 0.4, "global_weight": 0.25}
    assert manifest.concepts["roof"].scene_overrides == {}
    assert "# water on 2 scene(s), windowed: IoU 0.610 with global_weight 0.25; before: 0.550 with global_weight " \
           "0.5" in text
