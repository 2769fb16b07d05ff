"""Generated scenes: deterministic, exact labels, every concept present, fast; the demo data set writer."""

from __future__ import annotations

import time
import uuid

import numpy as np
import pytest
from scipy import ndimage

from dinoseg_core import synthetic
from dinoseg_core.io import imageio, storage
from dinoseg_core.errors import InputError

SEEDS = range(12)


@pytest.fixture(scope="module")
def scenes() -> list[synthetic.Scene]:
    return [synthetic.generate_scene(seed) for seed in SEEDS]


def test_shapes_and_dtypes(scenes):
    for scene in scenes:
        assert scene.image.dtype == np.float32 and scene.image.shape == (512, 512, 3)
        assert scene.image.min() >= 0.0 and scene.image.max() <= 1.0
        assert set(scene.labels) == set(synthetic.CONCEPTS)
        for mask in scene.labels.values():
            assert mask.dtype == bool and mask.shape == (512, 512)


def test_deterministic_by_seed():
    a, b = synthetic.generate_scene(7), synthetic.generate_scene(7)
    np.testing.assert_array_equal(a.image, b.image)
    for name in a.labels:
        np.testing.assert_array_equal(a.labels[name], b.labels[name])


def test_different_seeds_differ(scenes):
    for first, second in zip(scenes[:-1], scenes[1:]):
        assert np.abs(first.image - second.image).mean() > 0.05
        assert (first.labels["roof"] != second.labels["roof"]).mean() > 0.01


def test_labels_mutually_exclusive(scenes):
    for scene in scenes:
        count = sum(mask.astype(np.uint8) for mask in scene.labels.values())
        assert count.max() <= 1
        np.testing.assert_array_equal(scene.background, count == 0)


@pytest.mark.parametrize(
    "concept, min_fraction", [("field", 0.03), ("water", 0.01), ("road", 0.003), ("roof", 0.01)]
)
def test_every_concept_present_with_minimum_area(scenes, concept, min_fraction):
    for scene in scenes:
        assert scene.labels[concept].mean() >= min_fraction, (scene.seed, concept)
    assert not any(scene.background.mean() < 0.2 for scene in scenes)  # plenty of background too


def _colour_checks(image: np.ndarray) -> dict[str, np.ndarray]:
    """Per-pixel predicates of each concept's colour family, on (N, 3) pixels."""
    r, g, b = image[:, 0], image[:, 1], image[:, 2]
    spread = image.max(axis=1) - image.min(axis=1)
    return {
        "field": (b < np.minimum(r, g) - 0.1) & (g > 0.53) & (g > 0.75 * r),  # yellow / yellow-green, bright
        "water": (b > r + 0.1) & (b > g + 0.05) & (image.max(axis=1) < 0.6),  # dark blue
        "road": (spread < 0.06) & (g > 0.38),  # neutral grey (or white dashes)
        "roof": ((r > g + 0.2) & (r > b + 0.3))  # red / orange tiles
        | ((spread < 0.08) & (image.max(axis=1) < 0.42)),  # dark grey
    }


def test_labels_are_exact_every_labelled_pixel_has_its_concepts_colour(scenes):
    for scene in scenes:
        for concept, mask in scene.labels.items():
            pixels = scene.image[mask]
            ok = _colour_checks(pixels)[concept]
            assert ok.all(), (scene.seed, concept, pixels[~ok][:5])


def test_concepts_are_distinct_in_colour(scenes):
    """No concept's pixels pass another concept's colour test (beyond a sliver), and background is none of them."""
    for scene in scenes:
        for concept, mask in scene.labels.items():
            checks = _colour_checks(scene.image[mask])
            for other, ok in checks.items():
                if other != concept:
                    assert ok.mean() < 0.02, (scene.seed, concept, other, ok.mean())
        background = _colour_checks(scene.image[scene.background])
        for concept, ok in background.items():
            if concept != "roof":  # shadows are dark and grey-ish, like flat roofs
                assert ok.mean() < 0.02, (scene.seed, concept, ok.mean())


def test_colours_vary_within_a_concept(scenes):
    means = np.array([scene.image[scene.labels["roof"]].mean(axis=0) for scene in scenes])
    assert np.ptp(means, axis=0).max() > 0.1
    for scene in scenes:
        assert scene.image[scene.labels["field"]].std(axis=0).max() > 0.02  # stripes, not flat colour


def test_roofs_are_several_reasonably_sized_buildings(scenes):
    for scene in scenes:
        labelled, count = ndimage.label(scene.labels["roof"])
        assert count >= 3, scene.seed
        sizes = ndimage.sum_labels(scene.labels["roof"], labelled, index=np.arange(1, count + 1))
        assert sizes.min() >= 12 * 12 and sizes.max() <= 85 * 85, (scene.seed, sizes)


