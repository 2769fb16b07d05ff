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
