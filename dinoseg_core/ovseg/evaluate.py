"""Semantic-segmentation evaluation: per-class IoU over a whole dataset and their mean (mIoU).

The standard protocol of the benchmarks dinov3.seg reports (ADE20K-150/847, Pascal Context-59/459, Pascal VOC-20):
one confusion matrix accumulated over every labelled pixel of the dataset (``ignore_index`` pixels skipped), then
``IoU_c = TP_c / (TP_c + FP_c + FN_c)`` per class and mIoU = the mean over classes whose union is non-empty
(a class absent from both the ground truth and the predictions has no IoU and does not count; one predicted but
absent from the ground truth has IoU 0). Pixels a segmenter leaves as background (a threshold or a background
prompt) count as misses of their true class. Numbers are percentages only when printed; the arrays hold
fractions.

What an mIoU from this repository means: with random weights, that the pipeline runs and learns; the paper's
numbers (:data:`~dinoseg_core.ovseg.config.PAPER_MIOU`) need Meta's dino.txt weights and a head trained on
COCO-Stuff.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from dinoseg_core.errors import InputError

__all__ = ["EvalResult", "confusion_matrix", "evaluate", "iou_per_class"]


def confusion_matrix(pred: np.ndarray, target: np.ndarray, num_classes: int, ignore_index: int = 255) -> np.ndarray:
    """int64 (K, K + 1): rows are true classes, columns predicted ones; column K counts pixels predicted as no
    class (any value outside 0..K-1, e.g. -1 for background). Pixels whose target is ``ignore_index`` are skipped.
    """
    pred = np.asarray(pred)
    target = np.asarray(target)
    if pred.shape != target.shape:
        raise InputError(f"prediction {pred.shape} and target {target.shape} differ in shape")
    keep = target != ignore_index
    t = target[keep].astype(np.int64)
    if t.size and (t.min() < 0 or t.max() >= num_classes):
        raise InputError(f"target values {sorted(set(np.unique(t[(t < 0) | (t >= num_classes)]).tolist()))[:5]} are "
                         f"not classes 0..{num_classes - 1} or {ignore_index}")
    p = pred[keep].astype(np.int64)
    p = np.where((p >= 0) & (p < num_classes), p, num_classes)
    return np.bincount(t * (num_classes + 1) + p, minlength=num_classes * (num_classes + 1)).reshape(
        num_classes, num_classes + 1)


def iou_per_class(confusion: np.ndarray) -> np.ndarray:
    """float64 (K,) IoU per class from a (K, K + 1) confusion matrix; NaN where the union is empty."""
    k = confusion.shape[0]
    tp = np.diag(confusion[:, :k]).astype(np.float64)
    fn = confusion.sum(axis=1) - tp
    fp = confusion[:, :k].sum(axis=0) - tp
    union = tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.maximum(union, 1), np.nan)


@dataclass(frozen=True)
class EvalResult:
    """mIoU of a segmenter on a labelled dataset.

    Attributes:
        class_names: the K classes.
        iou: class -> IoU in [0, 1] (NaN: class absent from ground truth and predictions).
        miou: mean of the non-NaN IoUs.
        pixel_accuracy: correctly labelled / labelled pixels.
        confusion: int64 (K, K + 1), see :func:`confusion_matrix`.
        images: images evaluated.
        seconds_per_image: mean wall time of segmentation.
    """

    class_names: tuple[str, ...]
    iou: dict[str, float]
    miou: float
    pixel_accuracy: float
    confusion: np.ndarray
    images: int
    seconds_per_image: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (IoU NaN -> None)."""
        return {
            "miou": self.miou, "pixel_accuracy": self.pixel_accuracy, "images": self.images,
            "seconds_per_image": self.seconds_per_image,
            "iou": {k: (None if np.isnan(v) else v) for k, v in self.iou.items()},
        }

    def markdown(self) -> str:
        """A Markdown table: one row per class, then the mean."""
        rows = ["| class | IoU (%) |", "|---|---|"]
        rows += [f"| {name} | {'n/a' if np.isnan(v) else f'{100 * v:.1f}'} |" for name, v in self.iou.items()]
        rows.append(f"| **mIoU** | **{100 * self.miou:.1f}** |")
        return "\n".join(rows)


def evaluate(segmenter: Any, dataset: Any, *, limit: int | None = None,
             on_image: Callable[[int, str], None] | None = None) -> EvalResult:
    """mIoU of a :class:`~dinoseg_core.ovseg.segmenter.TextSegmenter` (zero-shot or trained) on ``dataset``.

    Args:
        segmenter: anything with ``embed_classes(names)`` and ``segment(image, classes) -> .labels`` (0 =
            background, k + 1 = class k).
        dataset: ``len()``, ``[i] -> (image, label)``, ``class_names``, optional ``ignore_index`` (255) and
            ``name(i)``.
        limit: evaluate only the first ``limit`` images.
        on_image: called with (index, name) after each image.
    """
    names = tuple(dataset.class_names)
    ignore = getattr(dataset, "ignore_index", 255)
    classes = segmenter.embed_classes(list(names))
    k = len(names)
    confusion = np.zeros((k, k + 1), dtype=np.int64)
    count = len(dataset) if limit is None else min(limit, len(dataset))
    seconds = 0.0
    for i in range(count):
        image, label = dataset[i]
        start = time.perf_counter()
        result = segmenter.segment(image, classes, name=dataset.name(i) if hasattr(dataset, "name") else f"[{i}]")
        seconds += time.perf_counter() - start
        confusion += confusion_matrix(result.labels.astype(np.int64) - 1, label, k, ignore)
        if on_image is not None:
            on_image(i, dataset.name(i) if hasattr(dataset, "name") else str(i))
    iou = iou_per_class(confusion)
    valid = iou[~np.isnan(iou)]
    labelled = confusion.sum()
    return EvalResult(
        class_names=names,
        iou={n: float(v) for n, v in zip(names, iou)},
        miou=float(valid.mean()) if valid.size else float("nan"),
        pixel_accuracy=float(np.trace(confusion[:, :k]) / labelled) if labelled else float("nan"),
        confusion=confusion,
        images=count,
        seconds_per_image=seconds / max(count, 1),
    )
