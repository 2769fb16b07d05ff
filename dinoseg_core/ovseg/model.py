"""The dinov3.seg model: a trainable head over frozen dino.txt, built from the published description.

Neither code nor weights of dinov3.seg (arXiv 2603.19531) are public. The description: text embeddings are
matched against both the global CLS and the local patch features, giving a correlation volume per class; the
visual features are refined *before* the matching ("early refinement"); the correlation volume is refined
*after* it ("late refinement": spatial aggregation and aggregation across classes); a light decoder upsamples.
Our reading, stage by stage (:class:`SegHead`, shapes for B images, K classes, a (h, w) patch grid, width D):

1. early refinement: ``early_blocks`` residual depthwise-3x3 + pointwise blocks on the patch features (B, D, h, w),
   the last layer zero-initialised so training starts from dino.txt's own features;
2. matching: ``cos(patch(x), t_k^patch)`` and ``cos(cls, t_k^cls)`` -> correlation volume (B, K, 2, h, w);
3. embedding: 1x1 conv of the 2 correlation channels to ``hidden``, plus a projection of the class's text
   embedding (text guidance) and of the refined patch features (visual guidance);
4. late refinement, spatial: ``spatial_blocks`` residual 3x3 conv blocks per class (classes folded into the batch);
5. late refinement, across classes: ``class_blocks`` transformer layers whose tokens are the K classes at each
   location, without positional encoding, so the head accepts any number of classes in any order (permuting
   the classes permutes the output);
6. decoder: per class, one x2 bilinear upsampling + 3x3 conv per ``decoder_channels`` entry, then a 1x1 conv to
   one logit: (B, K, 4h, 4w) for the default two stages (a quarter of the input resolution).

Only this head is trained; the backbone, the vision head and the text tower stay frozen. Validated here: shapes,
class-permutation equivariance, and that it learns on synthetic data (tests). Its accuracy on real benchmarks is
unknown until it is trained on COCO-Stuff with the real dino.txt weights.

A checkpoint is a state dict plus metadata (:func:`checkpoint_state`, :meth:`SegModel.from_checkpoint`):
``head.<param>`` tensors, optionally ``optim.<i>.<state>`` (AdamW) and ``loss_history``, and JSON-able metadata
(format, head config, step, classes, the dino.txt fingerprint). Reading and writing it at a URL (a safetensors
file) is storage: :mod:`dinoseg_core.io.heads`.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dinoseg_core.errors import CheckpointError, InputError
from dinoseg_core.ovseg.config import SegHeadConfig
from dinoseg_core.ovseg.dinotxt import ClassEmbeddings, DinoTxt

__all__ = ["CHECKPOINT_FORMAT", "SegHead", "SegModel", "checkpoint_state", "head_from_checkpoint"]

CHECKPOINT_FORMAT = "dinoseg-ovseg-head-v1"


class _EarlyBlock(nn.Module):
    """x + pw2(gelu(pw1(dw(norm(x))))), pw2 zero-initialised."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.GroupNorm(1, dim)
        self.dw = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.pw1 = nn.Conv2d(dim, dim, 1)
        self.pw2 = nn.Conv2d(dim, dim, 1)
        nn.init.zeros_(self.pw2.weight)
        nn.init.zeros_(self.pw2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.pw2(F.gelu(self.pw1(self.dw(self.norm(x)))))


class _ConvBlock(nn.Module):
    """x + conv2(gelu(conv1(norm(x)))), 3x3 convs."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.GroupNorm(math.gcd(8, dim), dim)
        self.conv1 = nn.Conv2d(dim, dim, 3, padding=1)
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.gelu(self.conv1(self.norm(x))))


class SegHead(nn.Module):
    """The trainable part of dinov3.seg (see the module docstring for the stages)."""

    def __init__(self, config: SegHeadConfig):
        super().__init__()
        self.config = config
        d, c = config.feature_dim, config.hidden
        self.early = nn.Sequential(*(_EarlyBlock(d) for _ in range(config.early_blocks)))
        self.corr_embed = nn.Conv2d(2, c, 1)
        self.text_guidance = nn.Linear(2 * d, c)
        self.visual_guidance = nn.Conv2d(d, c, 1)
        self.spatial = nn.Sequential(*(_ConvBlock(c) for _ in range(config.spatial_blocks)))
        self.classes = nn.ModuleList(
            nn.TransformerEncoderLayer(c, config.class_heads, dim_feedforward=2 * c, dropout=0.0,
                                       activation="gelu", batch_first=True, norm_first=True)
            for _ in range(config.class_blocks)
        )
        stages = []
        width = c
        for out in config.decoder_channels:
            stages.append(nn.Conv2d(width, out, 3, padding=1))
            width = out
        self.decoder = nn.ModuleList(stages)
        self.to_logit = nn.Conv2d(width, 1, 1)

    @property
    def upsampling(self) -> int:
        """Output cells per patch along each side (4 for two decoder stages)."""
        return 2 ** len(self.config.decoder_channels)

    def forward(self, cls: torch.Tensor, patches: torch.Tensor, text_cls: torch.Tensor,
                text_patch: torch.Tensor) -> torch.Tensor:
        """Logits per class.

        Args:
            cls: (B, D) vision-head CLS tokens.
            patches: (B, D, h, w) vision-head patch tokens.
            text_cls / text_patch: (K, D) unit text embeddings (CLS half / patch half).

        Returns:
            (B, K, h * u, w * u) logits, u = :attr:`upsampling`.
        """
        b, d, h, w = patches.shape
        k = text_cls.shape[0]
        if d != self.config.feature_dim or text_cls.shape != (k, d) or text_patch.shape != (k, d):
            raise InputError(f"SegHead expects features of width {self.config.feature_dim}; got patches "
                             f"{tuple(patches.shape)}, text {tuple(text_cls.shape)} / {tuple(text_patch.shape)}")
        refined = self.early(patches)
        local = torch.einsum("bdhw,kd->bkhw", F.normalize(refined, dim=1), text_patch)
        glob = (F.normalize(cls, dim=1) @ text_cls.T)[:, :, None, None].expand(b, k, h, w)
        corr = torch.stack([local, glob], dim=2).reshape(b * k, 2, h, w)
        x = self.corr_embed(corr).view(b, k, -1, h, w)
        x = x + self.text_guidance(torch.cat([text_cls, text_patch], dim=1))[None, :, :, None, None]
        x = x + self.visual_guidance(refined)[:, None]
        c = x.shape[2]
        x = self.spatial(x.reshape(b * k, c, h, w))
        if len(self.classes):
            x = x.view(b, k, c, h, w).permute(0, 3, 4, 1, 2).reshape(b * h * w, k, c)
            for layer in self.classes:
                x = layer(x)
            x = x.view(b, h, w, k, c).permute(0, 3, 4, 1, 2).reshape(b * k, c, h, w)
        for conv in self.decoder:
            x = F.gelu(conv(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)))
        return self.to_logit(x).view(b, k, x.shape[-2], x.shape[-1])


class SegModel:
    """dinov3.seg: frozen :class:`~dinoseg_core.ovseg.dinotxt.DinoTxt` + a trainable :class:`SegHead`.

    Args:
        dinotxt: the frozen towers (the head's ``feature_dim`` must equal their width).
        head: an existing head; by default a fresh one from ``config`` (default :class:`SegHeadConfig` with
            ``feature_dim`` set to the towers' width), initialised from torch's global RNG (seed it first).
    """

    def __init__(self, dinotxt: DinoTxt, head: SegHead | None = None, config: SegHeadConfig | None = None):
        if head is None:
            config = config or SegHeadConfig(feature_dim=dinotxt.embed_dim)
            head = SegHead(config)
        if head.config.feature_dim != dinotxt.embed_dim:
            raise InputError(f"the head expects {head.config.feature_dim}-wide features but dino.txt "
                             f"{dinotxt.spec!r} gives {dinotxt.embed_dim}; build the head with "
                             f"SegHeadConfig(feature_dim={dinotxt.embed_dim})")
        self.dinotxt = dinotxt
        self.head = head.to(dinotxt.device)

    def __repr__(self) -> str:
        params = sum(p.numel() for p in self.head.parameters())
        return f"SegModel({self.dinotxt!r}, head {params / 1e6:.2f} M parameters)"

    def fingerprint(self) -> str:
        """sha256 hex over the dino.txt fingerprint, the head config and the head's current weights (computed on
        each call: the head changes while it trains)."""
        digest = hashlib.sha256(b"dinoseg-ovseg-segmodel-v1\n")
        digest.update(self.dinotxt.fingerprint.encode())
        digest.update(json.dumps(self.head.config.to_dict(), sort_keys=True).encode())
        for name, tensor in sorted(self.head.state_dict().items()):
            digest.update(f"\n{name}|{tuple(tensor.shape)}\n".encode())
            digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()

    def logits(self, pixels: torch.Tensor, classes: ClassEmbeddings) -> torch.Tensor:
        """(B, 3, H, W) normalised pixels -> (B, K, H/p * u, W/p * u) logits (u = 4 by default); gradients flow
        into the head only."""
        cls, patches = self.dinotxt.image_tokens(pixels)
        return self.head(cls, patches, classes.cls.to(patches.device), classes.patch.to(patches.device))

    def checkpoint(self, metadata: dict[str, Any] | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """The head as a checkpoint (:func:`checkpoint_state`): weights, config and the dino.txt fingerprint."""
        return checkpoint_state(self.head, dinotxt_fingerprint=self.dinotxt.fingerprint, metadata=metadata)

    @classmethod
    def from_checkpoint(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any], dinotxt: DinoTxt, *,
                        name: str = "checkpoint", allow_other_dinotxt: bool = False) -> SegModel:
        """A model from a head checkpoint (:meth:`checkpoint`, or one :func:`~dinoseg_core.ovseg.train.train`
        wrote); :func:`dinoseg_core.io.heads.load_seg_model` reads one from a URL.

        Args:
            tensors, meta: the checkpoint's state dict and metadata.
            name: the checkpoint in error messages (e.g. its URL).

        Raises:
            CheckpointError: a missing/unexpected/misshapen tensor, or (unless ``allow_other_dinotxt``) a head
                trained on other dino.txt weights than ``dinotxt``.
        """
        if not allow_other_dinotxt and meta.get("dinotxt_fingerprint") != dinotxt.fingerprint:
            raise CheckpointError(
                f"{name}: this head was trained on dino.txt {str(meta.get('dinotxt_fingerprint'))[:12]}..., not on "
                f"the loaded {dinotxt.fingerprint[:12]}... ({dinotxt.spec!r}); its features would not match. Load "
                "the same backbone, dino.txt and vocabulary files, or pass allow_other_dinotxt=True.")
        return cls(dinotxt, head_from_checkpoint(tensors, meta, name))


def head_from_checkpoint(tensors: dict[str, torch.Tensor], meta: dict[str, Any], shown: str) -> SegHead:
    """Build a :class:`SegHead` from a checkpoint's state dict and metadata, every ``head.*`` tensor checked."""
    try:
        config = SegHeadConfig.from_dict(meta["head_config"])
    except (KeyError, TypeError, InputError) as exc:
        raise CheckpointError(f"{shown}: no valid head_config in the metadata ({exc}).") from exc
    head = SegHead(config)
    expected = head.state_dict()
    state = {k[len("head."):]: v for k, v in tensors.items() if k.startswith("head.")}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{shown}: head tensors do not match its config: missing {missing[:5]}, unexpected "
                              f"{unexpected[:5]}.")
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(f"{shown}: tensor 'head.{name}' has shape {tuple(tensor.shape)}, expected "
                                  f"{tuple(expected[name].shape)}.")
    head.load_state_dict(state)
    return head


def checkpoint_state(head: SegHead, *, dinotxt_fingerprint: str, optimizer: torch.optim.Optimizer | None = None,
                     step: int = 0, losses: list[float] | None = None, metadata: dict[str, Any] | None = None
                     ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """What a head checkpoint holds: (tensors on the CPU, JSON-able metadata).

    Args:
        optimizer: its tensor state goes in as ``optim.<param index>.<name>``, its param groups in the metadata,
            so that training resumes exactly.
        step: optimiser steps done.
        losses: the loss of every step so far (``loss_history``, float64).
        metadata: more entries for the metadata (class names, the training config, ...).
    """
    tensors = {f"head.{k}": v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    meta: dict[str, Any] = {"format": CHECKPOINT_FORMAT, "head_config": head.config.to_dict(), "step": int(step),
                            "dinotxt_fingerprint": dinotxt_fingerprint}
    if optimizer is not None:
        state = optimizer.state_dict()
        for index, entries in state["state"].items():
            for key, value in entries.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optim.{index}.{key}"] = value.detach().cpu().contiguous()
        meta["optim_param_groups"] = state["param_groups"]
    if losses is not None:
        tensors["loss_history"] = torch.tensor(losses, dtype=torch.float64)
    meta.update(metadata or {})
    return tensors, meta
