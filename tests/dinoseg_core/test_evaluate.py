"""Episodes and metrics of the few-shot evaluation (dinoseg_core.evaluate)."""

import numpy as np
import pytest

from dinoseg_core import segmenter as segmenter_module
from dinoseg_core.backbone import load_backbone
from dinoseg_core.config import InsidConfig
from dinoseg_core.errors import InputError
from dinoseg_core.evaluate import IoUAccumulator, LabelledImage, evaluate_episodes, sample_episodes
from dinoseg_core.segmenter import InContextSegmenter
from dinoseg_core.synthetic import generate_scene


def test_iou_is_accumulated_per_class_and_fb_iou_over_all_episodes():
    rng = np.random.default_rng(0)
    scores = IoUAccumulator(classes=(1, 2, 3))
    episodes = []
    for class_id in (1, 1, 2, 1, 2):
        pred, truth = rng.random((2, 9, 7)) > 0.6
        ignore = rng.random((9, 7)) > 0.8
        scores.add(class_id, pred, truth, ignore)
        episodes.append((class_id, pred, truth, ignore))
    summary = scores.summary()
    # independently: flat pixel lists with the ignored ones removed
    for class_id in (1, 2):
        inter = union = 0
        for c, pred, truth, ignore in episodes:
            if c == class_id:
                p, t = pred[~ignore].tolist(), truth[~ignore].tolist()
                inter += sum(a and b for a, b in zip(p, t))
                union += sum(a or b for a, b in zip(p, t))
        assert summary["classes"][class_id]["iou"] == pytest.approx(inter / union, abs=1e-12)
    assert summary["classes"][3] == {"iou": 0.0, "episodes": 0, "intersection": 0, "union": 0}  # never drawn: 0
    assert summary["miou"] == pytest.approx((summary["classes"][1]["iou"] + summary["classes"][2]["iou"]) / 3)
    fg_i = sum(int((p & t & ~g).sum()) for _, p, t, g in episodes)
    fg_u = sum(int(((p | t) & ~g).sum()) for _, p, t, g in episodes)
    bg_i = sum(int((~p & ~t & ~g).sum()) for _, p, t, g in episodes)
    bg_u = sum(int(((~p | ~t) & ~g).sum()) for _, p, t, g in episodes)
    assert summary["fb_iou"] == pytest.approx((fg_i / fg_u + bg_i / bg_u) / 2, abs=1e-12)


def test_episodes_are_seeded_and_hold_their_class():
    index = {1: ["a", "b", "c", "d"], 2: ["b", "e"], 3: ["a"]}
    episodes = sample_episodes(index, (1, 2, 3), shots=1, count=50, seed=3)
    assert episodes == sample_episodes(index, (1, 2, 3), shots=1, count=50, seed=3)
    assert episodes != sample_episodes(index, (1, 2, 3), shots=1, count=50, seed=4)
    assert {e.class_id for e in episodes} == {1, 2}  # class 3 has no second image
    for e in episodes:
        assert e.query in index[e.class_id] and set(e.supports) <= set(index[e.class_id])
        assert e.query not in e.supports and len(set(e.supports)) == len(e.supports) == 1
    assert all(e.class_id == 1 and len(e.supports) == 3 for e in sample_episodes(index, (1, 2), 3, 5, 0))
    with pytest.raises(InputError, match="images per class: 2: 2, 3: 1"):
        sample_episodes(index, (2, 3), shots=2, count=5)
    with pytest.raises(InputError, match="shots=0"):
        sample_episodes(index, (1,), shots=0, count=5)


def test_each_image_is_extracted_once_and_clustered_once_per_tau(monkeypatch):
    scenes = {f"s{i}": generate_scene(300 + i, 64) for i in range(4)}
    loads = []

    def load(key):
        loads.append(key)
        scene = scenes[key]
        return LabelledImage(scene.image, {1: scene.labels["water"], 2: scene.labels["roof"]})

    seg = InContextSegmenter(load_backbone("random:tiny@0", device="cpu"), InsidConfig(image_size=64, tau=0.9))
    episodes = sample_episodes({1: list(scenes), 2: list(scenes)}, (1, 2), shots=2, count=12, seed=0)
    clusterings = []
    cluster = segmenter_module.agglomerative_clusters
    monkeypatch.setattr(segmenter_module, "agglomerative_clusters",
                        lambda *a, **k: clusterings.append(a[1]) or cluster(*a, **k))
    result = evaluate_episodes(seg, episodes, load, (1, 2))
    assert clusterings == [0.9] * len({e.query for e in episodes})  # once per query image and tau
    assert sorted(loads) == sorted(scenes) and result["images_extracted"] == 4
    assert result["cache_hits"] == 12 * 3 - 4 and len(result["episodes"]) == 12
    small = evaluate_episodes(seg, episodes, load, (1, 2), cache_size=1)  # a small cache re-extracts, same scores
    assert small["images_extracted"] > 4 and small["miou"] == result["miou"]
