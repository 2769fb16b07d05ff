"""`dinoseg label --radiometry`: generated from SceneConfig.radiometry, checked before any server starts."""

import pytest

from tests.dinoseg.subprocess_cli import dinoseg, python
from tests.pipeline_data import TINY, write_collection


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    root = tmp_path_factory.mktemp("lake")
    write_collection(str(root), tiles=1, size=64, concepts=("roof",))
    return root


@pytest.mark.parametrize("radiometry, message", [
    ("gamma", "radiometry 'gamma': unknown kind 'gamma'; use one of scene-percentile"),
    ("fixed:0,1;0,2", "radiometry 'fixed:0,1;0,2': give one LOW,HIGH for every band or three"),
])
def test_a_bad_radiometry_is_one_line_before_any_server(lake, radiometry, message):
    code, err, imported = dinoseg("label", "--references", f"{lake}/refs.yaml", "--images", f"{lake}/tiles/",
                                  "--archive", f"{lake}/a.zarr", "--backbone", TINY, "--radiometry", radiometry)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("dinoseg") and message in err[0]
    assert imported == []  # neither torch nor Prefect: no server was started


def test_radiometry_is_one_option_of_label_with_its_default():
    result = python("from dinoseg.cli import main; main(['label', '--help'])")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "--radiometry RADIOMETRY" in out and "--scene-radiometry" not in out
    assert "(default: scene-percentile)" in " ".join(out.split())


def test_radiometry_reaches_the_flows_scene_options_in_its_canonical_spelling():
    from dinoseg.cli import build_parser
    from dinoseg.cli.options import config_options
    from dinoseg_core.config import SceneConfig, SceneOptions

    args = build_parser().parse_args(["label", "--references", "r.yaml", "--images", "i", "--archive", "a.zarr",
                                      "--radiometry", "FIXED:0,3000.0", "--scene-overlap", "64"])
    scene = config_options(args, SceneOptions, SceneConfig(), prefix="scene-")
    assert scene.model_dump(exclude_none=True) == {"overlap": 64, "radiometry": "FIXED:0,3000.0"}
    config = SceneConfig().apply(scene.model_dump(exclude_none=True))
    assert config.radiometry == "fixed:0,3000" and config.to_dict()["radiometry"] == "fixed:0,3000"
