"""Every number of open-vocabulary segmentation, written once.

Three frozen configs, one per concern:

- :class:`OvsegConfig`: inference (zero-shot and the trained dinov3.seg model alike): prompt templates, how the
  patch-text similarity and the image-level prior are combined, background handling, and the high-resolution
  windowing. Two recipes (:data:`RECIPES`): ``dinoseg`` (the default: short side 640, windows 384 with stride 256
  plus one global view, 7 scene templates, a CLS prior, logits averaged) and ``dinotxt`` (Meta's published dino.txt
  zero-shot segmentation recipe: short side 512, windows 384 with stride 192, no global view, CLIP's 80 ImageNet
  templates, no CLS term, softmax probabilities averaged over windows).
- :class:`SegHeadConfig`: the architecture of the trainable dinov3.seg head (:mod:`dinoseg_core.ovseg.model`):
  ``kind="small"`` or ``kind="catseg"``.
- :class:`TrainConfig`: the training loop (:mod:`dinoseg_core.ovseg.train`).

What is whose: the ``dinotxt`` recipe is Meta's. The ``dinoseg`` recipe (the CLS prior, the 7 templates, the
640 / 384 / 256 windows plus a global view), the temperature and both heads are this project's choices: dinov3.seg
(arXiv 2603.19531) has published only its abstract, not its method section, code or weights, and none of these
numbers has been tuned on real weights.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from dinoseg_core.config import ConfigBase, SceneConfig, options_model
from dinoseg_core.errors import InputError
from dinoseg_core.ovseg.classes import IMAGENET_TEMPLATES

__all__ = [
    "DEFAULT_TEMPLATES",
    "HEAD_FIELDS",
    "IMAGENET_TEMPLATES",
    "PAPER_MIOU",
    "RECIPES",
    "SCENE_WINDOW",
    "HeadOptions",
    "OvsegConfig",
    "OvsegOptions",
    "SegHeadConfig",
    "TrainConfig",
    "TrainOptions",
    "options_model",  # re-exported from dinoseg_core.config
    "resolve_scene_config",
]

#: Prompt ensemble (the "scene" templates of ViLD, used by many open-vocabulary segmentation works). Each class
#: embedding is the renormalised mean of the unit embeddings of these prompts, per half (CLS / patch).
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "a photo of a {}.",
    "a photo of the {}.",
    "there is a {} in the scene.",
    "there is the {} in the scene.",
    "this is a {} in the scene.",
    "this is the {} in the scene.",
    "this is one {} in the scene.",
)

#: mIoU (%) reported in the dinov3.seg description (arXiv 2603.19531), for reference only: nothing in this
#: repository reproduces them (they need the real dino.txt weights and a dinov3.seg model trained on COCO-Stuff).
PAPER_MIOU: dict[str, dict[str, float]] = {
    "dinov3.seg": {"A-847": 20.1, "PC-459": 27.8, "A-150": 42.2, "PC-59": 64.3, "PAS-20": 97.9},
    "CAT-Seg ViT-L": {"A-847": 16.0, "PC-459": 23.8, "A-150": 37.9, "PC-59": 63.3, "PAS-20": 97.0},
}


class _FromRecipe:
    """The default of a recipe field: the value of :attr:`OvsegConfig.recipe` (:data:`RECIPES`)."""

    def __repr__(self) -> str:
        return "FROM_RECIPE"

    def __str__(self) -> str:
        return "from --recipe"


#: Default of the :class:`OvsegConfig` fields that a recipe sets: resolved to the recipe's value on construction.
FROM_RECIPE: Any = _FromRecipe()

#: What each inference recipe sets (every other :class:`OvsegConfig` field is shared). ``dinoseg``: this project's
#: choices. ``dinotxt``: Meta's published dino.txt zero-shot segmentation recipe.
RECIPES: dict[str, dict[str, Any]] = {
    "dinoseg": {"short_side": 640, "window": 384, "stride": 256, "global_view": True,
                "templates": DEFAULT_TEMPLATES, "prior_weight": 1.0, "average": "logits"},
    "dinotxt": {"short_side": 512, "window": 384, "stride": 192, "global_view": False,
                "templates": IMAGENET_TEMPLATES, "prior_weight": 0.0, "average": "probabilities"},
}


def _positive(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise InputError(f"{name}={value!r}: must be a positive integer")


@dataclass(frozen=True)
class OvsegConfig(ConfigBase):
    """Inference of open-vocabulary segmentation (zero-shot dino.txt and the trained dinov3.seg head).

    ``recipe`` sets the defaults of ``short_side``, ``window``, ``stride``, ``global_view``, ``templates``,
    ``prior_weight`` and ``average`` (:data:`RECIPES`); a field given explicitly overrides its recipe value.
    :meth:`replace` with another recipe moves the fields that still hold the old recipe's values to the new one's.
    The ``help`` metadata of each field is what a CLI shows.
    """

    recipe: Literal["dinoseg", "dinotxt"] = field(default="dinoseg", metadata={
        "help": "defaults of the windowing, templates, prior and averaging: dinoseg (this project's: short side "
                "640, windows 384 / stride 256 + a global view, 7 scene templates, CLS prior, logits averaged) or "
                "dinotxt (Meta's dino.txt recipe: short side 512, windows 384 / stride 192, no global view, "
                "CLIP's 80 ImageNet templates, no CLS term, probabilities averaged)"})
    short_side: int | None = field(default=FROM_RECIPE, metadata={
        "help": "resize so the shorter image side is this many pixels (recipe dinoseg 640, dinotxt 512; None in "
                "Python: keep the size, rounded to the patch size)"})
    window: int = field(default=FROM_RECIPE, metadata={
        "help": "side of the square sliding windows, pixels of the resized image (multiple of the patch size; "
                "both recipes 384)"})
    stride: int = field(default=FROM_RECIPE, metadata={
        "help": "step between windows (<= window; multiple of the patch size; recipe dinoseg 256, dinotxt 192)"})
    global_view: bool = field(default=FROM_RECIPE, metadata={
        "help": "add one view of the whole image, longer side resized to the window (recipe dinoseg on, dinotxt "
                "off)"})
    global_weight: float = field(default=0.5, metadata={
        "help": "weight of the global view's logits against the averaged windows' (0..1)"})
    output_stride: int = field(default=4, metadata={
        "help": "pixels per cell of the grid the views are aggregated on (divides the patch size)"})
    templates: tuple[str, ...] = field(default=FROM_RECIPE, metadata={
        "help": "prompt templates, each with one '{}' for the class name; their embeddings are averaged (recipe "
                "dinoseg: 7 scene templates; dinotxt: CLIP's 80 ImageNet templates)"})
    temperature: float = field(default=0.01, metadata={
        "help": "softmax temperature of cosine similarities over classes (CLIP's logit scale 100 = 1/0.01)"})
    prior_weight: float = field(default=FROM_RECIPE, metadata={
        "help": "weight of the image-level prior (log-softmax of CLS-text similarity) added to patch logits "
                "(recipe dinoseg 1.0, dinotxt 0: no CLS term)"})
    average: Literal["logits", "probabilities"] = field(default=FROM_RECIPE, metadata={
        "help": "what is averaged where views overlap: logits, or each view's softmax probabilities (recipe "
                "dinoseg logits, dinotxt probabilities)"})
    background_threshold: float | None = field(default=None, metadata={
        "help": "pixels whose top class probability is below this become background (label 0); None: never"})
    background_prompts: tuple[str, ...] = field(default=(), metadata={
        "help": "extra 'classes' (e.g. 'background', 'sky') that compete with the user's and map to label 0"})
    batch_windows: int = field(default=8, metadata={"help": "windows per forward pass"})

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise InputError(f"recipe={self.recipe!r}: use one of {sorted(RECIPES)} (dinoseg: this project's "
                             "defaults; dinotxt: Meta's dino.txt zero-shot recipe)")
        for name, value in RECIPES[self.recipe].items():
            if getattr(self, name) is FROM_RECIPE:
                object.__setattr__(self, name, value)
        if self.short_side is not None:
            _positive("short_side", self.short_side)
        for name in ("window", "stride", "output_stride", "batch_windows"):
            _positive(name, getattr(self, name))
        if self.stride > self.window:
            raise InputError(f"stride={self.stride} is larger than window={self.window}: windows would leave gaps; "
                             "use a stride <= the window")
        if not isinstance(self.global_view, bool):
            raise InputError(f"global_view={self.global_view!r}: must be True or False")
        if not 0.0 <= self.global_weight <= 1.0:
            raise InputError(f"global_weight={self.global_weight}: must be in [0, 1]")
        if not self.temperature > 0:
            raise InputError(f"temperature={self.temperature}: must be > 0")
        if self.prior_weight < 0:
            raise InputError(f"prior_weight={self.prior_weight}: must be >= 0 (0 disables the image-level prior)")
        if self.average not in ("logits", "probabilities"):
            raise InputError(f"average={self.average!r}: use 'logits' or 'probabilities'")
        if self.background_threshold is not None and not 0.0 <= self.background_threshold <= 1.0:
            raise InputError(f"background_threshold={self.background_threshold}: must be a probability in [0, 1]")
        _check_templates(self.templates)
        for prompt in self.background_prompts:
            if not isinstance(prompt, str) or not prompt.strip():
                raise InputError(f"background_prompts={self.background_prompts!r}: every prompt must be a non-empty "
                                 "string")

    def replace(self, **changes: Any) -> OvsegConfig:
        """A copy with ``changes``; a new ``recipe`` also moves every recipe field that still holds the old
        recipe's value (and is not in ``changes``) to the new recipe's value."""
        recipe = changes.get("recipe", self.recipe)
        if recipe != self.recipe:
            for name, value in RECIPES[self.recipe].items():
                if name not in changes and getattr(self, name) == value:
                    changes[name] = FROM_RECIPE
        return dataclasses.replace(self, **changes)

    def apply(self, given: dict[str, Any]) -> OvsegConfig:
        """This config with the fields in ``given`` replaced (see :meth:`replace`; lists become tuples)."""
        unknown = sorted(set(given) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise InputError(f"unknown OvsegConfig field(s) {unknown}; known fields: "
                             f"{sorted(f.name for f in dataclasses.fields(self))}")
        return self.replace(**{k: tuple(v) if isinstance(v, list) else v for k, v in given.items()})

    def to_dict(self) -> dict[str, Any]:
        """Field name -> value, JSON-ready. The default recipe's ``recipe`` and ``average`` entries are left out, so
        that a default config's dict (and the provenance digest of masks labelled before recipes existed) is
        unchanged; :meth:`from_dict` restores them."""
        out = super().to_dict()
        if out["recipe"] == "dinoseg":
            del out["recipe"]
            if out["average"] == "logits":
                del out["average"]
        return out

    def check_patch_size(self, patch_size: int) -> None:
        """Raise :class:`InputError` unless the window geometry fits a backbone of ``patch_size``."""
        for name in ("window", "stride"):
            value = getattr(self, name)
            if value % patch_size:
                raise InputError(f"{name}={value} is not a multiple of the backbone's patch size {patch_size}; use "
                                 f"e.g. {max(patch_size, round(value / patch_size) * patch_size)}")
        if patch_size % self.output_stride:
            raise InputError(f"output_stride={self.output_stride} does not divide the patch size {patch_size}; use "
                             "a divisor such as 4 or 8")


def _check_templates(templates: tuple[str, ...]) -> None:
    if not isinstance(templates, tuple) or not templates:
        raise InputError(f"templates={templates!r}: give a non-empty tuple of strings, each with one '{{}}'")
    for template in templates:
        if not isinstance(template, str) or template.count("{}") != 1:
            raise InputError(f"template {template!r} must be a string with exactly one '{{}}' for the class name, "
                             "e.g. 'a photo of a {}.'")


#: Head kinds (:attr:`SegHeadConfig.kind`) and the :class:`SegHeadConfig` fields each one uses.
HEAD_FIELDS: dict[str, tuple[str, ...]] = {
    "small": ("feature_dim", "early_blocks", "hidden", "spatial_blocks", "class_blocks", "class_heads",
              "decoder_channels"),
    "catseg": ("kind", "feature_dim", "early_blocks", "hidden", "rounds", "attention_window", "class_heads",
               "guidance_dim", "decoder_channels"),
}


@dataclass(frozen=True)
class SegHeadConfig(ConfigBase):
    """Architecture of the trainable dinov3.seg head (:func:`dinoseg_core.ovseg.model.build_head`).

    ``kind="small"``: :class:`~dinoseg_core.ovseg.model.SegHead` (3x3 conv spatial blocks, then transformer layers
    across classes). ``kind="catseg"``: :class:`~dinoseg_core.ovseg.model.CatSegHead`, closer to CAT-Seg's cost
    aggregation (``rounds`` of shifted-window spatial attention then attention across classes, backbone guidance
    in both and in the decoder). Each kind uses some fields (:data:`HEAD_FIELDS`); the others are ignored.
    ``feature_dim`` is the width of the dino.txt vision head (1024 for ViT-L); it is taken from the loaded
    towers, not chosen.
    """

    kind: Literal["small", "catseg"] = field(default="small", metadata={
        "help": "head architecture: small (conv spatial blocks + class transformer) or catseg (CAT-Seg-style "
                "interleaved window-attention / class-attention rounds with backbone guidance)"})
    feature_dim: int = 1024
    early_blocks: int = field(default=1, metadata={"help": "residual conv blocks refining patch features before "
                                                           "the matching"})
    hidden: int = field(default=128, metadata={"help": "channels of the embedded correlation volume"})
    spatial_blocks: int = field(default=2, metadata={"help": "small: per-class residual conv blocks (spatial "
                                                             "aggregation)"})
    class_blocks: int = field(default=1, metadata={"help": "small: transformer layers across classes (class "
                                                           "aggregation)"})
    class_heads: int = field(default=4, metadata={"help": "attention heads (small: class aggregation; catseg: "
                                                          "both aggregations)"})
    rounds: int = field(default=2, metadata={"help": "catseg: rounds of spatial then class aggregation"})
    attention_window: int = field(default=8, metadata={
        "help": "catseg: side of the spatial attention windows in patches (every second block shifted by half)"})
    guidance_dim: int = field(default=64, metadata={
        "help": "catseg: width of the projected backbone features joined to the queries and keys of both "
                "aggregations (the decoder's guidance is half each stage's width)"})
    decoder_channels: tuple[int, ...] = field(default=(64, 32), metadata={
        "help": "channels of each x2 upsampling stage of the decoder (two stages: patch/4 output)"})

    def __post_init__(self) -> None:
        if self.kind not in HEAD_FIELDS:
            raise InputError(f"kind={self.kind!r}: use one of {sorted(HEAD_FIELDS)}")
        for name in ("feature_dim", "hidden", "class_heads", "rounds", "attention_window", "guidance_dim"):
            _positive(name, getattr(self, name))
        for name in ("early_blocks", "spatial_blocks", "class_blocks"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise InputError(f"{name}={value!r}: must be an integer >= 0")
        if self.hidden % self.class_heads:
            raise InputError(f"hidden={self.hidden} must be a multiple of class_heads={self.class_heads}")
        if not isinstance(self.decoder_channels, tuple) or not all(
                isinstance(c, int) and c > 0 for c in self.decoder_channels):
            raise InputError(f"decoder_channels={self.decoder_channels!r}: give a tuple of positive integers")
        if self.kind == "catseg" and not all(c % 2 == 0 for c in self.decoder_channels):
            raise InputError(f"decoder_channels={self.decoder_channels!r}: the catseg head needs even widths (half "
                             "of each stage carries the backbone guidance)")

    def used(self) -> dict[str, Any]:
        """The fields this kind of head uses, JSON-ready: what its weights' meaning depends on (a small head's is
        the whole config of the heads made before ``kind`` existed, so their fingerprints are unchanged)."""
        data = self.to_dict()
        return {name: data[name] for name in HEAD_FIELDS[self.kind]}


@dataclass(frozen=True)
class TrainConfig(ConfigBase):
    """The dinov3.seg training loop (backbone and text tower frozen; only the head learns)."""

    batch_size: int = field(default=4, metadata={"help": "images per step"})
    lr: float = field(default=1e-3, metadata={
        "help": "AdamW learning rate (1e-3: the best of a measured sweep, docs/open-vocabulary.md)"})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay"})
    schedule: Literal["constant", "cosine"] = field(default="cosine", metadata={
        "help": "learning-rate schedule over the requested number of steps"})
    short_side: int = field(default=512, metadata={"help": "resize training images so the shorter side is this"})
    crop: int = field(default=384, metadata={"help": "random square crop side (multiple of the patch size)"})
    hflip: bool = field(default=True, metadata={"help": "random horizontal flips"})
    templates: tuple[str, ...] = field(default=DEFAULT_TEMPLATES, metadata={"help": "prompt templates for the "
                                                                                     "class embeddings"})
    ignore_index: int = field(default=255, metadata={"help": "label value excluded from the loss"})
    seed: int = field(default=0, metadata={"help": "seed of the data order, crops and flips (per step)"})
    checkpoint_every: int = field(default=500, metadata={"help": "steps between checkpoints"})

    def __post_init__(self) -> None:
        for name in ("batch_size", "short_side", "crop", "checkpoint_every"):
            _positive(name, getattr(self, name))
        if not self.lr > 0:
            raise InputError(f"lr={self.lr}: must be > 0")
        if self.weight_decay < 0:
            raise InputError(f"weight_decay={self.weight_decay}: must be >= 0")
        if self.schedule not in ("constant", "cosine"):
            raise InputError(f"schedule={self.schedule!r}: use 'constant' or 'cosine'")
        _check_templates(self.templates)


#: Inference options as a flow parameter (:class:`OvsegConfig`).
OvsegOptions = options_model(OvsegConfig, "OvsegOptions")
#: Training-loop options as a flow parameter (:class:`TrainConfig`).
TrainOptions = options_model(TrainConfig, "TrainOptions")
#: Head architecture options as a flow parameter (:class:`SegHeadConfig`; ``feature_dim`` follows the towers).
HeadOptions = options_model(SegHeadConfig, "HeadOptions", exclude=("feature_dim",))


#: Scene window side (px) when neither ``SceneConfig.window_size`` nor ``OvsegConfig.short_side`` sets it.
SCENE_WINDOW = 640


def resolve_scene_config(config: SceneConfig | None, ovseg: OvsegConfig) -> SceneConfig:
    """``config`` with the text path's defaults filled in: ``window_size`` the segmenter's ``short_side`` (or
    :data:`SCENE_WINDOW`), ``context_size`` its ``window``; the default ``overlap`` (128 px) becomes a quarter of a
    default window too small for it. Re-validates: an overlap given explicitly and not below the window raises
    :class:`~dinoseg_core.errors.InputError` here."""
    config = config or SceneConfig()
    window = config.window_size or ovseg.short_side or SCENE_WINDOW
    overlap = config.overlap
    if config.window_size is None and overlap == SceneConfig().overlap and overlap >= window:
        overlap = window // 4
    return config.replace(window_size=window, overlap=overlap, context_size=config.context_size or ovseg.window)
