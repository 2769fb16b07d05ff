"""The open-vocabulary labeller: classes named in text (zero-shot dino.txt, or a trained dinov3.seg head).

What a worker process keeps between tasks lives here, looked up by small picklable keys: the dino.txt towers and
their backbone (loaded once per process, not once per task), trained heads, and embedded class lists.
``prepare-classes`` embeds the class list once and fixes what every mask of the run depends on;
:class:`ClassSet` is the labeller the engine (:mod:`tasks.labelling`) drives: each image goes through the model
once (one label map: the classes compete for each pixel) and one mask per class is written; a GeoTIFF/COG scene
goes window by window (:func:`dinoseg_core.ovseg.scene.segment_scene`), its masks streamed into the archive with
the scene's CRS and transform. Training and evaluation of the head are in :mod:`tasks.training`.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from dinoseg_core.config import SceneConfig
from dinoseg_core.io.archive import MaskArchive
from dinoseg_core.io.heads import load_seg_model
from dinoseg_core.ovseg import (
    ClassEmbeddings,
    DinoTxt,
    OvsegConfig,
    SegModel,
    TextSegmenter,
    concept_names,
    load_dinotxt,
)
from dinoseg_core.ovseg.config import resolve_scene_config
from tasks import runtime
from tasks.freshness import MethodStamp
from tasks.labelling import PERMANENT, LabelJob, Pending
from tasks.options import RunOptions, resolved_storage_options
from tasks.retry import STORAGE_RETRIES
from tasks.sources import ItemKind


@dataclass(frozen=True)
class TextModelSpec:
    """Which text model, where: the dino.txt weights, CLIP's vocabulary, the backbone, an optional trained
    dinov3.seg head (None: zero-shot), device and dtype (None: automatic). See
    :func:`~dinoseg_core.ovseg.load_dinotxt`."""

    dinotxt: str
    bpe: str | None = None
    backbone: str | None = None
    head: str | None = None
    device: str | None = None
    dtype: str | None = None


# ---------------------------------------------------------------------------------------------------- per process

_lock = threading.RLock()
_dinotxts: dict[tuple, DinoTxt] = {}
_seg_models: dict[tuple, SegModel] = {}
_class_embeddings: dict[tuple, ClassEmbeddings] = {}


def _options_key(storage_options: dict[str, Any] | None) -> str:
    return hashlib.sha256(json.dumps(storage_options or {}, sort_keys=True, default=str).encode()).hexdigest()


def text_model(spec: TextModelSpec, storage_options: dict[str, Any] | None = None) -> DinoTxt:
    """The process's dino.txt (towers + backbone + tokenizer) for ``spec``, loaded on first use."""
    key = (spec.dinotxt, spec.bpe, spec.backbone, spec.device, spec.dtype, _options_key(storage_options))
    with _lock:
        if key not in _dinotxts:
            _dinotxts[key] = load_dinotxt(spec.dinotxt, backbone=spec.backbone, bpe=spec.bpe, device=spec.device,
                                          dtype=spec.dtype, storage_options=storage_options)
        return _dinotxts[key]


def segmenter(spec: TextModelSpec, config: OvsegConfig, storage_options: dict[str, Any] | None = None
              ) -> TextSegmenter:
    """A segmenter over the process's model: zero-shot, or the head at ``spec.head`` (loaded once)."""
    model: DinoTxt | SegModel = text_model(spec, storage_options)
    if spec.head is not None:
        key = (spec, _options_key(storage_options))
        with _lock:
            if key not in _seg_models:
                _seg_models[key] = load_seg_model(spec.head, model, storage_options)
            model = _seg_models[key]
    return TextSegmenter(model, config)


def class_embeddings(seg: TextSegmenter, classes: Sequence[str],
                     synonyms: tuple[tuple[str, tuple[str, ...]], ...] = ()) -> ClassEmbeddings:
    """The embedded class list (prompt ensemble through the text tower), computed once per process.
    ``synonyms``: (class name, its prompts) pairs."""
    cfg = seg.config
    key = (seg.dinotxt.fingerprint, tuple(classes), tuple(synonyms), cfg.templates, cfg.background_prompts)
    with _lock:
        if key not in _class_embeddings:
            _class_embeddings[key] = seg.embed_classes(list(classes), dict(synonyms))
        return _class_embeddings[key]


def clear() -> None:
    """Forget every cached model and class list (tests; or to free memory in a long-lived worker)."""
    with _lock:
        _dinotxts.clear()
        _seg_models.clear()
        _class_embeddings.clear()


# ------------------------------------------------------------------------------------------------------ labelling


