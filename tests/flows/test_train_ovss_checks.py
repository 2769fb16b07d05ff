"""train_ovss checks before and on resume (issue 14): a dataset with a bad annotation fails before any training
step, naming the file and its ids (item 7); a resume with other settings is refused naming them, and
``--allow-changes`` continues (item 5)."""

from __future__ import annotations

import pytest

from dinoseg.cli import main as cli
from dinoseg_core.errors import CheckpointError, InputError
from dinoseg_core.io.heads import read_head_checkpoint
from flows.text import train_ovss
from tests.ovseg_factory import SHAPE_CLASSES, write_shapes_folder

TINY = "random:tiny@0"
TRAIN = {"batch_size": 2, "lr": 1e-2, "short_side": 64, "crop": 64, "schedule": "constant",
         "templates": ["a photo of a {}."], "checkpoint_every": 2}
HEAD = {"hidden": 16, "early_blocks": 0, "spatial_blocks": 1, "class_blocks": 1, "class_heads": 2,
        "decoder_channels": [8]}


def test_a_bad_annotation_fails_before_any_training_step(tmp_path):
    data = write_shapes_folder(str(tmp_path / "data"), 4, seed=100, bad={2: [17]})
    checkpoint = tmp_path / "head.safetensors"
    state = train_ovss(dataset=data, dinotxt=TINY, checkpoint=str(checkpoint), steps=2,
                       classes=list(SHAPE_CLASSES), device="cpu", train=TRAIN, head=HEAD, return_state=True)
    assert state.is_failed()
    error = pytest.raises(InputError, state.result)
    error.match(r"1 of 4 annotation\(s\) hold label ids that are not class indices 0\.\.3")
    error.match(r"annotations/002\.png: \[17\]")
    assert not checkpoint.exists()  # no step ran (the first checkpoint is written at step 2)


def test_a_resume_with_other_settings_is_refused_unless_allowed(tmp_path, capsys):
    data = write_shapes_folder(str(tmp_path / "data"), 2, seed=100)
    checkpoint = str(tmp_path / "head.safetensors")
    common = {"dataset": data, "dinotxt": TINY, "checkpoint": checkpoint, "classes": list(SHAPE_CLASSES),
              "device": "cpu", "head": HEAD, "return_state": True}
    assert train_ovss(steps=2, train=TRAIN, **common).is_completed()
    refused = train_ovss(steps=4, train={**TRAIN, "lr": 3e-3, "batch_size": 1}, **common)
    assert refused.is_failed()
    error = pytest.raises(CheckpointError, refused.result)
    error.match(r"batch_size: 2 in the checkpoint, 1 now; lr: 0\.01 in the checkpoint, 0\.003 now")
    error.match("--allow-changes")
    assert read_head_checkpoint(checkpoint)[1]["step"] == 2

    args = ["train-ovss", "--dataset", data, "--classes", ",".join(SHAPE_CLASSES), "--dinotxt", TINY, "--device",
            "cpu", "--checkpoint", checkpoint, "--steps", "4", "--batch-size", "1", "--lr", "0.003", "--crop", "64",
            "--short-side", "64", "--schedule", "constant", "--templates", "a photo of a {}.", "--head-hidden", "16",
            "--head-early-blocks", "0", "--head-spatial-blocks", "1", "--head-class-blocks", "1",
            "--head-class-heads", "2", "--head-decoder-channels", "8"]
    assert cli(args) == 2 and "lr: 0.01 in the checkpoint, 0.003 now" in capsys.readouterr().err
    assert cli([*args, "--allow-changes"]) == 0
    assert "trained 4 steps (resumed from 2)" in capsys.readouterr().err
    assert read_head_checkpoint(checkpoint)[1]["train_config"]["lr"] == 0.003