def test_water_is_one_or_two_blobs():
    for seed in SEEDS:  # water alone: in full scenes roads may cut a blob into pieces
        _, count = ndimage.label(synthetic.generate_scene(seed, concepts=("water",)).labels["water"])
        assert 1 <= count <= 2, seed


def test_concept_subset_only_draws_those():
    scene = synthetic.generate_scene(3, concepts=("roof", "water"))
    assert set(scene.labels) == {"roof", "water"}
    assert scene.labels["roof"].any() and scene.labels["water"].any()
    assert set(synthetic.generate_scene(3, concepts="road").labels) == {"road"}


@pytest.mark.parametrize("size", [64, 256, 1024])
def test_other_sizes(size):
    scene = synthetic.generate_scene(1, size=size)
    assert scene.image.shape == (size, size, 3)
    for concept, mask in scene.labels.items():
        assert mask.shape == (size, size)
        assert mask.any(), (size, concept)


def test_fast():
    synthetic.generate_scene(0)  # warm-up
    start = time.perf_counter()
    for seed in range(5):
        synthetic.generate_scene(seed)
    assert (time.perf_counter() - start) / 5 < 0.2


@pytest.mark.parametrize(
    "kwargs", [{"seed": -1}, {"seed": 1.5}, {"seed": 0, "size": 32}, {"seed": 0, "concepts": ("roof", "car")}]
)
def test_bad_arguments(kwargs):
    with pytest.raises(InputError):
        synthetic.generate_scene(**kwargs)


# --- write_demo_dataset ------------------------------------------------------------------------------------------


def _check_dataset(root: str, out: dict, so=None, n_refs=1, n_targets=2, size=128):
    assert out["root"] == root and out["concept"] == "roof"
    assert len(out["references"]) == n_refs and len(out["targets"]) == n_targets
    assert storage.glob(storage.join(root, "references", "*.png"), so) == sorted(
        u for ref in out["references"] for u in (ref["image"], ref["mask"])
    )
    assert storage.glob(storage.join(root, "targets", "*.png"), so) == [t["image"] for t in out["targets"]]
    assert storage.glob(storage.join(root, "targets_gt", "*.png"), so) == [t["gt_mask"] for t in out["targets"]]
    ref = out["references"][0]
    assert storage.stem(ref["mask"]) == storage.stem(ref["image"]) + "_mask"
    image = imageio.read_image(ref["image"], so)
    mask = imageio.read_mask(ref["mask"], so)
    scene = synthetic.generate_scene(ref["seed"], size)
    assert image.shape == (size, size, 3)
    np.testing.assert_allclose(image, scene.image, atol=0.5 / 255 + 1e-6)  # 8-bit PNG of the scene
    np.testing.assert_array_equal(mask, scene.labels["roof"])
    gt = imageio.read_mask(out["targets"][0]["gt_mask"], so)
    np.testing.assert_array_equal(gt, synthetic.generate_scene(out["targets"][0]["seed"], size).labels["roof"])
    seeds = [e["seed"] for e in out["references"] + out["targets"]]
    assert len(set(seeds)) == len(seeds)


def test_write_demo_dataset_local(tmp_path):
    root = str(tmp_path / "demo")
    out = synthetic.write_demo_dataset(root, n_references=1, n_targets=2, size=128, seed=5)
    _check_dataset(root, out)
    assert sorted(p.name for p in (tmp_path / "demo" / "references").iterdir()) == ["ref_000.png", "ref_000_mask.png"]


def test_write_demo_dataset_memory_and_other_concept():
    root = f"memory://synthetic-tests/{uuid.uuid4().hex}"
    out = synthetic.write_demo_dataset(root, n_references=2, n_targets=1, size=96, seed=1, concept="water")
    assert out["concept"] == "water" and len(out["references"]) == 2
    mask = imageio.read_mask(out["references"][1]["mask"])
    np.testing.assert_array_equal(mask, synthetic.generate_scene(out["references"][1]["seed"], 96).labels["water"])


@pytest.mark.integration
def test_write_demo_dataset_s3(s3_server):
    so = s3_server["storage_options"]
    root = s3_server["make_bucket"]() + "/demo"
    out = synthetic.write_demo_dataset(root, n_references=1, n_targets=2, size=128, seed=2, storage_options=so)
    _check_dataset(root, out, so)


def test_write_demo_dataset_bad_arguments(tmp_path):
    with pytest.raises(InputError, match="concept"):
        synthetic.write_demo_dataset(str(tmp_path), concept="car")
    with pytest.raises(InputError, match="n_references"):
        synthetic.write_demo_dataset(str(tmp_path), n_references=0)