@dataclass(frozen=True)
class ClassSet:
    """The open-vocabulary labeller: a class list embedded once, one archive concept per class.

    Attributes:
        model: the text model; ``options``: :class:`~dinoseg_core.ovseg.OvsegConfig` fields of this run.
        names: the class names, in label order (label value i + 1); ``concepts``: the archive concept of each.
        provenance: what every mask of the run depends on and records (from the segmenter and the classes).
        mode: ``zero-shot`` or the trained head's mode.
        scene: windowing and global view of scene items (GeoTIFF/COG), defaults resolved for the text path
            (:func:`~dinoseg_core.ovseg.scene.resolve_scene_config`); ``bands``: their 1-based bands (None: the
            first 3).
    """

    model: TextModelSpec
    options: dict[str, Any] = field(hash=False)
    names: tuple[str, ...]
    concepts: tuple[str, ...]
    provenance: dict[str, Any] = field(hash=False)
    mode: str
    synonyms: tuple[tuple[str, tuple[str, ...]], ...] = ()
    scene: SceneConfig = field(default_factory=SceneConfig)
    bands: tuple[int, ...] | None = None
    scenes = True

    @property
    def is_random(self) -> bool:
        return bool(self.provenance["backbone_random"])

    def config(self) -> OvsegConfig:
        return OvsegConfig.from_dict(dict(self.options))

    def methods(self, kind: ItemKind) -> dict[str, MethodStamp]:
        """A scene mask also depends on the windowing and the bands: they are part of its config."""
        p = self.provenance
        shared = {k: v for k, v in p.items() if k not in
                  ("backbone", "backbone_fingerprint", "backbone_random", "config", "reference_set_hash")}
        config = p["config"] if kind == "tile" else {
            **p["config"], "scene": self.scene.to_dict(), "bands": list(self.bands) if self.bands else None}
        return {concept: MethodStamp(p["backbone"], p["backbone_fingerprint"], p["backbone_random"], config,
                                     p["reference_set_hash"], {**shared, "class": name, "label_value": index + 1})
                for index, (name, concept) in enumerate(zip(self.names, self.concepts))}

    @property
    def input_side(self) -> int | None:
        """The side the segmenter resizes a tile's shorter side to (``short_side``; None: kept): the engine decodes
        a tile much larger than that reduced (:func:`~dinoseg_core.io.imageio.decode_tile`)."""
        return self.config().short_side

    def label_tiles(self, tiles: list[Pending], archive: MaskArchive, job: LabelJob
                    ) -> Iterator[tuple[Pending, tuple[str, ...] | Exception]]:
        """Images go through the model one at a time (each is windowed inside), so memory does not grow with the
        batch; the model is loaded only when something needs labelling. A tile decoded reduced gets masks of its
        file's size (the label map resized, nearest, so the classes still never overlap)."""
        if not tiles:
            return
        seg = segmenter(self.model, self.config(), resolved_storage_options(job.run))
        classes = class_embeddings(seg, self.names, self.synonyms)
        methods = self.methods("tile")
        for tile in tiles:
            try:
                with runtime.backbone_turn(seg.dinotxt.backbone.device, job.run.concurrency_limit):
                    result = seg.segment(tile.image, classes, name=tile.url)
            except PERMANENT as exc:
                yield tile, exc
                continue
            timings = {"read": round(tile.read_seconds, 4), **{k: round(v, 4) for k, v in result.timings.items()}}
            labels = _resize_labels(result.labels, tile.source_hw)
            for index, concept in enumerate(self.concepts):
                if concept in tile.todo:
                    archive.write_mask(
                        concept, tile.key, labels == index + 1,
                        attrs={**tile.source_attrs(), **methods[concept].attrs(), "timings": timings},
                        similarity=result.probabilities[index] if job.run.save_similarity else None,
                    )
            yield tile, tile.todo

    def label_scene(self, scene: Pending, archive: MaskArchive, job: LabelJob) -> tuple[str, ...]:
        """The out-of-date classes of one scene, window by window (one pass: the classes compete for each pixel);
        each class's mask streams chunk by chunk into a new archive version carrying the scene's CRS and
        transform, published atomically once the scene is done. Memory is bounded by the window and the scene's
        width (one chunk row per class), not its area."""
        from dinoseg_core.geo import geo_attrs
        from dinoseg_core.io.maskwriter import ZarrMaskWriter
        from dinoseg_core.io.raster import open_raster, raster_reader
        from dinoseg_core.ovseg.scene import segment_scene

        so = resolved_storage_options(job.run)
        seg = segmenter(self.model, self.config(), so)
        classes = class_embeddings(seg, self.names, self.synonyms)
        methods = self.methods("scene")
        source = open_raster(scene.url, self.bands, so)
        todo = [(index + 1, name, concept) for index, (name, concept) in enumerate(zip(self.names, self.concepts))
                if concept in scene.todo]

        def fill(groups: list[Any]) -> list[dict[str, Any]]:
            writers = [ZarrMaskWriter.create(group, source, attributes={"long_name": f"{name} mask"})
                       for group, (_, name, _) in zip(groups, todo)]

            def write(row_off: int, col_off: int, labels: Any) -> None:
                for writer, (value, _, _) in zip(writers, todo):
                    writer(row_off, col_off, labels == value)

            with raster_reader(source) as reader, runtime.backbone_turn(seg.dinotxt.backbone.device,
                                                                         job.run.concurrency_limit):
                result = segment_scene(seg, classes, reader.read, source.shape, write, name=source.display_url,
                                       config=self.scene)
            for writer in writers:
                writer.close()
            extra = {"scene_windows": result.windows, "scene_timings": {k: round(v, 4) for k, v in
                                                                         result.timings.items()},
                     "scene_window_input": list(result.window_input),
                     **(geo_attrs(source) if source.georeferenced else {})}
            return [{**extra, "scene_foreground_pixels": result.class_pixels[name]} for _, name, _ in todo]

        attrs = {concept: {**scene.source_attrs(), **methods[concept].attrs(), "raster": source.to_dict()}
                 for _, _, concept in todo}
        write_streamed_masks(archive, [c for _, _, c in todo], scene.key, attrs, fill)
        return tuple(c for _, _, c in todo)


