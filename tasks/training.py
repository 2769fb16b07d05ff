"""Tasks that train and evaluate the dinov3.seg head on a labelled dataset (the models come from the per-process
cache of :mod:`tasks.text`). Thin wrappers over :mod:`dinoseg_core.ovseg`: resolve inputs -> storage -> core."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from prefect import get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE

from dinoseg_core.errors import InputError
from dinoseg_core.io import storage
from dinoseg_core.io.heads import HeadCheckpoint
from dinoseg_core.ovseg import (
    OvsegConfig,
    SegDataset,
    SegHeadConfig,
    SegModel,
    TrainConfig,
    evaluate,
    train,
    validate_class_names,
)
from dinoseg_core.ovseg.train import loss_curve
from tasks.retry import STORAGE_RETRIES
from tasks.text import TextModelSpec, segmenter, text_model

DatasetLayout = Literal["folder", "coco-stuff"]


@dataclass(frozen=True)
class DatasetSpec:
    """A labelled dataset on storage (:class:`~dinoseg_core.ovseg.SegDataset`).

    ``folder``: ``<root>/images/<stem>.*`` + ``<root>/annotations/<stem>.png`` whose values index ``classes``, or
    raw ids mapped by ``class_table``; ``coco-stuff``: ``<root>/images/<split>/*.jpg`` +
    ``<root>/annotations/<split>/*.png`` with raw ids mapped by ``class_table`` (a URL: JSON ``{id: name}`` or
    ``id name`` lines).
    """

    root: str
    layout: DatasetLayout = "folder"
    classes: tuple[str, ...] | None = None
    class_table: str | None = None
    split: str = "train2017"

    def __post_init__(self) -> None:
        if self.layout not in ("folder", "coco-stuff"):
            raise InputError(f"layout={self.layout!r}: use 'folder' or 'coco-stuff'")
        if self.layout == "folder" and not self.classes and not self.class_table:
            raise InputError("the folder layout needs classes: the names of label values 0, 1, 2, ... in order, "
                             "e.g. classes=['grass', 'building', 'road']; or class_table, the URL of a table "
                             "mapping raw label ids to class names")
        if self.layout == "folder" and self.classes and self.class_table:
            raise InputError("the folder layout takes classes or class_table, not both: classes name label values "
                             "0, 1, ... in order, a class table maps raw ids to names")
        if self.layout == "coco-stuff" and not self.class_table:
            raise InputError("the coco-stuff layout needs class_table: the URL of a table mapping raw label ids to "
                             "class names (JSON {\"0\": \"person\", ...} or one 'id name' per line)")
        if self.classes is not None:
            object.__setattr__(self, "classes", validate_class_names(self.classes))

    def settings(self) -> dict[str, Any]:
        """What a checkpoint records of the dataset (compared when a run resumes)."""
        out: dict[str, Any] = {"root": storage.display_url(self.root), "layout": self.layout}
        if self.class_table is not None:
            out["class_table"] = storage.display_url(self.class_table)
        if self.layout == "coco-stuff":
            out["split"] = self.split
        return out

    def open(self, storage_options: dict[str, Any] | None = None) -> SegDataset:
        if self.layout == "coco-stuff":
            assert self.class_table is not None
            return SegDataset.coco_stuff(self.root, self.class_table, split=self.split,
                                         storage_options=storage_options)
        if self.class_table is not None:
            return SegDataset.from_folder(self.root, class_table=self.class_table, storage_options=storage_options)
        assert self.classes is not None
        return SegDataset.from_folder(self.root, list(self.classes), storage_options=storage_options)


@task(name="train-head", cache_policy=NO_CACHE, **STORAGE_RETRIES)
def train_head(data: DatasetSpec, model: TextModelSpec, checkpoint: str, steps: int, train_options: dict[str, Any],
               head_options: dict[str, Any], resume: bool = True, log_every: int = 50,
               storage_options: dict[str, Any] | None = None, allow_changes: bool = False) -> dict[str, Any]:
    """Train the dinov3.seg head (backbone, vision head and text tower frozen) for ``steps`` steps in total,
    checkpointing to ``checkpoint`` (safetensors); with ``resume`` an existing checkpoint there is continued,
    refused if its settings (training config, classes, dataset) differ unless ``allow_changes``. A retry after a
    transient storage error resumes from the last checkpoint.

    Returns a small summary: steps, where it resumed, the loss curve (mean loss every ``log_every`` steps), the
    checkpoint URL and timings.
    """
    logger = get_run_logger()
    so = storage_options
    config = TrainConfig.from_dict(dict(train_options))
    dataset = data.open(so)
    dataset.check_labels()  # every annotation's ids, before the model loads and step 1 runs
    dinotxt = text_model(model, so)
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

    result = train(seg_model, dataset, steps, config=config, checkpoint=HeadCheckpoint(checkpoint, so),
                   resume=resume, on_step=on_step, settings={"dataset": data.settings()},
                   allow_changes=allow_changes)
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
