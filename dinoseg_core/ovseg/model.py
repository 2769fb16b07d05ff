"""The dinov3.seg model: a trainable head over frozen dino.txt, this project's reading of the paper's abstract.

Only the abstract of dinov3.seg (arXiv 2603.19531) is public: not its method section, code or weights. The
abstract: text embeddings are
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

That is ``SegHeadConfig(kind="small")``. :class:`CatSegHead` (``kind="catseg"``) follows CAT-Seg's cost aggregation
(Cho et al., CVPR 2024), which the abstract says dinov3.seg adapts, more closely: the same early refinement and
correlation volume (embedded by a 7x7 conv), then ``rounds`` rounds of

- spatial aggregation: two Swin-style blocks per class, multi-head attention within ``attention_window``-patch
  windows, the second block's windows shifted by half a window (masked so no window wraps around), the queries
  and keys joined with guidance: the refined backbone patch features projected by a 3x3 conv;
- class aggregation: a transformer block across the K classes at every location (plain multi-head attention,
  no positional encoding: permutation-equivariant), the queries and keys joined with the projected text
  embeddings;

and an upsampling decoder whose every x2 stage joins the class's features with the backbone patch features
upsampled by a learnt transposed conv (guidance) before a 3x3 conv. Differences from CAT-Seg: the cost has 2
channels (patch-text and CLS-text) instead of one per template; guidance comes from the frozen vision-head tokens
(not intermediate CLIP layers); plain rather than linear attention across classes, without pooling or padding to a
fixed class count; MLPs 2x wide instead of 4x and one conv per decoder stage instead of two (to halve the cost);
no fine-tuning of the encoder.

Only this head is trained; the backbone, the vision head and the text tower stay frozen. Validated here: shapes,
class-permutation equivariance, and that it learns on synthetic data (tests). Its accuracy on real benchmarks is
unknown until it is trained on COCO-Stuff with the real dino.txt weights.

A checkpoint is a state dict plus metadata (:func:`checkpoint_state`, :meth:`SegModel.from_checkpoint`):
``head.<param>`` tensors, optionally ``optim.<i>.<state>`` (AdamW) and ``loss_history``, and JSON-able metadata
(format, ``head`` (the kind), head config, step, classes, the dino.txt fingerprint); a checkpoint made before heads
had kinds holds a small head. Reading and writing it at a URL (a safetensors
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
from dinoseg_core.ovseg.config import HEAD_FIELDS, SegHeadConfig
from dinoseg_core.ovseg.dinotxt import ClassEmbeddings, DinoTxt

__all__ = ["CHECKPOINT_FORMAT", "CatSegHead", "SegHead", "SegModel", "build_head", "checkpoint_head_config",
           "checkpoint_state", "head_from_checkpoint", "head_parameters"]

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
        if config.kind != "small":
            raise InputError(f"SegHead needs SegHeadConfig(kind='small'), got kind={config.kind!r}; build_head() "
                             "picks the class from the config")
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

    kind = "small"

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
        _check_widths(self, patches, text_cls, text_patch)
        refined = self.early(patches)
        x = self.corr_embed(_correlation(cls, refined, text_cls, text_patch)).view(b, k, -1, h, w)
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


def _check_widths(head: nn.Module, patches: torch.Tensor, text_cls: torch.Tensor, text_patch: torch.Tensor) -> None:
    d, k = patches.shape[1], text_cls.shape[0]
    if d != head.config.feature_dim or text_cls.shape != (k, d) or text_patch.shape != (k, d):
        raise InputError(f"{type(head).__name__} expects features of width {head.config.feature_dim}; got patches "
                         f"{tuple(patches.shape)}, text {tuple(text_cls.shape)} / {tuple(text_patch.shape)}")


def _correlation(cls: torch.Tensor, refined: torch.Tensor, text_cls: torch.Tensor, text_patch: torch.Tensor
                 ) -> torch.Tensor:
    """The correlation volume (B * K, 2, h, w): cos(patch, t_k^patch) and cos(cls, t_k^cls) per class."""
    b, _, h, w = refined.shape
    k = text_cls.shape[0]
    local = torch.einsum("bdhw,kd->bkhw", F.normalize(refined, dim=1), text_patch)
    glob = (F.normalize(cls, dim=1) @ text_cls.T)[:, :, None, None].expand(b, k, h, w)
    return torch.stack([local, glob], dim=2).reshape(b * k, 2, h, w)


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(..., T, C) -> (..., heads, T, C / heads)."""
    *lead, t, c = x.shape
    return x.view(*lead, t, heads, c // heads).transpose(-3, -2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(..., heads, T, d) -> (..., T, heads * d)."""
    *lead, heads, t, d = x.shape
    return x.transpose(-3, -2).reshape(*lead, t, heads * d)


class _GuidedAttention(nn.Module):
    """Multi-head attention whose queries and keys see ``x`` joined with guidance, and whose values see ``x``."""

    def __init__(self, dim: int, guide: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim + guide, dim)
        self.k = nn.Linear(dim + guide, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, guide: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        xg = torch.cat([x, guide], dim=-1)
        q, k, v = (_split_heads(t, self.heads) for t in (self.q(xg), self.k(xg), self.v(x)))
        return self.proj(_merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=mask)))


