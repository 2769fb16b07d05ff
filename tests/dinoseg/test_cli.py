"""The commands that run the method directly (`segment`, `correspond`): local folders and a real S3 API, partial
failure, options from the config; and what every command does before any work (help, argument errors)."""

import json
import subprocess
import sys

import numpy as np
import pytest

from dinoseg.cli import build_parser, main
from dinoseg.cli.segment import config_from_args
from dinoseg_core.config import InsidConfig
from dinoseg_core.io import imageio, storage
from dinoseg_core.synthetic import generate_scene, write_demo_dataset
from tests.dinoseg.subprocess_cli import HEAVY, python

# random weights need a finer clustering cut than the paper's tau (see tests/dinoseg_core/test_segmenter.py)
FAST = ["--backbone", "random:dinov3-vits16@0", "--image-size", "512", "--tau", "0.9", "--device", "cpu"]


def iou(a, b):
    return (a & b).sum() / max((a | b).sum(), 1)


def segment_args(data, out, extra=()):
    args = ["segment", "--out", out, *FAST, *extra]
    for ref in data["references"]:
        args += ["--reference", ref["image"], ref["mask"]]
    for target in data["targets"]:
        args += ["--target", target["image"]]
    return args


def test_method_options_are_generated_from_the_config():
    args = build_parser().parse_args(
        ["segment", "--reference", "a", "b", "--target", "c", "--out", "d", "--svd-components", "100", "--crf"]
    )
    assert config_from_args(args) == InsidConfig(svd_components=100, crf=True)
    defaults = build_parser().parse_args(["segment", "--reference", "a", "b", "--target", "c", "--out", "d"])
    assert config_from_args(defaults) == InsidConfig()


@pytest.mark.slow
def test_segment_writes_one_mask_per_target_at_its_size(tmp_path):
    data = write_demo_dataset(str(tmp_path / "data"), n_references=1, n_targets=3, size=256, seed=3)
    out = str(tmp_path / "masks")
    assert main(segment_args(data, out, ["--save-similarity"])) == 0
    for target in data["targets"]:
        mask = imageio.read_mask(f"{out}/{target['name']}.png")
        truth = imageio.read_mask(target["gt_mask"])
        assert mask.shape == truth.shape
        assert iou(mask, truth) > 0.4
        assert np.load(f"{out}/{target['name']}_similarity.npy").shape == (32, 32)


@pytest.mark.slow
def test_a_bad_target_is_named_and_the_others_are_still_written(tmp_path, capsys):
    data = write_demo_dataset(str(tmp_path / "data"), n_references=1, n_targets=2, size=256, seed=5)
    broken = tmp_path / "data" / "targets" / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    data["targets"].append({"image": str(broken), "name": "broken"})
    out = tmp_path / "masks"
    assert main(segment_args(data, str(out))) == 1
    assert sorted(p.name for p in out.iterdir()) == ["target_000.png", "target_001.png"]
    assert "broken.png" in capsys.readouterr().err


def test_an_empty_reference_mask_stops_before_any_work(tmp_path, capsys):
    data = write_demo_dataset(str(tmp_path / "data"), n_references=1, n_targets=1, size=64, seed=1)
    imageio.write_mask_png(data["references"][0]["mask"], np.zeros((64, 64), bool))
    assert main(segment_args(data, str(tmp_path / "masks"))) == 2
    assert "empty" in capsys.readouterr().err
    assert not (tmp_path / "masks").exists()


def test_two_targets_with_one_stem_are_refused(tmp_path, capsys):
    data = write_demo_dataset(str(tmp_path / "data"), n_references=1, n_targets=1, size=64, seed=1)
    other = tmp_path / "other"
    other.mkdir()
    (other / "target_000.png").write_bytes(storage.read_bytes(data["targets"][0]["image"]))
    data["targets"].append({"image": str(other / "target_000.png")})
    assert main(segment_args(data, str(tmp_path / "masks"))) == 2
    assert "both be written as target_000.png" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.integration
def test_segment_reads_and_writes_s3_with_a_glob(s3_server, tmp_path):
    bucket = s3_server["make_bucket"]()
    so = s3_server["storage_options"]
    data = write_demo_dataset(f"{bucket}/data", n_references=1, n_targets=2, size=256, seed=7, storage_options=so)
    args = ["segment", "--out", f"{bucket}/masks", *FAST, "--storage-options", json.dumps(so)]
    args += ["--reference", data["references"][0]["image"], data["references"][0]["mask"]]
    args += ["--target", f"{bucket}/data/targets/*.png"]
    assert main(args) == 0
    written = storage.glob(f"{bucket}/masks/*.png", so)
    assert [storage.stem(u) for u in written] == ["target_000", "target_001"]
    mask = imageio.read_mask(written[0], so)
    assert iou(mask, imageio.read_mask(data["targets"][0]["gt_mask"], so)) > 0.4


