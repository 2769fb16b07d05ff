"""The dinov3.seg head: shapes, class-permutation equivariance, checkpoints, exact resume of training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dinoseg_core.errors import CheckpointError, InputError
from dinoseg_core.io.heads import HeadCheckpoint, read_head_checkpoint
from dinoseg_core.ovseg import (
    OvsegConfig,
    SegHead,
    SegModel,
    TextSegmenter,
    TrainConfig,
    load_dinotxt,
    train,
)
from tests.ovseg_factory import SHAPE_CLASSES, TINY_HEAD, shapes_dataset, tiny_seg_model

HEAD = TINY_HEAD
TRAIN = TrainConfig(batch_size=2, lr=1e-3, short_side=64, crop=64, templates=("a {}.",), checkpoint_every=2)


@pytest.fixture(scope="module")
def dinotxt():
    return load_dinotxt("random:tiny@0", device="cpu")


fresh_model = tiny_seg_model


def test_head_shapes_and_class_equivariance():
    torch.manual_seed(0)
    head = SegHead(HEAD).eval()
    cls, patches = torch.randn(2, 64), torch.randn(2, 64, 3, 5)
    text = torch.nn.functional.normalize(torch.randn(2, 4, 64), dim=-1)
    out = head(cls, patches, text[0], text[1])
    assert out.shape == (2, 4, 12, 20) and head.upsampling == 4
    perm = torch.tensor([2, 0, 3, 1])
    permuted = head(cls, patches, text[0][perm], text[1][perm])
    torch.testing.assert_close(permuted, out[:, perm], rtol=1e-4, atol=1e-5)
    one = head(cls, patches, text[0][:1], text[1][:1])  # any number of classes
    assert one.shape == (2, 1, 12, 20)
    with pytest.raises(InputError, match="features of width 64"):
        head(cls, torch.randn(2, 32, 3, 5), text[0], text[1])


def test_early_refinement_starts_as_identity():
    head = SegHead(HEAD)
    x = torch.randn(1, 64, 4, 4)
    torch.testing.assert_close(head.early(x), x)


def test_model_needs_matching_width(dinotxt):
    with pytest.raises(InputError, match="feature_dim=64"):
        SegModel(dinotxt, config=HEAD.replace(feature_dim=128))


def test_a_checkpoint_is_a_state_dict_the_model_takes_without_storage(dinotxt):
    model = fresh_model(dinotxt)
    tensors, meta = model.checkpoint({"note": "x"})
    assert meta["note"] == "x" and meta["head_config"] == HEAD.to_dict()
    loaded = SegModel.from_checkpoint(tensors, meta, dinotxt)
    assert loaded.fingerprint() == model.fingerprint()
    tensors.pop(next(iter(tensors)))
    with pytest.raises(CheckpointError, match="my head: head tensors do not match"):
        SegModel.from_checkpoint(tensors, meta, dinotxt, name="my head")


def test_trained_model_segments_at_image_size(dinotxt):
    seg = TextSegmenter(fresh_model(dinotxt), OvsegConfig(short_side=64, window=64, stride=32, templates=("a {}.",)))
    assert seg.mode == "dinov3.seg"
    result = seg.segment(np.random.default_rng(0).random((50, 90, 3), dtype=np.float32), ["road", "water"])
    assert result.labels.shape == (50, 90) and result.probabilities.shape == (2, 16, 28)


def test_resume_continues_exactly(dinotxt, tmp_path):
    data = shapes_dataset(3, size=64, seed=1)
    straight = train(fresh_model(dinotxt), data, 4, config=TRAIN)
    url = str(tmp_path / "run" / "head.safetensors")

    def crash(step, loss):
        if step == 2:  # after step 2's update, before the checkpoint of step 4
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(fresh_model(dinotxt), data, 4, config=TRAIN, checkpoint=HeadCheckpoint(url), on_step=crash)
    resumed_model = fresh_model(dinotxt, seed=123)  # different init: everything must come from the checkpoint
    seen = []
    second = train(resumed_model, data, 4, config=TRAIN, checkpoint=HeadCheckpoint(url),
                   on_step=lambda s, loss: seen.append(s))
    assert second.resumed_from == 2 and seen == [2, 3] and second.checkpoint == url
    np.testing.assert_allclose(second.losses, straight.losses, rtol=1e-5)
    tensors, meta = read_head_checkpoint(url)
    assert meta["step"] == 4 and meta["class_names"] == list(SHAPE_CLASSES) and len(tensors["loss_history"]) == 4
    done = train(resumed_model, data, 4, config=TRAIN, checkpoint=HeadCheckpoint(url))  # nothing left to do
    assert done.resumed_from == 4 and len(done.losses) == 4
    with pytest.raises(CheckpointError, match="another head architecture"):
        train(SegModel(dinotxt, config=HEAD.replace(hidden=32)), data, 5, config=TRAIN, checkpoint=HeadCheckpoint(url))
