"""The commands that run flows (`label`, `label-text`, ...): arguments are checked before any server starts, a
server that cannot be reached is one line, and `label` hands every form of `--images` to the flow."""

import os

import pytest
import yaml

from dinoseg.cli import main
from tests.dinoseg.subprocess_cli import dinoseg
from tests.pipeline_data import TINY, write_collection


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    root = tmp_path_factory.mktemp("lake")
    write_collection(str(root), tiles=2, size=64)
    (root / "classes.txt").write_text("# a class file with a bad line\ngrass\nroad:\n")
    return root


def label_args(lake, *extra):
    return ["label", "--references", f"{lake}/refs.yaml", "--images", f"{lake}/tiles/", "--archive",
            f"{lake}/a.zarr", "--backbone", TINY, "--device", "cpu", *extra]


@pytest.mark.parametrize("change, message", [
    ({"--references": "{lake}/missing.yaml"}, "--references '{lake}/missing.yaml': no such file"),
    ({"--references": "{lake}/tiles/tile_000.png"}, "tile_000.png"),
    ({"--images": "{lake}/tiles/*.jpg"}, "matches no file"),
    ({"--tau": "1.5"}, "tau=1.5: must be in (0, 1]"),
    ({"--scene-window-size": "256", "--scene-overlap": "300"}, "overlap=300 must be smaller than window_size=256"),
    ({"--workers": "0"}, "--workers 0: Input should be greater than or equal to 1"),
    ({"--bands": "0,1,2"}, "argument --bands: '0,1,2': give 1 or 3 band numbers, each >= 1"),
    ({"--storage-options": "[1]"}, "argument --storage-options: must be a JSON object"),
    ({"--task-runner": "ray"}, "argument --task-runner: invalid choice: 'ray'"),
])
def test_a_bad_label_argument_is_one_line_before_any_server(lake, change, message):
    args = label_args(lake)
    for flag, value in change.items():
        value = value.format(lake=lake)
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    code, err, imported = dinoseg(*args)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("dinoseg") and message.format(lake=lake) in err[0]
    assert imported == []  # neither torch nor Prefect: no server was started


@pytest.mark.parametrize("args, message", [
    (["label-text", "--classes", "grass,,road", "--images", "{lake}/tiles/", "--archive", "a.zarr", "--dinotxt",
      "random:tiny"], "is empty"),
    (["label-text", "--classes", "grass,road", "--images", "{lake}/tiles/", "--archive", "a.zarr", "--dinotxt",
      "{lake}/missing.pth"], "--dinotxt '{lake}/missing.pth': no such file"),
    (["label-text", "--classes", "grass,road", "--images", "{lake}/tiles/", "--archive", "a.zarr", "--dinotxt",
      "random:tiny", "--window", "64", "--stride", "128"], "stride=128 is larger than window=64"),
    (["label-text", "--classes", "grass", "--images", "{lake}/tiles/", "--archive", "a.zarr", "--dinotxt",
      "random:tiny"], "one class ('grass') and no background option"),
    (["label-text", "--classes", "@{lake}/classes.txt", "--images", "{lake}/tiles/", "--archive", "a.zarr",
      "--dinotxt", "random:tiny"], "classes.txt: line 3 'road:': an empty prompt"),
    (["label-text", "--classes", "@{lake}/missing.txt", "--images", "{lake}/tiles/", "--archive", "a.zarr",
      "--dinotxt", "random:tiny"], "missing.txt: cannot read it"),
    (["train-ovss", "--dataset", "{lake}", "--classes", "a,b", "--dinotxt", "random:tiny", "--checkpoint", "h.st",
      "--steps", "0"], "--steps 0: must be at least 1"),
    (["train-ovss", "--dataset", "{lake}", "--classes", "a,b", "--dinotxt", "random:tiny", "--checkpoint", "h.st",
      "--steps", "2", "--head-hidden", "30", "--head-class-heads", "4"], "hidden=30 must be a multiple"),
    (["eval-ovss", "--dataset", "{lake}/nothing", "--classes", "a,b", "--dinotxt", "random:tiny"],
     "--dataset '{lake}/nothing': no such file"),
])
def test_a_bad_text_argument_is_one_line_before_any_server(lake, args, message):
    code, err, imported = dinoseg(*[a.format(lake=lake) for a in args])
    assert code == 2 and len(err) == 1, err
    assert message.format(lake=lake) in err[0] and imported == []


def test_an_unreachable_server_is_one_line_naming_the_fix_and_exit_3(lake):
    code, err, _ = dinoseg(*label_args(lake), env={"PREFECT_API_URL": "http://127.0.0.1:9/api"})
    assert code == 3 and not any("Traceback" in line for line in err), err
    assert err[-1].startswith("dinoseg: error: no Prefect server answers at PREFECT_API_URL=http://127.0.0.1:9/api")
    assert "prefect server start" in err[-1]


def test_a_temporary_server_that_does_not_come_up_is_one_line_naming_the_fix_and_exit_3(lake):
    code, err, _ = dinoseg(*label_args(lake), env={"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "0"})
    assert code == 3 and not any("Traceback" in line for line in err), err
    assert err[-1].startswith("dinoseg: error: the temporary Prefect server did not come up within 0 s")
    assert "set PREFECT_API_URL" in err[-1] and "raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" in err[-1]


# ----------------------------------------------------------------------------- under a Prefect server

@pytest.fixture(scope="module")
def prefect_server():
    """A temporary Prefect server for this module's flow runs; PREFECT_API_URL points the commands at it."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # as the commands do ("database is locked")
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def test_label_takes_a_folder_a_single_file_or_several_files(prefect_server, lake, tmp_path, capsys):
    tiles = sorted(str(p) for p in (lake / "tiles").iterdir())
    run = ["--cache", str(tmp_path / "cache"), "--workers", "1", "--batch-size", "1", "--tau", "0.9"]
    for images, archive, labelled in [([f"{lake}/tiles/"], "folder.zarr", 2), (tiles[:1], "one.zarr", 1),
                                      (tiles, "list.zarr", 2)]:
        args = label_args(lake, *run)
        args[args.index("--images") + 1 : args.index("--archive")] = images
        args[args.index("--archive") + 1] = str(tmp_path / archive)
        assert main(args) == 0
        assert f"labelled {labelled}, skipped 0, failed 0" in capsys.readouterr().err
    assert main(args) == 0 and "labelled 0, skipped 2, failed 0" in capsys.readouterr().err
    assert main([*args, "--force"]) == 0 and "labelled 2, skipped 0, failed 0" in capsys.readouterr().err


def test_an_input_the_flow_refuses_is_one_line_and_exit_2(prefect_server, lake, tmp_path, capsys):
    manifest = {"version": 1, "concepts": {"roof": {"references": [{"image": "ref.png", "mask": "mask.png"}]}}}
    (tmp_path / "refs.yaml").write_text(yaml.safe_dump(manifest))
    args = label_args(lake, "--archive", str(tmp_path / "a.zarr"))
    args[args.index("--references") + 1] = str(tmp_path / "refs.yaml")
    assert main(args) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("dinoseg: error:")]
    assert len(errors) == 1 and "ref.png" in errors[0], errors
