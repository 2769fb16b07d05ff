"""Training the dinov3.seg head: a plain loop, resumable from safetensors checkpoints.

:func:`train` optimises only the head of a :class:`~dinoseg_core.ovseg.model.SegModel` (backbone, vision head
and text tower frozen) with per-pixel cross-entropy over all the dataset's classes, AdamW, and a constant or
cosine learning rate. Each step draws its images, crops and flips from a generator seeded with
``(config.seed, step)``, so a run resumed from a checkpoint continues exactly as an uninterrupted run would
(same batches, same optimiser state, same learning rate) as long as ``steps`` is unchanged (the cosine
schedule spans ``steps``): the test interrupts a run and checks equal losses.

Progress is reported through ``on_step(step, loss)``; a Prefect task can turn that into logs and artifacts.
Checkpoints go to an injected :class:`CheckpointStore` (at a URL: :class:`dinoseg_core.io.heads.HeadCheckpoint`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from dinoseg_core import stop
from dinoseg_core.errors import CheckpointError, InputError
from dinoseg_core.ovseg.config import TrainConfig
from dinoseg_core.ovseg.model import SegModel, checkpoint_head_config, checkpoint_state, head_from_checkpoint
from dinoseg_core.ovseg.windows import resize_short_side

__all__ = ["CheckpointStore", "TrainResult", "loss_curve", "sample_batch", "train"]


class CheckpointStore(Protocol):
    """Where :func:`train` keeps its checkpoint (e.g. :class:`dinoseg_core.io.heads.HeadCheckpoint` at a URL).

    Attributes:
        name: the checkpoint in messages and in :attr:`TrainResult.checkpoint`.
    """

    name: str

    def read(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """(tensors, metadata) saved so far (:func:`~dinoseg_core.ovseg.model.checkpoint_state`), or None."""

    def write(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Replace the saved checkpoint."""


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` did.

    Attributes:
        losses: the loss of every step from step 0 (a resumed run includes the steps before the resume).
        step: steps completed (== the ``steps`` asked for).
        resumed_from: step the run resumed at (0 for a fresh run).
        checkpoint: the name of the checkpoint store that holds the run's last checkpoint, or None.
        seconds: wall time of this call.
    """

    losses: list[float]
    step: int
    resumed_from: int
    checkpoint: str | None
    seconds: float


def sample_batch(dataset: Any, step: int, config: TrainConfig, patch_size: int, mean, std
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The training batch of ``step``: images resized to ``config.short_side``, randomly cropped to
    ``config.crop`` (padded with ignored pixels when smaller) and flipped, as a function of (seed, step).

    Returns:
        (pixels float32 (B, 3, crop, crop) normalised with ``mean``/``std``, labels int64 (B, crop, crop)).
    """
    rng = np.random.default_rng([config.seed, step])
    crop = config.crop
    pixels, labels = [], []
    mean_t = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    for index in rng.integers(0, len(dataset), size=config.batch_size):
        image, label = dataset[int(index)]
        size = resize_short_side(*image.shape[:2], config.short_side, patch_size)
        img = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)).permute(2, 0, 1)[None]
        img = F.interpolate(img, size=size, mode="bilinear", align_corners=False, antialias=True)[0].clamp(0, 1)
        lab = torch.from_numpy(np.asarray(label, dtype=np.int64))[None, None].float()
        lab = F.interpolate(lab, size=size, mode="nearest")[0, 0].long()
        img = (img - mean_t) / std_t
        out_img = torch.zeros(3, crop, crop)
        out_lab = torch.full((crop, crop), config.ignore_index, dtype=torch.long)
        top = int(rng.integers(0, max(size[0] - crop, 0) + 1))
        left = int(rng.integers(0, max(size[1] - crop, 0) + 1))
        h, w = min(crop, size[0]), min(crop, size[1])
        out_img[:, :h, :w] = img[:, top:top + h, left:left + w]
        out_lab[:h, :w] = lab[top:top + h, left:left + w]
        if config.hflip and rng.random() < 0.5:
            out_img, out_lab = out_img.flip(-1), out_lab.flip(-1)
        pixels.append(out_img)
        labels.append(out_lab)
    return torch.stack(pixels), torch.stack(labels)


def loss_curve(losses: list[float], every: int) -> list[dict[str, float]]:
    """The loss curve, one point per ``every`` steps: ``{"step": last step of the window (1-based), "loss": mean,
    "min", "max"}`` over the window (the last window may be shorter)."""
    if every < 1:
        raise InputError(f"every={every}: must be at least 1")
    curve = []
    for start in range(0, len(losses), every):
        window = losses[start:start + every]
        curve.append({"step": start + len(window), "loss": round(float(np.mean(window)), 6),
                      "min": round(float(min(window)), 6), "max": round(float(max(window)), 6)})
    return curve


#: TrainConfig fields that change when checkpoints are written, not what is learnt: not compared on resume.
_NOT_COMPARED = ("checkpoint_every",)


def _run_settings(class_names: list[str], config: TrainConfig, settings: dict[str, Any] | None) -> dict[str, Any]:
    """What a resumed run must share with the checkpoint (stored in its metadata)."""
    return {"class_names": class_names, "train_config": config.to_dict(), **(settings or {})}


def _differences(old: Any, new: Any, prefix: str) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            out += _differences(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [f"{prefix.rstrip('.')}: {old!r} in the checkpoint, {new!r} now"]


def changed_settings(meta: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The settings of ``now`` that differ from a checkpoint's ``meta``, as ``"name: old in the checkpoint, new
    now"``; a setting the checkpoint does not record (an older checkpoint) is not compared."""
    out = []
    for key, value in now.items():
        if key not in meta:
            continue
        old = meta[key]
        if key == "train_config":
            old = {k: v for k, v in old.items() if k not in _NOT_COMPARED}
            value = {k: v for k, v in value.items() if k not in _NOT_COMPARED}
            out += _differences(old, value, "")
        elif key == "class_names":
            out += [] if old == value else [f"classes: {old!r} in the checkpoint, {value!r} now"]
        else:
            out += _differences(old, value, f"{key}.")
    return out


def _lr(config: TrainConfig, step: int, steps: int) -> float:
    if config.schedule == "constant" or steps <= 1:
        return config.lr
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * step / steps))


def train(
    model: SegModel,
    dataset: Any,
    steps: int,
    *,
    config: TrainConfig | None = None,
    checkpoint: CheckpointStore | None = None,
    resume: bool = True,
    on_step: Callable[[int, float], None] | None = None,
    settings: dict[str, Any] | None = None,
    allow_changes: bool = False,
) -> TrainResult:
    """Train ``model.head`` for ``steps`` optimiser steps in total.

    Args:
        model: the model; its head is updated in place.
        dataset: ``len()`` and ``[i] -> (image float32 (H, W, 3), label int64 (H, W))`` with a ``class_names``
            attribute (e.g. :class:`~dinoseg_core.ovseg.data.SegDataset`).
        steps: total steps; a resumed run does ``steps - checkpoint step`` more.
        config: :class:`TrainConfig`.
        checkpoint: where the checkpoint is written every ``config.checkpoint_every`` steps and at the end; with
            ``resume``, one saved there before is loaded first.
        on_step: called with (step, loss) after every step (after that step's checkpoint, if any).
        settings: more of what the run depends on, stored in the checkpoint and compared on resume like the
            config (JSON values, e.g. ``{"dataset": {"root": ..., "layout": ...}}``).
        allow_changes: resume even where the config (all but ``checkpoint_every``), the class list or
            ``settings`` differ from the checkpoint's; the run is then no longer the uninterrupted one.

    Raises:
        CheckpointError: the checkpoint to resume from was made for another head architecture or dino.txt; or
            (without ``allow_changes``) with other training settings, each named with both values.
        InputError: ``steps`` < 0 or a crop that is not a multiple of the patch size.
    """
    config = config or TrainConfig()
    started = time.perf_counter()
    if not isinstance(steps, int) or steps < 0:
        raise InputError(f"steps={steps!r}: must be an integer >= 0")
    patch = model.dinotxt.patch_size
    if config.crop % patch:
        raise InputError(f"crop={config.crop} is not a multiple of the patch size {patch}")
    head = model.head
    class_names = list(dataset.class_names)
    classes = model.dinotxt.embed_classes(class_names, config.templates)
    optimizer = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    losses: list[float] = []
    start = 0
    saved = checkpoint.read() if checkpoint is not None and resume else None
    if saved is not None:
        tensors, meta = saved
        shown = checkpoint.name
        problems = []
        if meta.get("dinotxt_fingerprint") != model.dinotxt.fingerprint:
            problems.append("another dino.txt")
        saved_head = checkpoint_head_config(meta, shown)
        if saved_head.kind != head.config.kind:
            problems.append(f"a {saved_head.kind!r} head, not this run's {head.config.kind!r} head (--head "
                            f"{saved_head.kind} resumes it)")
        elif saved_head.used() != head.config.used():
            problems.append("another head architecture ("
                            + ", ".join(_differences(saved_head.used(), head.config.used(), "head.")) + ")")
        if problems:
            raise CheckpointError(f"{shown}: cannot resume: the checkpoint was made for {', '.join(problems)}. Use "
                                  "another checkpoint URL or resume=False to start over.")
        changed = changed_settings(meta, _run_settings(class_names, config, settings))
        if changed and not allow_changes:
            raise CheckpointError(
                f"{shown}: cannot resume: these settings differ from the checkpoint's: {'; '.join(changed)}. "
                "Resuming is exact only with the same settings: run again with the checkpoint's values, or "
                "allow_changes=True (--allow-changes) to continue with the new ones, or resume=False "
                "(--no-resume) or another checkpoint URL to start over.")
        head.load_state_dict(head_from_checkpoint(tensors, meta, shown).state_dict())
        if "optim_param_groups" in meta:
            state: dict[int, dict[str, torch.Tensor]] = {}
            for key, value in tensors.items():
                if key.startswith("optim."):
                    _, index, name = key.split(".", 2)
                    state.setdefault(int(index), {})[name] = value.to(next(head.parameters()).device)
            optimizer.load_state_dict({"state": state, "param_groups": meta["optim_param_groups"]})
        start = int(meta.get("step", 0))
        losses = [float(x) for x in tensors.get("loss_history", torch.zeros(0)).tolist()][:start]
    resumed_from = start
    norm = model.dinotxt.backbone.normalization
    device = model.dinotxt.device
    written, saved_at = None, start

    def save(step: int) -> str:
        assert checkpoint is not None
        checkpoint.write(*checkpoint_state(
            head, dinotxt_fingerprint=model.dinotxt.fingerprint, optimizer=optimizer, step=step, losses=losses,
            metadata={**_run_settings(class_names, config, settings), "dinotxt_spec": model.dinotxt.spec},
        ))
        return checkpoint.name

    head.train()
    safe_points = stop.safe_points()  # Ctrl-C / SIGTERM: the step finishes and is saved, then Stopped is raised
    safe_points.__enter__()
    try:
        for step in range(start, steps):
            for group in optimizer.param_groups:
                group["lr"] = _lr(config, step, steps)
            pixels, labels = sample_batch(dataset, step, config, patch, norm.mean, norm.std)
            pixels, labels = pixels.to(device), labels.to(device)
            logits = model.logits(pixels, classes)
            logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
            if (labels != config.ignore_index).any():
                loss = F.cross_entropy(logits, labels, ignore_index=config.ignore_index)
            else:  # an all-ignored batch: no signal, but keep the step (and the schedule) in lockstep
                loss = logits.sum() * 0.0
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            if checkpoint is not None and ((step + 1) % config.checkpoint_every == 0 or step + 1 == steps):
                written, saved_at = save(step + 1), step + 1
            if on_step is not None:
                on_step(step, losses[-1])
            if stop.requested() is not None:
                if checkpoint is not None and saved_at != step + 1:
                    written = save(step + 1)
                raise stop.Stopped(stop.requested(), f"training stopped after step {step + 1}" + (
                    f"; resumable from {checkpoint.name}" if checkpoint is not None else ""))
    finally:
        safe_points.__exit__(None, None, None)
        head.eval()
    return TrainResult(losses=losses, step=max(steps, start), resumed_from=resumed_from,
                       checkpoint=written or (checkpoint.name if checkpoint is not None and resumed_from else None),
                       seconds=time.perf_counter() - started)
