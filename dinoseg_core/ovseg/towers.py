"""The two dino.txt towers on top of the frozen DINOv3 backbone: the vision head and the text transformer.

Module and parameter names mirror Meta's (``dinov3/eval/text/{vision_tower,text_tower,text_transformer}.py``,
``dinov3/layers/{block,attention,ffn_layers,layer_scale}.py``), so Meta's checkpoint maps one to one (see
:mod:`dinoseg_core.ovseg.dinotxt` for the loader):

Vision head (``VisionHead``; Meta: ``SelfAttentionBlock(dim, backbone.num_heads, ffn_layer=SwiGLUFFN(align_to=64),
init_values=1e-5)`` x 2, then ``nn.LayerNorm``), applied to the backbone's final normalised tokens
``[CLS, 4 registers, patches]`` without RoPE:

    x = x + ls1.gamma * attn.proj(attention(attn.qkv(norm1(x))))      # qkv without bias
    x = x + ls2.gamma * mlp.w3(silu(mlp.w1(norm2(x))) * mlp.w2(norm2(x)))
    tokens = ln_final(x)

The image embedding is ``[tokens[:, 0] ; mean(patch tokens)]`` (2 x 1024 for ViT-L): no linear projection,
since 2 x 1024 equals the 2048-dim joint space.

Text tower (``TextTower``; Meta: ``TextTransformer(context 77, vocab 49408, dim 1280, 20 heads, 24 layers,
ffn_ratio 4, causal, no LayerScale)`` + ``TextHead`` with only ``linear_projection`` 1280 -> 2048, no bias):

    x = token_embedding(ids) + positional_embedding[:N]
    x = x + attention.proj(causal_attention(attention.qkv(attention_norm(x))))
    x = x + feed_forward.fc2(gelu(feed_forward.fc1(ffn_norm(x))))
    feature = linear_projection(ln_final(x))[argmax(ids)]             # the EOT token, CLIP's largest id

The first half of the 2048-dim text feature aligns with the vision CLS token, the second with patch tokens.
Every LayerNorm is ``nn.LayerNorm``'s default (eps 1e-5); GELU is exact (``nn.GELU``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DINOTXT_VITL16",
    "DinoTxtArch",
    "DinoTxtTowers",
    "TextTower",
    "VisionHead",
    "swiglu_hidden",
]


def swiglu_hidden(dim: int, ffn_ratio: float = 4.0, align_to: int = 64) -> int:
    """Hidden width of Meta's ``SwiGLUFFN``: ``int(dim * ffn_ratio * 2 / 3)`` rounded up to ``align_to``
    (2752 for dim 1024)."""
    d = int(int(dim * ffn_ratio) * 2 / 3)
    return d + (-d % align_to)


@dataclass(frozen=True)
class DinoTxtArch:
    """Shapes of the dino.txt towers. Defaults: Meta's ``dinov3_vitl16_dinotxt_tet1280d20h24l``."""

    vision_dim: int = 1024
    vision_heads: int = 16
    vision_blocks: int = 2
    vision_mlp_hidden: int = 2752
    text_vocab: int = 49408
    text_context: int = 77
    text_width: int = 1280
    text_heads: int = 20
    text_layers: int = 24
    text_mlp_hidden: int = 5120
    embed_dim: int = 2048
    layer_norm_eps: float = 1e-5

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


#: The released dino.txt for DINOv3 ViT-L/16.
DINOTXT_VITL16 = DinoTxtArch()


