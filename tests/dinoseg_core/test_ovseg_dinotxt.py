"""dino.txt loading: Meta's key layout mapped key by key (outputs equal to an independent re-implementation of
Meta's towers), every key accounted for, URLs, random variants, class embeddings."""

from __future__ import annotations

import fsspec
import pytest
import torch
import torch.nn.functional as F

from dinoseg_core.backbone import load_backbone
from dinoseg_core.errors import CheckpointError, InputError
from dinoseg_core.ovseg.dinotxt import backbone_tokens, load_dinotxt
from dinoseg_core.ovseg.towers import swiglu_hidden
from tests.ovseg_factory import (
    CORPUS,
    learn_merges,
    meta_dinotxt_state_dict,
    meta_text_forward,
    meta_vision_head_forward,
    write_bpe_vocab,
)

NAME = "dinov3_vitl16_dinotxt_vision_head_and_text_encoder-0000test.pth"
TEXT_HEADS = 1  # width 64 -> 64 // 64 heads, as the loader infers for non-1280 widths


@pytest.fixture(scope="module")
def backbone():
    return load_backbone("random:tiny@3", device="cpu")


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    merges = learn_merges(CORPUS, 60)
    return write_bpe_vocab(tmp_path_factory.mktemp("bpe") / "bpe.txt.gz", merges), 512 + len(merges) + 2


@pytest.fixture(scope="module")
def meta_file(tmp_path_factory, bpe):
    sd = meta_dinotxt_state_dict(vision_dim=64, text_vocab=bpe[1], seed=1)
    path = tmp_path_factory.mktemp("ckpt") / NAME
    torch.save(sd, path)
    return path, sd


@pytest.fixture(scope="module")
def loaded(meta_file, backbone, bpe):
    return load_dinotxt(meta_file[0], backbone=backbone, bpe=bpe[0])


def test_swiglu_hidden_is_metas():
    assert swiglu_hidden(1024) == 2752 and swiglu_hidden(64) == 192


def test_architecture_read_off_the_file(loaded, bpe):
    a = loaded.arch
    assert (a.vision_dim, a.vision_blocks, a.vision_heads, a.vision_mlp_hidden) == (64, 2, 4, 192)
    assert (a.text_vocab, a.text_context, a.text_width, a.text_layers, a.embed_dim) == (bpe[1], 77, 64, 2, 128)
    assert not any(p.requires_grad for p in loaded.towers.parameters())


def test_outputs_equal_meta_reference(loaded, meta_file):
    sd = meta_file[1]
    pixels = torch.randn(2, 3, 48, 64)
    tokens = backbone_tokens(loaded.backbone, pixels)
    assert tokens.shape == (2, 1 + 4 + 12, 64)
    reference = meta_vision_head_forward(sd, tokens, heads=4)
    cls, patches = loaded.image_tokens(pixels)
    torch.testing.assert_close(cls, reference[:, 0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(patches, reference[:, 5:].reshape(2, 3, 4, 64).permute(0, 3, 1, 2),
                               rtol=1e-4, atol=1e-4)
    image = loaded.encode_image(pixels)
    assert image.shape == (2, 128)
    torch.testing.assert_close(image[:, 64:], reference[:, 5:].mean(1), rtol=1e-4, atol=1e-4)

    texts = ["a photo of a building.", "road", "there is a flooded field in the scene."]
    ids = loaded.tokenizer.tokenize(texts)
    torch.testing.assert_close(loaded.encode_text(texts), meta_text_forward(sd, ids, heads=TEXT_HEADS),
                               rtol=1e-4, atol=1e-4)


def test_fsspec_url_is_cached(meta_file, backbone, bpe, tmp_path):
    url = "memory://ovseg-dinotxt/" + NAME
    with fsspec.open(url, "wb") as fh:
        fh.write(meta_file[0].read_bytes())
    first = load_dinotxt(url, backbone=backbone, bpe=bpe[0], cache_dir=tmp_path)
    assert any(tmp_path.glob("checkpoints/*/" + NAME))
    fsspec.filesystem("memory").rm(url.removeprefix("memory://"))
    second = load_dinotxt(url, backbone=backbone, bpe=bpe[0], cache_dir=tmp_path)  # from the cache
    assert first.fingerprint == second.fingerprint


def _write(tmp_path, sd, name=NAME):
    path = tmp_path / name
    torch.save(sd, path)
    return path


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda sd: sd.pop("text_model.backbone.blocks.1.ffn_norm.bias"),
         r"missing key 'text_model.backbone.blocks.1.ffn_norm.bias'"),
        (lambda sd: sd.pop("visual_model.head.blocks.0.mlp.w2.weight"),
         r"missing key 'visual_model.head.blocks.0.mlp.w2.weight'"),
        (lambda sd: sd.__setitem__("text_model.head.extra", torch.zeros(2)), r"unexpected key 'text_model.head.extra'"),
        (lambda sd: sd.__setitem__("visual_model.backbone.cls_token", torch.zeros(1, 1, 64)),
         r"unexpected key 'visual_model.backbone.cls_token'.*load the backbone from its own"),
        (lambda sd: sd.__setitem__("visual_model.head.blocks.0.attn.qkv.bias", torch.zeros(192)),
         r"unexpected key 'visual_model.head.blocks.0.attn.qkv.bias'"),
        (lambda sd: sd.__setitem__("visual_model.head.blocks.1.ls1.gamma", torch.zeros(63)),
         r"'visual_model.head.blocks.1.ls1.gamma' has shape \(63,\), expected \(64,\)"),
    ],
)
def test_every_key_is_accounted_for(meta_file, backbone, bpe, tmp_path, edit, message):
    sd = dict(meta_file[1])
    edit(sd)
    with pytest.raises(CheckpointError, match=message):
        load_dinotxt(_write(tmp_path, sd), backbone=backbone, bpe=bpe[0])


