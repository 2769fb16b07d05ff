"""INSID3 end to end with a random-init DINOv3 ViT-S on procedurally generated aerial scenes (exact ground truth)."""

import numpy as np
import pytest
import torch

from dinoseg_core.backbone import load_backbone
from dinoseg_core.config import InsidConfig
from dinoseg_core.errors import InputError
from dinoseg_core.segmenter import InContextSegmenter
from dinoseg_core.synthetic import generate_scene

SIZE = 512
CONCEPT = "roof"
#: Random-init ViT features are compressed (mean cosine between two patches of a scene ~0.66, where trained
#: DINOv3 features spread widely), so the paper's tau = 0.6 merges most of a scene into one cluster. Tests and the
#: demo on random weights cut the tree at tau = 0.9 (``bench/`` and the README give the numbers); every other
#: value is the paper's.
RANDOM_WEIGHTS_TAU = 0.9


def iou(pred, truth):
    return (pred & truth).sum() / max((pred | truth).sum(), 1)


@pytest.fixture(scope="module")
def backbone():
    return load_backbone("random:dinov3-vits16@0", device="cpu")


@pytest.fixture(scope="module")
def segmenter(backbone):
    return InContextSegmenter(backbone, InsidConfig(image_size=SIZE, tau=RANDOM_WEIGHTS_TAU))


@pytest.fixture(scope="module")
def scenes():
    return [generate_scene(seed, size=SIZE) for seed in range(6)]


@pytest.fixture(scope="module")
def references(segmenter, scenes):
    return segmenter.embed_references([scenes[0].image], [scenes[0].labels[CONCEPT]])


@pytest.mark.slow
def test_masks_reach_real_iou_on_unseen_scenes(segmenter, references, scenes):
    scores = []
    for scene in scenes[1:]:
        result = segmenter.segment(references, scene.image)
        assert result.mask.shape == scene.image.shape[:2] and result.mask.dtype == bool
        assert result.similarity.shape == result.patch_mask.shape == (SIZE // 16, SIZE // 16)
        scores.append(iou(result.mask, scene.labels[CONCEPT]))
    # all-foreground would score the roof's area fraction; a broken stage (no debiasing, wrong seed, no backward
    # check) falls far below this line
    assert np.mean(scores) > 0.6, scores
    assert min(scores) > 0.5, scores


@pytest.mark.slow
def test_crf_refinement_sharpens_boundaries(backbone, scenes):
    crf = InContextSegmenter(backbone, InsidConfig(image_size=SIZE, tau=RANDOM_WEIGHTS_TAU, crf=True))
    plain = InContextSegmenter(backbone, InsidConfig(image_size=SIZE, tau=RANDOM_WEIGHTS_TAU), basis_cache=crf.basis_cache)
    refs = crf.embed_references([scenes[0].image], [scenes[0].labels[CONCEPT]])
    target = crf.extract_target(scenes[1].image)
    truth = scenes[1].labels[CONCEPT]
    with_crf = iou(crf.segment_features(refs, target).mask, truth)
    without = iou(plain.segment_features(refs, target).mask, truth)
    assert with_crf > without


@pytest.mark.slow
def test_one_extraction_serves_several_concepts_and_the_basis_is_computed_once(segmenter, scenes):
    assert len(segmenter.basis_cache) == 1
    target = segmenter.extract_target(scenes[2].image)
    for concept in ("roof", "water", "field"):
        refs = segmenter.embed_references([scenes[0].image], [scenes[0].labels[concept]])
        result = segmenter.segment_features(refs, target)
        assert iou(result.mask, scenes[2].labels[concept]) > 0.6, concept
    assert len(segmenter.basis_cache) == 1


@pytest.mark.slow
def test_multi_shot_and_non_square_targets(segmenter, scenes):
    refs = segmenter.embed_references(
        [scenes[0].image, scenes[1].image], [scenes[0].labels[CONCEPT], scenes[1].labels[CONCEPT]]
    )
    assert refs.num_shots == 2
    crop = scenes[3].image[:300, :450]
    result = segmenter.segment(refs, crop)
    assert result.mask.shape == (300, 450)
    assert iou(result.mask, scenes[3].labels[CONCEPT][:300, :450]) > 0.4


@pytest.mark.slow
def test_positional_basis_of_the_backbone_round_trips(segmenter, backbone):
    from dinoseg_core.basis import PositionalBasis

    basis = segmenter.basis()
    assert basis.vectors.shape == (backbone.embed_dim, round(backbone.embed_dim * 500 / 1024))
    fresh = InContextSegmenter(backbone, segmenter.config)
    fresh.add_basis(PositionalBasis.from_bytes(basis.to_bytes()))
    assert torch.equal(fresh.basis().vectors, basis.vectors)


def test_basis_of_another_backbone_is_refused(segmenter):
    from dinoseg_core.basis import BasisKey, PositionalBasis

    alien = PositionalBasis(BasisKey("0" * 64, SIZE, SIZE, "black", segmenter.k), torch.zeros(384, segmenter.k))
    with pytest.raises(InputError, match="another backbone"):
        segmenter.add_basis(alien)


def test_reference_errors_are_clear(segmenter, scenes):
    image = scenes[0].image
    with pytest.raises(InputError, match="empty"):
        segmenter.embed_references([image], [np.zeros(image.shape[:2], bool)])
    with pytest.raises(InputError, match="1 reference images but 2 masks"):
        segmenter.embed_references([image], [scenes[0].labels[CONCEPT]] * 2)
    with pytest.raises(InputError, match="reference set is empty"):
        segmenter.embed_references([], [])


def test_per_concept_config_may_not_change_the_features(segmenter, references, scenes):
    target = segmenter.extract_target(scenes[1].image)
    with pytest.raises(InputError, match="image_size"):
        segmenter.segment_features(references, target, segmenter.config.replace(image_size=256))
    looser = segmenter.segment_features(references, target, segmenter.config.replace(merge_threshold=0.0))
    stricter = segmenter.segment_features(references, target, segmenter.config.replace(merge_threshold=0.9))
    assert looser.mask.sum() >= stricter.mask.sum()


def test_semantic_correspondence_on_a_shifted_scene(segmenter, scenes):
    image = scenes[4].image
    shifted = np.roll(image, shift=(64, 32), axis=(0, 1))
    keypoints = torch.tensor([[200.0, 200.0], [300.0, 260.0], [150.0, 330.0]])
    predicted = segmenter.correspond(image, shifted, keypoints)
    error = (predicted - (keypoints + torch.tensor([32.0, 64.0]))).norm(dim=1)
    assert error.median() < 24, error
