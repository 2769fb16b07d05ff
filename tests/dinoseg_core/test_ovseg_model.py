"""The dinov3.seg head: shapes, class-permutation equivariance, checkpoints (recording the head kind), exact resume of
training."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dinoseg_core.errors import CheckpointError, InputError
from dinoseg_core.io.heads import HeadCheckpoint, load_seg_model, read_head_checkpoint, save_seg_model
from dinoseg_core.ovseg import (
    OvsegConfig,
    SegHead,
    SegModel,
    TextSegmenter,
    TrainConfig,
    load_dinotxt,
    train,
)
from dinoseg_core.ovseg.model import CatSegHead, build_head, head_from_checkpoint
from tests.ovseg_factory import SHAPE_CLASSES, TINY_HEAD, shapes_dataset, tiny_seg_model

HEAD = TINY_HEAD
CATSEG = TINY_HEAD.replace(kind="catseg", attention_window=4, guidance_dim=8)
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
    with pytest.raises(CheckpointError, match=r"made for a 'small' head, not this run's 'catseg' head \(--head small"):
        train(SegModel(dinotxt, config=CATSEG), data, 5, config=TRAIN, checkpoint=HeadCheckpoint(url))


def test_checkpoints_record_the_head_kind_and_refuse_another(dinotxt):
    torch.manual_seed(0)
    model = SegModel(dinotxt, config=CATSEG)
    tensors, meta = model.checkpoint()
    assert meta["head"] == "catseg" and meta["head_config"]["kind"] == "catseg"
    loaded = SegModel.from_checkpoint(tensors, meta, dinotxt, kind="catseg")
    assert isinstance(loaded.head, CatSegHead) and loaded.fingerprint() == model.fingerprint()
    with pytest.raises(CheckpointError, match=r"holds a 'catseg' head, not a 'small' one; use --head catseg"):
        SegModel.from_checkpoint(tensors, meta, dinotxt, name="run.safetensors", kind="small")
    url = "memory://ovseg-kinds/head.safetensors"  # the same through a file at a URL
    save_seg_model(model, url)
    assert read_head_checkpoint(url)[1]["head"] == "catseg"
    assert isinstance(load_seg_model(url, dinotxt).head, CatSegHead)
    with pytest.raises(CheckpointError, match=r"ovseg-kinds/head.safetensors: this checkpoint holds a 'catseg' head"):
        load_seg_model(url, dinotxt, kind="small")
    relabelled = {**meta, "head": "small", "head_config": {**meta["head_config"], "kind": "small"}}
    with pytest.raises(CheckpointError, match="tensors of a 'catseg' head: the metadata is wrong"):
        head_from_checkpoint(tensors, relabelled, "run.safetensors")
    with pytest.raises(CheckpointError, match="corrupt metadata: 'head' says a 'small' head"):
        head_from_checkpoint(tensors, {**meta, "head": "small"}, "run.safetensors")


def test_a_checkpoint_from_before_head_kinds_is_a_small_head(dinotxt):
    torch.manual_seed(0)
    small = SegModel(dinotxt, config=TINY_HEAD.replace(kind="small"))
    tensors, meta = small.checkpoint()
    legacy = {k: v for k, v in meta.items() if k != "head"}
    legacy["head_config"] = {k: v for k, v in meta["head_config"].items()
                             if k not in ("kind", "rounds", "attention_window", "guidance_dim")}
    loaded = SegModel.from_checkpoint(tensors, legacy, dinotxt)
    assert isinstance(loaded.head, SegHead) and loaded.fingerprint() == small.fingerprint()
    # a small head's fingerprint depends on the fields it uses only (the pre-kind config: unchanged fingerprints)
    assert set(small.head.config.used()) == set(legacy["head_config"])
    other = SegModel(dinotxt, head=build_head(small.head.config.replace(rounds=5, attention_window=3)))
    other.head.load_state_dict(small.head.state_dict())
    assert other.fingerprint() == small.fingerprint()
