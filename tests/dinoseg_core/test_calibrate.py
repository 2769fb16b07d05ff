"""Per-concept calibration (dinoseg_core.calibrate): the folds, the choice, and its cost."""

import numpy as np
import pytest

from dinoseg_core import segmenter as segmenter_module
from dinoseg_core.backbone import load_backbone
from dinoseg_core.calibrate import LabelledShot, augmented_views, calibrate_concept
from dinoseg_core.config import InsidConfig
from dinoseg_core.errors import InputError
from dinoseg_core.segmenter import InContextSegmenter
from dinoseg_core.synthetic import generate_scene


@pytest.fixture(scope="module")
def seg():
    return InContextSegmenter(load_backbone("random:tiny@0", device="cpu"), InsidConfig(image_size=128))


def shots(concept, seeds, size=128):
    return [LabelledShot(generate_scene(s, size).image, generate_scene(s, size).labels[concept], f"{concept}-{s}")
            for s in seeds]


def test_leave_one_out_measures_every_config_once_per_tau(seg, monkeypatch):
    calls = {"extract": 0, "cluster": 0}
    extract, cluster = seg.extract_targets, segmenter_module.agglomerative_clusters

    def counting_extract(images, names=None):
        calls["extract"] += len(images)
        return extract(images, names)

    def counting_cluster(*args, **kwargs):
        calls["cluster"] += 1
        return cluster(*args, **kwargs)

    monkeypatch.setattr(seg, "extract_targets", counting_extract)
    monkeypatch.setattr(segmenter_module, "agglomerative_clusters", counting_cluster)
    result = calibrate_concept(seg, shots("water", (11, 12, 13)), taus=(0.6, 0.8, 0.95), merge_thresholds=(0.2, 0.4))
    assert result.mode == "leave-one-out" and result.folds == 3 and len(result.trials) == 6
    assert calls == {"extract": 3, "cluster": 3 * 3}  # each shot through the backbone once, clustered once per tau
    best = max(t.iou for t in result.trials)
    assert result.chosen.iou == best >= result.default.iou and (result.default.tau, result.default.merge_threshold) \
        == (0.6, 0.2)
    assert result.overrides == {k: v for k, v in (("tau", result.chosen.tau),
                                                  ("merge_threshold", result.chosen.merge_threshold))
                                if v != {"tau": 0.6, "merge_threshold": 0.2}[k]}
    for trial in result.trials:  # accumulated over the folds: sum(I) / sum(U)
        assert trial.iou == pytest.approx(trial.intersection / trial.union) and len(trial.fold_ious) == 3


def test_one_shot_is_checked_on_its_own_views_and_extra_images_replace_leave_one_out(seg):
    one = shots("roof", (21,))
    views = augmented_views(one[0])
    assert len(views) == 7 and np.array_equal(views[0].mask, one[0].mask[:, ::-1])
    result = calibrate_concept(seg, one, taus=(0.9,), merge_thresholds=(0.2,))
    assert result.mode == "self-consistency" and result.folds == 7
    held_out = calibrate_concept(seg, shots("roof", (21, 22)), extra=shots("roof", (23, 24, 25)), taus=(0.9,),
                                 merge_thresholds=(0.3,))
    assert held_out.mode == "held-out" and held_out.folds == 3 and len(held_out.trials) == 2  # + the default


def test_a_tie_keeps_the_default_and_bad_grids_are_refused(seg):
    blank = LabelledShot(np.zeros((128, 128, 3), np.float32), np.zeros((128, 128), bool), "blank")
    with pytest.raises(InputError, match="blank: the mask is empty"):
        calibrate_concept(seg, [blank])
    with pytest.raises(InputError, match="tau=1.5"):
        calibrate_concept(seg, shots("water", (11, 12)), taus=(1.5,))
    base = InsidConfig(image_size=128, tau=0.9, merge_threshold=0.2)
    result = calibrate_concept(seg, shots("water", (11, 12)), base=base, taus=(0.9,), merge_thresholds=(0.2,))
    assert result.chosen == result.default and result.overrides == {}


def test_the_global_weight_is_searched_on_scenes_through_the_windowed_path(seg, tmp_path):
    """Each weight labels the scene through segment_scene (the IoU is that of its stitched mask); each window goes
    through the backbone once for the whole search."""
    import rasterio

    from dinoseg_core.calibrate import LabelledScene, calibrate_global_weight
    from dinoseg_core.config import SceneConfig
    from dinoseg_core.geo.scene import segment_scene
    from dinoseg_core.geo.synthetic import write_synthetic_geotiff
    from dinoseg_core.io.radiometry import Radiometry
    from dinoseg_core.io.raster import open_raster, raster_reader

    write_synthetic_geotiff(tmp_path / "s.tif", 256, tile=128, seed=7, labels_path=tmp_path / "l.tif", concept="water")
    with rasterio.open(tmp_path / "l.tif") as labels:
        truth = labels.read(1) == 1
    refs = shots("water", (900, 910, 920))
    source = open_raster(tmp_path / "s.tif", (3, 2, 1), radiometry=Radiometry.parse("fixed:300,6300"))
    config, scene_config = InsidConfig(image_size=128, tau=0.9), SceneConfig(overlap=32)
    calls = []
    original = seg.extract_target
    seg.extract_target = lambda image, name="target": calls.append(name) or original(image, name)
    try:
        with raster_reader(source) as reader:
            found = calibrate_global_weight(seg, refs, [LabelledScene(reader.read, source.shape, truth, "s")],
                                            insid_config=config, scene_config=scene_config, weights=(0.0, 0.75))
    finally:
        del seg.extract_target
    assert [t.global_weight for t in found.trials] == [0.0, 0.5, 0.75]  # the default (0.5) is always measured
    assert len(calls) == len(set(calls)) == found.extracted == 9 + 1  # 3 x 3 windows and the whole-scene pass
    assert found.reused == 2 * 9 + 1
    assert found.default.global_weight == 0.5 and found.chosen.iou == max(t.iou for t in found.trials)
    assert len({round(t.iou, 6) for t in found.trials}) > 1  # the weight matters on this scene

    mask = np.zeros(truth.shape, bool)  # the chosen weight again, through segment_scene alone

    def writer(row, col, block):
        mask[row:row + block.shape[0], col:col + block.shape[1]] = block

    with raster_reader(source) as reader:
        segment_scene(seg, seg.embed_references([s.image for s in refs], [s.mask for s in refs]), reader.read,
                      source.shape, writer, config=scene_config.replace(global_weight=found.chosen.global_weight),
                      insid_config=config)
    assert found.chosen.iou == pytest.approx(np.sum(mask & truth) / np.sum(mask | truth), abs=1e-12)
    with pytest.raises(InputError, match="global_weight=1.5"):
        calibrate_global_weight(seg, refs, [LabelledScene(None, (8, 8), np.zeros((8, 8), bool), "x")],
                                insid_config=config, weights=(1.5,))
