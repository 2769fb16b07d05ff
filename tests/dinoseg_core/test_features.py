"""Patch features (step 2) under bf16 autocast against float32, and the batch size read off free device memory."""

from types import SimpleNamespace

import pytest
import torch

from dinoseg_core.backbone import load_backbone
from dinoseg_core.errors import InputError
from dinoseg_core.features import auto_batch_size, forward_bytes_per_image, patch_features
from dinoseg_core.preprocess import prepare_image
from dinoseg_core.synthetic import generate_scene


def scene_pixels(backbone, size, seeds):
    norm = backbone.normalization
    return torch.stack([prepare_image(generate_scene(seed, size=size).image, (size, size), norm.mean, norm.std)
                        for seed in seeds])


def min_patch_cosine(spec, size, seeds):
    full = load_backbone(spec, device="cpu")
    half = load_backbone(spec, device="cpu", dtype="bfloat16")
    pixels = scene_pixels(full, size, seeds)
    a, b = patch_features(full, pixels), patch_features(half, pixels)  # unit vectors along C
    assert not torch.equal(a, b)
    return float((a * b).sum(dim=1).min())


def test_bf16_autocast_features_match_float32_on_generated_scenes():
    assert min_patch_cosine("random:tiny@0", 256, (0, 1, 2)) >= 0.999


@pytest.mark.slow
def test_bf16_autocast_features_match_float32_with_vit_s():
    assert min_patch_cosine("random:dinov3-vits16@0", 256, (0, 1)) >= 0.999


# ---------------------------------------------------------------------------------------------- batch size

@pytest.fixture(scope="module")
def tiny():
    return load_backbone("random:tiny@0", device="cpu")


def test_forward_bytes_per_image_arithmetic(tiny):
    # tiny: C = 64, MLP 256 (not gated), 4 registers, patch 16; a 64x48 input has 4 x 3 = 12 patches
    tokens, c, mlp = 1 + 4 + 12, 64, 256
    per_token = 12 * c + (2 * mlp + 10 * c) * 4 + 12 * c
    assert forward_bytes_per_image(tiny, (64, 48)) == tokens * per_token + 12 * 64 * 48
    half = SimpleNamespace(model=tiny.model, compute_dtype=torch.bfloat16, patch_size=16, num_register_tokens=4,
                           attention="sdpa")
    assert forward_bytes_per_image(half, (64, 48)) == tokens * (24 * c + (2 * mlp + 10 * c) * 2) + 12 * 64 * 48
    eager = SimpleNamespace(**{**vars(half), "attention": "eager"})
    heads = tiny.model.config.num_attention_heads
    assert forward_bytes_per_image(eager, (64, 48)) - forward_bytes_per_image(half, (64, 48)) == heads * tokens**2 * 6
    assert forward_bytes_per_image(tiny, (1024, 1024)) > 60 * forward_bytes_per_image(tiny, (128, 128))


def test_auto_batch_size_on_the_cpu_is_the_default(tiny):
    assert auto_batch_size(tiny, (512, 512)) == 8
    assert auto_batch_size(tiny, (512, 512), default=3) == 3


def test_auto_batch_size_from_a_given_free_memory(tiny):
    per_image = forward_bytes_per_image(tiny, (512, 512))
    assert auto_batch_size(tiny, (512, 512), free_bytes=10 * per_image) == 5  # half the free memory by default
    assert auto_batch_size(tiny, (512, 512), free_bytes=10 * per_image + 1, fraction=1.0) == 10
    assert auto_batch_size(tiny, (512, 512), free_bytes=per_image // 3) == 1  # never below one
    assert auto_batch_size(tiny, (512, 512), free_bytes=10_000 * per_image) == 64  # capped
    assert auto_batch_size(tiny, (512, 512), free_bytes=10_000 * per_image, maximum=16) == 16
    with pytest.raises(InputError, match="fraction"):
        auto_batch_size(tiny, (512, 512), fraction=0.0)


def test_auto_batch_size_on_cuda_reads_free_memory_and_sets_aside_autocast_weights(tiny, monkeypatch):
    """The CUDA branch, with ``torch.cuda.mem_get_info`` faked: no GPU needed."""
    per_image = forward_bytes_per_image(tiny, (1024, 1024))
    seen = []

    def mem_get_info(device):
        seen.append(device)
        return 40 * per_image, 80 * per_image

    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    on_gpu = SimpleNamespace(model=tiny.model, device=torch.device("cuda", 1), compute_dtype=torch.float32,
                             autocast_dtype=None, patch_size=16, num_register_tokens=4, attention="sdpa")
    assert auto_batch_size(on_gpu, (1024, 1024)) == 20 and seen == [torch.device("cuda", 1)]
    parameters = sum(p.numel() for p in tiny.model.parameters())
    autocast = SimpleNamespace(**{**vars(on_gpu), "compute_dtype": torch.bfloat16, "autocast_dtype": torch.bfloat16})
    expected = (40 * per_image - 2 * parameters) // 2 // forward_bytes_per_image(autocast, (1024, 1024))
    assert auto_batch_size(autocast, (1024, 1024)) == expected


def test_the_positional_basis_ignores_autocast():
    """The basis (step 3) comes from a content-free image whose positional signal bf16 rounding drowns: under
    autocast it is computed in float32, so it is the same whatever the compute dtype (they share a fingerprint)."""
    from dinoseg_core.basis import compute_basis

    full = load_backbone("random:tiny@0", device="cpu")
    half = load_backbone("random:tiny@0", device="cpu", dtype="bfloat16")
    assert half.fingerprint == full.fingerprint
    torch.testing.assert_close(compute_basis(half, (128, 128), "black", 31).vectors,
                               compute_basis(full, (128, 128), "black", 31).vectors, rtol=0, atol=0)
    pixels = scene_pixels(full, 128, (0,))
    assert torch.equal(patch_features(half, pixels, full_precision=True), patch_features(full, pixels))
