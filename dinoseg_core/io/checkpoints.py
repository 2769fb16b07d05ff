"""DINOv3 ViT presets and the conversion of Meta's original checkpoints to transformers' ``DINOv3ViTModel``.

Two things live here, both pure (no I/O beyond reading one local checkpoint file):

1. :data:`PRESETS`: one entry per public DINOv3 ViT (Hugging Face hub id, exact architecture, normalisation of
   the pre-training data), plus the random-only ``tiny`` architecture for fast tests.
2. :func:`convert_meta_state_dict`: Meta's ``dinov3_*_pretrain_*.pth`` layout -> ``DINOv3ViTModel`` parameter
   names, with the architecture inferred from the file name or, when the name does not tell, from the tensors.

The key mapping follows transformers' own ``convert_dinov3_vit_to_hf.py`` and Meta's ``dinov3/models/
vision_transformer.py`` + ``dinov3/layers``:

=================================  ==========================================================================
Meta (original)                    transformers ``DINOv3ViTModel``
=================================  ==========================================================================
``cls_token`` (1, 1, C)            ``embeddings.cls_token``
``mask_token`` (1, C)              ``embeddings.mask_token`` (1, 1, C)  (unsqueezed)
``storage_tokens`` (1, R, C)       ``embeddings.register_tokens``
``patch_embed.proj.{weight,bias}`` ``embeddings.patch_embeddings.{weight,bias}``
``rope_embed.periods`` (D_h/4,)    not a parameter: ``rope_embeddings.inv_freq`` = 1 / periods, recomputed
                                   from ``rope_theta``; the file's periods are checked against it
``blocks.i.norm{1,2}.*``           ``layer.i.norm{1,2}.*``
``blocks.i.attn.qkv.weight``       split in three along dim 0 -> ``layer.i.attention.{q,k,v}_proj.weight``
``blocks.i.attn.qkv.bias``         times ``qkv.bias_mask`` (Meta's ``LinearKMaskedBias``: 1 for q and v, 0 for
  + ``blocks.i.attn.qkv.bias_mask``  k), then split; the k part is dropped when it is zero (``key_bias=False``)
``blocks.i.attn.proj.*``           ``layer.i.attention.o_proj.*``
``blocks.i.ls{1,2}.gamma``         ``layer.i.layer_scale{1,2}.lambda1``
``blocks.i.mlp.fc1`` / ``fc2``     ``layer.i.mlp.up_proj`` / ``down_proj``                (GELU MLP)
``blocks.i.mlp.w1`` / ``w2``/``w3`` ``layer.i.mlp.gate_proj`` / ``up_proj`` / ``down_proj`` (SwiGLU: ViT-S+,
                                   ViT-H+, ViT-7B; Meta computes ``w3(silu(w1 x) * w2 x)``)
``norm.*``                         ``norm.*``
``local_cls_norm.*``               ignored: used only for local crops during training (ViT-7B, ViT-L SAT)
=================================  ==========================================================================

In transformers 5.x the encoder blocks sit under ``model.layer.i`` (``save_pretrained`` writes ``layer.i``); the
prefix is read off the model, not hard-coded. Every key of the file is accounted for: one that is missing or
left over is a :class:`~dinoseg_core.errors.CheckpointError` naming it.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from dinoseg_core.errors import CheckpointError

if TYPE_CHECKING:  # transformers takes seconds to import; the loader imports it only when it needs it
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

__all__ = [
    "ARCHITECTURES",
    "PRESETS",
    "RANDOM_ONLY_PRESETS",
    "Preset",
    "arch_from_filename",
    "build_config",
    "convert_meta_state_dict",
    "infer_meta_architecture",
    "model_from_meta_state_dict",
    "read_state_dict",
    "resolve_preset",
]

# --------------------------------------------------------------------------------------------------------------
# Architectures and presets
# --------------------------------------------------------------------------------------------------------------

# Shared by every public DINOv3 ViT (Meta's hub/backbones.py: patch 16, 4 storage tokens, RoPE base 100,
# "layernormbf16" = LayerNorm eps 1e-5, qkv with a masked k bias, LayerScale).
_COMMON: dict[str, Any] = dict(
    patch_size=16,
    num_channels=3,
    num_register_tokens=4,  # transformers' default is 0; Meta's checkpoints all carry 4 storage tokens
    layer_norm_eps=1e-5,
    rope_theta=100.0,
    query_bias=True,
    key_bias=False,
    value_bias=True,
    proj_bias=True,
    mlp_bias=True,
)

#: Exact architecture of each public DINOv3 ViT, as ``DINOv3ViTConfig`` keyword arguments (values from
#: transformers' convert_dinov3_vit_to_hf.py; SwiGLU hidden sizes are Meta's int(ratio * C * 2/3) aligned).
ARCHITECTURES: dict[str, dict[str, Any]] = {
    "vits16": dict(_COMMON, hidden_size=384, intermediate_size=1536, num_hidden_layers=12, num_attention_heads=6,
                   hidden_act="gelu", use_gated_mlp=False),
    "vits16plus": dict(_COMMON, hidden_size=384, intermediate_size=1536, num_hidden_layers=12,
                       num_attention_heads=6, hidden_act="silu", use_gated_mlp=True),
    "vitb16": dict(_COMMON, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                   hidden_act="gelu", use_gated_mlp=False),
    "vitl16": dict(_COMMON, hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                   num_attention_heads=16, hidden_act="gelu", use_gated_mlp=False),
    "vith16plus": dict(_COMMON, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
                       num_attention_heads=20, hidden_act="silu", use_gated_mlp=True),
    # ViT-7B has no qkv bias at all (qkv_bias=False in Meta's config).
    "vit7b16": dict(_COMMON, hidden_size=4096, intermediate_size=8192, num_hidden_layers=40,
                    num_attention_heads=32, hidden_act="silu", use_gated_mlp=True, query_bias=False,
                    value_bias=False),
    # Not a DINOv3 release: a 2-block, 64-wide ViT for fast tests and demos ("random:tiny").
    "tiny": dict(_COMMON, hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                 hidden_act="gelu", use_gated_mlp=False),
}

# Heads cannot be read off the tensors (q/k/v are C x C whatever the head count); Meta's files carry
# rope_embed.periods (head_dim / 4 entries), which settles it. Without that buffer, the head count of the
# public model of that width is used.
_HEADS_BY_WIDTH = {384: 6, 768: 12, 1024: 16, 1280: 20, 4096: 32}


@dataclass(frozen=True)
class Preset:
    """A named DINOv3 ViT: where its weights live on the Hugging Face Hub and its exact architecture.

    Attributes:
        name: e.g. ``"dinov3-vitl16"``.
        arch: key of :data:`ARCHITECTURES`.
        hub_id: Hugging Face model id, ``None`` for random-only presets.
        normalization: ``"imagenet"`` (LVD-1689M weights) or ``"sat493m"`` (satellite weights).
        meta_filename: Meta's original checkpoint file name, for reference.
    """

    name: str
    arch: str
    hub_id: str | None
    normalization: str = "imagenet"
    meta_filename: str | None = None
    config_kwargs: Mapping[str, Any] = field(default_factory=dict, repr=False)


def _preset(name: str, arch: str, hub_id: str | None, normalization: str, meta_filename: str | None) -> Preset:
    return Preset(name, arch, hub_id, normalization, meta_filename, dict(ARCHITECTURES[arch]))


#: The public DINOv3 ViTs (https://github.com/facebookresearch/dinov3, gated on the Hugging Face Hub).
PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        _preset("dinov3-vits16", "vits16", "facebook/dinov3-vits16-pretrain-lvd1689m", "imagenet",
                "dinov3_vits16_pretrain_lvd1689m-08c60483.pth"),
        _preset("dinov3-vits16plus", "vits16plus", "facebook/dinov3-vits16plus-pretrain-lvd1689m", "imagenet",
                "dinov3_vits16plus_pretrain_lvd1689m-4057cbaa.pth"),
        _preset("dinov3-vitb16", "vitb16", "facebook/dinov3-vitb16-pretrain-lvd1689m", "imagenet",
                "dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth"),
        _preset("dinov3-vitl16", "vitl16", "facebook/dinov3-vitl16-pretrain-lvd1689m", "imagenet",
                "dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth"),
        _preset("dinov3-vith16plus", "vith16plus", "facebook/dinov3-vith16plus-pretrain-lvd1689m", "imagenet",
                "dinov3_vith16plus_pretrain_lvd1689m-7c1da9a5.pth"),
        _preset("dinov3-vit7b16", "vit7b16", "facebook/dinov3-vit7b16-pretrain-lvd1689m", "imagenet",
                "dinov3_vit7b16_pretrain_lvd1689m-a955f4ea.pth"),
        _preset("dinov3-vitl16-sat493m", "vitl16", "facebook/dinov3-vitl16-pretrain-sat493m", "sat493m",
                "dinov3_vitl16_pretrain_sat493m-eadcf0ff.pth"),
        _preset("dinov3-vit7b16-sat493m", "vit7b16", "facebook/dinov3-vit7b16-pretrain-sat493m", "sat493m",
                "dinov3_vit7b16_pretrain_sat493m-a6675841.pth"),
    )
}

#: Architectures usable only as ``random:<name>`` (no published weights).
RANDOM_ONLY_PRESETS: dict[str, Preset] = {"tiny": _preset("tiny", "tiny", None, "imagenet", None)}


def resolve_preset(name: str, *, allow_random_only: bool = False) -> Preset | None:
    """The preset called ``name`` (case-insensitive; ``_`` and ``-`` interchangeable), else ``None``."""
    key = name.strip().lower().replace("_", "-")
    if key in PRESETS:
        return PRESETS[key]
    if allow_random_only and key in RANDOM_ONLY_PRESETS:
        return RANDOM_ONLY_PRESETS[key]
    return None


def build_config(config_kwargs: Mapping[str, Any]) -> DINOv3ViTConfig:
    """A ``DINOv3ViTConfig`` for the given architecture keyword arguments."""
    from transformers import DINOv3ViTConfig

    return DINOv3ViTConfig(**dict(config_kwargs))


_NAME_ARCH = re.compile(r"vit(7b16|s16plus|s16|b16|l16plus|l16|h16plus)(?![a-z0-9])")


def arch_from_filename(filename: str) -> str | None:
    """The :data:`ARCHITECTURES` key named by a checkpoint file name, e.g. ``"vitl16"`` for
    ``dinov3_vitl16_pretrain_sat493m-eadcf0ff.pth`` or ``dinov3-vitl16-sat493m.pth``; ``None`` when the name does
    not tell (or names an architecture without a preset, such as ``vitl16plus``)."""
    base = os.path.basename(filename.rstrip("/")).lower().replace("-", "_")
    match = _NAME_ARCH.search(base)
    if match is None:
        return None
    arch = "vit" + match.group(1)
    return arch if arch in ARCHITECTURES else None


# --------------------------------------------------------------------------------------------------------------
# Reading a checkpoint file
# --------------------------------------------------------------------------------------------------------------

_EXPECTED_FILE = (
    "a DINOv3 ViT state dict saved with torch.save, such as Meta's dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth"
)


def read_state_dict(path: str, display: str | None = None) -> dict[str, torch.Tensor]:
    """Load a local checkpoint file as a flat ``{name: tensor}`` dict on the CPU.

    ``torch.load(weights_only=True)`` (memory-mapped when the file allows), or safetensors for ``.safetensors``.
    A dict wrapped as ``{"model": ...}``, ``{"state_dict": ...}`` or ``{"teacher": ...}``, and a prefix
    ``backbone.`` / ``module.`` shared by every key, are unwrapped.

    Raises:
        CheckpointError: the file is missing, empty, unreadable, or not a dict of tensors; the message names
        ``display`` (default ``path``) and what was expected.
    """
    shown = display or path
    if not os.path.exists(path):
        raise CheckpointError(f"{shown}: no such file. Expected {_EXPECTED_FILE}.")
    if os.path.isdir(path):
        raise CheckpointError(f"{shown}: is a directory, expected a checkpoint file ({_EXPECTED_FILE}).")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{shown}: the file is empty. Expected {_EXPECTED_FILE}.")
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            obj: Any = load_file(path, device="cpu")
        else:
            try:
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except Exception:  # files in torch's legacy (non-zip) format cannot be memory-mapped
                obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(
            f"{shown}: not a readable PyTorch checkpoint ({type(exc).__name__}: {_first_line(exc)}). "
            f"Expected {_EXPECTED_FILE}."
        ) from exc
    return _as_flat_state_dict(obj, shown)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else ""


def _as_flat_state_dict(obj: Any, shown: str) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for wrapper in ("model", "state_dict", "teacher"):
            if isinstance(obj.get(wrapper), Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping) or not obj:
        kind = type(obj).__name__ if not isinstance(obj, Mapping) else "empty dict"
        raise CheckpointError(f"{shown}: holds a {kind}, expected {_EXPECTED_FILE} (a dict of tensors).")
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(
            f"{shown}: entries {', '.join(bad[:5])} are not tensors; expected {_EXPECTED_FILE} (a dict of tensors)."
        )
    state = dict(obj)
    for prefix in ("module.", "backbone."):
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


# --------------------------------------------------------------------------------------------------------------
# Architecture inference
# --------------------------------------------------------------------------------------------------------------

_BLOCK_KEY = re.compile(r"^blocks\.(\d+)\.(.+)$")
_SIGNATURE = ("cls_token", "patch_embed.proj.weight", "storage_tokens", "blocks.0.attn.qkv.weight")


def _block_indices(state: Mapping[str, torch.Tensor]) -> list[int]:
    return sorted({int(m.group(1)) for k in state if (m := _BLOCK_KEY.match(k))})


def _blocks_with(state: Mapping[str, torch.Tensor], suffix: str) -> int:
    return sum(1 for k in state if (m := _BLOCK_KEY.match(k)) and m.group(2) == suffix)


def _most_blocks_have(state: Mapping[str, torch.Tensor], suffix: str, depth: int) -> bool:
    """Whether at least half the blocks have ``suffix``: an optional tensor (a bias) is part of the architecture
    then, and the blocks without it are reported as missing it rather than the others as having extra keys."""
    return 2 * _blocks_with(state, suffix) >= depth and _blocks_with(state, suffix) > 0


def _first_block_tensor(state: Mapping[str, torch.Tensor], suffix: str) -> torch.Tensor | None:
    for i in _block_indices(state):
        tensor = state.get(f"blocks.{i}.{suffix}")
        if tensor is not None:
            return tensor
    return None


def _check_is_meta_dinov3(state: Mapping[str, torch.Tensor], shown: str) -> None:
    if any(k in state for k in _SIGNATURE) or _block_indices(state):
        if "patch_embed.proj.weight" not in state and "cls_token" not in state:
            raise CheckpointError(
                f"{shown}: missing key 'patch_embed.proj.weight' (and 'cls_token'): cannot tell the embedding "
                "width. Expected Meta's full DINOv3 ViT state dict."
            )
        return
    found = ", ".join(sorted(state)[:6]) + (", ..." if len(state) > 6 else "")
    hint = ""
    if any(k.startswith(("embeddings.", "layer.", "model.layer.")) for k in state):
        hint = (" These look like Hugging Face DINOv3ViTModel names: pass the directory that holds config.json "
                "and model.safetensors instead of a single file.")
    raise CheckpointError(
        f"{shown}: not a DINOv3 checkpoint. Expected Meta's DINOv3 ViT keys (cls_token, storage_tokens, "
        f"patch_embed.proj.weight, blocks.<i>.attn.qkv.weight, ...), found {len(state)} tensors: {found}.{hint}"
    )


def infer_meta_architecture(
    state: Mapping[str, torch.Tensor], *, filename: str = "", display: str | None = None
) -> tuple[dict[str, Any], str | None]:
    """The ``DINOv3ViTConfig`` keyword arguments of a Meta-layout state dict.

    Width from ``cls_token`` (or the patch embedding), depth from the number of ``blocks.<i>``, patch size from
    the patch embedding, SwiGLU (ViT-S+, ViT-H+, ViT-7B) from ``mlp.w1/w2/w3`` vs ``mlp.fc1/fc2``, hidden MLP
    width from their weights, registers from ``storage_tokens``, biases from the presence of their tensors, heads
    from the file name's preset, else from ``rope_embed.periods`` (head_dim / 4 entries), else from the public
    model of that width. When ``filename`` names a public architecture, the tensors must agree with it.

    Returns:
        (config kwargs, architecture name from the file name or ``None``).

    Raises:
        CheckpointError: not a DINOv3 ViT state dict, or the tensors contradict the file name.
    """
    shown = display or filename or "checkpoint"
    _check_is_meta_dinov3(state, shown)
    if "cls_norm.weight" in state or "cls_norm.bias" in state:
        raise CheckpointError(
            f"{shown}: has a separate 'cls_norm' for the CLS/register tokens (untie_cls_and_patch_norms=True), "
            "which transformers' DINOv3ViTModel cannot represent. Use one of the public DINOv3 checkpoints."
        )
    patch = state.get("patch_embed.proj.weight")
    cls = state.get("cls_token")
    hidden = int(cls.shape[-1]) if cls is not None else int(patch.shape[0])  # type: ignore[union-attr]
    blocks = _block_indices(state)
    if not blocks:
        raise CheckpointError(f"{shown}: missing key 'blocks.0.attn.qkv.weight': the checkpoint has no blocks.")
    depth = blocks[-1] + 1

    # SwiGLU (w1/w2/w3) when more blocks have it than the plain MLP (fc1/fc2): one stray key does not flip it.
    gated = max(_blocks_with(state, f"mlp.w{j}.weight") for j in (1, 2, 3)) > max(
        _blocks_with(state, f"mlp.fc{j}.weight") for j in (1, 2))
    up = _first_block_tensor(state, "mlp.w1.weight" if gated else "mlp.fc1.weight")
    if up is None:
        up = _first_block_tensor(state, "mlp.w2.weight" if gated else "mlp.fc2.weight")
        intermediate = int(up.shape[0] if gated else up.shape[1]) if up is not None else None
    else:
        intermediate = int(up.shape[0])
    if intermediate is None:
        raise CheckpointError(f"{shown}: missing key 'blocks.0.mlp.fc1.weight' (or mlp.w1.weight): no MLP weights.")

    storage = state.get("storage_tokens")
    if storage is not None and storage.ndim != 3:
        raise CheckpointError(
            f"{shown}: key 'storage_tokens' has shape {tuple(storage.shape)}, expected (1, registers, {hidden})."
        )
    # Without storage_tokens, assume the DINOv3 value so that the missing-key check names the key.
    registers = int(storage.shape[1]) if storage is not None else int(_COMMON["num_register_tokens"])
    qkv_bias = _most_blocks_have(state, "attn.qkv.bias", depth)
    kwargs: dict[str, Any] = dict(
        _COMMON,
        patch_size=int(patch.shape[-1]) if patch is not None else 16,
        num_channels=int(patch.shape[1]) if patch is not None else 3,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=depth,
        hidden_act="silu" if gated else "gelu",
        use_gated_mlp=gated,
        num_register_tokens=registers,
        query_bias=qkv_bias,
        value_bias=qkv_bias,
        key_bias=False,  # settled by convert_meta_state_dict from the masked k bias
        proj_bias=_most_blocks_have(state, "attn.proj.bias", depth),
        mlp_bias=any(_most_blocks_have(state, f"mlp.{n}.bias", depth)
                     for n in (("w1", "w2", "w3") if gated else ("fc1", "fc2"))),
    )
    if patch is not None and patch.shape[-1] != patch.shape[-2]:
        kwargs["patch_size"] = (int(patch.shape[-2]), int(patch.shape[-1]))

    named = arch_from_filename(filename) if filename else None
    if named is not None:
        expected = ARCHITECTURES[named]
        checked = ("hidden_size", "num_hidden_layers", "intermediate_size", "use_gated_mlp", "patch_size",
                   "num_register_tokens", "query_bias")
        diffs = [f"{k} {kwargs[k]} (file name implies {expected[k]})" for k in checked if kwargs[k] != expected[k]]
        if diffs:
            raise CheckpointError(
                f"{shown}: the file name says '{named}' but the tensors disagree: {'; '.join(diffs)}. Rename the "
                "file (any name without an architecture in it makes the loader read the architecture off the "
                "tensors) or pass the right checkpoint."
            )

    periods = state.get("rope_embed.periods")
    if named is not None:
        heads = ARCHITECTURES[named]["num_attention_heads"]
    elif periods is not None and periods.ndim == 1 and periods.numel() > 0 and hidden % (4 * periods.numel()) == 0:
        heads = hidden // (4 * periods.numel())
    elif hidden in _HEADS_BY_WIDTH:
        heads = _HEADS_BY_WIDTH[hidden]
    else:
        raise CheckpointError(
            f"{shown}: cannot tell the number of attention heads of a {hidden}-wide ViT: the file has no usable "
            "'rope_embed.periods' buffer and no public DINOv3 has that width."
        )
    kwargs["num_attention_heads"] = heads
    if periods is not None:
        kwargs["rope_theta"] = _rope_theta_from_periods(periods, hidden // heads, shown)
    return kwargs, named


def _rope_theta_from_periods(periods: torch.Tensor, head_dim: int, shown: str) -> float:
    """RoPE base matching Meta's ``periods = base ** (2 i / (head_dim / 2))``, i < head_dim / 4; transformers'
    ``inv_freq`` is its reciprocal, computed from ``rope_theta``."""
    n = head_dim // 4
    if periods.ndim != 1 or periods.numel() != n:
        raise CheckpointError(
            f"{shown}: 'rope_embed.periods' has shape {tuple(periods.shape)}, expected ({n},) = head_dim / 4 for "
            f"head_dim {head_dim}."
        )
    p = periods.detach().to(torch.float64)
    tol = 1e-4 if periods.dtype in (torch.float32, torch.float64) else 1e-2
    exponents = torch.arange(n, dtype=torch.float64) / n
    default = float(_COMMON["rope_theta"])
    if torch.allclose(p, default**exponents, rtol=tol):
        return default
    base = float(p[1] ** n) if n > 1 else float("nan")
    if math.isfinite(base) and base > 1 and abs(round(base) - base) <= 1e-3 * base:
        base = float(round(base))
    if not (math.isfinite(base) and base > 1 and torch.allclose(p, base**exponents, rtol=tol)):
        raise CheckpointError(
            f"{shown}: 'rope_embed.periods' is not a geometric series starting at 1 (base ** (i / {n})); "
            "checkpoints trained with RoPE min/max periods cannot be represented by transformers' DINOv3ViTModel."
        )
    return base


# --------------------------------------------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------------------------------------------

# Block-level renames, Meta suffix -> transformers suffix (qkv is split separately).
_BLOCK_RENAMES = {
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "attn.proj.weight": "attention.o_proj.weight",
    "attn.proj.bias": "attention.o_proj.bias",
    "ls1.gamma": "layer_scale1.lambda1",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
    "ls2.gamma": "layer_scale2.lambda1",
    "mlp.fc1.weight": "mlp.up_proj.weight",
    "mlp.fc1.bias": "mlp.up_proj.bias",
    "mlp.fc2.weight": "mlp.down_proj.weight",
    "mlp.fc2.bias": "mlp.down_proj.bias",
    "mlp.w1.weight": "mlp.gate_proj.weight",
    "mlp.w1.bias": "mlp.gate_proj.bias",
    "mlp.w2.weight": "mlp.up_proj.weight",
    "mlp.w2.bias": "mlp.up_proj.bias",
    "mlp.w3.weight": "mlp.down_proj.weight",
    "mlp.w3.bias": "mlp.down_proj.bias",
}
_GLOBAL_RENAMES = {
    "cls_token": "embeddings.cls_token",
    "mask_token": "embeddings.mask_token",
    "storage_tokens": "embeddings.register_tokens",
    "patch_embed.proj.weight": "embeddings.patch_embeddings.weight",
    "patch_embed.proj.bias": "embeddings.patch_embeddings.bias",
    "norm.weight": "norm.weight",
    "norm.bias": "norm.bias",
}
# Keys that carry no weight of the inference model.
_IGNORED = {"local_cls_norm.weight", "local_cls_norm.bias"}


def _expected_meta_keys(kw: Mapping[str, Any]) -> tuple[set[str], set[str]]:
    """(required, optional) Meta keys of the architecture ``kw``."""
    # storage_tokens is required: every DINOv3 ViT has 4 registers, and a lost one would otherwise silently
    # give a register-free model.
    required = {"cls_token", "mask_token", "storage_tokens", "patch_embed.proj.weight", "patch_embed.proj.bias",
                "norm.weight", "norm.bias"}
    optional = {"rope_embed.periods"} | _IGNORED
    mlp = ("w1", "w2", "w3") if kw["use_gated_mlp"] else ("fc1", "fc2")
    for i in range(kw["num_hidden_layers"]):
        b = f"blocks.{i}."
        required |= {b + s for s in ("norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.proj.weight",
                                     "ls1.gamma", "norm2.weight", "norm2.bias", "ls2.gamma")}
        required |= {f"{b}mlp.{n}.weight" for n in mlp}
        if kw["query_bias"]:
            required.add(b + "attn.qkv.bias")
            optional.add(b + "attn.qkv.bias_mask")
        if kw["proj_bias"]:
            required.add(b + "attn.proj.bias")
        if kw["mlp_bias"]:
            required |= {f"{b}mlp.{n}.bias" for n in mlp}
    return required, optional


def _sorted_keys(keys: set[str]) -> list[str]:
    def order(k: str) -> tuple[int, str]:
        m = _BLOCK_KEY.match(k)
        return (int(m.group(1)) + 1, m.group(2)) if m else (0, k)

    return sorted(keys, key=order)


def convert_meta_state_dict(
    state: Mapping[str, torch.Tensor], *, filename: str = "", display: str | None = None, layer_prefix: str = "layer."
) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, str], str | None]:
    """Convert Meta's DINOv3 ViT state dict to ``DINOv3ViTModel`` names.

    Args:
        state: Meta-layout ``{name: tensor}``.
        filename: the checkpoint's file name (architecture hint, see :func:`infer_meta_architecture`).
        display: how to name the checkpoint in errors.
        layer_prefix: where ``DINOv3ViTModel`` keeps its blocks (``"model.layer."`` in transformers 5).

    Returns:
        (config kwargs, converted state dict, {converted name: Meta name} for error messages, architecture name
        from the file name or ``None``).

    Raises:
        CheckpointError: a key is missing or unexpected (named), a tensor has the wrong rank, or the
        architecture cannot be represented.
    """
    shown = display or filename or "checkpoint"
    kw, named = infer_meta_architecture(state, filename=filename, display=shown)
    required, optional = _expected_meta_keys(kw)
    present = set(state)
    missing = required - present
    if missing:
        names = _sorted_keys(missing)
        raise CheckpointError(
            f"{shown}: missing key{'s' if len(names) > 1 else ''} {', '.join(repr(k) for k in names[:8])}"
            f"{' ...' if len(names) > 8 else ''} (expected for a {kw['num_hidden_layers']}-block, "
            f"{kw['hidden_size']}-wide DINOv3 ViT{' with SwiGLU' if kw['use_gated_mlp'] else ''})."
        )
    unexpected = present - required - optional
    if unexpected:
        names = _sorted_keys(unexpected)
        raise CheckpointError(
            f"{shown}: unexpected key{'s' if len(names) > 1 else ''} {', '.join(repr(k) for k in names[:8])}"
            f"{' ...' if len(names) > 8 else ''}: not part of a {kw['num_hidden_layers']}-block DINOv3 ViT in Meta's "
            "layout. Is this a training checkpoint or a different model?"
        )

    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}

    def put(name: str, tensor: torch.Tensor, meta_name: str) -> None:
        out[name] = tensor
        origin[name] = meta_name

    for meta_name, hf_name in _GLOBAL_RENAMES.items():
        if meta_name in state:
            tensor = state[meta_name]
            if meta_name == "mask_token":
                tensor = tensor.reshape(1, 1, -1)  # Meta (1, C) -> transformers (1, 1, C)
            put(hf_name, tensor, meta_name)

    hidden = kw["hidden_size"]
    k_biases: dict[int, torch.Tensor] = {}
    for i in range(kw["num_hidden_layers"]):
        b, h = f"blocks.{i}.", f"{layer_prefix}{i}."
        for suffix, hf_suffix in _BLOCK_RENAMES.items():
            if b + suffix in state:
                put(h + hf_suffix, state[b + suffix], b + suffix)
        qkv = state[b + "attn.qkv.weight"]
        if qkv.ndim != 2 or qkv.shape[0] != 3 * hidden:
            raise CheckpointError(
                f"{shown}: key '{b}attn.qkv.weight' has shape {tuple(qkv.shape)}, expected ({3 * hidden}, {hidden})."
            )
        for part, name in zip(qkv.chunk(3, dim=0), ("q_proj", "k_proj", "v_proj")):
            put(f"{h}attention.{name}.weight", part, b + "attn.qkv.weight")
        if kw["query_bias"]:
            bias = state[b + "attn.qkv.bias"]
            mask = state.get(b + "attn.qkv.bias_mask")
            if bias.shape != (3 * hidden,):
                raise CheckpointError(
                    f"{shown}: key '{b}attn.qkv.bias' has shape {tuple(bias.shape)}, expected ({3 * hidden},)."
                )
            if mask is not None:
                if mask.shape != bias.shape or not torch.isfinite(mask).all():
                    raise CheckpointError(
                        f"{shown}: key '{b}attn.qkv.bias_mask' must be a finite ({3 * hidden},) mask; got shape "
                        f"{tuple(mask.shape)}{'' if torch.isfinite(mask).all() else ' with NaNs (never initialised)'}."
                    )
                # Meta's LinearKMaskedBias uses bias * bias_mask (1 for q and v, 0 for k); x * 1.0 is exact, so q
                # and v biases keep their bits.
                bias = bias * mask.to(bias.dtype)
            q_b, k_b, v_b = bias.chunk(3, dim=0)
            put(f"{h}attention.q_proj.bias", q_b, b + "attn.qkv.bias")
            put(f"{h}attention.v_proj.bias", v_b, b + "attn.qkv.bias")
            k_biases[i] = k_b
    # A k bias is softmax-invariant but transformers only has a switch for all layers: keep it only if any
    # layer has a non-zero one (it is zero, i.e. masked, in every public checkpoint).
    if any(bool(k_b.any()) for k_b in k_biases.values()):
        kw["key_bias"] = True
        for i, k_b in k_biases.items():
            put(f"{layer_prefix}{i}.attention.k_proj.bias", k_b, f"blocks.{i}.attn.qkv.bias")
    return kw, out, origin, named


def model_from_meta_state_dict(
    state: Mapping[str, torch.Tensor], *, filename: str = "", display: str | None = None
) -> tuple[DINOv3ViTModel, str | None]:
    """Build a ``DINOv3ViTModel`` holding the weights of Meta's state dict (no copy where dtypes allow).

    The model is built on the meta device and the converted tensors are assigned, so nothing is initialised
    twice (ViT-7B would otherwise cost minutes). RoPE frequencies are recomputed from ``rope_theta``.

    Returns:
        (model on the CPU in the checkpoint's dtype, architecture name from the file name or ``None``).

    Raises:
        CheckpointError: see :func:`convert_meta_state_dict`; also a tensor whose shape does not fit.
    """
    from transformers import DINOv3ViTModel

    shown = display or filename or "checkpoint"
    with torch.device("meta"):
        probe = DINOv3ViTModel(build_config(dict(ARCHITECTURES["tiny"], num_hidden_layers=1)))
    prefix = _layer_prefix(probe.state_dict())
    kw, converted, origin, named = convert_meta_state_dict(state, filename=filename, display=shown,
                                                           layer_prefix=prefix)
    with torch.device("meta"):
        model = DINOv3ViTModel(build_config(kw))
    expected = model.state_dict()
    for name, tensor in converted.items():
        if name not in expected:  # a transformers version with other names; not a user error
            raise CheckpointError(f"{shown}: internal conversion produced unknown parameter {name!r} "
                                  f"(from {origin[name]!r}); this transformers version is not supported.")
        if tuple(tensor.shape) != tuple(expected[name].shape):
            want = tuple(expected[name].shape)
            if origin[name] == "mask_token":
                want = want[1:]
            raise CheckpointError(
                f"{shown}: key {origin[name]!r} has shape {tuple(tensor.shape)}, expected {want} for the "
                f"architecture read off the file (hidden {kw['hidden_size']}, MLP {kw['intermediate_size']})."
            )
    absent = sorted(set(expected) - set(converted))
    if absent:
        raise CheckpointError(f"{shown}: nothing in the file provides {absent[:5]}; not a complete DINOv3 ViT.")
    model.load_state_dict(converted, strict=True, assign=True)
    reset_rope(model)
    return model, named


def _layer_prefix(state_keys: Mapping[str, Any]) -> str:
    for key in state_keys:
        m = re.match(r"^(.*?layer\.)0\.norm1\.weight$", key)
        if m:
            return m.group(1)
    raise RuntimeError("cannot find the encoder blocks of transformers' DINOv3ViTModel")  # pragma: no cover


def reset_rope(model: DINOv3ViTModel) -> None:
    """(Re)compute the RoPE inverse frequencies in float32, as transformers' ``_init_weights`` does.

    ``inv_freq`` is a non-persistent buffer: absent from checkpoints, left on the meta device by meta-device
    construction, and cast by ``model.to(bfloat16)``; keeping it float32 makes bf16 models match transformers'
    own ``from_pretrained(dtype=bfloat16)``.
    """
    rope = model.rope_embeddings
    device = model.embeddings.patch_embeddings.weight.device
    rope.inv_freq = 1 / rope.base ** torch.arange(0, 1, 4 / rope.head_dim, dtype=torch.float32, device=device)