def test_logit_scale_is_optional(meta_file, backbone, bpe, tmp_path):
    sd = dict(meta_file[1])
    del sd["logit_scale"]
    model = load_dinotxt(_write(tmp_path, sd), backbone=backbone, bpe=bpe[0])
    assert model.towers.logit_scale.exp().item() == pytest.approx(1 / 0.07, rel=1e-5)


def test_wrong_backbone_vocabulary_or_file(meta_file, bpe, backbone, tmp_path):
    wide = meta_dinotxt_state_dict(vision_dim=128, text_vocab=bpe[1])
    with pytest.raises(CheckpointError, match="128 wide but backbone .* is 64 wide"):
        load_dinotxt(_write(tmp_path, wide), backbone=backbone, bpe=bpe[0])
    with pytest.raises(CheckpointError, match="need CLIP's vocabulary"):
        load_dinotxt(meta_file[0], backbone=backbone)
    other = write_bpe_vocab(tmp_path / "other.txt.gz", learn_merges(CORPUS, 10))
    with pytest.raises(CheckpointError, match="tokens but the vocabulary"):
        load_dinotxt(meta_file[0], backbone=backbone, bpe=other)
    with pytest.raises(CheckpointError, match="need their backbone"):
        load_dinotxt(meta_file[0], bpe=bpe[0])
    torch.save({"cls_token": torch.zeros(1, 1, 64), "blocks.0.attn.qkv.weight": torch.zeros(192, 64)},
               tmp_path / "backbone.pth")
    with pytest.raises(CheckpointError, match="looks like a backbone checkpoint"):
        load_dinotxt(tmp_path / "backbone.pth", backbone=backbone, bpe=bpe[0])
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        load_dinotxt(tmp_path / "junk.pth", backbone=backbone, bpe=bpe[0])
    with pytest.raises(CheckpointError, match="no such"):
        load_dinotxt(tmp_path / "absent.pth", backbone=backbone, bpe=bpe[0])
    with pytest.raises(CheckpointError, match="random:tiny"):
        load_dinotxt("random:huge", backbone=backbone)


def test_random_variant_is_seeded(backbone):
    a = load_dinotxt("random:tiny@5", backbone=backbone)
    b = load_dinotxt("random:tiny@5", backbone=backbone)
    c = load_dinotxt("random:tiny@6", backbone=backbone)
    assert a.fingerprint == b.fingerprint != c.fingerprint
    assert a.is_random and a.tokenizer.vocab_size == 514 and a.arch.embed_dim == 128


def test_class_embeddings(loaded):
    emb = loaded.embed_classes(["building", "Road", "water"], templates=("a photo of a {}.", "the {}."),
                               background_prompts=("background",))
    assert emb.names == ("building", "Road", "water", "background") and emb.class_names == emb.names[:3]
    assert emb.cls.shape == emb.patch.shape == (4, 64)
    torch.testing.assert_close(emb.cls.norm(dim=1), torch.ones(4))
    # the ensemble: renormalised mean of per-template unit halves
    feats = loaded.encode_text(["a photo of a building.", "the building."])
    expected = F.normalize(F.normalize(feats[:, 64:], dim=1).mean(0), dim=0)
    torch.testing.assert_close(emb.patch[0], expected, rtol=1e-5, atol=1e-5)
    again = loaded.embed_classes(["building", "Road", "water"], templates=("a photo of a {}.", "the {}."),
                                 background_prompts=("background",))
    assert again.digest == emb.digest


@pytest.mark.parametrize("names, message", [
    (["road", "Road "], "duplicates"),
    (["road", ""], "empty"),
    ("road,water,", "empty"),
    ([], "empty"),
    (["road", None], "must be strings"),
])
def test_bad_class_lists(loaded, names, message):
    with pytest.raises(InputError, match=message):
        loaded.embed_classes(names)


def test_class_name_longer_than_context(loaded):
    with pytest.raises(InputError, match=r"class 'zebra zebra.* tokens long; the text tower reads at most 77"):
        loaded.embed_classes(["road", " ".join(["zebra"] * 70)])
