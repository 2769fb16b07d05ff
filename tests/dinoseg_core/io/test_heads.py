"""Head checkpoints at URLs: a model's head round-trips, foreign or broken files are refused by name."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save

from dinoseg_core.errors import CheckpointError, ObjectNotFoundError
from dinoseg_core.io.heads import HeadCheckpoint, load_seg_model, save_seg_model
from dinoseg_core.ovseg import load_dinotxt
from tests.ovseg_factory import TINY_HEAD, tiny_seg_model

HEAD = TINY_HEAD


@pytest.fixture(scope="module")
def dinotxt():
    return load_dinotxt("random:tiny@0", device="cpu")


fresh_model = tiny_seg_model


def test_a_model_round_trips_through_a_url(dinotxt, tmp_path):
    model = fresh_model(dinotxt)
    url = "memory://ovseg-model/head.safetensors"
    save_seg_model(model, url)
    loaded = load_seg_model(url, dinotxt)
    for (name, a), (_, b) in zip(model.head.state_dict().items(), loaded.head.state_dict().items()):
        assert torch.equal(a, b), name
    assert loaded.fingerprint() == model.fingerprint() != fresh_model(dinotxt, seed=1).fingerprint()
    other = load_dinotxt("random:tiny@1", device="cpu")
    with pytest.raises(CheckpointError, match="trained on dino.txt"):
        load_seg_model(url, other)
    assert load_seg_model(url, other, allow_other_dinotxt=True).fingerprint() != model.fingerprint()
    (tmp_path / "x.safetensors").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_seg_model(str(tmp_path / "x.safetensors"), dinotxt)
    (tmp_path / "other.safetensors").write_bytes(save({"w": torch.zeros(2)}))
    with pytest.raises(CheckpointError, match="not a dinoseg head checkpoint"):
        load_seg_model(str(tmp_path / "other.safetensors"), dinotxt)
    with pytest.raises(ObjectNotFoundError):
        load_seg_model(str(tmp_path / "missing.safetensors"), dinotxt)


def test_a_training_checkpoint_store_starts_empty_and_keeps_the_last_write(tmp_path):
    store = HeadCheckpoint(tmp_path / "run" / "head.safetensors")
    assert store.read() is None and store.url == str(tmp_path / "run" / "head.safetensors")
    store.write({"head.w": torch.ones(2)}, {"format": "dinoseg-ovseg-head-v1", "step": 1})
    store.write({"head.w": torch.zeros(2)}, {"format": "dinoseg-ovseg-head-v1", "step": 2})
    tensors, meta = store.read()
    assert meta["step"] == 2 and torch.equal(tensors["head.w"], torch.zeros(2))
    assert HeadCheckpoint("s3://user:secret@bucket/head.safetensors").name == "s3://***@bucket/head.safetensors"
