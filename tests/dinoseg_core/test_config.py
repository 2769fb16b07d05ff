import argparse
from dataclasses import dataclass, field
from typing import Literal

import pytest
from pydantic import ValidationError

from dinoseg_core.config import (
    ConfigBase,
    InsidConfig,
    MethodOptions,
    SceneConfig,
    SceneOptions,
    add_options,
    apply_options,
    given_options,
    options_model,
)
from dinoseg_core.errors import InputError


def test_paper_defaults():
    config = InsidConfig()
    assert (config.image_size, config.tau, config.merge_threshold, config.crf) == (1024, 0.6, 0.2, False)
    assert config.resolved_svd_components(1024) == 500


def test_k_scales_with_feature_dimension_when_unset():
    assert InsidConfig().resolved_svd_components(384) == round(384 * 500 / 1024) == 188


@pytest.mark.parametrize("k", [384, 500])
def test_k_not_below_feature_dimension_is_a_user_error(k):
    with pytest.raises(InputError, match=r"svd_components=\d+ is not smaller than .* 384"):
        InsidConfig(svd_components=k).resolved_svd_components(384)


@pytest.mark.parametrize(
    "field, value", [("tau", 0.0), ("tau", 1.5), ("merge_threshold", -0.1), ("image_size", 8), ("basis_source", "x")]
)
def test_invalid_values_name_the_field(field, value):
    with pytest.raises(InputError, match=field):
        InsidConfig(**{field: value})


def test_round_trip_and_digest():
    config = InsidConfig(tau=0.55, crf=True)
    assert InsidConfig.from_dict(config.to_dict()) == config
    assert config.digest() != InsidConfig().digest()
    with pytest.raises(InputError, match=r"unknown INSID3 config field\(s\) \['tua'\]"):
        InsidConfig.from_dict({"tua": 0.5})


# ------------------------------------------------------------------------------------------ the config base

@dataclass(frozen=True)
class _Toy(ConfigBase):
    config_name = "toy config"

    size: int = field(default=8, metadata={"help": "side in px"})
    rank: int | None = field(default=None, metadata={"help": "k; None: automatic"})
    mode: Literal["a", "b"] = field(default="a", metadata={"help": "the mode"})
    flag: bool = field(default=True, metadata={"help": "a switch"})
    names: tuple[str, ...] = field(default=("x", "y"), metadata={"help": "some names"})


def test_dicts_round_trip_with_lists_for_tuples():
    toy = _Toy(names=("p", "q", "r"))
    assert toy.to_dict()["names"] == ["p", "q", "r"]
    assert _Toy.from_dict(toy.to_dict()) == toy
    assert toy.digest() != _Toy().digest() and toy.digest() == _Toy(names=("p", "q", "r")).digest()
    with pytest.raises(InputError, match=r"unknown toy config field\(s\) \['sise'\]; known fields: \['flag', "):
        _Toy.from_dict({"sise": 3})


def test_the_options_model_keeps_defaults_and_refuses_unknown_fields():
    model = options_model(_Toy, "ToyOptions")
    assert apply_options(_Toy(), model()) == _Toy()
    assert apply_options(_Toy(), model(names=["n"], rank=3)) == _Toy(names=("n",), rank=3)
    assert apply_options(_Toy(), {"mode": "b", "size": None}) == _Toy(mode="b")
    with pytest.raises(ValidationError, match="extra"):
        model(sise=3)
    with pytest.raises(ValidationError):
        model(mode="c")
    assert set(options_model(_Toy, "Fewer", exclude=("flag",)).model_fields) == {"size", "rank", "mode", "names"}


def test_method_options_are_strict_and_validated_by_the_config():
    with pytest.raises(ValidationError):
        MethodOptions(tau="0.5")
    with pytest.raises(InputError, match="tau=1.5"):
        apply_options(InsidConfig(), MethodOptions(tau=1.5))
    assert apply_options(SceneConfig(), SceneOptions(overlap=32)) == SceneConfig(overlap=32)


def _parser(source, **kwargs):
    parser = argparse.ArgumentParser()
    add_options(parser, source, "group", **kwargs)
    return parser


def test_command_line_options_follow_the_field_types():
    parser = _parser(_Toy, prefix="toy-")
    args = parser.parse_args(["--toy-size", "4", "--toy-rank", "2", "--toy-mode", "b", "--no-toy-flag",
                              "--toy-names", "m", "n"])
    given = given_options(args, _Toy, prefix="toy-")
    assert given == {"size": 4, "rank": 2, "mode": "b", "flag": False, "names": ["m", "n"]}
    assert _Toy.from_dict(given) == _Toy(size=4, rank=2, mode="b", flag=False, names=("m", "n"))
    assert given_options(parser.parse_args([]), _Toy, prefix="toy-") == {}
    with pytest.raises(SystemExit):
        parser.parse_args(["--toy-mode", "c"])
    assert "some names (default: x, y)" in parser.format_help()


def test_command_line_options_from_a_pydantic_model():
    from tasks.options import RunOptions

    parser = _parser(RunOptions, exclude=("cache",))
    args = parser.parse_args(["--storage-options", '{"anon": true}', "--force", "--task-runner", "dask",
                              "--workers", "3"])
    given = given_options(args, RunOptions, exclude=("cache",))
    assert RunOptions(**given) == RunOptions(storage_options={"anon": True}, force=True, task_runner="dask", workers=3)
    assert "--cache" not in parser.format_help()
    with pytest.raises(SystemExit):
        parser.parse_args(["--storage-options", "[1]"])
    only = _parser(RunOptions, only=("device", "dtype"))
    assert given_options(only.parse_args(["--dtype", "bfloat16"]), RunOptions, only=("device", "dtype")) == {
        "dtype": "bfloat16"}


def test_every_config_shares_the_base_and_its_options_models_are_importable_where_documented():
    from dinoseg_core.geo import SceneOptions as GeoSceneOptions
    from dinoseg_core.geo.scene import SceneConfig as GeoSceneConfig
    from dinoseg_core.ovseg.config import HeadOptions, OvsegConfig, SegHeadConfig, TrainConfig, TrainOptions

    assert GeoSceneOptions is SceneOptions and GeoSceneConfig is SceneConfig
    for config in (InsidConfig, SceneConfig, OvsegConfig, SegHeadConfig, TrainConfig):
        assert issubclass(config, ConfigBase)
    assert "feature_dim" not in HeadOptions.model_fields
    assert apply_options(TrainConfig(), TrainOptions(templates=["a {}."])).templates == ("a {}.",)
