"""Per-concept calibration of INSID3's thresholds from the user's own labelled shots.

The paper fixes tau (0.6) and alpha (0.2) for every concept and lists that as a limitation; the right values depend
on the concept and the backbone. :func:`calibrate_concept` measures, on images whose ground truth is known, the
IoU of every (tau, merge_threshold) of a grid and picks the best:

- **leave-one-out** (2+ reference shots): each shot in turn is the target, the others the references;
- **self-consistency** (1 shot): the shot is the reference and flipped / cropped / rotated views of it are the
  targets (:func:`augmented_views`);
- **held-out** (extra labelled images given): all shots are the references, the extra images the targets.

The IoU of a config is accumulated over its folds (sum of intersections / sum of unions, as the evaluation's
class-wise IoU, :mod:`dinoseg_core.evaluate`). It is cheap: each image goes through the backbone once, each target
is clustered once per tau (:meth:`~dinoseg_core.segmenter.TargetFeatures.clusters`), and every config only re-runs
steps 6 and 8-9 (:meth:`~dinoseg_core.segmenter.InContextSegmenter.segment_features`).

The choice: the config of highest accumulated IoU; a tie (within ``1e-9``) keeps the paper's default if it is
among the best, else the first in grid order (taus ascending, then merge thresholds ascending).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from dinoseg_core.config import InsidConfig
from dinoseg_core.errors import InputError
from dinoseg_core.evaluate import reference_set_from_features

__all__ = [
    "DEFAULT_MERGE_THRESHOLDS",
    "DEFAULT_TAUS",
    "Calibration",
    "LabelledShot",
    "Trial",
    "augmented_views",
    "calibrate_concept",
]

#: Grid searched by default: tau from loose to tight clusters, alpha from lenient to strict merging.
DEFAULT_TAUS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95)
DEFAULT_MERGE_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5)

Mode = Literal["leave-one-out", "self-consistency", "held-out"]


@dataclass(frozen=True, eq=False)
class LabelledShot:
    """An image (float32 (H, W, 3) in [0, 1]) with the concept's mask (bool (H, W)), named in messages."""

    image: np.ndarray
    mask: np.ndarray
    name: str


@dataclass(frozen=True)
class Trial:
    """One config of the grid: its IoU accumulated over the folds (and the per-fold IoUs)."""

    tau: float
    merge_threshold: float
    iou: float
    intersection: int
    union: int
    fold_ious: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"tau": self.tau, "merge_threshold": self.merge_threshold, "iou": self.iou,
                "intersection": self.intersection, "union": self.union, "fold_ious": list(self.fold_ious)}


@dataclass(frozen=True)
class Calibration:
    """The outcome for one concept: how it was measured, the default's and the chosen config's trials, the grid,
    and ``overrides`` (the manifest ``config`` entries that differ from ``base``)."""

    mode: Mode
    folds: int
    default: Trial
    chosen: Trial
    trials: tuple[Trial, ...]
    overrides: dict[str, float] = field(hash=False)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"mode": self.mode, "folds": self.folds, "default": self.default.to_dict(),
                "chosen": self.chosen.to_dict(), "overrides": dict(self.overrides),
                "trials": [t.to_dict() for t in self.trials], "seconds": round(self.seconds, 3)}


