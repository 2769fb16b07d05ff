"""Zero-shot segmentation end to end with tiny random towers: shapes, background handling, class-list errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dinoseg_core.errors import InputError
from dinoseg_core.ovseg import OvsegConfig, TextSegmenter, concept_names, load_dinotxt
from dinoseg_core.ovseg.zeroshot import zero_shot_logits

SMALL = OvsegConfig(short_side=96, window=64, stride=32, templates=("a photo of a {}.", "the {}."))
CLASSES = ["building", "road", "water"]


@pytest.fixture(scope="module")
def dinotxt():
    return load_dinotxt("random:tiny@0", device="cpu")


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(0).random((75, 130, 3), dtype=np.float32)


def test_zero_shot_masks_have_the_image_size(dinotxt, image):
    seg = TextSegmenter(dinotxt, SMALL)
    assert seg.mode == "zero-shot"
    classes = seg.embed_classes(CLASSES)
    result = seg.segment(image, classes)
    assert result.labels.shape == (75, 130) and result.labels.dtype == np.uint16
    assert set(np.unique(result.labels)) <= {1, 2, 3}  # no background without threshold or prompts
    # working size 96 x 160 (short side 96, 166.4 -> 160), aggregated every 4 px
    assert result.probabilities.shape == (3, 24, 40)
    np.testing.assert_allclose(result.probabilities.sum(0), 1.0, rtol=1e-5)
    masks = [result.mask(n) for n in CLASSES]
    assert all(m.shape == (75, 130) and m.dtype == bool for m in masks)
    assert (np.sum(masks, axis=0) == 1).all()
    assert result.class_table == {0: "background", 1: "building", 2: "road", 3: "water"}
    again = seg.segment(image, CLASSES)  # class names directly; deterministic
    np.testing.assert_array_equal(again.labels, result.labels)


def test_default_config_at_640(dinotxt, image):
    result = TextSegmenter(dinotxt).segment(image, CLASSES)
    assert result.labels.shape == (75, 130)
    assert result.probabilities.shape == (3, 160, 276)  # 640 x 1104 working size / 4


def test_background_threshold_and_prompts(dinotxt, image):
    unsure = SMALL.replace(temperature=1.0, background_threshold=0.99)  # softmax of cosines: never 0.99 sure
    everything = TextSegmenter(dinotxt, unsure).segment(image, CLASSES)
    assert (everything.labels == 0).all()
    nothing = TextSegmenter(dinotxt, SMALL.replace(background_threshold=0.0)).segment(image, CLASSES)
    assert (nothing.labels > 0).all()
    seg = TextSegmenter(dinotxt, SMALL.replace(background_prompts=("background", "sky")))
    classes = seg.embed_classes(CLASSES)
    assert len(classes) == 5 and classes.class_names == tuple(CLASSES)
    result = seg.segment(image, classes)
    assert result.probabilities.shape[0] == 3
    logits = seg.logits(image, classes)
    won_by_background = np.asarray(
        torch.nn.functional.interpolate(logits[None], size=(75, 130), mode="bilinear")[0].argmax(0) >= 3)
    assert ((result.labels == 0) == won_by_background).mean() > 0.99


def test_prior_weight_zero_is_pure_patch_similarity(dinotxt):
    classes = dinotxt.embed_classes(CLASSES, ("the {}.",))
    cls, patches = torch.randn(2, 64), torch.randn(2, 64, 3, 4)
    plain = zero_shot_logits(cls, patches, classes, temperature=0.5, prior_weight=0.0)
    cos = torch.nn.functional.cosine_similarity(patches[:, None], classes.patch[None, :, :, None, None], dim=2)
    torch.testing.assert_close(plain, cos / 0.5)
    with_prior = zero_shot_logits(cls, patches, classes, temperature=0.5, prior_weight=2.0)
    shift = (with_prior - plain)[:, :, 0, 0]
    expected = 2.0 * torch.log_softmax(torch.nn.functional.normalize(cls) @ classes.cls.T / 0.5, dim=1)
    torch.testing.assert_close(shift, expected)
    assert torch.allclose(with_prior - plain, shift[:, :, None, None].expand_as(plain))


@pytest.mark.parametrize("names, message", [
    (["road", "ROAD"], "duplicates"),
    (["road", "  "], "empty"),
    ("building,,water", "empty"),
])
def test_class_list_errors(dinotxt, image, names, message):
    with pytest.raises(InputError, match=message):
        TextSegmenter(dinotxt, SMALL).segment(image, names)


def test_bad_inputs(dinotxt):
    seg = TextSegmenter(dinotxt, SMALL)
    with pytest.raises(InputError, match=r"\(H, W, 3\)"):
        seg.segment(np.zeros((32, 32), np.float32), CLASSES)
    with pytest.raises(InputError, match="not among"):
        seg.segment(np.zeros((32, 32, 3), np.float32), CLASSES).mask("sky")
    with pytest.raises(InputError, match="DinoTxt"):
        TextSegmenter("random:tiny")
    with pytest.raises(InputError, match="also class names"):
        TextSegmenter(dinotxt, SMALL.replace(background_prompts=("Road",))).embed_classes(CLASSES)


def test_concept_names_are_archive_safe():
    names = concept_names(["solar panel", "flooded field", "solar_panel", "Café", "+"])
    assert names == {"solar panel": "solar_panel", "flooded field": "flooded_field", "solar_panel": "solar_panel_2",
                     "Café": "Cafe", "+": "class"}


def test_provenance_fits_the_mask_archive(dinotxt, image, tmp_path):
    from dinoseg_core.io.archive import MaskArchive, image_key

    seg = TextSegmenter(dinotxt, SMALL)
    classes = seg.embed_classes(["solar panel", "road"])
    result = seg.segment(image, classes)
    attrs = seg.provenance(classes)
    assert attrs["reference_set_hash"] == classes.digest and attrs["config"]["mode"] == "zero-shot"
    assert attrs["class_table"] == {"0": "background", "1": "solar panel", "2": "road"}
    archive = MaskArchive.open(str(tmp_path / "archive.zarr"))
    key = image_key("s3://bucket/tiles/t1.png")
    for name, concept in concept_names(classes.class_names).items():
        k = classes.class_names.index(name)
        archive.write_mask(concept, key, result.mask(name),
                           {**attrs, "source_uri": "s3://bucket/tiles/t1.png", "source_sha256": "0" * 64},
                           similarity=result.probabilities[k])
    np.testing.assert_array_equal(archive.read_mask("solar_panel", key), result.mask("solar panel"))
    assert archive.mask_record("road", key)["backbone_fingerprint"] == dinotxt.fingerprint
