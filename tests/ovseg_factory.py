"""Test helpers for open-vocabulary segmentation, written independently of ``dinoseg_core.ovseg``.

- :func:`learn_merges` / :func:`write_bpe_vocab`: a small CLIP-format BPE merges file (header line + ``"a b"``
  merges, gzipped like ``bpe_simple_vocab_16e6.txt.gz``) learnt from a tiny corpus.
- :class:`ReferenceClipBPE`: OpenAI CLIP's ``SimpleTokenizer.encode`` algorithm re-implemented from its
  description (byte-to-unicode map, CLIP's regex, rank-ordered merges with ``</w>``), as an oracle.
- :func:`meta_dinotxt_state_dict`: random weights in the key layout of Meta's
  ``dinov3_vitl16_dinotxt_vision_head_and_text_encoder-*.pth`` (``visual_model.head.*``, ``text_model.*``,
  ``logit_scale``), and :func:`meta_vision_head_forward` / :func:`meta_text_forward`, Meta's forward passes
  (``dinov3/eval/text/*``, ``dinov3/layers/*``) re-implemented with functional ops directly on that dict.
- :func:`shapes_dataset`: coloured shapes on grass with exact labels and class names, seeded.
"""

from __future__ import annotations

import gzip
import html
import itertools
import math
from collections import Counter

import numpy as np
import regex
import torch
import torch.nn.functional as F

from dinoseg_core.ovseg.config import SegHeadConfig

# ----------------------------------------------------------------------------------------------------------------
# BPE vocabulary
# ----------------------------------------------------------------------------------------------------------------

CLIP_PATTERN = regex.compile(
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
    regex.IGNORECASE,
)


def byte_encoder() -> dict[int, str]:
    """GPT-2 / CLIP byte -> printable character map (same order as CLIP's vocabulary)."""
    bs = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    cs = list(bs)
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def _word_symbols(word: str) -> tuple[str, ...]:
    enc = byte_encoder()
    chars = [enc[b] for b in word.encode("utf-8")]
    return tuple(chars[:-1]) + (chars[-1] + "</w>",)


def learn_merges(corpus: str, num_merges: int) -> list[tuple[str, str]]:
    """Greedy BPE on the lower-cased words of ``corpus`` (most frequent pair first, ties alphabetical)."""
    words = Counter(_word_symbols(w) for w in CLIP_PATTERN.findall(corpus.lower()))
    merges: list[tuple[str, str]] = []
    for _ in range(num_merges):
        pairs: Counter = Counter()
        for word, freq in words.items():
            for a, b in itertools.pairwise(word):
                pairs[(a, b)] += freq
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        merged: Counter = Counter()
        for word, freq in words.items():
            out, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += freq
        words = merged
    return merges


def bpe_file_bytes(merges: list[tuple[str, str]], gz: bool = True) -> bytes:
    """A merges file in CLIP's format: a ``#version`` header, then one merge per line."""
    text = "#version: 0.2 - dinoseg test vocabulary\n" + "".join(f"{a} {b}\n" for a, b in merges)
    return gzip.compress(text.encode("utf-8"), mtime=0) if gz else text.encode("utf-8")


def write_bpe_vocab(path, merges: list[tuple[str, str]], gz: bool = True) -> str:
    with open(path, "wb") as fh:
        fh.write(bpe_file_bytes(merges, gz))
    return str(path)


CORPUS = """
a photo of a building. a photo of the road. there is a river in the scene. this is one solar panel in the scene.
buildings roads rivers fields forests. a flooded field next to the road, the building's roof is red.
it's there, they're here, we've seen, I'm sure, you'll see, he'd go. photos of photographs of photography.
""" * 3