@pytest.mark.slow
def test_correspond_follows_a_shift_between_two_views(tmp_path, capsys):
    scene = generate_scene(3, size=384).image
    dx, dy = 48, 32  # the target shows the same ground moved 48 px right and 32 px down
    imageio.write_image_png(str(tmp_path / "source.png"), scene[64:320, 64:320])
    imageio.write_image_png(str(tmp_path / "target.png"), scene[64 - dy : 320 - dy, 64 - dx : 320 - dx])
    (tmp_path / "points.json").write_text(json.dumps({"keypoints": [[64, 64], [128, 128], [180, 100], [100, 180]]}))
    args = ["correspond", "--source", str(tmp_path / "source.png"), "--target", str(tmp_path / "target.png"),
            "--keypoints-file", str(tmp_path / "points.json"), "--out", str(tmp_path / "matches.json"),
            "--backbone", "random:dinov3-vits16@0", "--image-size", "256", "--device", "cpu"]
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((tmp_path / "matches.json").read_text())
    moved = np.array(printed["matches"]) - np.array(printed["keypoints"])
    assert np.abs(moved - [dx, dy]).max() < 16, moved  # within one patch of the true shift


def test_correspond_refuses_malformed_keypoints_before_loading_a_model(tmp_path, capsys):
    base = ["correspond", "--source", "a.png", "--target", "b.png"]
    with pytest.raises(SystemExit) as exit_info:
        main([*base, "--keypoints", "1,2,3"])
    assert exit_info.value.code == 2 and "x,y pixel pairs" in capsys.readouterr().err
    (tmp_path / "points.json").write_text('{"points": [[1, 2]]}')
    assert main([*base, "--keypoints-file", str(tmp_path / "points.json")]) == 2
    assert "give [[x, y], ...]" in capsys.readouterr().err


def test_help_imports_neither_torch_nor_prefect():
    top = subprocess.run([sys.executable, "-m", "dinoseg", "--help"], capture_output=True, text=True, timeout=60)
    assert top.returncode == 0 and "label-text" in top.stdout and "correspond" in top.stdout
    assert "no Prefect" not in top.stdout
    code = """
import sys
from dinoseg.cli import build_parser
parser = build_parser()
commands = next(a for a in parser._actions if a.dest == "command").choices
for name, command in commands.items():
    assert "--help" in command.format_help(), name
print(sorted(commands))
print(sorted(m for m in %r if m in sys.modules))
""" % (HEAVY,)
    result = python(code)
    assert result.returncode == 0, result.stderr
    names, imported = result.stdout.splitlines()
    assert names == str(sorted(["segment", "basis", "correspond", "label", "preview", "export", "vacuum",
                                "label-text", "train-ovss", "eval-ovss", "evaluate", "calibrate", "serve"]))
    assert imported == "[]"


# ------------------------------------------------------------------------------------------------ exit codes
def _caused(error, cause):
    error.__cause__ = cause
    return error


def _exit_code_cases():
    import errno
    import signal

    from prefect.exceptions import TerminationSignal

    from dinoseg.cli.prefect_api import PrefectUnavailable
    from dinoseg_core.errors import (
        AccessDeniedError,
        InputError,
        ObjectNotFoundError,
        OutOfSpaceError,
        StorageError,
        TransientStorageError,
    )
    from dinoseg_core.stop import Stopped

    return [
        (InputError("--tau 1.5: must be in (0, 1]"), 2),
        (ObjectNotFoundError("s3://lake/refs.yaml: no such object"), 2),
        (AccessDeniedError("s3://lake/refs.yaml: access denied"), 2),
        (PrefectUnavailable("the temporary Prefect server did not come up"), 3),
        (TransientStorageError("s3://lake/a.zarr: still failing after 3 attempts (503)"), 3),
        (_caused(StorageError("Cannot read s3://lake/a.zarr/zarr.json"), ConnectionRefusedError(111, "refused")),
         3),  # storage unreachable: classified by its cause
        (OutOfSpaceError("the storage is full"), 3),
        (OSError(errno.ENOSPC, "No space left on device"), 3),
        (RuntimeError("a bug"), 3),
        (Stopped(signal.SIGINT), 130),
        (KeyboardInterrupt(), 130),
        (Stopped(signal.SIGTERM), 143),
        (TerminationSignal(signal.SIGTERM), 143),  # Prefect's, raised while a flow runs
        (SystemExit(2), None),  # argparse's own exit goes through untouched
    ]


@pytest.mark.parametrize("error, code", _exit_code_cases(), ids=lambda x: type(x).__name__ if x is not None else "")
def test_exit_codes_tell_inputs_from_infrastructure_and_from_signals(error, code):
    from dinoseg.cli import exit_code

    assert exit_code(error) == code


def test_an_unexpected_error_is_one_line_and_exit_3(tmp_path, capsys, monkeypatch):
    from dinoseg.cli import label

    def crash(args):
        raise MemoryError("cannot allocate 6.25 GB")

    monkeypatch.setattr(label, "run_vacuum", crash)
    parser_main = main(["vacuum", "--archive", str(tmp_path)])  # the handler is bound when the parser is built
    assert parser_main == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["dinoseg: error: MemoryError: cannot allocate 6.25 GB (exit code 3; -v prints the traceback)"]
