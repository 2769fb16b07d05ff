"""Few-shot evaluation of INSID3 as in the paper (``../shared/INSID3.md`` section 10): seeded episodes and the
few-shot segmentation literature's metrics.

- :func:`sample_episodes`: ``count`` episodes of a fold, each a class of the fold, a query image that contains it
  and ``shots`` other images that contain it (the supports), drawn from ``numpy.random.default_rng(seed)``;
- :class:`IoUAccumulator`: per class, intersections and unions summed over the episodes, ``IoU_c = sum(I) /
  sum(U)``; **mIoU** is the mean over the fold's classes (a class never drawn counts 0); **FB-IoU** is the mean of
  the foreground IoU and the background IoU, each accumulated over all episodes of the run (HSNet's definition);
  pixels marked *ignore* in the ground truth (the 255 boundary of iSAID / COCO masks) count for neither;
- :func:`evaluate_episodes`: the loop, on an injected loader; each image's features are extracted once per run
  (a bounded cache, by image) and clustered once per tau.

Nothing here reads files: the loader is a callable (``dinoseg_core.io.fss_datasets`` provides it for the folder,
manifest, iSAID-5i and COCO-20i layouts).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dinoseg_core.config import InsidConfig
from dinoseg_core.errors import InputError
from dinoseg_core.preprocess import prepare_mask
from dinoseg_core.prototype import ReferenceSet, ReferenceShot, compute_prototype, mask_to_patches

__all__ = [
    "Episode",
    "IoUAccumulator",
    "LabelledImage",
    "evaluate_episodes",
    "reference_set_from_features",
    "sample_episodes",
]


@dataclass(frozen=True)
class Episode:
    """One few-shot episode: segment ``class_id`` in ``query`` given ``supports`` (image keys) and their masks."""

    class_id: int
    query: str
    supports: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"class_id": self.class_id, "query": self.query, "supports": list(self.supports)}


@dataclass(frozen=True, eq=False)
class LabelledImage:
    """An image with its ground truth.

    Attributes:
        image: float32 (H, W, 3) in [0, 1].
        masks: class id -> bool (H, W), the classes the image holds (others are absent).
        ignore: bool (H, W) pixels that count for no metric (e.g. the 255 boundary of iSAID masks), or None.
    """

    image: np.ndarray
    masks: Mapping[int, np.ndarray]
    ignore: np.ndarray | None = None

    def mask(self, class_id: int) -> np.ndarray:
        """bool (H, W) of ``class_id`` (all False when the image does not hold it)."""
        found = self.masks.get(class_id)
        return found if found is not None else np.zeros(self.image.shape[:2], bool)


def sample_episodes(
    index: Mapping[int, Sequence[str]], classes: Sequence[int], shots: int, count: int, seed: int = 0
) -> list[Episode]:
    """``count`` seeded episodes over ``classes``.

    For each episode: a class drawn uniformly among ``classes`` that at least ``shots + 1`` images hold, a query
    drawn uniformly among its images, and ``shots`` distinct supports among the others. The same arguments give
    the same episodes on every machine (``numpy.random.default_rng(seed)``, images in sorted order).

    Args:
        index: class id -> keys of the images holding it.
        classes: the fold's class ids.
        shots: supports per episode (>= 1).
        count: number of episodes (>= 1).
    Raises:
        InputError: bad counts, or no class of ``classes`` has ``shots + 1`` images (names what each has).
    """
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
        raise InputError(f"shots={shots!r}: give at least 1 support image per episode")
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise InputError(f"episodes={count!r}: give at least 1 episode")
    pools = {c: sorted(set(index.get(c, ()))) for c in classes}
    usable = [c for c in classes if len(pools[c]) >= shots + 1]
    if not usable:
        held = ", ".join(f"{c}: {len(pools[c])}" for c in classes)
        raise InputError(f"no class of the fold is held by {shots + 1} images (one query and {shots} supports); "
                         f"images per class: {held}. Use fewer shots or another fold")
    rng = np.random.default_rng(seed)
    episodes = []
    for _ in range(count):
        class_id = usable[int(rng.integers(len(usable)))]
        pool = pools[class_id]
        picked = rng.choice(len(pool), size=shots + 1, replace=False)
        episodes.append(Episode(class_id, pool[int(picked[0])], tuple(pool[int(i)] for i in picked[1:])))
    return episodes


@dataclass
class IoUAccumulator:
    """Intersections and unions summed over episodes, per class and for foreground / background.

    ``add(class_id, prediction, truth, ignore)`` per episode; :meth:`summary` gives the class IoUs, mIoU over the
    fold's ``classes`` and FB-IoU.
    """

    classes: tuple[int, ...]
    intersection: dict[int, int] = field(default_factory=dict)
    union: dict[int, int] = field(default_factory=dict)
    episodes: dict[int, int] = field(default_factory=dict)
    fg: list[int] = field(default_factory=lambda: [0, 0])  # [intersection, union]
    bg: list[int] = field(default_factory=lambda: [0, 0])

    def add(self, class_id: int, prediction: np.ndarray, truth: np.ndarray, ignore: np.ndarray | None = None
            ) -> tuple[int, int]:
        """Count one episode: bool (H, W) prediction and truth; ``ignore`` pixels count for nothing. Returns the
        episode's (intersection, union)."""
        if prediction.shape != truth.shape:
            raise InputError(f"prediction {prediction.shape} and ground truth {truth.shape} differ in shape")
        valid = np.ones(truth.shape, bool) if ignore is None else ~ignore
        pred, gt = prediction & valid, truth & valid
        inter, union = int(np.count_nonzero(pred & gt)), int(np.count_nonzero(pred | gt))
        pred_bg, gt_bg = ~prediction & valid, ~truth & valid
        self.intersection[class_id] = self.intersection.get(class_id, 0) + inter
        self.union[class_id] = self.union.get(class_id, 0) + union
        self.episodes[class_id] = self.episodes.get(class_id, 0) + 1
        self.fg[0] += inter
        self.fg[1] += union
        self.bg[0] += int(np.count_nonzero(pred_bg & gt_bg))
        self.bg[1] += int(np.count_nonzero(pred_bg | gt_bg))
        return inter, union

    def class_iou(self, class_id: int) -> float:
        """sum(I) / sum(U) over the class's episodes; 0 for a class never drawn (or never seen)."""
        union = self.union.get(class_id, 0)
        return self.intersection.get(class_id, 0) / union if union else 0.0

    def summary(self) -> dict[str, Any]:
        """``{"miou", "fb_iou", "foreground_iou", "background_iou", "classes": {id: {"iou", "episodes",
        "intersection", "union"}}}``."""
        fg = self.fg[0] / self.fg[1] if self.fg[1] else 0.0
        bg = self.bg[0] / self.bg[1] if self.bg[1] else 0.0
        per_class = {c: {"iou": self.class_iou(c), "episodes": self.episodes.get(c, 0),
                         "intersection": self.intersection.get(c, 0), "union": self.union.get(c, 0)}
                     for c in self.classes}
        miou = float(np.mean([v["iou"] for v in per_class.values()])) if per_class else 0.0
        return {"miou": miou, "fb_iou": (fg + bg) / 2.0, "foreground_iou": fg, "background_iou": bg,
                "classes": per_class}