class ReferenceClipBPE:
    """OpenAI CLIP's SimpleTokenizer (without ftfy), for checking the library tokenizer's ids."""

    def __init__(self, merges: list[tuple[str, str]]):
        symbols = list(byte_encoder().values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
        vocab += ["<|startoftext|>", "<|endoftext|>"]
        self.encoder = {t: i for i, t in enumerate(vocab)}
        self.decoder = {i: t for t, i in self.encoder.items()}
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.byte_decoder = {c: b for b, c in byte_encoder().items()}

    def bpe(self, token: str) -> list[str]:
        word = list(token[:-1]) + [token[-1] + "</w>"]
        while len(word) > 1:
            pairs = set(itertools.pairwise(word))
            best = min(pairs, key=lambda p: self.ranks.get(p, math.inf))
            if best not in self.ranks:
                break
            out, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            word = out
        return word

    def encode(self, text: str) -> list[int]:
        text = " ".join(html.unescape(html.unescape(text)).strip().split()).lower()
        enc = byte_encoder()
        ids = []
        for token in CLIP_PATTERN.findall(text):
            token = "".join(enc[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(token))
        return ids

    def decode(self, ids: list[int]) -> str:
        text = "".join(self.decoder[i] for i in ids)
        return bytearray(self.byte_decoder[c] for c in text).decode("utf-8", errors="replace").replace("</w>", " ")


# ----------------------------------------------------------------------------------------------------------------
# dino.txt checkpoints in Meta's layout
# ----------------------------------------------------------------------------------------------------------------

def meta_dinotxt_state_dict(*, vision_dim: int = 64, vision_blocks: int = 2, text_vocab: int = 49408,
                            text_context: int = 77, text_width: int = 64, text_layers: int = 2, seed: int = 0,
                            logit_scale: bool = True) -> dict[str, torch.Tensor]:
    """Random weights with Meta's dino.txt keys and shapes (SwiGLU hidden aligned to 64, ffn ratio 4, the
    vision qkv and the text qkv without bias, text projection 2 x vision_dim without bias)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=None):
        scale = scale if scale is not None else (shape[-1] ** -0.5 if len(shape) > 1 else 0.1)
        return torch.randn(*shape, generator=g) * scale

    def norm(dim):
        return 1.0 + 0.1 * torch.randn(dim, generator=g), 0.1 * torch.randn(dim, generator=g)

    d = int(vision_dim * 4 * 2 / 3)
    hidden = d + (-d % 64)
    sd: dict[str, torch.Tensor] = {}
    for i in range(vision_blocks):
        p = f"visual_model.head.blocks.{i}."
        sd[p + "norm1.weight"], sd[p + "norm1.bias"] = norm(vision_dim)
        sd[p + "attn.qkv.weight"] = rnd(3 * vision_dim, vision_dim)
        sd[p + "attn.proj.weight"] = rnd(vision_dim, vision_dim)
        sd[p + "attn.proj.bias"] = rnd(vision_dim)
        sd[p + "ls1.gamma"] = 0.5 + 0.1 * torch.randn(vision_dim, generator=g)
        sd[p + "norm2.weight"], sd[p + "norm2.bias"] = norm(vision_dim)
        sd[p + "mlp.w1.weight"], sd[p + "mlp.w1.bias"] = rnd(hidden, vision_dim), rnd(hidden)
        sd[p + "mlp.w2.weight"], sd[p + "mlp.w2.bias"] = rnd(hidden, vision_dim), rnd(hidden)
        sd[p + "mlp.w3.weight"], sd[p + "mlp.w3.bias"] = rnd(vision_dim, hidden), rnd(vision_dim)
        sd[p + "ls2.gamma"] = 0.5 + 0.1 * torch.randn(vision_dim, generator=g)
    sd["visual_model.head.ln_final.weight"], sd["visual_model.head.ln_final.bias"] = norm(vision_dim)
    t = "text_model.backbone."
    sd[t + "token_embedding.weight"] = rnd(text_vocab, text_width, scale=0.5)
    sd[t + "positional_embedding"] = rnd(text_context, text_width, scale=0.1)
    for i in range(text_layers):
        p = f"{t}blocks.{i}."
        sd[p + "attention_norm.weight"], sd[p + "attention_norm.bias"] = norm(text_width)
        sd[p + "attention.qkv.weight"] = rnd(3 * text_width, text_width)
        sd[p + "attention.proj.weight"] = rnd(text_width, text_width)
        sd[p + "attention.proj.bias"] = rnd(text_width)
        sd[p + "ffn_norm.weight"], sd[p + "ffn_norm.bias"] = norm(text_width)
        sd[p + "feed_forward.fc1.weight"] = rnd(4 * text_width, text_width)
        sd[p + "feed_forward.fc1.bias"] = rnd(4 * text_width)
        sd[p + "feed_forward.fc2.weight"] = rnd(text_width, 4 * text_width)
        sd[p + "feed_forward.fc2.bias"] = rnd(text_width)
    sd[t + "ln_final.weight"], sd[t + "ln_final.bias"] = norm(text_width)
    sd["text_model.head.linear_projection.weight"] = rnd(2 * vision_dim, text_width)
    if logit_scale:
        sd["logit_scale"] = torch.tensor([math.log(1 / 0.07)])
    return sd


def _attention(x: torch.Tensor, qkv_w: torch.Tensor, proj_w: torch.Tensor, proj_b: torch.Tensor, heads: int,
               causal: bool) -> torch.Tensor:
    b, n, c = x.shape
    qkv = F.linear(x, qkv_w).reshape(b, n, 3, heads, c // heads)
    q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))
    scores = q @ k.transpose(-1, -2) / math.sqrt(c // heads)
    if causal:
        scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), float("-inf"))
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, c)
    return F.linear(out, proj_w, proj_b)


def meta_vision_head_forward(sd: dict[str, torch.Tensor], tokens: torch.Tensor, heads: int) -> torch.Tensor:
    """Meta's VisionHead (SelfAttentionBlock x n with SwiGLU and LayerScale, no RoPE, then ln_final)."""
    x = tokens
    c = x.shape[-1]
    i = 0
    while f"visual_model.head.blocks.{i}.norm1.weight" in sd:
        p = f"visual_model.head.blocks.{i}."
        y = F.layer_norm(x, (c,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], 1e-5)
        x = x + sd[p + "ls1.gamma"] * _attention(y, sd[p + "attn.qkv.weight"], sd[p + "attn.proj.weight"],
                                                 sd[p + "attn.proj.bias"], heads, causal=False)
        y = F.layer_norm(x, (c,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], 1e-5)
        m = F.linear(F.silu(F.linear(y, sd[p + "mlp.w1.weight"], sd[p + "mlp.w1.bias"]))
                     * F.linear(y, sd[p + "mlp.w2.weight"], sd[p + "mlp.w2.bias"]),
                     sd[p + "mlp.w3.weight"], sd[p + "mlp.w3.bias"])
        x = x + sd[p + "ls2.gamma"] * m
        i += 1
    return F.layer_norm(x, (c,), sd["visual_model.head.ln_final.weight"], sd["visual_model.head.ln_final.bias"], 1e-5)


def meta_text_forward(sd: dict[str, torch.Tensor], ids: torch.Tensor, heads: int) -> torch.Tensor:
    """Meta's TextTower: TextTransformer (causal blocks, GELU MLP, no LayerScale, ln_final), linear projection,
    pooled at ``ids.argmax(-1)``."""
    t = "text_model.backbone."
    x = sd[t + "token_embedding.weight"][ids] + sd[t + "positional_embedding"][: ids.shape[1]]
    c = x.shape[-1]
    i = 0
    while f"{t}blocks.{i}.attention_norm.weight" in sd:
        p = f"{t}blocks.{i}."
        y = F.layer_norm(x, (c,), sd[p + "attention_norm.weight"], sd[p + "attention_norm.bias"], 1e-5)
        x = x + _attention(y, sd[p + "attention.qkv.weight"], sd[p + "attention.proj.weight"],
                           sd[p + "attention.proj.bias"], heads, causal=True)
        y = F.layer_norm(x, (c,), sd[p + "ffn_norm.weight"], sd[p + "ffn_norm.bias"], 1e-5)
        x = x + F.linear(F.gelu(F.linear(y, sd[p + "feed_forward.fc1.weight"], sd[p + "feed_forward.fc1.bias"])),
                         sd[p + "feed_forward.fc2.weight"], sd[p + "feed_forward.fc2.bias"])
        i += 1
    x = F.layer_norm(x, (c,), sd[t + "ln_final.weight"], sd[t + "ln_final.bias"], 1e-5)
    x = x @ sd["text_model.head.linear_projection.weight"].T
    return x[torch.arange(ids.shape[0]), ids.argmax(dim=-1)]


# ----------------------------------------------------------------------------------------------------------------
# Synthetic labelled data
# ----------------------------------------------------------------------------------------------------------------

SHAPE_CLASSES = ("grass", "red square", "blue disk", "yellow bar")


def shapes_image(seed: int, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """One image (float32 (size, size, 3)) of coloured shapes on grass and its labels (int64, indices into
    :data:`SHAPE_CLASSES`; every pixel labelled). Later shapes cover earlier ones."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    image = np.empty((size, size, 3), np.float32)
    image[:] = (0.25, 0.55, 0.2)
    image += rng.normal(0, 0.05, image.shape).astype(np.float32)
    label = np.zeros((size, size), np.int64)
    colours = {1: (0.85, 0.15, 0.1), 2: (0.1, 0.2, 0.85), 3: (0.95, 0.85, 0.1)}
    for cls in rng.permutation([1, 2, 3]):
        r = rng.uniform(0.12, 0.22) * size
        cy, cx = rng.uniform(r, size - r, 2)
        if cls == 1:
            region = (abs(yy - cy) < r) & (abs(xx - cx) < r)
        elif cls == 2:
            region = (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2
        else:
            region = (abs(yy - cy) < r / 3) & (abs(xx - cx) < 1.5 * r)
        image[region] = np.asarray(colours[cls], np.float32) + rng.normal(0, 0.04, (int(region.sum()), 3))
        label[region] = cls
    return np.clip(image, 0, 1), label


def shapes_dataset(n: int, size: int = 128, seed: int = 0):
    """``n`` seeded shape images as an :class:`~dinoseg_core.ovseg.data.ArraySegDataset`."""
    from dinoseg_core.ovseg.data import ArraySegDataset

    items = [shapes_image(seed * 10_000 + i, size) for i in range(n)]
    return ArraySegDataset([im for im, _ in items], [lab for _, lab in items], SHAPE_CLASSES)


def write_shapes_folder(root: str, n: int, size: int = 64, seed: int = 0,
                        bad: dict[int, list[int]] | None = None) -> str:
    """A folder-layout dataset of :func:`shapes_image` scenes (``root/images``, ``root/annotations``); ``bad``:
    image index -> raw label ids painted into the first row of its annotation."""
    import io

    from PIL import Image

    from dinoseg_core.io import imageio, storage

    for i in range(n):
        image, label = shapes_image(seed + i, size)
        label = label.astype(np.uint8)
        for j, value in enumerate((bad or {}).get(i, [])):
            label[0, j] = value
        imageio.write_image_png(storage.join(root, "images", f"{i:03d}.png"), image)
        buf = io.BytesIO()
        Image.fromarray(label, mode="L").save(buf, format="PNG")
        storage.write_bytes(storage.join(root, "annotations", f"{i:03d}.png"), buf.getvalue())
    return root


#: The tests' small dinov3.seg head on the 64-wide random towers of ``random:tiny``.
TINY_HEAD = SegHeadConfig(feature_dim=64, hidden=16, early_blocks=1, spatial_blocks=1, class_blocks=1, class_heads=2,
                          decoder_channels=(8, 8))


def tiny_seg_model(dinotxt, seed: int = 0):
    """A seeded dinov3.seg model with :data:`TINY_HEAD` on ``dinotxt``."""
    from dinoseg_core.ovseg import SegModel

    torch.manual_seed(seed)
    return SegModel(dinotxt, config=TINY_HEAD)
