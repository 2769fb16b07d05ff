"""Open-vocabulary segmentation of one image, in stage order: resize -> windows + global view -> score -> aggregate
-> upsample -> label.

Usage::

    dinotxt = load_dinotxt(weights, backbone="dinov3-vitl16", bpe="bpe_simple_vocab_16e6.txt.gz")
    segmenter = TextSegmenter(dinotxt)                       # zero-shot, or TextSegmenter(load_seg_model(url, dinotxt))
    classes = segmenter.embed_classes(["building", "road", "water"])   # once per class list
    for image in images:                                     # float32 (H, W, 3) in [0, 1]
        result = segmenter.segment(image, classes)           # result.labels: uint16 (H, W), 0 = background
        roads = result.mask("road")                          # bool (H, W)

The same windowing (:mod:`dinoseg_core.ovseg.windows`) serves both modes; only the scoring of a view differs:
zero-shot uses :func:`~dinoseg_core.ovseg.zeroshot.zero_shot_logits`, the trained model its head. Nothing is kept
between calls.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from dinoseg_core.errors import InputError
from dinoseg_core.ovseg.config import OvsegConfig
from dinoseg_core.ovseg.dinotxt import ClassEmbeddings, DinoTxt
from dinoseg_core.ovseg.model import SegModel
from dinoseg_core.ovseg.windows import local_global_logits, resize_short_side, upsample_argmax
from dinoseg_core.ovseg.zeroshot import zero_shot_logits
from dinoseg_core.preprocess import prepare_image, validate_image

__all__ = ["BACKGROUND", "TextSegmentation", "TextSegmenter"]

#: Label value of background (below the threshold, or won by a background prompt).
BACKGROUND = 0


@dataclass(frozen=True)
class TextSegmentation:
    """The result for one image and one class list.

    Attributes:
        labels: uint16 (H, W) at the image's original size; 0 = background, k + 1 = ``class_names[k]``.
        probabilities: float32 (K, h, w) class probabilities (softmax over the user's classes and the background
            prompts, user classes only kept) on the aggregation grid: the working image (short side
            ``config.short_side``) divided by ``config.output_stride``.
        class_names: the user's classes, in label order.
        timings: seconds per stage (preprocess, views, upsample).
    """

    labels: np.ndarray
    probabilities: np.ndarray
    class_names: tuple[str, ...]
    timings: dict[str, float]

    def mask(self, name: str) -> np.ndarray:
        """bool (H, W): the pixels labelled ``name``."""
        try:
            index = self.class_names.index(name)
        except ValueError:
            raise InputError(f"class {name!r} is not among {list(self.class_names)}") from None
        return self.labels == index + 1

    @property
    def class_table(self) -> dict[int, str]:
        """Label value -> class name, background included."""
        return {BACKGROUND: "background", **{i + 1: n for i, n in enumerate(self.class_names)}}


class TextSegmenter:
    """Segment classes named in text, zero-shot (a :class:`DinoTxt`) or with a trained dinov3.seg head (a
    :class:`SegModel`).

    Args:
        model: :class:`~dinoseg_core.ovseg.dinotxt.DinoTxt` (zero-shot) or
            :class:`~dinoseg_core.ovseg.model.SegModel` (trained head).
        config: inference settings (windowing, templates, temperature, prior, background).
    """

    def __init__(self, model: DinoTxt | SegModel, config: OvsegConfig | None = None):
        if isinstance(model, SegModel):
            self.dinotxt, self.seg_model = model.dinotxt, model
        elif isinstance(model, DinoTxt):
            self.dinotxt, self.seg_model = model, None
        else:
            raise InputError(f"TextSegmenter needs a DinoTxt (zero-shot) or a SegModel (trained), got "
                             f"{type(model).__name__}")
        self.config = config or OvsegConfig()
        self.config.check_patch_size(self.dinotxt.patch_size)

    @property
    def mode(self) -> str:
        """``"zero-shot"`` or ``"dinov3.seg"``."""
        return "zero-shot" if self.seg_model is None else "dinov3.seg"

    def embed_classes(self, class_names: Sequence[str] | str,
                      synonyms: Mapping[str, Sequence[str]] | None = None) -> ClassEmbeddings:
        """Text embeddings of the classes (and of the config's background prompts); compute once, reuse.
        ``synonyms``: class name -> prompts that stand for it (the class embedding is their mean).

        Raises:
            InputError: duplicate or empty class names, or a prompt longer than the text context.
        """
        return self.dinotxt.embed_classes(class_names, self.config.templates, self.config.background_prompts,
                                          synonyms)

    def provenance(self, classes: ClassEmbeddings) -> dict[str, Any]:
        """Provenance attributes for :meth:`dinoseg_core.io.archive.MaskArchive.write_mask` (all but ``source_uri``
        and ``source_sha256``): what a stored mask depends on, so an incremental run can tell whether it is
        up to date.

        ``backbone``: the backbone spec; ``backbone_fingerprint``: the dino.txt fingerprint (backbone + towers +
        vocabulary), or the dinov3.seg model's (that plus the head weights); ``config``: this config's dict plus
        ``mode``; ``reference_set_hash``: ``classes.digest`` (class list, templates, background prompts);
        plus ``dinotxt`` (the weights spec), ``classes`` and ``class_table``.
        """
        fingerprint = self.dinotxt.fingerprint if self.seg_model is None else self.seg_model.fingerprint()
        return {
            "backbone": self.dinotxt.backbone.spec,
            "backbone_fingerprint": fingerprint,
            "config": {**self.config.to_dict(), "mode": self.mode},
            "reference_set_hash": classes.digest,
            "dinotxt": self.dinotxt.spec,
            "classes": list(classes.class_names),
            "class_table": {str(BACKGROUND): "background",
                            **{str(i + 1): n for i, n in enumerate(classes.class_names)}},
        }

    def _score(self, classes: ClassEmbeddings):
        if self.seg_model is None:
            cfg = self.config

            def score(pixels: torch.Tensor) -> torch.Tensor:
                cls, patches = self.dinotxt.image_tokens(pixels)
                return zero_shot_logits(cls, patches, classes, temperature=cfg.temperature,
                                        prior_weight=cfg.prior_weight)
        else:
            model = self.seg_model

            def score(pixels: torch.Tensor) -> torch.Tensor:
                with torch.no_grad():
                    return model.logits(pixels, classes)
        return score

    def logits(self, image: np.ndarray, classes: ClassEmbeddings, name: str = "image", *,
               size: tuple[int, int] | None = None, global_view: bool | None = None) -> torch.Tensor:
        """Aggregated logits (K', h, w) of every class and background prompt on the aggregation grid.

        Args:
            size: the working size (H', W'), multiples of the patch size; default the image resized to
                ``config.short_side`` (:func:`~dinoseg_core.ovseg.windows.resize_short_side`).
            global_view: whether to blend in a global view of this image (default ``config.global_view``); a
                scene window passes False, the scene's own global view (:meth:`view_logits`) replacing it.
        """
        validate_image(image, name, self.dinotxt.patch_size)
        cfg = self.config
        size = size or resize_short_side(*image.shape[:2], cfg.short_side, self.dinotxt.patch_size)
        pixels = self._pixels(image, size)
        if self.seg_model is not None:
            self.seg_model.head.eval()
        return local_global_logits(
            self._score(classes), pixels, window=cfg.window, stride=cfg.stride,
            global_view=cfg.global_view if global_view is None else global_view, global_weight=cfg.global_weight,
            output_stride=cfg.output_stride, patch_size=self.dinotxt.patch_size, batch_windows=cfg.batch_windows,
            average=self.average)

    @property
    def average(self) -> str:
        """How views are averaged: ``"logits"`` or ``"probabilities"`` (the config's ``average``, set by its
        recipe)."""
        return getattr(self.config, "average", "logits")

    def view_logits(self, view: np.ndarray, classes: ClassEmbeddings, name: str = "global view") -> torch.Tensor:
        """Logits (K', h, w) of one global view, scored whole at its own size (float32 (h, w, 3) in [0, 1], sides
        multiples of the patch size; e.g. a whole scene read at reduced size, see
        :func:`~dinoseg_core.ovseg.scene.segment_scene`)."""
        validate_image(view, name, self.dinotxt.patch_size)
        if self.seg_model is not None:
            self.seg_model.head.eval()
        return self._score(classes)(self._pixels(view, view.shape[:2])[None]).float()[0]

    def _pixels(self, image: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
        norm = self.dinotxt.backbone.normalization
        return prepare_image(image, size, norm.mean, norm.std, self.dinotxt.device)

    def label_map(self, index: Any, top: Any, classes: ClassEmbeddings) -> Any:
        """Label values from the argmax ``index`` and top probability ``top`` over the classes and background
        prompts (torch or numpy, any shape): class k -> k + 1; a background prompt's win, or a top probability
        below ``config.background_threshold``, -> :data:`BACKGROUND`."""
        labels = index + 1
        labels[index >= len(classes) - classes.num_background] = BACKGROUND
        if self.config.background_threshold is not None:
            labels[top < self.config.background_threshold] = BACKGROUND
        return labels

    def segment(self, image: np.ndarray, classes: ClassEmbeddings | Sequence[str], name: str = "image"
                ) -> TextSegmentation:
        """Segment ``classes`` in one float32 (H, W, 3) image in [0, 1].

        Every pixel gets the most probable class, unless a background prompt wins there or its top probability is
        below ``config.background_threshold``: then it is background (0).
        """
        if not isinstance(classes, ClassEmbeddings):
            classes = self.embed_classes(classes)
        timings: dict[str, float] = {}
        start = time.perf_counter()
        logits = self.logits(image, classes, name)
        timings["views"] = time.perf_counter() - start
        start = time.perf_counter()
        probs = torch.softmax(logits, dim=0)
        index, top = upsample_argmax(probs, image.shape[:2])
        user = len(classes) - classes.num_background
        labels = self.label_map(index, top, classes)
        timings["upsample"] = time.perf_counter() - start
        return TextSegmentation(
            labels=labels.to(torch.int32).cpu().numpy().astype(np.uint16),
            probabilities=probs[:user].cpu().numpy().astype(np.float32),
            class_names=classes.class_names,
            timings=timings,
        )