def reference_set_from_features(targets: Sequence[Any], masks: Sequence[np.ndarray],
                                names: Sequence[str] | None = None) -> ReferenceSet:
    """A :class:`ReferenceSet` from already extracted images (:class:`~dinoseg_core.segmenter.TargetFeatures`) and
    their masks (bool (H, W) at each image's size): step 5 without a second backbone pass.

    Raises:
        InputError: a mask is empty or not of its image's size (named).
    """
    names = list(names or [f"reference[{i}]" for i in range(len(targets))])
    shots = []
    for target, mask, name in zip(targets, masks, names):
        prepared = prepare_mask(mask, target.original_hw, target.input_hw, f"{name} mask")
        patches = mask_to_patches(prepared.to(target.features.device), target.grid)
        shots.append(ReferenceShot(target.features_debiased, patches.flatten(), target.grid))
    if not shots:
        raise InputError("reference set is empty: give at least one reference image with its mask")
    return ReferenceSet(shots=tuple(shots), prototype=compute_prototype(shots))


class FeatureLRU:
    """Extracted images by key, at most ``size`` of them (least recently used dropped), with hit counts."""

    def __init__(self, extract: Callable[[list[np.ndarray], list[str]], list[Any]], size: int):
        if size < 1:
            raise InputError(f"feature cache size {size}: keep at least 1 image")
        self.extract, self.size = extract, size
        self.items: OrderedDict[str, Any] = OrderedDict()
        self.extracted = 0
        self.hits = 0

    def get(self, keys: Sequence[str], load: Callable[[str], LabelledImage]) -> list[tuple[Any, LabelledImage]]:
        missing = [k for k in dict.fromkeys(keys) if k not in self.items]
        self.hits += len(keys) - len(missing)
        if missing:
            if len(missing) == 1:
                samples = [load(missing[0])]
            else:  # reads of object storage overlap
                with ThreadPoolExecutor(max_workers=min(8, len(missing))) as pool:
                    samples = list(pool.map(load, missing))
            features = self.extract([s.image for s in samples], list(missing))
            self.extracted += len(missing)
            for key, feature, sample in zip(missing, features, samples):
                self.items[key] = (feature, sample)
        out = []
        for key in keys:
            self.items.move_to_end(key)
            out.append(self.items[key])
        while len(self.items) > max(self.size, len(set(keys))):
            self.items.popitem(last=False)
        return out


