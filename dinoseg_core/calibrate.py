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

**Scenes** (:func:`calibrate_global_weight`): with held-out GeoTIFF scenes, the weight of the whole-scene context
(``SceneConfig.global_weight``) is searched too, at the concept's chosen tau / merge_threshold: each scene goes
through the real windowed path (:func:`dinoseg_core.geo.scene.segment_scene`) once per weight, and the IoU of the
stitched masks is accumulated over the scenes. The backbone runs once per window (and once for the whole-scene
pass) for the whole search: a window's features are kept (up to ``max_cached_windows`` windows; beyond that the
rest are extracted again for each weight).

The choice: the config of highest accumulated IoU; a tie (within ``1e-9``) keeps the paper's default if it is
among the best, else the first in grid order (taus ascending, then merge thresholds ascending).
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from dinoseg_core.config import InsidConfig, SceneConfig
from dinoseg_core.errors import InputError
from dinoseg_core.evaluate import reference_set_from_features

__all__ = [
    "DEFAULT_GLOBAL_WEIGHTS",
    "DEFAULT_MERGE_THRESHOLDS",
    "GlobalWeightCalibration",
    "LabelledScene",
    "calibrate_global_weight",
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
#: Global weights searched on held-out scenes by default (0: every window on its own).
DEFAULT_GLOBAL_WEIGHTS = (0.0, 0.25, 0.5, 0.75)

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


# ------------------------------------------------------------------------------------------ scenes: global weight
@dataclass(frozen=True, eq=False)
class LabelledScene:
    """A held-out scene: ``read(window, out_shape=None) -> (image, valid)`` as
    :data:`dinoseg_core.geo.scene.SceneReader` (e.g. :meth:`dinoseg_core.io.raster.RasterReader.read`), its
    ``(H, W)`` shape, the concept's ground truth (bool (H, W)) and a name for messages."""

    read: Callable[..., tuple[np.ndarray, np.ndarray]]
    shape: tuple[int, int]
    mask: np.ndarray
    name: str


@dataclass(frozen=True)
class WeightTrial:
    """One global weight: the IoU of the stitched scene masks, accumulated over the scenes."""

    global_weight: float
    iou: float
    intersection: int
    union: int
    fold_ious: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"global_weight": self.global_weight, "iou": self.iou, "intersection": self.intersection,
                "union": self.union, "fold_ious": list(self.fold_ious)}


@dataclass(frozen=True)
class GlobalWeightCalibration:
    """The global-weight search of one concept: the scenes, the default's and the chosen weight's trials, every
    trial, and how many window passes the backbone made (``extracted``) and were reused (``reused``)."""

    scenes: int
    tau: float
    merge_threshold: float
    default: WeightTrial
    chosen: WeightTrial
    trials: tuple[WeightTrial, ...]
    extracted: int
    reused: int
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"searched": True, "scenes": self.scenes, "tau": self.tau, "merge_threshold": self.merge_threshold,
                "default": self.default.to_dict(), "chosen": self.chosen.to_dict(),
                "trials": [t.to_dict() for t in self.trials], "windows_extracted": self.extracted,
                "windows_reused": self.reused, "seconds": round(self.seconds, 3)}


class _FeaturesOnce:
    """The segmenter, with ``extract_target`` remembered by name (segment_scene names every window and the
    whole-scene pass by its position, the same for every weight) for up to ``limit`` images."""

    def __init__(self, segmenter: Any, limit: int) -> None:
        self._segmenter, self._limit, self._kept = segmenter, limit, {}
        self.extracted = self.reused = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._segmenter, name)

    def extract_target(self, image: np.ndarray, name: str = "target") -> Any:
        if name in self._kept:
            self.reused += 1
            return self._kept[name]
        self.extracted += 1
        target = self._segmenter.extract_target(image, name)
        if len(self._kept) < self._limit:
            self._kept[name] = target
        return target


def calibrate_global_weight(
    segmenter: Any,
    shots: Sequence[LabelledShot],
    scenes: Sequence[LabelledScene],
    *,
    insid_config: InsidConfig,
    scene_config: SceneConfig | None = None,
    weights: Sequence[float] = DEFAULT_GLOBAL_WEIGHTS,
    max_cached_windows: int = 64,
) -> GlobalWeightCalibration:
    """Search ``SceneConfig.global_weight`` for one concept on held-out scenes (see the module docstring).

    Args:
        segmenter: an :class:`~dinoseg_core.segmenter.InContextSegmenter`.
        shots: the concept's reference shots (all of them are the references).
        scenes: held-out scenes with the concept's ground truth.
        insid_config: the concept's config (its calibrated tau / merge_threshold).
        scene_config: the concept's scene config (windowing, context); its ``global_weight`` is the default, always
            measured and kept on a tie. ``global_context`` is turned on for the search (weight 0 turns it off).
        weights: the grid, each in [0, 1].
    """
    from dinoseg_core.geo.scene import segment_scene

    if not shots:
        raise InputError("calibration needs at least one reference shot with its mask")
    if not scenes:
        raise InputError("the global weight is searched on held-out scenes; none given")
    base = (scene_config or SceneConfig()).replace(global_context=True)
    for value in weights:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"global weight {value!r} is not a number")
        base.replace(global_weight=float(value))  # out of [0, 1]: fails here, naming the field
    grid = sorted({float(w) for w in weights} | {base.global_weight})
    for scene in scenes:
        if tuple(scene.mask.shape) != tuple(scene.shape):
            raise InputError(f"{scene.name}: ground truth is {scene.mask.shape[1]}x{scene.mask.shape[0]}, the scene "
                             f"{scene.shape[1]}x{scene.shape[0]}")
    started = time.perf_counter()
    refs = segmenter.embed_references([s.image for s in shots], [s.mask for s in shots], [s.name for s in shots])
    once = _FeaturesOnce(segmenter, max_cached_windows)
    trials = []
    for weight in grid:
        inter = union = 0
        fold_ious = []
        for scene in scenes:
            counts = [0, 0]

            def writer(row: int, col: int, block: np.ndarray, truth: np.ndarray = scene.mask,
                       counts: list[int] = counts) -> None:
                part = truth[row:row + block.shape[0], col:col + block.shape[1]]
                counts[0] += int(np.count_nonzero(block & part))
                counts[1] += int(np.count_nonzero(block | part))

            segment_scene(once, refs, scene.read, scene.shape, writer, name=scene.name,
                          config=base.replace(global_weight=weight), insid_config=insid_config)
            inter, union = inter + counts[0], union + counts[1]
            fold_ious.append(counts[0] / counts[1] if counts[1] else 0.0)
        trials.append(WeightTrial(weight, inter / union if union else 0.0, inter, union, tuple(fold_ious)))
    default = next(t for t in trials if t.global_weight == base.global_weight)
    best = max(t.iou for t in trials)
    chosen = default if default.iou >= best - 1e-9 else next(t for t in trials if t.iou >= best - 1e-9)
    return GlobalWeightCalibration(len(scenes), insid_config.tau, insid_config.merge_threshold, default, chosen,
                                   tuple(trials), once.extracted, once.reused, time.perf_counter() - started)