def _resize_labels(labels: np.ndarray, size_hw: tuple[int, int] | None) -> np.ndarray:
    """A label map (H, W) resized to ``size_hw`` by nearest neighbour (pixel centres), or itself."""
    if size_hw is None or tuple(size_hw) == labels.shape:
        return labels
    (h, w), (out_h, out_w) = labels.shape, size_hw
    rows = np.minimum(((np.arange(out_h) + 0.5) * h / out_h).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(out_w) + 0.5) * w / out_w).astype(np.int64), w - 1)
    return labels[rows[:, None], cols[None, :]]


def write_streamed_masks(archive: MaskArchive, concepts: Sequence[str], key: str, attrs: dict[str, dict[str, Any]],
                         fill: Callable[[list[Any]], list[dict[str, Any]]]) -> None:
    """Several streamed masks of one item written in one pass: ``fill(groups)`` receives a new, writable version
    group per concept (in order) and returns each concept's extra provenance; every mask is then published
    atomically (:meth:`MaskArchive.write_streamed_mask`, nested once per concept). If ``fill`` fails, nothing is
    published: the unpublished versions are left for ``dinoseg vacuum``."""
    groups: list[Any] = []
    extras: list[dict[str, Any]] = []

    def level(index: int) -> None:
        if index == len(concepts):
            extras.extend(fill(list(groups)))
            return

        def fill_one(group: Any) -> dict[str, Any]:
            groups.append(group)
            level(index + 1)
            return extras[index]

        archive.write_streamed_mask(concepts[index], key, attrs[concepts[index]], fill_one)

    level(0)


@task(name="prepare-classes", cache_policy=NO_CACHE, **STORAGE_RETRIES)
def prepare_classes(model: TextModelSpec, names: tuple[str, ...], options: dict[str, Any],
                    concept_prefix: str = "", storage_options: dict[str, Any] | None = None,
                    synonyms: tuple[tuple[str, tuple[str, ...]], ...] = (), scene: SceneConfig | None = None,
                    bands: tuple[int, ...] | None = None, run: RunOptions | None = None) -> ClassSet:
    """Load the text model (once per process) and embed the class list (``synonyms``: (class, prompts) pairs);
    a class whose prompts do not fit the text context, a class clashing with a background prompt, or a scene
    overlap not below the scene window, fails here, before any image is read. ``scene``, ``bands``: how
    GeoTIFF/COG scenes are windowed and read. ``run``: when given, its storage options (secret block included,
    resolved here, never passed as a parameter) replace ``storage_options``."""
    if run is not None:
        storage_options = resolved_storage_options(run)
    config = OvsegConfig.from_dict(dict(options))
    scene = resolve_scene_config(scene, config)
    seg = segmenter(model, config, storage_options)
    synonyms = tuple((n, tuple(p)) for n, p in synonyms)
    classes = class_embeddings(seg, names, synonyms)
    archive_names = concept_names(classes.class_names)
    provenance = {**seg.provenance(classes), "backbone_random": seg.dinotxt.is_random, "head": model.head}
    return ClassSet(model=model, options=dict(options), names=tuple(classes.class_names),
                    concepts=tuple(concept_prefix + archive_names[c] for c in classes.class_names),
                    provenance=provenance, mode=seg.mode, synonyms=synonyms, scene=scene,
                    bands=tuple(bands) if bands else None)