def evaluate_episodes(
    segmenter: Any,
    episodes: Sequence[Episode],
    load: Callable[[str], LabelledImage],
    classes: Sequence[int],
    config: InsidConfig | None = None,
    *,
    cache_size: int = 64,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Run ``episodes`` and accumulate the paper's metrics.

    Each episode: the supports' masks of its class build a reference set from their cached features
    (:func:`reference_set_from_features`), the query is segmented with steps 6-9
    (:meth:`~dinoseg_core.segmenter.InContextSegmenter.segment_features`) and scored against its mask of the class.

    Args:
        segmenter: an :class:`~dinoseg_core.segmenter.InContextSegmenter`.
        load: key -> :class:`LabelledImage` (called once per image while it stays in the cache).
        classes: the fold's class ids (mIoU is their mean).
        config: tau / merge_threshold / crf (default the segmenter's).
        cache_size: images whose features stay in memory (an image is extracted again only once dropped).
        progress: ``progress(done, total)`` after each episode.
    Returns:
        :meth:`IoUAccumulator.summary` plus ``"episodes"`` (each with its IoU), ``"images_extracted"``,
        ``"cache_hits"`` and ``"seconds"``.
    """
    config = config or segmenter.config
    cache = FeatureLRU(lambda images, names: segmenter.extract_targets(images, names), cache_size)
    scores = IoUAccumulator(tuple(classes))
    rows = []
    start = time.perf_counter()
    for done, episode in enumerate(episodes, start=1):
        entries = cache.get([episode.query, *episode.supports], load)
        (query, sample), supports = entries[0], entries[1:]
        refs = reference_set_from_features([f for f, _ in supports], [s.mask(episode.class_id) for _, s in supports],
                                           list(episode.supports))
        result = segmenter.segment_features(refs, query, config)
        inter, union = scores.add(episode.class_id, result.mask, sample.mask(episode.class_id), sample.ignore)
        rows.append({**episode.to_dict(), "intersection": inter, "union": union,
                     "iou": inter / union if union else 0.0})
        if progress is not None:
            progress(done, len(episodes))
    return {**scores.summary(), "episodes": rows, "images_extracted": cache.extracted, "cache_hits": cache.hits,
            "seconds": time.perf_counter() - start}