class _Mlp(nn.Sequential):
    def __init__(self, dim: int):
        super().__init__(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))


def _window_mask(height: int, width: int, wh: int, ww: int, sh: int, sw: int, device: torch.device) -> torch.Tensor:
    """bool (windows, wh * ww, wh * ww): which tokens of a padded, rolled grid may attend to which, window by
    window. A token sees the tokens of its window that are real (not padding) and, for shifted windows, contiguous
    with it in the unrolled grid (Swin's regions); padding sees only padding."""
    hp, wp = -(-height // wh) * wh, -(-width // ww) * ww
    rows = torch.arange(hp, device=device)
    cols = torch.arange(wp, device=device)
    row_region = (rows >= hp - wh).long() + (rows >= hp - sh).long() if sh else torch.zeros_like(rows)
    col_region = (cols >= wp - ww).long() + (cols >= wp - sw).long() if sw else torch.zeros_like(cols)
    label = row_region[:, None] * 3 + col_region[None, :]
    real = (rows < height)[:, None] & (cols < width)[None, :]
    real = torch.roll(real, shifts=(-sh, -sw), dims=(0, 1))
    label = torch.where(real, label, torch.full_like(label, -1))
    windows = label.view(hp // wh, wh, wp // ww, ww).permute(0, 2, 1, 3).reshape(-1, wh * ww)
    return windows[:, :, None] == windows[:, None, :]


class _WindowBlock(nn.Module):
    """Swin-style block on (N, h, w, C) maps: guided window attention (shifted by half a window when ``shift``),
    then an MLP, each pre-norm and residual."""

    def __init__(self, dim: int, guide: int, heads: int, window: int, shift: bool):
        super().__init__()
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.guide_norm = nn.LayerNorm(guide)
        self.attn = _GuidedAttention(dim, guide, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _Mlp(dim)

    def forward(self, x: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
        """x: (B, K, h, w, C); guide: (B, h, w, G), shared by the K classes."""
        b, k, h, w, c = x.shape
        wh, ww = min(self.window, h), min(self.window, w)
        sh = wh // 2 if self.shift and h > wh else 0
        sw = ww // 2 if self.shift and w > ww else 0
        hp, wp = -(-h // wh) * wh, -(-w // ww) * ww
        y = F.pad(self.norm1(x), (0, 0, 0, wp - w, 0, hp - h))
        g = F.pad(self.guide_norm(guide), (0, 0, 0, wp - w, 0, hp - h))
        if sh or sw:
            y = torch.roll(y, shifts=(-sh, -sw), dims=(2, 3))
            g = torch.roll(g, shifts=(-sh, -sw), dims=(1, 2))
        nh, nw = hp // wh, wp // ww
        # (B, K, nh, wh, nw, ww, C) -> (B, K, windows, wh * ww, C); the guidance broadcasts over K
        y = y.view(b, k, nh, wh, nw, ww, c).permute(0, 1, 2, 4, 3, 5, 6).reshape(b, k, nh * nw, wh * ww, c)
        g = g.view(b, 1, nh, wh, nw, ww, -1).permute(0, 1, 2, 4, 3, 5, 6).reshape(b, 1, nh * nw, wh * ww, -1)
        mask = None
        if sh or sw or hp != h or wp != w:
            mask = _window_mask(h, w, wh, ww, sh, sw, x.device)[:, None]  # (windows, 1 head, T, T)
        y = self.attn(y, g.expand(b, k, *g.shape[2:]), mask)
        y = y.view(b, k, nh, nw, wh, ww, c).permute(0, 1, 2, 4, 3, 5, 6).reshape(b, k, hp, wp, c)
        if sh or sw:
            y = torch.roll(y, shifts=(sh, sw), dims=(2, 3))
        x = x + y[:, :, :h, :w]
        return x + self.mlp(self.norm2(x))


class _ClassBlock(nn.Module):
    """Transformer block across the K classes at every location, queries and keys guided by the text."""

    def __init__(self, dim: int, guide: int, heads: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = _GuidedAttention(dim, guide, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = _Mlp(dim)

    def forward(self, x: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """x: (B, K, h, w, C); text: (K, G)."""
        b, k, h, w, c = x.shape
        tokens = x.permute(0, 2, 3, 1, 4).reshape(b * h * w, k, c)
        tokens = tokens + self.attn(self.norm1(tokens), text.expand(b * h * w, *text.shape))
        tokens = tokens + self.mlp(self.norm2(tokens))
        return tokens.view(b, h, w, k, c).permute(0, 3, 1, 2, 4)


class _UpStage(nn.Module):
    """x2 bilinear upsampling, the class features joined with upsampled backbone guidance, a 3x3 conv."""

    def __init__(self, in_dim: int, out_dim: int, feature_dim: int, scale: int):
        super().__init__()
        guide = out_dim // 2
        self.guide = nn.ConvTranspose2d(feature_dim, guide, kernel_size=scale, stride=scale)
        self.reduce = nn.Conv2d(in_dim, out_dim - guide, 1)
        self.conv = nn.Conv2d(out_dim, out_dim, 3, padding=1)
        self.norm = nn.GroupNorm(math.gcd(8, out_dim), out_dim)

    def forward(self, x: torch.Tensor, features: torch.Tensor, k: int) -> torch.Tensor:
        """x: (B * K, C, h', w'); features: (B, D, h, w) -> (B * K, out, 2h', 2w')."""
        x = self.reduce(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))
        guide = F.gelu(self.guide(features))
        guide = guide[:, None].expand(-1, k, -1, -1, -1).reshape(x.shape[0], -1, *guide.shape[-2:])
        return F.gelu(self.norm(self.conv(torch.cat([x, guide], dim=1))))


class CatSegHead(nn.Module):
    """The dinov3.seg head closer to CAT-Seg's cost aggregation (``SegHeadConfig(kind="catseg")``; see the module
    docstring). Same inputs and outputs as :class:`SegHead`."""

    kind = "catseg"

    def __init__(self, config: SegHeadConfig):
        super().__init__()
        if config.kind != "catseg":
            raise InputError(f"CatSegHead needs SegHeadConfig(kind='catseg'), got kind={config.kind!r}")
        self.config = config
        d, c, g, heads = config.feature_dim, config.hidden, config.guidance_dim, config.class_heads
        self.early = nn.Sequential(*(_EarlyBlock(d) for _ in range(config.early_blocks)))
        self.corr_embed = nn.Conv2d(2, c, 7, padding=3)
        self.visual_guidance = nn.Conv2d(d, g, 3, padding=1)
        self.text_guidance = nn.Linear(2 * d, g)
        self.spatial = nn.ModuleList(
            nn.ModuleList(_WindowBlock(c, g, heads, config.attention_window, shift) for shift in (False, True))
            for _ in range(config.rounds))
        self.classes = nn.ModuleList(_ClassBlock(c, g, heads) for _ in range(config.rounds))
        stages, width = [], c
        for i, out in enumerate(config.decoder_channels):
            stages.append(_UpStage(width, out, d, 2 ** (i + 1)))
            width = out
        self.decoder = nn.ModuleList(stages)
        self.to_logit = nn.Conv2d(width, 1, 3, padding=1)

    @property
    def upsampling(self) -> int:
        """Output cells per patch along each side (4 for two decoder stages)."""
        return 2 ** len(self.config.decoder_channels)

    def forward(self, cls: torch.Tensor, patches: torch.Tensor, text_cls: torch.Tensor,
                text_patch: torch.Tensor) -> torch.Tensor:
        """Logits per class, as :meth:`SegHead.forward`: (B, K, h * u, w * u)."""
        b, d, h, w = patches.shape
        k = text_cls.shape[0]
        _check_widths(self, patches, text_cls, text_patch)
        refined = self.early(patches)
        x = self.corr_embed(_correlation(cls, refined, text_cls, text_patch))  # (B * K, C, h, w)
        x = x.view(b, k, -1, h, w).permute(0, 1, 3, 4, 2)  # (B, K, h, w, C)
        visual = F.gelu(self.visual_guidance(refined)).permute(0, 2, 3, 1)  # (B, h, w, G)
        text = F.gelu(self.text_guidance(torch.cat([text_cls, text_patch], dim=1)))  # (K, G)
        for blocks, across in zip(self.spatial, self.classes):
            for block in blocks:
                x = block(x, visual)
            x = across(x, text)
        x = x.permute(0, 1, 4, 2, 3).reshape(b * k, -1, h, w)
        for stage in self.decoder:
            x = stage(x, refined, k)
        return self.to_logit(x).view(b, k, x.shape[-2], x.shape[-1])


#: The head class of each :attr:`SegHeadConfig.kind`.
HEADS: dict[str, type[nn.Module]] = {"small": SegHead, "catseg": CatSegHead}


def build_head(config: SegHeadConfig) -> SegHead | CatSegHead:
    """A freshly initialised head of ``config.kind`` (from torch's global RNG: seed it first)."""
    return HEADS[config.kind](config)


def head_parameters(head: nn.Module) -> int:
    """Number of trainable parameters of a head."""
    return sum(p.numel() for p in head.parameters())


class SegModel:
    """dinov3.seg: frozen :class:`~dinoseg_core.ovseg.dinotxt.DinoTxt` + a trainable head (:class:`SegHead` or
    :class:`CatSegHead`).

    Args:
        dinotxt: the frozen towers (the head's ``feature_dim`` must equal their width).
        head: an existing head; by default a fresh one from ``config`` (default :class:`SegHeadConfig` with
            ``feature_dim`` set to the towers' width), initialised from torch's global RNG (seed it first).
    """

    def __init__(self, dinotxt: DinoTxt, head: SegHead | CatSegHead | None = None,
                 config: SegHeadConfig | None = None):
        if head is None:
            config = config or SegHeadConfig(feature_dim=dinotxt.embed_dim)
            head = build_head(config)
        if head.config.feature_dim != dinotxt.embed_dim:
            raise InputError(f"the head expects {head.config.feature_dim}-wide features but dino.txt "
                             f"{dinotxt.spec!r} gives {dinotxt.embed_dim}; build the head with "
                             f"SegHeadConfig(feature_dim={dinotxt.embed_dim})")
        self.dinotxt = dinotxt
        self.head = head.to(dinotxt.device)

    def __repr__(self) -> str:
        params = head_parameters(self.head)
        return f"SegModel({self.dinotxt!r}, {self.head.kind} head, {params / 1e6:.2f} M parameters)"

    def fingerprint(self) -> str:
        """sha256 hex over the dino.txt fingerprint, the head config (the fields its kind uses,
        :meth:`SegHeadConfig.used`) and the head's current weights (computed on each call: the head changes while
        it trains)."""
        digest = hashlib.sha256(b"dinoseg-ovseg-segmodel-v1\n")
        digest.update(self.dinotxt.fingerprint.encode())
        digest.update(json.dumps(self.head.config.used(), sort_keys=True).encode())
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
                        name: str = "checkpoint", allow_other_dinotxt: bool = False, kind: str | None = None
                        ) -> SegModel:
        """A model from a head checkpoint (:meth:`checkpoint`, or one :func:`~dinoseg_core.ovseg.train.train`
        wrote); :func:`dinoseg_core.io.heads.load_seg_model` reads one from a URL.

        Args:
            tensors, meta: the checkpoint's state dict and metadata.
            name: the checkpoint in error messages (e.g. its URL).
            kind: the head kind expected (``"small"`` / ``"catseg"``); None: whichever the checkpoint holds.

        Raises:
            CheckpointError: a missing/unexpected/misshapen tensor, another kind of head than ``kind``, or (unless
                ``allow_other_dinotxt``) a head trained on other dino.txt weights than ``dinotxt``.
        """
        if not allow_other_dinotxt and meta.get("dinotxt_fingerprint") != dinotxt.fingerprint:
            raise CheckpointError(
                f"{name}: this head was trained on dino.txt {str(meta.get('dinotxt_fingerprint'))[:12]}..., not on "
                f"the loaded {dinotxt.fingerprint[:12]}... ({dinotxt.spec!r}); its features would not match. Load "
                "the same backbone, dino.txt and vocabulary files, or pass allow_other_dinotxt=True.")
        return cls(dinotxt, head_from_checkpoint(tensors, meta, name, kind=kind))


def checkpoint_head_config(meta: dict[str, Any], shown: str) -> SegHeadConfig:
    """The head config a checkpoint's metadata records. A checkpoint written before heads had kinds (no ``kind``
    in its ``head_config``) holds a small head; a ``head`` entry that disagrees with ``head_config`` is refused."""
    try:
        config = SegHeadConfig.from_dict({"kind": "small", **meta["head_config"]})
    except (KeyError, TypeError, InputError) as exc:
        raise CheckpointError(f"{shown}: no valid head_config in the metadata ({exc}).") from exc
    if meta.get("head", config.kind) != config.kind:
        raise CheckpointError(f"{shown}: corrupt metadata: 'head' says a {meta['head']!r} head but head_config a "
                              f"{config.kind!r} one.")
    return config


def head_from_checkpoint(tensors: dict[str, torch.Tensor], meta: dict[str, Any], shown: str, *,
                         kind: str | None = None) -> SegHead | CatSegHead:
    """Build the head a checkpoint's state dict and metadata hold, every ``head.*`` tensor checked.

    Args:
        kind: the head kind the caller expects; another kind is refused with a message naming both.
    """
    config = checkpoint_head_config(meta, shown)
    if kind is not None and config.kind != kind:
        raise CheckpointError(f"{shown}: this checkpoint holds a {config.kind!r} head, not a {kind!r} one; use "
                              f"--head {config.kind} (SegHeadConfig(kind={config.kind!r})) to load or resume it, or "
                              "another checkpoint.")
    head = build_head(config)
    expected = head.state_dict()
    state = {k[len("head."):]: v for k, v in tensors.items() if k.startswith("head.")}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        other = [k for k in HEAD_FIELDS if k != config.kind
                 and set(build_head(config.replace(kind=k)).state_dict()) == set(state)]
        hint = f" They are the tensors of a {other[0]!r} head: the metadata is wrong." if other else ""
        raise CheckpointError(f"{shown}: head tensors do not match its config (a {config.kind!r} head): missing "
                              f"{missing[:5]}, unexpected {unexpected[:5]}.{hint}")
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(f"{shown}: tensor 'head.{name}' has shape {tuple(tensor.shape)}, expected "
                                  f"{tuple(expected[name].shape)}.")
    head.load_state_dict(state)
    return head


def checkpoint_state(head: SegHead | CatSegHead, *, dinotxt_fingerprint: str, optimizer: torch.optim.Optimizer | None = None,
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
    meta: dict[str, Any] = {"format": CHECKPOINT_FORMAT, "head": head.config.kind,
                            "head_config": head.config.to_dict(), "step": int(step),
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
