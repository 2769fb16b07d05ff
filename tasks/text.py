"""Tasks of open-vocabulary segmentation: label images with classes named in text, train and evaluate the
dinov3.seg head. Thin wrappers over :mod:`dinoseg_core.ovseg`: resolve inputs -> storage -> core -> storage.

What a worker process keeps between tasks lives here, looked up by small picklable keys: the dino.txt towers and
their backbone (loaded once per process, not once per task), trained heads, and embedded class lists. Tasks
receive only specs, URLs and digests, so they run as well on a thread pool as on Dask workers.

``label-text-batch`` is the unit of labelling work: for each image, skip what is up to date (by listing stamp,
then by sha256), segment every class in one pass (one label map; the classes compete for each pixel), and write
one mask per class with its provenance. A bad image fails alone; a transient storage error retries the batch,
and what was already written is skipped on the retry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from dinoseg_core.io import imageio, storage
from dinoseg_core.io.archive import MaskArchive, config_digest, image_key
from dinoseg_core.errors import InputError
from dinoseg_core.ovseg import (
    ClassEmbeddings,
    DinoTxt,
    OvsegConfig,
    SegDataset,
    SegHeadConfig,
    SegModel,
    TextSegmenter,
    TrainConfig,
    concept_names,
    evaluate,
    load_dinotxt,
    train,
    validate_class_names,
)
from dinoseg_core.ovseg.train import loss_curve
from tasks.labelling import PERMANENT
from tasks.retry import STORAGE_RETRIES
from tasks.settings import ImageOutcome

log = logging.getLogger("dinoseg.tasks.text")

DatasetLayout = Literal["folder", "coco-stuff"]

# ----------------------------------------------------------------------------------------------------------------
# Small values tasks pass around
# ----------------------------------------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class TextSettings:
    """Everything a ``label-text-batch`` needs besides the images.

    Attributes:
        model: the text model.
        archive_url: the Zarr mask archive.
        classes: the validated class list, in label order.
        options: :class:`~dinoseg_core.ovseg.OvsegConfig` fields given for this run (the rest keep defaults).
        storage_options: fsspec options for every URL (never logged).
        force: relabel even what is up to date.
        save_similarity: also store each class's probability map (float16, aggregation grid) as ``similarity``.
        input_prefix: the collection's prefix; image keys are relative to it.
        concept_prefix: prepended to every class's archive concept name (e.g. ``"text-"``), to keep text
            classes apart from in-context concepts of the same name in a shared archive.
    """

    model: TextModelSpec
    archive_url: str
    classes: tuple[str, ...]
    options: dict[str, Any] = field(default_factory=dict, hash=False)
    storage_options: dict[str, Any] | None = field(default=None, hash=False)
    force: bool = False
    save_similarity: bool = False
    input_prefix: str | None = None
    concept_prefix: str = ""

    def config(self) -> OvsegConfig:
        return OvsegConfig.from_dict(dict(self.options))

    def concepts(self) -> tuple[str, ...]:
        """The archive concept of each class, in class order (:func:`~dinoseg_core.ovseg.concept_names`)."""
        names = concept_names(self.classes)
        return tuple(self.concept_prefix + names[c] for c in self.classes)


@dataclass(frozen=True)
class PreparedClasses:
    """A class list ready to label: the archive concept of each class and the three values every mask of this
    run records, which decide whether a stored mask is up to date (besides the source's sha256)."""

    names: tuple[str, ...]
    concepts: tuple[str, ...]
    fingerprint: str
    config_digest: str
    reference_set_hash: str
    mode: str
    is_random: bool


@dataclass(frozen=True)
class DatasetSpec:
    """A labelled dataset on storage (:class:`~dinoseg_core.ovseg.SegDataset`).

    ``folder``: ``<root>/images/<stem>.*`` + ``<root>/annotations/<stem>.png`` whose values index ``classes``;
    ``coco-stuff``: ``<root>/images/<split>/*.jpg`` + ``<root>/annotations/<split>/*.png`` with raw ids mapped by
    ``class_table`` (a URL: JSON ``{id: name}`` or ``id name`` lines).
    """

    root: str
    layout: DatasetLayout = "folder"
    classes: tuple[str, ...] | None = None
    class_table: str | None = None
    split: str = "train2017"

    def __post_init__(self) -> None:
        if self.layout not in ("folder", "coco-stuff"):
            raise InputError(f"layout={self.layout!r}: use 'folder' or 'coco-stuff'")
        if self.layout == "folder" and not self.classes:
            raise InputError("the folder layout needs classes: the names of label values 0, 1, 2, ... in order, "
                             "e.g. classes=['grass', 'building', 'road']")
        if self.layout == "coco-stuff" and not self.class_table:
            raise InputError("the coco-stuff layout needs class_table: the URL of a table mapping raw label ids to "
                             "class names (JSON {\"0\": \"person\", ...} or one 'id name' per line)")
        if self.classes is not None:
            object.__setattr__(self, "classes", validate_class_names(self.classes))

    def open(self, storage_options: dict[str, Any] | None = None) -> SegDataset:
        if self.layout == "coco-stuff":
            assert self.class_table is not None
            return SegDataset.coco_stuff(self.root, self.class_table, split=self.split,
                                         storage_options=storage_options)
        assert self.classes is not None
        return SegDataset.from_folder(self.root, list(self.classes), storage_options=storage_options)


# ----------------------------------------------------------------------------------------------------------------
# Per-process cache
# ----------------------------------------------------------------------------------------------------------------

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
                _seg_models[key] = SegModel.load(spec.head, model, storage_options)
            model = _seg_models[key]
    return TextSegmenter(model, config)


def class_embeddings(seg: TextSegmenter, classes: Sequence[str]) -> ClassEmbeddings:
    """The embedded class list (prompt ensemble through the text tower), computed once per process."""
    cfg = seg.config
    key = (seg.dinotxt.fingerprint, tuple(classes), cfg.templates, cfg.background_prompts)
    with _lock:
        if key not in _class_embeddings:
            _class_embeddings[key] = seg.embed_classes(list(classes))
        return _class_embeddings[key]


def clear() -> None:
    """Forget every cached model and class list (tests; or to free memory in a long-lived worker)."""
    with _lock:
        _dinotxts.clear()
        _seg_models.clear()
        _class_embeddings.clear()


# ----------------------------------------------------------------------------------------------------------------
# Labelling
# ----------------------------------------------------------------------------------------------------------------


@task(name="prepare-classes", cache_policy=NO_CACHE, **STORAGE_RETRIES)
def prepare_classes(settings: TextSettings) -> PreparedClasses:
    """Load the text model (once per process) and embed the class list; a class whose prompts do not fit the
    text context, or a class clashing with a background prompt, fails here, before any image is read."""
    seg = segmenter(settings.model, settings.config(), settings.storage_options)
    classes = class_embeddings(seg, settings.classes)
    provenance = seg.provenance(classes)
    return PreparedClasses(
        names=classes.class_names,
        concepts=settings.concepts(),
        fingerprint=provenance["backbone_fingerprint"],
        config_digest=config_digest(provenance["config"]),
        reference_set_hash=provenance["reference_set_hash"],
        mode=seg.mode,
        is_random=seg.dinotxt.is_random,
    )


def _outdated(archive: MaskArchive, key: str, prepared: PreparedClasses, *, sha: str | None = None,
              stamp: str | None = None, force: bool = False) -> list[str]:
    """Concepts whose mask must be (re)written. Before the image is read, its listing stamp stands in for the
    sha256 (an unchanged stamp means unchanged bytes); once read, the sha256 decides."""
    if force:
        return list(prepared.concepts)
    todo = []
    for concept in prepared.concepts:
        record = archive.mask_record(concept, key)
        if sha is not None:
            reason = archive.labelling_reason(concept, key, sha, prepared.fingerprint, prepared.config_digest,
                                              prepared.reference_set_hash, record=record)
            if reason is not None:
                todo.append(concept)
            continue
        if record is None or record.get("source_stamp") != stamp or (
                record.get("backbone_fingerprint"), record.get("config_digest"), record.get("reference_set_hash")
        ) != (prepared.fingerprint, prepared.config_digest, prepared.reference_set_hash):
            todo.append(concept)
    return todo


@task(name="label-text-batch", cache_policy=NO_CACHE, task_run_name="label-text-{items[0][0]}+", **STORAGE_RETRIES)
def label_text_batch(items: list[tuple[str, str | None]], prepared: PreparedClasses, settings: TextSettings
                     ) -> list[ImageOutcome]:
    """Segment ``items`` ((url, stamp) pairs) for every class and write one mask per class; returns one outcome
    per image. Images go through the model one at a time (each is windowed inside), so memory does not grow
    with the batch."""
    so = settings.storage_options
    archive = MaskArchive.open(settings.archive_url, so, mode="a")
    outcomes: dict[str, ImageOutcome] = {}
    seg: TextSegmenter | None = None
    classes: ClassEmbeddings | None = None
    base: dict[str, Any] = {}
    for url, stamp in items:
        started = time.perf_counter()
        key = image_key(url, settings.input_prefix)
        try:
            if stamp is not None and not _outdated(archive, key, prepared, stamp=stamp, force=settings.force):
                outcomes[url] = ImageOutcome(url, "skipped", seconds=time.perf_counter() - started)
                continue
            data = storage.read_bytes(url, so)
            sha = hashlib.sha256(data).hexdigest()
            todo = _outdated(archive, key, prepared, sha=sha, force=settings.force)
            if not todo:
                outcomes[url] = ImageOutcome(url, "skipped", seconds=time.perf_counter() - started)
                continue
            stamp = stamp or storage.stat_stamp(url, so)
            image = imageio.decode_image(data, url)
            read_s = time.perf_counter() - started
            if seg is None:  # the model is loaded only when something needs labelling
                seg = segmenter(settings.model, settings.config(), so)
                classes = class_embeddings(seg, prepared.names)
                base = {**seg.provenance(classes), "backbone_random": seg.dinotxt.is_random,
                        "head": settings.model.head}
            assert classes is not None
            result = seg.segment(image, classes, name=url)
            timings = {"read": round(read_s, 4), **{k: round(v, 4) for k, v in result.timings.items()}}
            written = []
            for index, (name, concept) in enumerate(zip(prepared.names, prepared.concepts)):
                if concept not in todo:
                    continue
                archive.write_mask(
                    concept, key, result.labels == index + 1,
                    attrs={**base, "source_uri": url, "source_sha256": sha, "source_stamp": stamp, "class": name,
                           "label_value": index + 1, "timings": timings},
                    similarity=result.probabilities[index] if settings.save_similarity else None,
                )
                written.append(concept)
            outcomes[url] = ImageOutcome(url, "labelled", tuple(written), time.perf_counter() - started)
        except PERMANENT as exc:
            outcomes[url] = ImageOutcome(url, "failed", seconds=time.perf_counter() - started, reason=str(exc))
    return [outcomes[url] for url, _ in items]


# ----------------------------------------------------------------------------------------------------------------
# Training and evaluation
# ----------------------------------------------------------------------------------------------------------------


@task(name="train-head", cache_policy=NO_CACHE, **STORAGE_RETRIES)
def train_head(data: DatasetSpec, model: TextModelSpec, checkpoint: str, steps: int, train_options: dict[str, Any],
               head_options: dict[str, Any], resume: bool = True, log_every: int = 50,
               storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train the dinov3.seg head (backbone, vision head and text tower frozen) for ``steps`` steps in total,
    checkpointing to ``checkpoint`` (safetensors); with ``resume`` an existing checkpoint there is continued. A
    retry after a transient storage error resumes from the last checkpoint.

    Returns a small summary: steps, where it resumed, the loss curve (mean loss every ``log_every`` steps), the
    checkpoint URL and timings.
    """
    logger = get_run_logger()
    so = storage_options
    config = TrainConfig.from_dict(dict(train_options))
    dinotxt = text_model(model, so)
    dataset = data.open(so)
    head_config = SegHeadConfig.from_dict({**head_options, "feature_dim": dinotxt.embed_dim})
    with torch.random.fork_rng(devices=[]):  # a seeded head, the caller's RNG left alone
        torch.manual_seed(config.seed)
        seg_model = SegModel(dinotxt, config=head_config)
    if dinotxt.is_random:
        logger.warning("RANDOM WEIGHTS: dino.txt %r is random; this run checks the training loop, not accuracy.",
                       model.dinotxt)
    logger.info("training the dinov3.seg head on %s (%d images, %d classes) for %d steps -> %s", data.root,
                len(dataset), len(dataset.class_names), steps, storage.display_url(checkpoint))
    progress = create_progress_artifact(0.0, description=f"train_ovss: {steps} steps")
    window: list[float] = []

    def on_step(step: int, loss: float) -> None:
        window.append(loss)
        done = step + 1
        if done % log_every == 0 or done == steps:
            update_progress_artifact(progress, 100.0 * done / steps)
            logger.info("step %d/%d: mean loss %.4f over the last %d step(s)", done, steps,
                        sum(window) / len(window), len(window))
            window.clear()

    result = train(seg_model, dataset, steps, config=config, checkpoint=checkpoint, storage_options=so,
                   resume=resume, on_step=on_step)
    curve = loss_curve(result.losses, log_every)
    new_steps = result.step - result.resumed_from
    return {
        "checkpoint": checkpoint,
        "steps": result.step,
        "resumed_from": result.resumed_from,
        "classes": list(dataset.class_names),
        "images": len(dataset),
        "loss_curve": curve,
        "first_loss": curve[0]["loss"] if curve else None,
        "final_loss": curve[-1]["loss"] if curve else None,
        "seconds": round(result.seconds, 3),
        "seconds_per_step": round(result.seconds / new_steps, 4) if new_steps else 0.0,
        "random_weights": dinotxt.is_random,
    }


@task(name="evaluate-ovss", cache_policy=NO_CACHE, **STORAGE_RETRIES)
def evaluate_model(data: DatasetSpec, model: TextModelSpec, options: dict[str, Any], limit: int | None = None,
                   storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """mIoU of the zero-shot model (``model.head`` None) or a trained head on a labelled dataset: per-class IoU,
    mIoU and pixel accuracy (fractions; IoU None for a class absent from ground truth and predictions)."""
    logger = get_run_logger()
    so = storage_options
    seg = segmenter(model, OvsegConfig.from_dict(dict(options)), so)
    dataset = data.open(so)
    count = len(dataset) if limit is None else min(limit, len(dataset))
    if seg.dinotxt.is_random:
        logger.warning("RANDOM WEIGHTS: dino.txt %r is random; the mIoU says nothing about the method.", model.dinotxt)
    progress = create_progress_artifact(0.0, description=f"evaluate_ovss: {count} images")
    every = max(1, count // 20)

    def on_image(index: int, name: str) -> None:
        if (index + 1) % every == 0 or index + 1 == count:
            update_progress_artifact(progress, 100.0 * (index + 1) / count)

    result = evaluate(seg, dataset, limit=limit, on_image=on_image)
    logger.info("mIoU %.1f %% over %d image(s), %d classes (%s)", 100 * result.miou, result.images,
                len(result.class_names), seg.mode)
    summary = result.to_dict()
    for name in ("miou", "pixel_accuracy"):
        if summary[name] != summary[name]:  # NaN (no labelled pixel): JSON has no NaN
            summary[name] = None
    return {**summary, "class_names": list(result.class_names), "mode": seg.mode,
            "random_weights": seg.dinotxt.is_random, "markdown": result.markdown()}
