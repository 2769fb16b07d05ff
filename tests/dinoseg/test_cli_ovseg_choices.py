"""The open-vocabulary commands' generated choices: --recipe (label-text, eval-ovss) and --head (train-ovss)."""

from __future__ import annotations

import pytest

from dinoseg.cli import build_parser
from dinoseg.cli.options import config_options
from dinoseg_core.ovseg.config import (
    IMAGENET_TEMPLATES,
    HeadOptions,
    OvsegConfig,
    OvsegOptions,
    SegHeadConfig,
)

MODEL = ["--dinotxt", "random:tiny"]


def test_label_text_takes_a_recipe_and_overrides_of_its_fields():
    args = build_parser().parse_args(["label-text", "--classes", "a,b", "--images", "x/", "--archive", "m.zarr",
                                      *MODEL, "--recipe", "dinotxt", "--stride", "128"])
    options = config_options(args, OvsegOptions, OvsegConfig())
    assert options.model_dump(exclude_none=True) == {"recipe": "dinotxt", "stride": 128}
    config = OvsegConfig.from_dict(options.model_dump(exclude_none=True))  # what the flow's tasks build
    assert (config.short_side, config.window, config.stride, config.global_view, config.prior_weight,
            config.average, config.templates) == (512, 384, 128, False, 0.0, "probabilities", IMAGENET_TEMPLATES)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["eval-ovss", "--dataset", "d", *MODEL, "--recipe", "meta"])


@pytest.mark.parametrize("flag", ["--head", "--head-kind"])
def test_train_ovss_head_picks_the_architecture(flag):
    args = build_parser().parse_args(["train-ovss", "--dataset", "d", "--checkpoint", "h.safetensors", "--steps",
                                      "5", *MODEL, flag, "catseg", "--head-rounds", "3"])
    head = config_options(args, HeadOptions, SegHeadConfig(), prefix="head-", exclude=("feature_dim",))
    assert head.model_dump(exclude_none=True) == {"kind": "catseg", "rounds": 3}
    plain = build_parser().parse_args(["train-ovss", "--dataset", "d", "--checkpoint", "h.safetensors", "--steps",
                                       "5", *MODEL])
    assert config_options(plain, HeadOptions, SegHeadConfig(), prefix="head-", exclude=("feature_dim",)) is None
