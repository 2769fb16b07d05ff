"""The DINOv3 backbone loader: presets, hub errors, HF directories, fsspec URLs + cache, Meta checkpoints,
random init, and forward_tokens. Every model here is tiny (64 wide, 2 blocks) except one real-shape ViT-S."""

from __future__ import annotations

import logging
import os
import time
import uuid
from types import SimpleNamespace

import fsspec
import pytest
import torch

from dinoseg_core.backbone import (
    IMAGENET,
    SAT493M,
    Backbone,
    Normalization,
    fetch_to_cache,
    fingerprint_model,
    load_backbone,
)
from dinoseg_core.io.checkpoints import (
    ARCHITECTURES,
    PRESETS,
    arch_from_filename,
    build_config,
    infer_meta_architecture,
)
from dinoseg_core.errors import CheckpointError, InputError
from tests.checkpoint_factory import (
    meta_reference_forward,
    random_model,
    tiny_config,
    to_meta_state_dict,
    write_hf_dir,
    write_meta_checkpoint,
)

META_VITS16_NAME = "dinov3_vits16_pretrain_lvd1689m-08c60483.pth"


def reference(model, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(cls (B, C), patches (B, C, h, w)) straight from a DINOv3ViTModel."""
    with torch.no_grad():
        tokens = model(pixel_values=pixels).last_hidden_state
    b, _, h, w = pixels.shape
    p = model.config.patch_size
    patches = tokens[:, 1 + model.config.num_register_tokens:]
    return tokens[:, 0], patches.reshape(b, h // p, w // p, -1).permute(0, 3, 1, 2)


def assert_same_outputs(backbone: Backbone, model, pixels: torch.Tensor, atol: float = 1e-5) -> None:
    cls, patches = backbone.forward_tokens(pixels)
    ref_cls, ref_patches = reference(model, pixels)
    assert cls.shape == ref_cls.shape and patches.shape == ref_patches.shape
    torch.testing.assert_close(cls, ref_cls, atol=atol, rtol=1e-4)
    torch.testing.assert_close(patches, ref_patches, atol=atol, rtol=1e-4)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random tiny model, written as an HF directory and as a Meta .pth under an uninformative name."""
    root = tmp_path_factory.mktemp("tiny")
    model = random_model(tiny_config(), seed=0)
    return SimpleNamespace(
        model=model,
        root=root,
        hf=write_hf_dir(model, root / "hf"),
        pth=write_meta_checkpoint(model, root / "weights.pth"),
        pixels=torch.randn(2, 3, 64, 48, generator=torch.Generator().manual_seed(1)),
    )


@pytest.fixture
def cache_root(tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("DINOSEG_CACHE_DIR", str(root))
    return root


def memory_dir(local_dir: str) -> str:
    """Copy a local directory into fsspec's memory filesystem; returns its memory:// URL."""
    fs = fsspec.filesystem("memory")
    base = f"/dinoseg-test-{uuid.uuid4().hex}/model"
    for name in os.listdir(local_dir):
        with open(os.path.join(local_dir, name), "rb") as fh:
            fs.pipe_file(f"{base}/{name}", fh.read())
    return f"memory://{base}"


# ---------------------------------------------------------------------------------------------------- presets

def test_presets_map_to_public_hub_ids():
    assert {name: p.hub_id for name, p in PRESETS.items()} == {
        "dinov3-vits16": "facebook/dinov3-vits16-pretrain-lvd1689m",
        "dinov3-vits16plus": "facebook/dinov3-vits16plus-pretrain-lvd1689m",
        "dinov3-vitb16": "facebook/dinov3-vitb16-pretrain-lvd1689m",
        "dinov3-vitl16": "facebook/dinov3-vitl16-pretrain-lvd1689m",
        "dinov3-vith16plus": "facebook/dinov3-vith16plus-pretrain-lvd1689m",
        "dinov3-vit7b16": "facebook/dinov3-vit7b16-pretrain-lvd1689m",
        "dinov3-vitl16-sat493m": "facebook/dinov3-vitl16-pretrain-sat493m",
        "dinov3-vit7b16-sat493m": "facebook/dinov3-vit7b16-pretrain-sat493m",
    }
    assert {n for n, p in PRESETS.items() if p.normalization == "sat493m"} == {
        "dinov3-vitl16-sat493m", "dinov3-vit7b16-sat493m"}
    for preset in PRESETS.values():
        assert preset.config_kwargs["num_register_tokens"] == 4  # transformers' default is 0
        assert preset.config_kwargs["patch_size"] == 16


# Parameter counts published in Meta's DINOv3 README (millions).
PUBLISHED_PARAMS_M = {"vits16": 21, "vits16plus": 29, "vitb16": 86, "vitl16": 300, "vith16plus": 840,
                      "vit7b16": 6716}


@pytest.mark.parametrize("arch", sorted(PUBLISHED_PARAMS_M))
def test_preset_architectures_have_the_published_sizes(arch):
    from transformers import DINOv3ViTModel

    with torch.device("meta"):  # shapes only: even ViT-7B costs nothing
        model = DINOv3ViTModel(build_config(ARCHITECTURES[arch]))
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    assert millions == pytest.approx(PUBLISHED_PARAMS_M[arch], rel=0.04)


@pytest.mark.parametrize("arch", sorted(PUBLISHED_PARAMS_M))
def test_architecture_is_read_off_meta_tensors(arch):
    """Without periods and with an uninformative name, width/depth/MLP/registers come from the tensors and the
    heads from the public model of that width; with Meta's name the same architecture results."""
    from transformers import DINOv3ViTModel

    with torch.device("meta"):
        model = DINOv3ViTModel(build_config(ARCHITECTURES[arch]))
    sd = to_meta_state_dict(model, periods=False)
    expected = {k: v for k, v in ARCHITECTURES[arch].items()}
    for filename in ("weights.pth", f"dinov3_{arch}_pretrain_lvd1689m-00000000.pth"):
        kwargs, named = infer_meta_architecture(sd, filename=filename)
        assert kwargs == expected
        assert named == (None if filename == "weights.pth" else arch)


def test_architecture_from_file_names():
    assert arch_from_filename("dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth") == "vitl16"
    assert arch_from_filename("s3://b/x/dinov3_vits16plus_pretrain_lvd1689m-4057cbaa.pth") == "vits16plus"
    assert arch_from_filename("dinov3_vits16_pretrain_lvd1689m-08c60483.pth") == "vits16"
    assert arch_from_filename("dinov3_vit7b16_pretrain_sat493m-a6675841.pth") == "vit7b16"
    assert arch_from_filename("dinov3-vith16plus.pth") == "vith16plus"
    assert arch_from_filename("dinov3_vitl16plus_pretrain_lvd1689m-46503df0.pth") is None  # no preset: shapes
    assert arch_from_filename("weights.pth") is None


# -------------------------------------------------------------------------------------------------------- hub

@pytest.mark.parametrize("spec, hub_id", [
    ("dinov3-vitl16-sat493m", "facebook/dinov3-vitl16-pretrain-sat493m"),
    ("facebook/dinov3-vits16-pretrain-lvd1689m", "facebook/dinov3-vits16-pretrain-lvd1689m"),
])
def test_hub_spec_offline_fails_fast_with_login_hint(spec, hub_id, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import time
    started = time.perf_counter()
    with pytest.raises(CheckpointError) as info:
        load_backbone(spec, device="cpu")
    assert time.perf_counter() - started < 10
    message = str(info.value)
    assert hub_id in message and "gated" in message
    assert "huggingface-cli login" in message and "local path" in message


@pytest.mark.parametrize("spec", ["/nonexistent/dinov3/weights.pth", "no-such-preset", "random:nope",
                                  "random:tiny@x", "relative/missing.pth"])
def test_unresolvable_specs_name_the_spec_and_the_accepted_forms(spec):
    with pytest.raises(CheckpointError) as info:
        load_backbone(spec, device="cpu")
    assert spec in str(info.value)
    assert "random:" in str(info.value) or "preset" in str(info.value)


# ------------------------------------------------------------------------------------------- HF dirs and URLs

def test_hf_directory_loads_frozen_and_matches_source(tiny):
    backbone = load_backbone(tiny.hf, device="cpu")
    assert_same_outputs(backbone, tiny.model, tiny.pixels)
    assert not backbone.model.training
    assert not any(p.requires_grad for p in backbone.model.parameters())
    assert (backbone.patch_size, backbone.embed_dim, backbone.num_register_tokens) == (16, 64, 4)
    assert backbone.device == torch.device("cpu") and backbone.dtype == torch.float32
    assert backbone.normalization == IMAGENET and not backbone.is_random
    assert len(backbone.fingerprint) == 64


def test_file_url_is_read_in_place(tiny, cache_root):
    backbone = load_backbone(f"file://{tiny.hf}", device="cpu")
    assert_same_outputs(backbone, tiny.model, tiny.pixels)
    assert not cache_root.exists()


def test_memory_url_is_fetched_once_then_served_from_the_cache(tiny, cache_root, tmp_path):
    url = memory_dir(tiny.hf)
    first = load_backbone(url, device="cpu")
    assert_same_outputs(first, tiny.model, tiny.pixels)
    entries = os.listdir(cache_root / "checkpoints")
    assert len(entries) == 1 and not entries[0].startswith(".")

    # cache_dir= overrides $DINOSEG_CACHE_DIR
    other = tmp_path / "other-cache"
    load_backbone(url, device="cpu", cache_dir=str(other))
    assert len(os.listdir(other / "checkpoints")) == 1

    fsspec.filesystem("memory").rm(url.removeprefix("memory://"), recursive=True)  # the remote is gone...
    second = load_backbone(url, device="cpu")  # ...so this can only come from the cache
    assert second.fingerprint == first.fingerprint
    assert os.listdir(cache_root / "checkpoints") == entries


def test_fetch_to_cache_serves_any_file_once(cache_root, tmp_path):
    url = f"memory:///dinoseg-test-{uuid.uuid4().hex}/vocab.txt.gz"
    fsspec.filesystem("memory").pipe_file(url.removeprefix("memory://"), b"payload")
    local = fetch_to_cache(url)
    assert local.startswith(str(cache_root)) and open(local, "rb").read() == b"payload"
    fsspec.filesystem("memory").rm(url.removeprefix("memory://"))
    assert fetch_to_cache(url) == local  # from the cache
    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"x")
    assert fetch_to_cache(f"file://{plain}") == str(plain)  # local files are read in place
    with pytest.raises(CheckpointError, match=r"memory://nothing/there: no such object\. Expected a thing"):
        fetch_to_cache("memory://nothing/there", expected="a thing")
    folder = f"memory:///dinoseg-test-{uuid.uuid4().hex}"
    fsspec.filesystem("memory").pipe_file(f"{folder.removeprefix('memory://')}/a.bin", b"a")
    with pytest.raises(CheckpointError, match="is a directory"):
        fetch_to_cache(folder)


def test_same_weights_give_the_same_fingerprint_from_every_format(tiny, cache_root):
    fs = fsspec.filesystem("memory")
    pth_url = f"memory:///dinoseg-test-{uuid.uuid4().hex}/weights.pth"
    with open(tiny.pth, "rb") as fh:
        fs.pipe_file(pth_url.removeprefix("memory://"), fh.read())
    prints = {
        "hf": load_backbone(tiny.hf, device="cpu").fingerprint,
        "pth": load_backbone(tiny.pth, device="cpu").fingerprint,
        "hf-memory": load_backbone(memory_dir(tiny.hf), device="cpu").fingerprint,
        "pth-memory": load_backbone(pth_url, device="cpu").fingerprint,
        "direct": fingerprint_model(tiny.model),
    }
    assert len(set(prints.values())) == 1, prints
    other = random_model(tiny_config(), seed=1)
    assert fingerprint_model(other) != prints["hf"]


def test_url_errors_name_the_url(cache_root):
    with pytest.raises(CheckpointError, match=r"memory://nothing/here.*no such object"):
        load_backbone("memory://nothing/here", device="cpu")
    fs = fsspec.filesystem("memory")
    base = f"/dinoseg-test-{uuid.uuid4().hex}"
    fs.pipe_file(f"{base}/readme.txt", b"hello")
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        load_backbone(f"memory://{base}", device="cpu")


def test_directory_without_config_is_rejected(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        load_backbone(str(tmp_path), device="cpu")


def test_non_dinov3_config_is_rejected(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "dinov2"}')
    with pytest.raises(CheckpointError, match=r"model_type 'dinov2', expected 'dinov3_vit'"):
        load_backbone(str(tmp_path), device="cpu")


@pytest.mark.integration
def test_s3_url_with_storage_options(tiny, s3_server, cache_root):
    import s3fs

    bucket = s3_server["make_bucket"]()
    fs = s3fs.S3FileSystem(**s3_server["storage_options"])
    for name in os.listdir(tiny.hf):
        fs.put_file(os.path.join(tiny.hf, name), f"{bucket.removeprefix('s3://')}/models/tiny/{name}")
    backbone = load_backbone(f"{bucket}/models/tiny", device="cpu", storage_options=s3_server["storage_options"])
    assert_same_outputs(backbone, tiny.model, tiny.pixels)


# ------------------------------------------------------------------------------------------ Meta checkpoints

VARIANTS = {
    "gelu-masked-k-bias": (dict(), dict()),
    "swiglu": (dict(use_gated_mlp=True), dict()),
    "no-qkv-bias-like-7b": (dict(use_gated_mlp=True, query_bias=False, value_bias=False), dict()),
    "zero-k-bias-without-mask": (dict(), dict(bias_mask=False)),
    "real-k-bias": (dict(key_bias=True), dict(bias_mask=False)),
    "rope-base-1000": (dict(rope_theta=1000.0), dict()),
    "local-cls-norm": (dict(), dict(local_cls_norm=True)),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_meta_checkpoint_matches_source_and_meta_reference(variant, tmp_path):
    config_kw, meta_kw = VARIANTS[variant]
    model = random_model(tiny_config(**config_kw), seed=3)
    sd = to_meta_state_dict(model, **meta_kw)
    path = tmp_path / "checkpoint.pth"
    torch.save(sd, path)
    backbone = load_backbone(str(path), device="cpu")
    assert_same_outputs(backbone, model, torch.randn(2, 3, 48, 64))
    # Independently of transformers: Meta's own forward on the original layout.
    pixels = torch.randn(1, 3, 32, 48)
    tokens = meta_reference_forward(sd, pixels, num_heads=model.config.num_attention_heads)
    cls, patches = backbone.forward_tokens(pixels)
    torch.testing.assert_close(cls, tokens[:, 0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(patches.flatten(2).transpose(1, 2), tokens[:, 5:], atol=1e-4, rtol=1e-4)
    assert backbone.model.config.key_bias == (variant == "real-k-bias")


def test_meta_named_vits16_checkpoint_equals_random_vits16(tmp_path):
    """A real-shape ViT-S/16 written under Meta's file name: architecture from the name, same fingerprint and
    outputs as the random backbone it came from."""
    source = load_backbone("random:dinov3-vits16@0", device="cpu")
    cfg = source.model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_register_tokens) == (384, 12, 6, 4)
    path = tmp_path / META_VITS16_NAME
    write_meta_checkpoint(source.model, path)
    loaded = load_backbone(str(path), device="cpu")
    assert loaded.fingerprint == source.fingerprint
    assert_same_outputs(loaded, source.model, torch.randn(1, 3, 32, 32))
    assert not loaded.is_random


def test_file_name_contradicting_the_tensors_is_an_error(tiny, tmp_path):
    path = tmp_path / "dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth"
    path.write_bytes(open(tiny.pth, "rb").read())
    with pytest.raises(CheckpointError, match=r"says 'vitl16'.*hidden_size 64"):
        load_backbone(str(path), device="cpu")


def test_normalization_follows_the_weights_and_can_be_overridden(tiny, tmp_path):
    path = tmp_path / "tiny_sat493m.pth"
    path.write_bytes(open(tiny.pth, "rb").read())
    assert load_backbone(str(path), device="cpu").normalization == SAT493M
    assert load_backbone(str(path), device="cpu", normalization="imagenet").normalization == IMAGENET
    custom = Normalization((0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert load_backbone(tiny.pth, device="cpu", normalization=custom).normalization == custom
    with pytest.raises(InputError, match="normalization"):
        load_backbone(tiny.pth, device="cpu", normalization="sentinel2")


@pytest.mark.parametrize("key", ["blocks.1.attn.proj.weight", "blocks.0.attn.qkv.bias", "storage_tokens",
                                 "mask_token", "blocks.0.ls2.gamma"])
def test_missing_key_is_named(tiny, tmp_path, key):
    sd = to_meta_state_dict(tiny.model)
    del sd[key]
    torch.save(sd, tmp_path / "weights.pth")
    with pytest.raises(CheckpointError, match=rf"missing key.*'{key}'") as info:
        load_backbone(str(tmp_path / "weights.pth"), device="cpu")
    assert str(tmp_path / "weights.pth") in str(info.value)


@pytest.mark.parametrize("key", ["head.weight", "blocks.0.attn.extra", "blocks.1.mlp.w1.weight"])
def test_unexpected_key_is_named(tiny, tmp_path, key):
    sd = to_meta_state_dict(tiny.model)
    sd[key] = torch.zeros(3)
    torch.save(sd, tmp_path / "weights.pth")
    with pytest.raises(CheckpointError, match=rf"unexpected key.*'{key}'"):
        load_backbone(str(tmp_path / "weights.pth"), device="cpu")


def test_wrong_shape_is_named(tiny, tmp_path):
    sd = to_meta_state_dict(tiny.model)
    sd["blocks.1.norm2.weight"] = torch.ones(65)
    torch.save(sd, tmp_path / "weights.pth")
    with pytest.raises(CheckpointError, match=r"'blocks\.1\.norm2\.weight' has shape \(65,\), expected \(64,\)"):
        load_backbone(str(tmp_path / "weights.pth"), device="cpu")


def test_unsupported_meta_variants_are_rejected(tiny, tmp_path):
    sd = to_meta_state_dict(tiny.model)
    sd["blocks.0.attn.qkv.bias_mask"] = torch.full((192,), float("nan"))
    torch.save(sd, tmp_path / "nan.pth")
    with pytest.raises(CheckpointError, match="bias_mask.*NaN"):
        load_backbone(str(tmp_path / "nan.pth"), device="cpu")
    sd = to_meta_state_dict(tiny.model)
    sd["cls_norm.weight"], sd["cls_norm.bias"] = torch.ones(64), torch.zeros(64)
    torch.save(sd, tmp_path / "untied.pth")
    with pytest.raises(CheckpointError, match="cls_norm"):
        load_backbone(str(tmp_path / "untied.pth"), device="cpu")


def test_wrapped_and_prefixed_state_dicts_load(tiny, tmp_path):
    sd = to_meta_state_dict(tiny.model)
    torch.save({"model": {f"backbone.{k}": v for k, v in sd.items()}}, tmp_path / "wrapped.pth")
    backbone = load_backbone(str(tmp_path / "wrapped.pth"), device="cpu")
    assert backbone.fingerprint == fingerprint_model(tiny.model)


@pytest.mark.parametrize("kind", ["random-bytes", "text", "empty", "unrelated-state-dict", "hf-state-dict",
                                  "list", "directory"])
def test_files_that_are_not_dinov3_checkpoints(kind, tiny, tmp_path):
    path = tmp_path / "model.pth"
    if kind == "random-bytes":
        path.write_bytes(os.urandom(4096))
    elif kind == "text":
        path.write_text("this is not a checkpoint\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "unrelated-state-dict":
        torch.save(torch.nn.Linear(4, 2).state_dict(), path)
    elif kind == "hf-state-dict":
        torch.save(tiny.model.state_dict(), path)
    elif kind == "list":
        torch.save([torch.zeros(2)], path)
    else:
        path.mkdir()
    with pytest.raises(CheckpointError) as info:
        load_backbone(str(path), device="cpu")
    message = str(info.value)
    assert str(path) in message
    assert "expected" in message.lower()
    if kind == "hf-state-dict":
        assert "Hugging Face" in message


# ------------------------------------------------------------------------------------------------- random

def test_random_weights_are_seeded_and_announced(caplog):
    rng_before = torch.random.get_rng_state()
    with caplog.at_level(logging.WARNING, logger="dinoseg_core.backbone"):
        a = load_backbone("random:tiny@3", device="cpu")
    assert any("RANDOM WEIGHTS" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    b = load_backbone("random:tiny@3", device="cpu")
    c = load_backbone("random:tiny@4", device="cpu")
    assert a.is_random and a.fingerprint == b.fingerprint != c.fingerprint
    for (name, ta), tb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(ta, tb), name
    assert not torch.equal(a.model.embeddings.cls_token, c.model.embeddings.cls_token)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # the caller's RNG is left alone
    assert load_backbone("random:tiny", device="cpu").fingerprint == load_backbone("random:tiny@0").fingerprint


# ---------------------------------------------------------------------------------------------- forward_tokens

def test_forward_tokens_shapes_and_plain_float32_tensors(tiny):
    backbone = load_backbone(tiny.hf, device="cpu")
    cls, patches = backbone.forward_tokens(tiny.pixels.double())  # any float dtype is accepted
    assert cls.shape == (2, 64) and patches.shape == (2, 64, 4, 3)
    assert cls.dtype == patches.dtype == torch.float32
    assert not torch.is_inference(cls) and not torch.is_inference(patches)
    assert patches.is_contiguous()
    patches /= patches.norm(dim=1, keepdim=True)  # callers may modify results in place


@pytest.mark.parametrize("pixels", [
    torch.zeros(3, 32, 32), torch.zeros(1, 4, 32, 32), torch.zeros(1, 3, 50, 32), torch.zeros(1, 3, 32, 8),
    torch.zeros(0, 3, 32, 32), torch.zeros(1, 3, 32, 32, dtype=torch.uint8), [[0.0]],
], ids=["3d", "4-channels", "h-not-multiple", "w-too-small", "empty-batch", "uint8", "list"])
def test_forward_tokens_rejects_bad_pixels(tiny, pixels):
    backbone = load_backbone(tiny.hf, device="cpu")
    with pytest.raises(InputError):
        backbone.forward_tokens(pixels)


def test_forward_all_tokens_keeps_the_registers(tiny):
    backbone = load_backbone(tiny.hf, device="cpu")
    tokens = backbone.forward_all_tokens(tiny.pixels)
    assert tokens.shape == (2, 1 + 4 + 4 * 3, 64) and tokens.dtype == torch.float32
    assert not torch.is_inference(tokens)  # may feed a trainable head
    with torch.no_grad():
        expected = tiny.model(pixel_values=tiny.pixels).last_hidden_state
    torch.testing.assert_close(tokens, expected, atol=1e-5, rtol=1e-4)
    cls, patches = backbone.forward_tokens(tiny.pixels)
    torch.testing.assert_close(tokens[:, 0], cls)
    torch.testing.assert_close(tokens[:, 5:], patches.flatten(2).transpose(1, 2))
    with pytest.raises(InputError, match="forward_all_tokens"):
        backbone.forward_all_tokens(torch.zeros(1, 3, 50, 32))


def test_train_mode_is_undone_before_a_forward(tiny):
    backbone = load_backbone(tiny.hf, device="cpu")
    expected, _ = backbone.forward_tokens(tiny.pixels)
    backbone.model.train()  # train mode would rescale RoPE coordinates at random
    again, _ = backbone.forward_tokens(tiny.pixels)
    assert torch.equal(expected, again) and not backbone.model.training


def test_bfloat16_is_autocast_over_float32_weights(tiny, caplog):
    with caplog.at_level(logging.WARNING, logger="dinoseg_core.backbone"):
        backbone = load_backbone(tiny.hf, device="cpu", dtype="bf16")
    assert any("slower" in r.getMessage() for r in caplog.records)
    assert backbone.dtype == torch.float32 and backbone.compute_dtype == backbone.autocast_dtype == torch.bfloat16
    assert backbone.model.rope_embeddings.inv_freq.dtype == torch.float32
    cls, patches = backbone.forward_tokens(tiny.pixels)
    assert cls.dtype == patches.dtype == torch.float32
    ref_cls, ref_patches = reference(tiny.model, tiny.pixels)
    assert not torch.equal(patches, ref_patches)  # the forward did run in bf16
    assert torch.nn.functional.cosine_similarity(cls, ref_cls).min() > 0.99
    # the fingerprint is the weights', whatever the compute dtype and whichever format they came in
    plain = load_backbone(tiny.hf, device="cpu")
    assert plain.autocast_dtype is None and plain.compute_dtype == torch.float32
    assert load_backbone(tiny.pth, device="cpu", dtype=torch.bfloat16).fingerprint == backbone.fingerprint
    assert plain.fingerprint == backbone.fingerprint
    assert "autocast=torch.bfloat16" in repr(backbone) and "attention=sdpa" in repr(backbone)


def test_attention_is_sdpa_for_every_loader(tiny):
    from dinoseg_core.backbone import _finalize

    for spec in (tiny.hf, tiny.pth, "random:tiny@0"):
        assert load_backbone(spec, device="cpu").attention == "sdpa", spec
    model = random_model(tiny_config(), seed=0)
    model.set_attn_implementation("eager")
    pixels = tiny.pixels
    with torch.no_grad():
        eager = model(pixel_values=pixels).last_hidden_state
    _finalize(model, torch.float32)
    assert model.config._attn_implementation == "sdpa"
    with torch.no_grad():
        torch.testing.assert_close(model(pixel_values=pixels).last_hidden_state, eager, atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_compiled_backbone_gives_the_eager_features(tiny):
    backbone = load_backbone(tiny.hf, device="cpu")
    expected_cls, expected = backbone.forward_tokens(tiny.pixels)
    # the "eager" backend traces with dynamo without generating code: no C++ compiler needed here
    assert backbone.compile(backend="eager") is backbone and backbone.compiled and "compiled=True" in repr(backbone)
    cls, patches = backbone.forward_tokens(tiny.pixels)
    torch.testing.assert_close(patches, expected)
    torch.testing.assert_close(cls, expected_cls)
    _, one = backbone.forward_tokens(tiny.pixels[:1])  # a smaller last batch
    torch.testing.assert_close(one, expected[:1])
    assert not load_backbone(tiny.hf, device="cpu").compiled


def test_compile_switch_of_the_loader(tiny, monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: calls.append(kwargs) or model)
    backbone = load_backbone(tiny.hf, device="cpu", compile=True)
    assert backbone.compiled and calls == [{"mode": None, "backend": "inductor", "dynamic": True}]
    torch.testing.assert_close(backbone.forward_tokens(tiny.pixels)[1], reference(tiny.model, tiny.pixels)[1],
                               atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kwargs, match", [
    (dict(dtype="int8"), "dtype"),
    (dict(dtype=torch.int64), "dtype"),
    (dict(device="not-a-device"), "device"),
])
def test_bad_options_are_input_errors(tiny, kwargs, match):
    with pytest.raises(InputError, match=match):
        load_backbone(tiny.hf, **kwargs)


def test_default_device(tiny):
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert load_backbone(tiny.hf).device.type == expected
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA is not available"):
            load_backbone(tiny.hf, device="cuda")
