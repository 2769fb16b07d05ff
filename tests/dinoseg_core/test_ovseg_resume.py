"""A resumed training run refuses changed settings (issue 14, item 5): the training config (all but
``checkpoint_every``), the class list and the caller's settings (the dataset) are compared with the checkpoint's,
each difference is named with both values, and ``allow_changes`` continues with the new ones."""

from __future__ import annotations

import pytest
import torch

from dinoseg_core.errors import CheckpointError
from dinoseg_core.io.heads import HeadCheckpoint, read_head_checkpoint
from dinoseg_core.ovseg import SegHeadConfig, SegModel, TrainConfig, load_dinotxt, train
from dinoseg_core.ovseg.train import changed_settings
from tests.ovseg_factory import shapes_dataset

HEAD = SegHeadConfig(feature_dim=64, hidden=16, early_blocks=0, spatial_blocks=1, class_blocks=1, class_heads=2,
                     decoder_channels=(8,))
TRAIN = TrainConfig(batch_size=2, lr=1e-3, short_side=64, crop=64, templates=("a {}.",), checkpoint_every=2)
DATASET = {"dataset": {"root": "s3://lake/datasets/shapes", "layout": "folder"}}


@pytest.fixture(scope="module")
def dinotxt():
    return load_dinotxt("random:tiny@0", device="cpu")


def model(dinotxt):
    torch.manual_seed(0)
    return SegModel(dinotxt, config=HEAD)


@pytest.fixture()
def checkpoint(dinotxt, tmp_path):
    url = str(tmp_path / "head.safetensors")
    train(model(dinotxt), shapes_dataset(2, size=64, seed=1), 2, config=TRAIN, checkpoint=HeadCheckpoint(url),
          settings=DATASET)
    return url


def test_the_checkpoint_records_the_settings(checkpoint):
    _, meta = read_head_checkpoint(checkpoint)
    assert meta["train_config"]["lr"] == 1e-3 and meta["dataset"] == DATASET["dataset"]


def test_a_resume_with_other_settings_is_refused_naming_them(dinotxt, checkpoint):
    data = shapes_dataset(2, size=64, seed=1)
    changed = TRAIN.replace(lr=3e-3, batch_size=4, checkpoint_every=1)  # checkpoint_every alone would be fine
    other = {"dataset": {"root": "s3://lake/datasets/other", "layout": "folder"}}
    with pytest.raises(CheckpointError) as caught:
        train(model(dinotxt), data, 4, config=changed, checkpoint=HeadCheckpoint(checkpoint), settings=other)
    message = str(caught.value)
    assert "cannot resume: these settings differ from the checkpoint's" in message
    assert "batch_size: 2 in the checkpoint, 4 now" in message and "lr: 0.001 in the checkpoint, 0.003 now" in message
    assert "dataset.root: 's3://lake/datasets/shapes' in the checkpoint, 's3://lake/datasets/other' now" in message
    assert "checkpoint_every" not in message and "--allow-changes" in message
    assert read_head_checkpoint(checkpoint)[1]["step"] == 2  # nothing was trained or written


def test_a_resume_with_the_same_settings_continues_and_allow_changes_overrides(dinotxt, checkpoint):
    data = shapes_dataset(2, size=64, seed=1)
    same = train(model(dinotxt), data, 3, config=TRAIN.replace(checkpoint_every=5),
                 checkpoint=HeadCheckpoint(checkpoint), settings=DATASET)
    assert same.resumed_from == 2 and same.step == 3
    changed = train(model(dinotxt), data, 4, config=TRAIN.replace(lr=3e-3), checkpoint=HeadCheckpoint(checkpoint),
                    settings=DATASET, allow_changes=True)
    assert changed.resumed_from == 3 and changed.step == 4
    assert read_head_checkpoint(checkpoint)[1]["train_config"]["lr"] == 3e-3  # the checkpoint now holds the new ones


def test_another_class_list_is_a_change_and_older_checkpoints_compare_what_they_record():
    meta = {"class_names": ["a", "b"], "train_config": {"lr": 0.001, "checkpoint_every": 2}}
    now = {"class_names": ["a", "c"], "train_config": {"lr": 0.001, "checkpoint_every": 9}, "dataset": {"root": "x"}}
    assert changed_settings(meta, now) == ["classes: ['a', 'b'] in the checkpoint, ['a', 'c'] now"]
