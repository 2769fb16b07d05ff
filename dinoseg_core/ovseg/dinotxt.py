"""dino.txt: load Meta's text-alignment weights for DINOv3 and embed images and class names.

``load_dinotxt(weights, backbone=..., bpe=...)`` accepts

- Meta's ``dinov3_vitl16_dinotxt_vision_head_and_text_encoder-<hash>.pth`` at a local path or an fsspec URL
  (``s3://``, ``memory://``, ...; fetched once into the dinoseg cache, ``~/.cache/dinoseg/checkpoints/<sha256 of
  the URL>/``, like backbone checkpoints), together with the DINOv3 ViT-L/16 backbone (any spec
  :func:`~dinoseg_core.backbone.load_backbone` takes, or a loaded :class:`~dinoseg_core.backbone.Backbone`) and
  CLIP's ``bpe_simple_vocab_16e6.txt.gz`` (path or URL);
- ``"random:tiny[@seed]"``: a 2-block vision head over the ``random:tiny`` backbone (64 wide) and a 2-layer,
  64-wide text tower; ``"random:dinotxt[@seed]"``: a vision head sized to the backbone (default
  ``random:dinov3-vitl16``) and the real-size text tower (24 layers, 1280 wide). Seeded random weights for tests
  and benchmarks only; without ``bpe`` they use a merge-free byte-level vocabulary.

The file is read with ``torch.load(weights_only=True)`` and mapped key by key; a key that is missing, left over or
of the wrong shape is a :class:`~dinoseg_core.errors.CheckpointError` naming it. Meta's layout (the ``DINOTxt``
state dict of ``dinov3/hub/dinotxt.py`` without the backbone, loaded there with ``strict=False``):

================================================  ==============================================================
Meta                                              here (:class:`~dinoseg_core.ovseg.towers.DinoTxtTowers`)
================================================  ==============================================================
``visual_model.head.blocks.i.{norm1,norm2}.*``    ``vision_head.blocks.i.{norm1,norm2}.*``
``visual_model.head.blocks.i.attn.qkv.weight``    ``vision_head.blocks.i.attn.qkv.weight`` (no bias)
``visual_model.head.blocks.i.attn.proj.*``        ``vision_head.blocks.i.attn.proj.*``
``visual_model.head.blocks.i.ls{1,2}.gamma``      ``vision_head.blocks.i.ls{1,2}.gamma``
``visual_model.head.blocks.i.mlp.w{1,2,3}.*``     ``vision_head.blocks.i.mlp.w{1,2,3}.*`` (SwiGLU)
``visual_model.head.ln_final.*``                  ``vision_head.ln_final.*``
``text_model.backbone.token_embedding.weight``    same name
``text_model.backbone.positional_embedding``      same name
``text_model.backbone.blocks.i.attention_norm.*`` same name (likewise ``attention.{qkv,proj}``, ``ffn_norm``,
                                                  ``feed_forward.fc{1,2}``)
``text_model.backbone.ln_final.*``                same name
``text_model.head.linear_projection.weight``      same name
``logit_scale``                                   same name (optional)
================================================  ==============================================================

The architecture is read off the tensors (widths, depths, vocabulary, context); head counts cannot be: the vision
head uses the backbone's (Meta passes ``backbone.num_heads``), the text tower 20 heads at width 1280 (Meta's
``tet1280d20h24l``) and ``width / 64`` otherwise.

What is validated here without the real weights: the key mapping and the forward pass against an independent
re-implementation of Meta's modules on a checkpoint written in Meta's layout (tests). Whether the real file's
keys are exactly these is inferred from Meta's module names, not checked against the file itself.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from dinoseg_core.backbone import Backbone, fetch_to_cache, load_backbone
from dinoseg_core.errors import CheckpointError, InputError
from dinoseg_core.ovseg.classes import validate_class_names
from dinoseg_core.ovseg.config import DEFAULT_TEMPLATES
from dinoseg_core.ovseg.tokenizer import ClipTokenizer, load_tokenizer
from dinoseg_core.ovseg.towers import DINOTXT_VITL16, DinoTxtArch, DinoTxtTowers, swiglu_hidden

__all__ = [
    "ClassEmbeddings",
    "DinoTxt",
    "backbone_tokens",
    "convert_meta_dinotxt_state_dict",
    "load_dinotxt",
]

logger = logging.getLogger(__name__)

_META_VISION = "visual_model.head."
_META_TEXT = "text_model."
_EXPECTED_FILE = ("Meta's dino.txt weights, dinov3_vitl16_dinotxt_vision_head_and_text_encoder-*.pth (a state dict "
                  "with visual_model.head.* and text_model.* keys)")
_RANDOM = re.compile(r"random:(tiny|dinotxt)(?:@(-?\d+))?", re.IGNORECASE)
#: Text tower of ``random:tiny``.
_TINY_TEXT = {"text_width": 64, "text_heads": 4, "text_layers": 2, "text_mlp_hidden": 256}


# --------------------------------------------------------------------------------------------------------------
# Backbone tokens
# --------------------------------------------------------------------------------------------------------------

def backbone_tokens(backbone: Backbone, pixels: torch.Tensor) -> torch.Tensor:
    """Every final-LayerNorm token of the frozen backbone, ``[CLS, registers, patches]``, which the dino.txt vision
    head attends to: float32 (B, 1 + R + H/p * W/p, C) for (B, 3, H, W) normalised pixels. Same as
    :meth:`Backbone.forward_all_tokens <dinoseg_core.backbone.Backbone.forward_all_tokens>`."""
    return backbone.forward_all_tokens(pixels)


# --------------------------------------------------------------------------------------------------------------
# Class embeddings
# --------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class ClassEmbeddings:
    """Text embeddings of a class list, computed once and reused for any number of images.

    Attributes:
        names: the user's classes, then the background prompts (``num_background`` of them, last).
        cls: (K, D) unit vectors, first half of the text feature (aligned with the vision CLS token).
        patch: (K, D) unit vectors, second half (aligned with patch tokens).
        templates: the prompt templates averaged into each embedding.
        digest: sha256 over the dino.txt fingerprint, names, background count and templates (provenance).
    """

    names: tuple[str, ...]
    num_background: int
    cls: torch.Tensor
    patch: torch.Tensor
    templates: tuple[str, ...]
    digest: str

    @property
    def class_names(self) -> tuple[str, ...]:
        """The user's classes (without the background prompts)."""
        return self.names[: len(self.names) - self.num_background]

    def __len__(self) -> int:
        return len(self.names)

    @property
    def joint(self) -> torch.Tensor:
        """(K, 2D): ``[cls ; patch]``."""
        return torch.cat([self.cls, self.patch], dim=1)


