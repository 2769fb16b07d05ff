"""Small random DINOv3 checkpoints in every format the backbone loader reads, for tests.

- :func:`tiny_config` / :func:`random_model`: a 2-block, 64-wide ``DINOv3ViTModel`` (4 heads, 4 registers) with
  every parameter randomised (biases, LayerScale and norms too, so a wrong key mapping changes the outputs).
- :func:`write_hf_dir`: ``save_pretrained`` (config.json + model.safetensors).
- :func:`to_meta_state_dict` / :func:`write_meta_checkpoint`: the inverse of the loader's conversion, written
  here independently from Meta's naming (``dinov3/models/vision_transformer.py``): q/k/v fused into
  ``attn.qkv`` with a ``bias_mask`` that zeroes the k bias (whose stored values are junk, as Meta's may be),
  ``mask_token`` as (1, C), ``rope_embed.periods`` = 1 / inv_freq, ``ls{1,2}.gamma``, ``mlp.fc1/fc2`` or
  ``mlp.w1/w2/w3``.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from transformers import DINOv3ViTConfig, DINOv3ViTModel

TINY: dict[str, Any] = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_register_tokens=4,
    patch_size=16,
)


def tiny_config(**overrides: Any) -> DINOv3ViTConfig:
    """A tiny DINOv3 ViT config; ``use_gated_mlp=True`` also switches the activation to SiLU as Meta's SwiGLU."""
    kwargs = dict(TINY, **overrides)
    if kwargs.get("use_gated_mlp"):
        kwargs.setdefault("hidden_act", "silu")
    return DINOv3ViTConfig(**kwargs)