class _Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (no bias) and an output projection (bias)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim, bias=True)

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).unbind(2)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             is_causal=causal)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class _LayerScale(nn.Module):
    def __init__(self, dim: int, init: float = 1e-5):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class _SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden)
        self.w2 = nn.Linear(dim, hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w3(F.silu(self.w1(x)) * self.w2(x))


class _VisionBlock(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int, eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = _Attention(dim, heads)
        self.ls1 = _LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = _SwiGLU(dim, hidden)
        self.ls2 = _LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class VisionHead(nn.Module):
    """dino.txt's vision head: (B, 1 + R + N, D) backbone tokens -> (B, 1 + R + N, D) head tokens."""

    def __init__(self, arch: DinoTxtArch):
        super().__init__()
        self.blocks = nn.ModuleList(
            _VisionBlock(arch.vision_dim, arch.vision_heads, arch.vision_mlp_hidden, arch.layer_norm_eps)
            for _ in range(arch.vision_blocks)
        )
        self.ln_final = nn.LayerNorm(arch.vision_dim, eps=arch.layer_norm_eps)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            tokens = block(tokens)
        return self.ln_final(tokens)


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class _TextBlock(nn.Module):
    def __init__(self, dim: int, heads: int, hidden: int, eps: float):
        super().__init__()
        self.attention_norm = nn.LayerNorm(dim, eps=eps)
        self.attention = _Attention(dim, heads)
        self.ffn_norm = nn.LayerNorm(dim, eps=eps)
        self.feed_forward = _Mlp(dim, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), causal=True)
        return x + self.feed_forward(self.ffn_norm(x))


class _TextTransformer(nn.Module):
    def __init__(self, arch: DinoTxtArch):
        super().__init__()
        self.token_embedding = nn.Embedding(arch.text_vocab, arch.text_width)
        self.positional_embedding = nn.Parameter(torch.zeros(arch.text_context, arch.text_width))
        self.blocks = nn.ModuleList(
            _TextBlock(arch.text_width, arch.text_heads, arch.text_mlp_hidden, arch.layer_norm_eps)
            for _ in range(arch.text_layers)
        )
        self.ln_final = nn.LayerNorm(arch.text_width, eps=arch.layer_norm_eps)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.token_embedding(ids) + self.positional_embedding[: ids.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.ln_final(x)


class _TextHead(nn.Module):
    def __init__(self, arch: DinoTxtArch):
        super().__init__()
        self.linear_projection = nn.Linear(arch.text_width, arch.embed_dim, bias=False)


class TextTower(nn.Module):
    """dino.txt's text tower: (N, L) token ids -> (N, embed_dim) features, pooled at each row's largest id (EOT)."""

    def __init__(self, arch: DinoTxtArch):
        super().__init__()
        self.backbone = _TextTransformer(arch)
        self.head = _TextHead(arch)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        tokens = self.head.linear_projection(self.backbone(ids))
        return tokens[torch.arange(ids.shape[0], device=ids.device), ids.argmax(dim=-1)]


class DinoTxtTowers(nn.Module):
    """Both towers plus CLIP's ``logit_scale`` (log of the inverse softmax temperature, ``log(1/0.07)`` at
    Meta's initialisation)."""

    def __init__(self, arch: DinoTxtArch = DINOTXT_VITL16):
        super().__init__()
        self.arch = arch
        self.vision_head = VisionHead(arch)
        self.text_model = TextTower(arch)
        self.logit_scale = nn.Parameter(torch.tensor([math.log(1 / 0.07)]))

    def init_random(self, seed: int) -> DinoTxtTowers:
        """Seeded random weights (Meta's initialisation scales), for tests and benchmarks only. Sets every
        parameter, so the module may come from ``to_empty``."""
        gen = torch.Generator().manual_seed(seed)
        width = self.arch.text_width
        with torch.no_grad():
            for name, param in self.named_parameters():
                if name == "logit_scale":
                    param.fill_(math.log(1 / 0.07))
                    continue
                if name.endswith(("norm1.weight", "norm2.weight", "attention_norm.weight", "ffn_norm.weight",
                                  "ln_final.weight")):
                    param.fill_(1.0)
                elif name.endswith(".bias"):
                    param.zero_()
                elif name.endswith(".gamma"):
                    param.fill_(1e-5 if self.arch.vision_dim >= 512 else 0.1)  # visible effect in tiny heads
                elif name.endswith("positional_embedding"):
                    param.copy_(torch.randn(param.shape, generator=gen) * 0.01)
                elif name.endswith("token_embedding.weight"):
                    param.copy_(torch.randn(param.shape, generator=gen) * 0.02)
                else:
                    fan_in = param.shape[-1] if param.ndim > 1 else width
                    param.copy_(torch.randn(param.shape, generator=gen) * fan_in ** -0.5)
        return self