# --------------------------------------------------------------------------------------------------------------
# The loaded model
# --------------------------------------------------------------------------------------------------------------

class DinoTxt:
    """Frozen dino.txt: backbone + vision head + text tower + tokenizer.

    Attributes:
        backbone: the DINOv3 ViT (:class:`~dinoseg_core.backbone.Backbone`).
        towers: :class:`~dinoseg_core.ovseg.towers.DinoTxtTowers`, eval mode, gradients off.
        tokenizer: :class:`~dinoseg_core.ovseg.tokenizer.ClipTokenizer`.
        spec / source: what the user passed / where the weights came from.
        fingerprint: sha256 hex over the backbone's fingerprint, the towers' architecture and every tensor, and
            the tokenizer's vocabulary.
        is_random: random towers or a random backbone.
    """

    def __init__(self, backbone: Backbone, towers: DinoTxtTowers, tokenizer: ClipTokenizer, *, spec: str,
                 source: str | None = None, is_random: bool = False):
        self.backbone = backbone
        self.towers = towers.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.spec = spec
        self.source = source or spec
        self.is_random = is_random or backbone.is_random
        self.fingerprint = _fingerprint(backbone, towers, tokenizer)

    def __repr__(self) -> str:
        a = self.arch
        return (f"DinoTxt(spec={self.spec!r}, vision head {a.vision_blocks} x {a.vision_dim}, text {a.text_layers} x "
                f"{a.text_width}, backbone={self.backbone.spec!r}, fingerprint={self.fingerprint[:12]}..., "
                f"random={self.is_random})")

    @property
    def arch(self) -> DinoTxtArch:
        return self.towers.arch

    @property
    def embed_dim(self) -> int:
        """D: width of the vision head; image and text features are 2 D wide."""
        return self.arch.vision_dim

    @property
    def patch_size(self) -> int:
        return self.backbone.patch_size

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    def image_tokens(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The vision head's CLS and patch tokens.

        Args:
            pixels: (B, 3, H, W) normalised with ``backbone.normalization``; H, W multiples of the patch size.

        Returns:
            ``(cls, patches)``: float32 (B, D) and (B, D, H/p, W/p), after the head's final LayerNorm, not
            L2-normalised; computed without gradients.
        """
        tokens = self.backbone.forward_all_tokens(pixels)
        b, _, h, w = pixels.shape
        p = self.patch_size
        with torch.no_grad():
            head = self.towers.vision_head(tokens.to(self._dtype)).float()
        start = 1 + self.backbone.num_register_tokens
        patches = head[:, start:].reshape(b, h // p, w // p, -1).permute(0, 3, 1, 2).contiguous()
        return head[:, 0].contiguous(), patches

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """dino.txt's image embedding (B, 2D): ``[head CLS ; mean of head patch tokens]`` (not normalised)."""
        cls, patches = self.image_tokens(pixels)
        return torch.cat([cls, patches.mean(dim=(2, 3))], dim=1)

    def encode_text(self, texts: Sequence[str], *, truncate: bool = False, batch_size: int = 64) -> torch.Tensor:
        """Text features (N, 2D), float32, not normalised.

        Raises:
            InputError: a text is longer than the context (77 tokens) and ``truncate`` is False; see
                :meth:`ClipTokenizer.tokenize`.
        """
        ids = self.tokenizer.tokenize(list(texts), self.arch.text_context, truncate=truncate)
        if ids.shape[0]:
            # Causal attention: positions after the last EOT cannot influence any EOT, so cutting the padding is
            # exact (Meta's forward also slices the positional embedding to the length it gets) and ~5x cheaper
            # for short prompts.
            ids = ids[:, : int(ids.argmax(dim=1).max()) + 1]
        out = []
        with torch.no_grad():
            for start in range(0, ids.shape[0], batch_size):
                out.append(self.towers.text_model(ids[start:start + batch_size].to(self.device)).float())
        if not out:
            return torch.zeros(0, self.arch.embed_dim, device=self.device)
        return torch.cat(out)

    def embed_classes(self, class_names: Sequence[str] | str, templates: Sequence[str] = DEFAULT_TEMPLATES,
                      background_prompts: Sequence[str] = (),
                      synonyms: Mapping[str, Sequence[str]] | None = None) -> ClassEmbeddings:
        """Embed a class list with a prompt ensemble.

        Each (prompt, template) text is encoded; the CLS half and the patch half are L2-normalised separately,
        averaged over the templates and renormalised (CLIP's ensembling, per half). A class's prompt is its name,
        or, for a class in ``synonyms``, each of its synonyms: the class embedding is then the mean of the
        synonyms' template-averaged embeddings, renormalised (the same ensembling, one level up).

        Args:
            class_names: the classes (see :func:`~dinoseg_core.ovseg.classes.validate_class_names`).
            templates: prompt templates with one ``{}`` each.
            background_prompts: extra pseudo-classes appended after the user's (they compete with them and map to
                background).
            synonyms: class name -> the prompts that stand for it (``{"road": ["road", "street", "highway"]}``).

        Raises:
            InputError: an invalid class list (duplicates, empty names), synonyms for an unknown class or empty,
                or a prompt longer than the context; the message names the class and the template.
        """
        names = validate_class_names(class_names)
        background = tuple(" ".join(p.split()) for p in background_prompts)
        clash = sorted({b.casefold() for b in background} & {n.casefold() for n in names})
        if clash:
            raise InputError(f"background prompts {clash} are also class names; remove them from one of the lists")
        synonyms = {k: tuple(" ".join(str(p).split()) for p in v) for k, v in (synonyms or {}).items()}
        unknown = sorted(set(synonyms) - set(names))
        if unknown:
            raise InputError(f"synonyms for {unknown}, which are not among the classes {list(names)}")
        empty = sorted(k for k, v in synonyms.items() if not v or not all(v))
        if empty:
            raise InputError(f"classes {empty} have an empty synonym list or an empty synonym; give each a prompt")
        everything = names + background
        templates = tuple(templates)
        if not templates or any(not isinstance(t, str) or t.count("{}") != 1 for t in templates):
            raise InputError(f"templates={templates!r}: give strings with exactly one '{{}}' each")
        # (class, synonym) rows: a class without synonyms is its own single synonym.
        rows = [(i, word) for i, n in enumerate(everything) for word in synonyms.get(n, (n,))]
        prompts = [t.format(word) for _, word in rows for t in templates]
        for prompt, (name, template) in zip(prompts, ((everything[i], t) for i, _ in rows for t in templates)):
            length = len(self.tokenizer.encode(prompt)) + 2
            if length > self.arch.text_context:
                raise InputError(f"class {name!r} with template {template!r} is {length} tokens long; the text tower "
                                 f"reads at most {self.arch.text_context}. Shorten the class name.")
        feats = self.encode_text(prompts).view(len(rows), len(templates), -1)
        owner = torch.tensor([i for i, _ in rows], device=feats.device)
        d = self.embed_dim

        def ensemble(half: torch.Tensor) -> torch.Tensor:
            per_synonym = F.normalize(F.normalize(half, dim=-1).mean(dim=1), dim=-1)
            if len(rows) == len(everything):
                return per_synonym
            summed = torch.zeros(len(everything), half.shape[-1], dtype=per_synonym.dtype, device=half.device)
            return F.normalize(summed.index_add_(0, owner, per_synonym), dim=-1)

        cls, patch = ensemble(feats[..., :d]), ensemble(feats[..., d:])
        described = {"dinotxt": self.fingerprint, "names": list(everything), "background": len(background),
                     "templates": list(templates)}
        if synonyms:
            described["synonyms"] = {k: list(v) for k, v in sorted(synonyms.items())}
        digest = hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()
        return ClassEmbeddings(names=everything, num_background=len(background), cls=cls, patch=patch,
                               templates=templates, digest=digest)

    @property
    def _dtype(self) -> torch.dtype:
        return self.towers.vision_head.ln_final.weight.dtype


def _fingerprint(backbone: Backbone, towers: DinoTxtTowers, tokenizer: ClipTokenizer) -> str:
    digest = hashlib.sha256(b"dinoseg-dinotxt-fingerprint-v1\n")
    digest.update(backbone.fingerprint.encode())
    digest.update(json.dumps(towers.arch.to_dict(), sort_keys=True).encode())
    digest.update(tokenizer.digest.encode())
    for name, tensor in sorted(towers.state_dict().items()):
        t = tensor.detach()
        digest.update(f"\n{name}|{str(t.dtype).removeprefix('torch.')}|{tuple(t.shape)}\n".encode())
        if t.numel():
            digest.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------------------
# Checkpoint conversion
# --------------------------------------------------------------------------------------------------------------

def _count(state: Mapping[str, Any], prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    return max(found) + 1 if found else 0


def _tensor(state: Mapping[str, torch.Tensor], key: str, shown: str, ndim: int) -> torch.Tensor:
    if key not in state:
        raise CheckpointError(f"{shown}: missing key {key!r}; expected {_EXPECTED_FILE}.")
    t = state[key]
    if t.ndim != ndim:
        raise CheckpointError(f"{shown}: key {key!r} has shape {tuple(t.shape)}, expected a {ndim}-D tensor.")
    return t


def infer_dinotxt_arch(state: Mapping[str, torch.Tensor], *, vision_heads: int,
                       shown: str = "checkpoint") -> DinoTxtArch:
    """The tower shapes of a Meta-layout dino.txt state dict (heads: see the module docstring)."""
    if not any(k.startswith(_META_VISION) for k in state) or not any(k.startswith(_META_TEXT) for k in state):
        sample = ", ".join(sorted(state)[:5])
        hint = (" It looks like a backbone checkpoint: pass it as backbone=..." if "cls_token" in state
                or "blocks.0.attn.qkv.weight" in state else "")
        raise CheckpointError(f"{shown}: no visual_model.head.* and text_model.* keys (found e.g. {sample}); expected "
                              f"{_EXPECTED_FILE}.{hint}")
    vision_dim = _tensor(state, _META_VISION + "ln_final.weight", shown, 1).shape[0]
    tok = _tensor(state, _META_TEXT + "backbone.token_embedding.weight", shown, 2)
    width = tok.shape[1]
    pos = _tensor(state, _META_TEXT + "backbone.positional_embedding", shown, 2)
    proj = _tensor(state, _META_TEXT + "head.linear_projection.weight", shown, 2)
    vision_blocks = _count(state, _META_VISION + "blocks.")
    text_layers = _count(state, _META_TEXT + "backbone.blocks.")
    if vision_blocks == 0 or text_layers == 0:
        raise CheckpointError(f"{shown}: no {'vision head' if vision_blocks == 0 else 'text'} blocks; expected "
                              f"{_EXPECTED_FILE}.")
    w1 = _tensor(state, _META_VISION + "blocks.0.mlp.w1.weight", shown, 2)
    fc1 = _tensor(state, _META_TEXT + "backbone.blocks.0.feed_forward.fc1.weight", shown, 2)
    if vision_dim % vision_heads:
        raise CheckpointError(f"{shown}: vision head width {vision_dim} is not divisible by the backbone's "
                              f"{vision_heads} heads; is this dino.txt file meant for another backbone?")
    return DinoTxtArch(
        vision_dim=int(vision_dim), vision_heads=int(vision_heads), vision_blocks=vision_blocks,
        vision_mlp_hidden=int(w1.shape[0]), text_vocab=int(tok.shape[0]), text_context=int(pos.shape[0]),
        text_width=int(width), text_heads=20 if width == 1280 else max(1, width // 64), text_layers=text_layers,
        text_mlp_hidden=int(fc1.shape[0]), embed_dim=int(proj.shape[0]),
    )


def _to_meta(name: str) -> str:
    return _META_VISION + name[len("vision_head."):] if name.startswith("vision_head.") else name


def convert_meta_dinotxt_state_dict(state: Mapping[str, torch.Tensor], *, vision_heads: int,
                                    shown: str = "checkpoint") -> tuple[DinoTxtArch, dict[str, torch.Tensor]]:
    """Map Meta's dino.txt keys onto :class:`DinoTxtTowers`, checking that every key is accounted for.

    Returns:
        (architecture, state dict for ``DinoTxtTowers(arch).load_state_dict``).

    Raises:
        CheckpointError: a missing, unexpected or wrongly shaped key (named).
    """
    arch = infer_dinotxt_arch(state, vision_heads=vision_heads, shown=shown)
    with torch.device("meta"):
        expected = DinoTxtTowers(arch).state_dict()
    wanted = {_to_meta(k): k for k in expected}
    optional = {"logit_scale"}
    missing = sorted(set(wanted) - set(state) - optional)
    if missing:
        raise CheckpointError(f"{shown}: missing key{'s' if len(missing) > 1 else ''} "
                              f"{', '.join(repr(k) for k in missing[:8])}{' ...' if len(missing) > 8 else ''} "
                              f"(expected for {arch.vision_blocks} vision-head blocks and {arch.text_layers} text "
                              "layers).")
    unexpected = sorted(set(state) - set(wanted))
    if unexpected:
        hint = (" The file also holds the vision backbone (visual_model.backbone.*): load the backbone from its own "
                "checkpoint and pass the head-and-text-encoder file here." if any(
                    k.startswith("visual_model.backbone.") for k in unexpected) else "")
        raise CheckpointError(f"{shown}: unexpected key{'s' if len(unexpected) > 1 else ''} "
                              f"{', '.join(repr(k) for k in unexpected[:8])}{' ...' if len(unexpected) > 8 else ''}: "
                              f"not part of {_EXPECTED_FILE}.{hint}")
    out = {}
    for meta_name, name in wanted.items():
        if meta_name not in state:
            continue  # optional logit_scale
        tensor = state[meta_name]
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise CheckpointError(f"{shown}: key {meta_name!r} has shape {tuple(tensor.shape)}, expected "
                                  f"{tuple(expected[name].shape)} for the architecture read off the file "
                                  f"({arch.to_dict()}).")
        out[name] = tensor
    return arch, out


def _read_state(path: str, shown: str) -> dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise CheckpointError(f"{shown}: no such file. Expected {_EXPECTED_FILE}.")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{shown}: the file is empty. Expected {_EXPECTED_FILE}.")
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # legacy (non-zip) files cannot be memory-mapped
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise CheckpointError(f"{shown}: not a readable PyTorch checkpoint ({type(exc).__name__}: {first}). "
                              f"Expected {_EXPECTED_FILE}.") from exc
    if isinstance(obj, Mapping) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for wrapper in ("model", "state_dict"):
            if isinstance(obj.get(wrapper), Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{shown}: holds a {type(obj).__name__ if not isinstance(obj, Mapping) else 'empty dict'}"
                              f", expected {_EXPECTED_FILE}.")
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise CheckpointError(f"{shown}: entries {bad[:5]} are not tensors; expected {_EXPECTED_FILE}.")
    state = dict(obj)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


# --------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------

def load_dinotxt(
    weights: str | os.PathLike[str],
    *,
    backbone: Backbone | str | None = None,
    bpe: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    storage_options: dict[str, Any] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> DinoTxt:
    """Load dino.txt (see the module docstring for every accepted ``weights``).

    Args:
        weights: Meta's head-and-text-encoder file (path or URL), or ``random:tiny[@seed]`` /
            ``random:dinotxt[@seed]``.
        backbone: a loaded backbone or a spec for :func:`~dinoseg_core.backbone.load_backbone`. Required for
            real weights (Meta's ViT-L/16, e.g. ``"dinov3-vitl16"`` or ``dinov3_vitl16_pretrain_lvd1689m-*.pth``);
            for random weights it defaults to ``random:tiny@seed`` / ``random:dinov3-vitl16@seed``.
        bpe: CLIP's ``bpe_simple_vocab_16e6.txt.gz`` (path or URL). Required for real weights.
        device, dtype: as for :func:`~dinoseg_core.backbone.load_backbone` (used when ``backbone`` is a spec; the
            towers follow the backbone's device and dtype).
        storage_options, cache_dir: for URLs (weights, backbone, bpe).

    Raises:
        CheckpointError: a missing/unreadable file, a key missing, left over or misshapen (named), a backbone
            whose width does not fit the vision head, or a vocabulary that does not fit the text tower.
    """
    if isinstance(weights, os.PathLike):
        weights = os.fspath(weights)
    if not isinstance(weights, str) or not weights.strip():
        raise CheckpointError(f"dino.txt weights {weights!r} are empty; pass Meta's "
                              "dinov3_vitl16_dinotxt_vision_head_and_text_encoder-*.pth or 'random:tiny'.")
    weights = weights.strip()
    started = time.perf_counter()
    random_match = _RANDOM.fullmatch(weights)
    if weights.lower().startswith("random:") and random_match is None:
        raise CheckpointError(f"{weights}: expected 'random:tiny[@seed]' or 'random:dinotxt[@seed]'.")
    if random_match:
        kind, seed = random_match.group(1).lower(), int(random_match.group(2) or 0)
        if backbone is None:
            backbone = f"random:tiny@{seed}" if kind == "tiny" else f"random:dinov3-vitl16@{seed}"
    elif backbone is None:
        raise CheckpointError(f"{weights}: real dino.txt weights need their backbone: pass backbone='dinov3-vitl16' "
                              "or the path of dinov3_vitl16_pretrain_lvd1689m-*.pth.")
    if isinstance(backbone, str):
        backbone = load_backbone(backbone, device=device, dtype=dtype, storage_options=storage_options,
                                 cache_dir=cache_dir)
    if not isinstance(backbone, Backbone):
        raise InputError(f"backbone must be a Backbone or a spec string, got {type(backbone).__name__}")
    tokenizer = load_tokenizer(bpe, storage_options)
    heads = backbone.num_heads

    if random_match:
        text = _TINY_TEXT if kind == "tiny" else {}
        dim = backbone.embed_dim
        arch = DinoTxtArch(**{**DINOTXT_VITL16.to_dict(), "vision_dim": dim, "vision_heads": heads,
                              "vision_mlp_hidden": swiglu_hidden(dim), "embed_dim": 2 * dim, **text})
        if tokenizer.vocab_size > arch.text_vocab:
            raise CheckpointError(f"{weights}: the vocabulary of {tokenizer.source} has {tokenizer.vocab_size} tokens, "
                                  f"more than the text tower's {arch.text_vocab}.")
        with torch.device("meta"):  # skip torch's default init: init_random sets every parameter
            towers = DinoTxtTowers(arch)
        towers = towers.to_empty(device="cpu").init_random(seed)
        source = f"random:{kind}@{seed}"
        logger.warning("RANDOM WEIGHTS: dino.txt %r is a random initialisation, not Meta's weights; use it only for "
                       "tests and benchmarks.", weights)
    else:
        if bpe is None:
            raise CheckpointError(f"{weights}: real dino.txt weights need CLIP's vocabulary: pass "
                                  "bpe='bpe_simple_vocab_16e6.txt.gz' (Meta: dl.fbaipublicfiles.com/dinov3/thirdparty/"
                                  "bpe_simple_vocab_16e6.txt.gz).")
        from dinoseg_core.io import storage

        source = storage.display_url(weights)
        local = fetch_to_cache(weights, storage_options, cache_dir, expected=_EXPECTED_FILE) if (
            "://" in weights or "::" in weights) else os.path.expanduser(weights)
        state = _read_state(local, source)
        arch, converted = convert_meta_dinotxt_state_dict(state, vision_heads=heads, shown=source)
        if arch.vision_dim != backbone.embed_dim:
            raise CheckpointError(f"{source}: the vision head is {arch.vision_dim} wide but backbone "
                                  f"{backbone.spec!r} is {backbone.embed_dim} wide; dino.txt "
                                  f"{'ViT-L/16 needs dinov3-vitl16' if arch.vision_dim == 1024 else 'needs its own'}"
                                  " backbone.")
        if arch.embed_dim != 2 * arch.vision_dim:
            raise CheckpointError(f"{source}: the text projection gives {arch.embed_dim} dimensions, expected "
                                  f"2 x {arch.vision_dim} (CLS half + patch half).")
        if tokenizer.vocab_size != arch.text_vocab:
            raise CheckpointError(f"{source}: the text tower has {arch.text_vocab} tokens but the vocabulary "
                                  f"{tokenizer.source} has {tokenizer.vocab_size}; pass CLIP's "
                                  "bpe_simple_vocab_16e6.txt.gz as bpe.")
        with torch.device("meta"):
            towers = DinoTxtTowers(arch)
        towers.load_state_dict(converted, strict=False, assign=True)
        if "logit_scale" not in converted:
            towers.logit_scale = torch.nn.Parameter(torch.tensor([torch.log(torch.tensor(1 / 0.07)).item()]))
        towers = towers.float()
    towers = towers.to(device=backbone.device, dtype=backbone.dtype)
    model = DinoTxt(backbone, towers, tokenizer, spec=weights, source=source, is_random=bool(random_match))
    logger.info("Loaded dino.txt %s in %.1f s (%s).", weights, time.perf_counter() - started, model)
    return model
