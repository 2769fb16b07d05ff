"""Inference recipes: --recipe dinoseg (this project's defaults) and --recipe dinotxt (Meta's dino.txt zero-shot
recipe) as one OvsegConfig field that sets the others, digests of default configs unchanged."""

from __future__ import annotations

import dataclasses

import pytest

from dinoseg_core.config import apply_options
from dinoseg_core.errors import InputError
from dinoseg_core.ovseg.config import (
    DEFAULT_TEMPLATES,
    IMAGENET_TEMPLATES,
    RECIPES,
    OvsegConfig,
    OvsegOptions,
)


def _recipe_values(config: OvsegConfig) -> dict:
    return {name: getattr(config, name) for name in RECIPES["dinoseg"]}


def test_each_recipe_sets_its_values_and_a_given_field_wins():
    assert _recipe_values(OvsegConfig()) == RECIPES["dinoseg"] == {
        "short_side": 640, "window": 384, "stride": 256, "global_view": True, "templates": DEFAULT_TEMPLATES,
        "prior_weight": 1.0, "average": "logits"}
    meta = OvsegConfig(recipe="dinotxt")
    assert _recipe_values(meta) == {"short_side": 512, "window": 384, "stride": 192, "global_view": False,
                                    "templates": IMAGENET_TEMPLATES, "prior_weight": 0.0, "average": "probabilities"}
    assert len(IMAGENET_TEMPLATES) == 80 == len(set(IMAGENET_TEMPLATES))
    assert all(t.count("{}") == 1 for t in IMAGENET_TEMPLATES)
    tuned = OvsegConfig(recipe="dinotxt", stride=128, global_view=True)
    assert (tuned.short_side, tuned.stride, tuned.global_view) == (512, 128, True)
    with pytest.raises(InputError, match="recipe='meta'"):
        OvsegConfig(recipe="meta")
    with pytest.raises(InputError, match="average='mean'"):
        OvsegConfig(average="mean")


def test_default_dicts_and_digests_are_those_from_before_recipes():
    """Masks labelled before the recipe field existed stay up to date: a default config's dict has no recipe keys,
    and every dict round-trips."""
    before = {f.name for f in dataclasses.fields(OvsegConfig)} - {"recipe", "average"}
    assert set(OvsegConfig().to_dict()) == before
    assert OvsegConfig.from_dict(OvsegConfig().to_dict()).digest() == OvsegConfig().digest()
    for config in (OvsegConfig(recipe="dinotxt"), OvsegConfig(average="probabilities"),
                   OvsegConfig(recipe="dinotxt", average="logits"), OvsegConfig(recipe="dinotxt", short_side=None)):
        assert OvsegConfig.from_dict(config.to_dict()) == config
        assert config.digest() != OvsegConfig().digest()
    assert OvsegConfig(recipe="dinotxt").to_dict()["recipe"] == "dinotxt"


def test_switching_recipes_moves_the_fields_left_at_the_old_recipe():
    tuned = OvsegConfig(stride=128)
    switched = tuned.replace(recipe="dinotxt")
    assert (switched.short_side, switched.stride, switched.templates) == (512, 128, IMAGENET_TEMPLATES)
    assert OvsegConfig().replace(recipe="dinotxt") == OvsegConfig(recipe="dinotxt")
    assert OvsegConfig(recipe="dinotxt").replace(recipe="dinoseg") == OvsegConfig()
    assert apply_options(OvsegConfig(), OvsegOptions(recipe="dinotxt")) == OvsegConfig(recipe="dinotxt")
    assert apply_options(OvsegConfig(), {"recipe": "dinotxt", "templates": ["a {}."]}).templates == ("a {}.",)
    with pytest.raises(InputError, match="unknown OvsegConfig field"):
        apply_options(OvsegConfig(), {"recipes": "dinotxt"})


@pytest.mark.slow
def test_the_dinotxt_recipe_averages_window_probabilities_without_a_cls_term():
    """End to end through TextSegmenter: each window scored alone by patch-text cosine only, its softmax averaged
    where windows overlap, no global view; against windows cut and scored here."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from dinoseg_core.ovseg import TextSegmenter, load_dinotxt
    from dinoseg_core.preprocess import prepare_image

    dinotxt = load_dinotxt("random:tiny@0", device="cpu")
    p = dinotxt.patch_size
    config = OvsegConfig(recipe="dinotxt", short_side=4 * p, window=2 * p, stride=p, templates=("a photo of a {}.",))
    segmenter = TextSegmenter(dinotxt, config)
    image = np.random.default_rng(0).random((4 * p, 6 * p, 3), dtype=np.float32)
    classes = segmenter.embed_classes(["road", "water", "field"])
    probabilities = torch.softmax(segmenter.logits(image, classes), dim=0)

    norm = dinotxt.backbone.normalization
    pixels = prepare_image(image, (4 * p, 6 * p), norm.mean, norm.std, dinotxt.device)
    s, cell = config.output_stride, 2 * p // config.output_stride
    total, count = torch.zeros(3, 4 * p // s, 6 * p // s), torch.zeros(1, 4 * p // s, 6 * p // s)
    for top in (0, p, 2 * p):
        for left in (0, p, 2 * p, 3 * p, 4 * p):
            _, patches = dinotxt.image_tokens(pixels[None, :, top:top + 2 * p, left:left + 2 * p])
            cosine = torch.einsum("bdhw,kd->bkhw", F.normalize(patches, dim=1), classes.patch)
            logits = F.interpolate(cosine / config.temperature, size=(cell, cell), mode="bilinear",
                                   align_corners=False)
            total[:, top // s:top // s + cell, left // s:left // s + cell] += torch.softmax(logits, dim=1)[0]
            count[:, top // s:top // s + cell, left // s:left // s + cell] += 1
    torch.testing.assert_close(probabilities, total / count, rtol=1e-4, atol=1e-5)
    assert segmenter.provenance(classes)["config"]["recipe"] == "dinotxt"
