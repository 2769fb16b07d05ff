"""`dinoseg segment` end to end: local folders and a real S3 API, partial failure, options from the config."""

import json

import numpy as np
import pytest

from dinoseg_core.io import imageio, storage
from dinoseg_core.cli import build_parser, config_from_args, main
from dinoseg_core.config import InsidConfig
from dinoseg_core.synthetic import write_demo_dataset

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