def random_model(config: DINOv3ViTConfig | None = None, seed: int = 0) -> DINOv3ViTModel:
    """A DINOv3ViTModel with every parameter drawn at random (seeded), in eval mode."""
    config = config or tiny_config()
    gen = torch.Generator().manual_seed(seed)
    model = DINOv3ViTModel(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if name.endswith(("norm1.weight", "norm2.weight", "norm.weight", "lambda1")):
                param.copy_(1.0 + 0.2 * noise)
            else:
                param.copy_(0.2 * noise)
    return model.eval()


def write_hf_dir(model: DINOv3ViTModel, path: str | os.PathLike[str]) -> str:
    """``save_pretrained`` into ``path``; returns it."""
    model.save_pretrained(os.fspath(path))
    return os.fspath(path)


def _blocks(model: DINOv3ViTModel):
    return model.model.layer if hasattr(model, "model") else model.layer


def to_meta_state_dict(model: DINOv3ViTModel, *, bias_mask: bool = True, periods: bool = True,
                       local_cls_norm: bool = False, junk_k_bias: bool = True) -> dict[str, torch.Tensor]:
    """``model``'s weights in Meta's original DINOv3 layout.

    Args:
        bias_mask: write ``attn.qkv.bias_mask`` (Meta's ``LinearKMaskedBias``); the k third of ``qkv.bias`` then
            holds random junk (``junk_k_bias``) that the mask cancels. Without a mask, the k bias is the model's
            (zeros when it has none).
        periods: write the ``rope_embed.periods`` buffer.
        local_cls_norm: add the training-only ``local_cls_norm`` of ViT-7B / ViT-L SAT.
    """
    cfg = model.config
    c = cfg.hidden_size
    emb = model.embeddings
    sd: dict[str, torch.Tensor] = {
        "cls_token": emb.cls_token.detach().clone(),
        "mask_token": emb.mask_token.detach().reshape(1, c).clone(),
        "patch_embed.proj.weight": emb.patch_embeddings.weight.detach().clone(),
        "patch_embed.proj.bias": emb.patch_embeddings.bias.detach().clone(),
        "norm.weight": model.norm.weight.detach().clone(),
        "norm.bias": model.norm.bias.detach().clone(),
    }
    if cfg.num_register_tokens:
        sd["storage_tokens"] = emb.register_tokens.detach().clone()
    if periods:
        sd["rope_embed.periods"] = (1.0 / model.rope_embeddings.inv_freq.detach().float()).clone()
    if local_cls_norm:
        sd["local_cls_norm.weight"] = torch.ones(c, device=model.norm.weight.device)
        sd["local_cls_norm.bias"] = torch.zeros(c, device=model.norm.weight.device)
    gen = torch.Generator().manual_seed(1234)
    for i, layer in enumerate(_blocks(model)):
        b = f"blocks.{i}."
        att = layer.attention
        dev = att.q_proj.weight.device  # "meta" for shape-only tests
        sd[b + "norm1.weight"] = layer.norm1.weight.detach().clone()
        sd[b + "norm1.bias"] = layer.norm1.bias.detach().clone()
        sd[b + "attn.qkv.weight"] = torch.cat([att.q_proj.weight, att.k_proj.weight, att.v_proj.weight]).detach()
        if att.q_proj.bias is not None:
            if att.k_proj.bias is not None:
                k_bias = att.k_proj.bias.detach()
            elif bias_mask and junk_k_bias:
                k_bias = torch.randn(c, generator=gen).to(dev)
            else:
                k_bias = torch.zeros(c, device=dev)
            sd[b + "attn.qkv.bias"] = torch.cat([att.q_proj.bias.detach(), k_bias, att.v_proj.bias.detach()])
            if bias_mask:
                mask = torch.ones(3 * c, device=dev)
                mask[c: 2 * c] = 0.0
                sd[b + "attn.qkv.bias_mask"] = mask
        sd[b + "attn.proj.weight"] = att.o_proj.weight.detach().clone()
        if att.o_proj.bias is not None:
            sd[b + "attn.proj.bias"] = att.o_proj.bias.detach().clone()
        sd[b + "ls1.gamma"] = layer.layer_scale1.lambda1.detach().clone()
        sd[b + "norm2.weight"] = layer.norm2.weight.detach().clone()
        sd[b + "norm2.bias"] = layer.norm2.bias.detach().clone()
        mlp = layer.mlp
        names = ({"w1": mlp.gate_proj, "w2": mlp.up_proj, "w3": mlp.down_proj} if cfg.use_gated_mlp
                 else {"fc1": mlp.up_proj, "fc2": mlp.down_proj})
        for meta_name, linear in names.items():
            sd[f"{b}mlp.{meta_name}.weight"] = linear.weight.detach().clone()
            if linear.bias is not None:
                sd[f"{b}mlp.{meta_name}.bias"] = linear.bias.detach().clone()
        sd[b + "ls2.gamma"] = layer.layer_scale2.lambda1.detach().clone()
    return sd


def write_meta_checkpoint(model: DINOv3ViTModel, path: str | os.PathLike[str], **kwargs: Any) -> str:
    """``torch.save`` of :func:`to_meta_state_dict` at ``path``; returns it."""
    torch.save(to_meta_state_dict(model, **kwargs), os.fspath(path))
    return os.fspath(path)


def meta_reference_forward(sd: dict[str, torch.Tensor], pixels: torch.Tensor, num_heads: int,
                           eps: float = 1e-5) -> torch.Tensor:
    """Meta's DINOv3 ViT forward (eval, ``forward_features``), re-implemented from ``dinov3/models/
    vision_transformer.py`` and ``dinov3/layers`` directly on a Meta-layout state dict, independently of
    transformers. Returns the final-norm tokens (B, 1 + R + h*w, C): CLS, storage tokens, patches."""
    import math

    import torch.nn.functional as F

    w = sd["patch_embed.proj.weight"]
    x = F.conv2d(pixels, w, sd["patch_embed.proj.bias"], stride=w.shape[-1])  # (B, C, h, w)
    b, c, h, wd = x.shape
    x = x.flatten(2).transpose(1, 2)
    cls = sd["cls_token"] + 0 * sd["mask_token"]  # as prepare_tokens_with_masks without masks
    storage = sd.get("storage_tokens", x.new_zeros(1, 0, c))
    x = torch.cat([cls.expand(b, -1, -1), storage.expand(b, -1, -1), x], dim=1)
    # RopePositionEmbedding, normalize_coords="separate", eval (no shift/jitter/rescale).
    coords_h = torch.arange(0.5, h) / h
    coords_w = torch.arange(0.5, wd) / wd
    coords = torch.stack(torch.meshgrid(coords_h, coords_w, indexing="ij"), dim=-1).flatten(0, 1) * 2.0 - 1.0
    angles = (2 * math.pi * coords[:, :, None] / sd["rope_embed.periods"][None, None, :]).flatten(1, 2).tile(2)
    sin, cos = torch.sin(angles), torch.cos(angles)

    def rope(t: torch.Tensor) -> torch.Tensor:
        prefix = t.shape[-2] - sin.shape[-2]
        body = t[:, :, prefix:]
        t1, t2 = body.chunk(2, dim=-1)
        return torch.cat([t[:, :, :prefix], body * cos + torch.cat([-t2, t1], dim=-1) * sin], dim=-2)

    hd = c // num_heads
    i = 0
    while f"blocks.{i}.attn.qkv.weight" in sd:
        p = f"blocks.{i}."
        y = F.layer_norm(x, (c,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], eps)
        bias = sd.get(p + "attn.qkv.bias")
        if bias is not None and p + "attn.qkv.bias_mask" in sd:
            bias = bias * sd[p + "attn.qkv.bias_mask"]
        qkv = F.linear(y, sd[p + "attn.qkv.weight"], bias).reshape(b, -1, 3, num_heads, hd)
        q, k, v = (t.transpose(1, 2) for t in torch.unbind(qkv, 2))
        a = F.scaled_dot_product_attention(rope(q), rope(k), v).transpose(1, 2).reshape(b, -1, c)
        a = F.linear(a, sd[p + "attn.proj.weight"], sd.get(p + "attn.proj.bias"))
        x = x + sd[p + "ls1.gamma"] * a
        y = F.layer_norm(x, (c,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], eps)
        if p + "mlp.fc1.weight" in sd:
            m = F.linear(F.gelu(F.linear(y, sd[p + "mlp.fc1.weight"], sd.get(p + "mlp.fc1.bias"))),
                         sd[p + "mlp.fc2.weight"], sd.get(p + "mlp.fc2.bias"))
        else:  # SwiGLUFFN: w3(silu(w1 x) * w2 x)
            m = F.linear(F.silu(F.linear(y, sd[p + "mlp.w1.weight"], sd.get(p + "mlp.w1.bias")))
                         * F.linear(y, sd[p + "mlp.w2.weight"], sd.get(p + "mlp.w2.bias")),
                         sd[p + "mlp.w3.weight"], sd.get(p + "mlp.w3.bias"))
        x = x + sd[p + "ls2.gamma"] * m
        i += 1
    return F.layer_norm(x, (c,), sd["norm.weight"], sd["norm.bias"], eps)