def augmented_views(shot: LabelledShot) -> list[LabelledShot]:
    """Views of one shot whose ground truth is known exactly: horizontal and vertical flips, a 90-degree rotation,
    and the four corner crops of 3/4 of each side (resized back to nothing: crops keep their pixels). Views in which
    the concept is absent are dropped (a target must show it)."""
    image, mask = shot.image, shot.mask
    h, w = mask.shape
    ch, cw = max(16, (3 * h) // 4), max(16, (3 * w) // 4)
    views = [
        ("flip-lr", image[:, ::-1], mask[:, ::-1]),
        ("flip-ud", image[::-1], mask[::-1]),
        ("rot90", np.rot90(image), np.rot90(mask)),
        ("crop-tl", image[:ch, :cw], mask[:ch, :cw]),
        ("crop-tr", image[:ch, w - cw:], mask[:ch, w - cw:]),
        ("crop-bl", image[h - ch:, :cw], mask[h - ch:, :cw]),
        ("crop-br", image[h - ch:, w - cw:], mask[h - ch:, w - cw:]),
    ]
    return [LabelledShot(np.ascontiguousarray(i), np.ascontiguousarray(m), f"{shot.name} ({what})")
            for what, i, m in views if m.any()]


def _folds(shots: Sequence[LabelledShot], extra: Sequence[LabelledShot]
           ) -> tuple[Mode, list[LabelledShot], list[tuple[list[int], int]]]:
    """(mode, every image to extract, [(reference indices, target index)]) into that image list."""
    if extra:
        images = [*shots, *extra]
        refs = list(range(len(shots)))
        return "held-out", images, [(refs, len(shots) + i) for i in range(len(extra))]
    if len(shots) >= 2:
        return "leave-one-out", list(shots), [([j for j in range(len(shots)) if j != i], i) for i in range(len(shots))]
    views = augmented_views(shots[0])
    if not views:
        raise InputError(f"{shots[0].name}: the mask is empty; a reference must show the concept")
    return "self-consistency", [shots[0], *views], [([0], 1 + i) for i in range(len(views))]


def calibrate_concept(
    segmenter: Any,
    shots: Sequence[LabelledShot],
    *,
    base: InsidConfig | None = None,
    taus: Sequence[float] = DEFAULT_TAUS,
    merge_thresholds: Sequence[float] = DEFAULT_MERGE_THRESHOLDS,
    extra: Sequence[LabelledShot] = (),
) -> Calibration:
    """Search tau x merge_threshold for one concept (see the module docstring for the folds and the choice).

    Args:
        segmenter: an :class:`~dinoseg_core.segmenter.InContextSegmenter` (its feature fields are used).
        shots: the concept's reference shots (images and masks).
        base: the concept's current config (the "default" the chosen one is compared with; default the
            segmenter's). Its tau and merge_threshold are always measured, also when off the grid.
        extra: held-out labelled images of the concept (they replace leave-one-out).
    Returns:
        a :class:`Calibration`; ``overrides`` holds ``tau`` / ``merge_threshold`` where they differ from ``base``.
    """
    if not shots:
        raise InputError("calibration needs at least one reference shot with its mask")
    base = base or segmenter.config
    for value in [*taus, *merge_thresholds]:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"grid value {value!r} is not a number")
    grid = sorted({(float(t), float(a)) for t, a in itertools.product(taus, merge_thresholds)}
                  | {(base.tau, base.merge_threshold)})
    for tau, alpha in grid:
        base.replace(tau=tau, merge_threshold=alpha)  # out-of-range values fail here, naming the field
    started = time.perf_counter()
    mode, images, folds = _folds(shots, extra)
    features = segmenter.extract_targets([s.image for s in images], [s.name for s in images])
    sums = {key: [0, 0, []] for key in grid}
    for ref_indices, target_index in folds:
        refs = reference_set_from_features([features[i] for i in ref_indices], [images[i].mask for i in ref_indices],
                                           [images[i].name for i in ref_indices])
        target, truth = features[target_index], images[target_index].mask
        for tau, alpha in grid:
            result = segmenter.segment_features(refs, target, base.replace(tau=tau, merge_threshold=alpha))
            inter = int(np.count_nonzero(result.mask & truth))
            union = int(np.count_nonzero(result.mask | truth))
            entry = sums[(tau, alpha)]
            entry[0] += inter
            entry[1] += union
            entry[2].append(inter / union if union else 0.0)
    trials = tuple(Trial(t, a, (s[0] / s[1]) if s[1] else 0.0, s[0], s[1], tuple(s[2]))
                   for (t, a), s in sums.items())
    by_key = {(t.tau, t.merge_threshold): t for t in trials}
    default = by_key[(base.tau, base.merge_threshold)]
    best = max(t.iou for t in trials)
    chosen = default if default.iou >= best - 1e-9 else next(t for t in trials if t.iou >= best - 1e-9)
    overrides = {name: value for name, value in (("tau", chosen.tau), ("merge_threshold", chosen.merge_threshold))
                 if value != getattr(base, name)}
    return Calibration(mode, len(folds), default, chosen, trials, overrides, time.perf_counter() - started)
