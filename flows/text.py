"""Flows of open-vocabulary segmentation (classes *named in text*, :mod:`dinoseg_core.ovseg`):

- ``label_with_text``: every image of a collection -> one mask per class in the Zarr mask archive, incremental
  like ``label_collection`` (same layout, provenance, run log, failure reporting);
- ``train_ovss``: train the dinov3.seg head on a labelled dataset (folder or COCO-Stuff layout) on any storage,
  backbone and text tower frozen, resumable safetensors checkpoints, progress and loss-curve artifacts;
- ``evaluate_ovss``: mIoU per class and overall on a labelled dataset, as a table artifact and the flow's result.

The flow bodies are plain loops over tasks (:mod:`tasks.text`); results are plain dicts (JSON).

Large scenes: a tile is resized to ``short_side`` (640) and scored in sliding windows (384, stride 256) plus a
global view. A GeoTIFF/COG item is a scene: it is read window by window (``scene.window_size``, default
``short_side``: full resolution), each window scored like a tile, one reduced view of the whole scene as the global
view, the class probabilities stitched without seams and each class's mask streamed into the archive with the
scene's CRS and transform (:mod:`dinoseg_core.ovseg.scene`); memory is bounded by the window, not the scene.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_table_artifact,
)
from prefect.states import Completed
from pydantic import Field

from dinoseg_core.config import SceneConfig, SceneOptions, apply_options
from dinoseg_core.errors import InputError
from dinoseg_core.io import storage
from dinoseg_core.io.classfile import read_classes
from dinoseg_core.ovseg import (
    OvsegConfig,
    SegHeadConfig,
    TrainConfig,
)
from dinoseg_core.ovseg.classes import ClassList, require_background
from dinoseg_core.ovseg.config import HeadOptions, OvsegOptions, TrainOptions
from flows.engine import RESULT_SERIALIZER, label
from tasks.options import RunOptions, refuse_credentials, resolved_storage_options
from tasks.text import ClassSet, TextModelSpec, prepare_classes
from tasks.training import DatasetLayout, DatasetSpec, evaluate_model, train_head

_CONCEPT_PREFIX = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]{0,19})?$")


def _class_list(classes: list[str] | str, storage_options: dict[str, Any] | None = None) -> ClassList:
    """The validated class list: a list, one comma-separated string, or ``"@<url>"`` (a class file)."""
    try:
        return read_classes(classes, storage_options)
    except InputError as exc:
        raise InputError(f"classes: {exc}") from None


def _class_names(classes: list[str] | str, storage_options: dict[str, Any] | None = None) -> tuple[str, ...]:
    """The class names for training and evaluation, where a class is its name (no synonyms)."""
    class_list = _class_list(classes, storage_options)
    if class_list.prompts:
        raise InputError(f"classes: synonyms ({', '.join(class_list.prompts)}) are used by label_with_text only; "
                         "training and evaluation name each label value once: remove the ': prompt; ...' parts")
    return class_list.names


def _options(model: Any, config_cls: type, what: str) -> dict[str, Any]:
    """The fields given in a pydantic options model (or dict), checked against the config they belong to."""
    if model is None:
        given: dict[str, Any] = {}
    else:
        given = model.model_dump(exclude_none=True) if hasattr(model, "model_dump") else dict(model)
    given = {k: list(v) if isinstance(v, tuple) else v for k, v in given.items()}
    try:
        config_cls.from_dict(given)
    except InputError as exc:
        raise InputError(f"{what}: {exc}") from None
    return given


# ----------------------------------------------------------------------------------------------------------------
# label_with_text
# ----------------------------------------------------------------------------------------------------------------


@flow(name="label-with-text", validate_parameters=True, result_serializer=RESULT_SERIALIZER)
def label_with_text(
    classes: list[str] | str,
    images: str | list[str],
    archive: str,
    dinotxt: str,
    bpe: str | None = None,
    backbone: str | None = None,
    head: str | None = None,
    options: OvsegOptions | None = None,
    concept_prefix: str = "",
    scene: SceneOptions | None = None,
    bands: list[int] | None = None,
    run: RunOptions | None = None,
):
    """Segment classes named in text on every image of a collection, into a Zarr mask archive.

    Each class gets its own concept in the archive (``concept_prefix`` + an archive-safe form of the name,
    ``"solar panel"`` -> ``solar_panel``) and one mask per image: the pixels where that class wins (the classes
    compete for every pixel). Masks record the dino.txt (or dinov3.seg) fingerprint, the inference config and the
    class-list digest, so a second run on the same inputs writes nothing; changing the class list, the templates
    or the config relabels, ``run.force`` relabels everything.

    Args:
        classes: the class names, a list or one comma-separated string (``"building,road,water"``), each entry
            ``name`` or ``name: prompt1; prompt2`` (synonyms: the class embedding is their mean); or
            ``"@<url>"``, a class file with one entry per line (``#`` comments, blank lines ignored). A single
            class needs ``options.background_threshold`` or ``options.background_prompts``.
        images: the collection: a glob (``s3://lake/tiles/**/*.png``), a folder, a single file or a list of URLs.
        archive: URL of the Zarr mask archive (created if missing; may be shared with ``label_collection``).
        dinotxt: Meta's dino.txt head-and-text-encoder file (path or URL), or ``random:tiny`` for tests.
        bpe: CLIP's ``bpe_simple_vocab_16e6.txt.gz`` (required for Meta's weights).
        backbone: the DINOv3 ViT-L/16 backbone spec (required for Meta's weights, e.g. ``dinov3-vitl16``).
        head: a trained dinov3.seg head checkpoint (``train_ovss``); unset: zero-shot dino.txt.
        options: :class:`~dinoseg_core.ovseg.OvsegConfig` fields (windows, templates, background threshold...).
        concept_prefix: prepended to each class's concept name (e.g. ``text-``) to keep them apart from
            in-context concepts of the same name.
        scene: how GeoTIFF/COG scenes are windowed (``window_size``, default ``options.short_side``: full
            resolution; ``overlap``; ``context_size``, default ``options.window``: the whole scene's global view;
            ``global_context``); ``global_weight`` and ``threshold`` are INSID3's and do not apply here.
        bands: 1-based bands of GeoTIFF scenes to use as RGB (``[4, 3, 2]``); default the first 3.
        run: how the run runs (:class:`tasks.options.RunOptions`; ``save_similarity`` stores each class's
            probability map).
    """
    # duplicates, empty names and bad class-file lines fail here, before anything is loaded
    class_list = _class_list(classes, resolved_storage_options(run) if run is not None else None)
    names = class_list.names
    if not _CONCEPT_PREFIX.match(concept_prefix):
        raise InputError(f"concept_prefix={concept_prefix!r}: use up to 20 characters from A-Z a-z 0-9 . _ - "
                         "starting with a letter or digit, e.g. 'text-'")
    given = _options(options, OvsegConfig, "options")
    require_background(names, given)
    synonyms = tuple(class_list.prompts.items())
    scene_config = apply_options(SceneConfig(), scene)
    band_tuple = tuple(bands) if bands else None

    def prepare(run: RunOptions) -> ClassSet:
        model = TextModelSpec(dinotxt, bpe, backbone, head, run.device, run.dtype)
        class_set = prepare_classes(model, names, given, concept_prefix, synonyms=synonyms, scene=scene_config,
                                    bands=band_tuple, run=run)
        logger = get_run_logger()
        if class_set.is_random:
            logger.warning("RANDOM WEIGHTS: %s is a random initialisation; the masks only check the pipeline.",
                           dinotxt)
        logger.info("%d class(es) (%s): %s", len(names), class_set.mode,
                    ", ".join(f"{n} -> {c}" for n, c in zip(class_set.names, class_set.concepts)))
        concepts.update(zip(class_set.names, class_set.concepts))
        return class_set

    concepts: dict[str, str] = {}
    state = label(images, archive, run, prepare, {
        "flow": "label-with-text", "classes": list(names), "synonyms": dict(synonyms), "dinotxt": dinotxt,
        "backbone": backbone, "head": head, "options": given, "scene": scene_config.to_dict(),
        "bands": list(band_tuple) if band_tuple else None,
    }, title="dinoseg label-text summary")
    state.data["concepts"] = concepts
    return state


# ----------------------------------------------------------------------------------------------------------------
# train_ovss / evaluate_ovss
# ----------------------------------------------------------------------------------------------------------------


def _dataset(dataset: str, layout: DatasetLayout, classes: list[str] | str | None, class_table: str | None,
             split: str, storage_options: dict[str, Any] | None = None) -> DatasetSpec:
    names = _class_names(classes, storage_options) if classes is not None else None
    return DatasetSpec(dataset, layout, names, class_table, split)


_BARS = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float]) -> str:
    """A one-line unicode chart of ``values`` (low to high: ▁ to █)."""
    if not values:
        return ""
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    return "".join(_BARS[min(len(_BARS) - 1, int((v - low) / span * len(_BARS)))] for v in values)


@flow(name="train-ovss", validate_parameters=True, result_serializer=RESULT_SERIALIZER)
def train_ovss(
    dataset: str,
    dinotxt: str,
    checkpoint: str,
    steps: int = Field(ge=1),
    classes: list[str] | str | None = None,
    class_table: str | None = None,
    layout: DatasetLayout = "folder",
    split: str = "train2017",
    bpe: str | None = None,
    backbone: str | None = None,
    device: str | None = None,
    dtype: Literal["float32", "bfloat16"] | None = None,
    storage_options: dict[str, Any] | None = None,
    train: TrainOptions | None = None,
    head: HeadOptions | None = None,
    resume: bool = True,
    log_every: int = Field(default=50, ge=1),
    allow_changes: bool = False,
):
    """Train the dinov3.seg head on a labelled dataset; the backbone, the dino.txt vision head and the text tower
    stay frozen.

    Args:
        dataset: root URL of the dataset: ``folder`` layout ``<root>/images/*`` + ``<root>/annotations/*.png``
            (values index ``classes``), or ``coco-stuff`` layout ``<root>/{images,annotations}/<split>/``.
        dinotxt, bpe, backbone: the frozen towers (see ``label_with_text``).
        checkpoint: URL of the head checkpoint (safetensors), written every ``train.checkpoint_every`` steps and
            at the end; with ``resume`` (default) an existing one there is continued, so rerunning after an
            interruption finishes the job.
        steps: total optimiser steps (a resumed run does only the missing ones).
        classes: class names of the folder layout (label value i -> classes[i]): a list, a comma-separated
            string or ``"@<url>"`` (a class file, one name per line).
        class_table: URL of the raw id -> name table (coco-stuff layout).
        train: :class:`~dinoseg_core.ovseg.TrainConfig` fields; head: :class:`~dinoseg_core.ovseg.SegHeadConfig`
            fields (``feature_dim`` follows the towers).
        log_every: steps per point of the loss curve (and per progress update).
        allow_changes: resume even where the training settings (``train`` but ``checkpoint_every``, classes,
            dataset) differ from the checkpoint's; without it such a resume is refused, naming each setting.

    Returns:
        A dict: ``checkpoint``, ``steps``, ``resumed_from``, ``loss_curve`` ([{step, loss, min, max}]),
        ``first_loss``, ``final_loss``, ``seconds``, ``seconds_per_step``, ``classes``, ``images``.
    """
    refuse_credentials(storage_options)  # a flow parameter is stored in clear by the Prefect server
    logger = get_run_logger()
    data = _dataset(dataset, layout, classes, class_table, split, storage_options)
    train_given = _options(train, TrainConfig, "train")
    head_given = _options(head, SegHeadConfig, "head")
    model = TextModelSpec(dinotxt, bpe, backbone, None, device, dtype)
    result = train_head(data, model, checkpoint, steps, train_given, head_given, resume, log_every, storage_options,
                        allow_changes)
    curve = result["loss_curve"]
    create_table_artifact(curve, description=f"train_ovss loss curve (mean loss every {log_every} steps)")
    create_markdown_artifact(
        "\n".join([
            "# train_ovss",
            f"- checkpoint: `{storage.display_url(checkpoint)}`",
            f"- steps: {result['steps']} (resumed from {result['resumed_from']})",
            f"- dataset: `{storage.display_url(dataset)}` ({result['images']} images, {len(result['classes'])} "
            "classes)",
            f"- loss: {result['first_loss']} -> {result['final_loss']} (mean of the first and last {log_every} "
            "steps)",
            f"- {result['seconds_per_step']} s per step",
            *(["- **random dino.txt weights**: this run checks the training loop, not accuracy"]
              if result["random_weights"] else []),
            "",
            f"loss every {log_every} steps: `{sparkline([p['loss'] for p in curve])}`",
        ]),
        description="train_ovss summary and loss curve",
    )
    logger.info("trained %d steps (resumed from %d): loss %s -> %s; checkpoint %s", result["steps"],
                result["resumed_from"], result["first_loss"], result["final_loss"], storage.display_url(checkpoint))
    return Completed(message=f"trained {result['steps']} steps, loss {result['first_loss']} -> "
                             f"{result['final_loss']}", data=result)


@flow(name="evaluate-ovss", validate_parameters=True, result_serializer=RESULT_SERIALIZER)
def evaluate_ovss(
    dataset: str,
    dinotxt: str,
    head: str | None = None,
    classes: list[str] | str | None = None,
    class_table: str | None = None,
    layout: DatasetLayout = "folder",
    split: str = "val2017",
    bpe: str | None = None,
    backbone: str | None = None,
    device: str | None = None,
    dtype: Literal["float32", "bfloat16"] | None = None,
    storage_options: dict[str, Any] | None = None,
    options: OvsegOptions | None = None,
    limit: int | None = Field(default=None, ge=1),
):
    """mIoU of zero-shot dino.txt (no ``head``) or a trained dinov3.seg head on a labelled dataset.

    One confusion matrix over every labelled pixel of the dataset; IoU per class, mIoU over the classes present in
    the ground truth or the predictions; pixels left as background count as misses. The dataset arguments are
    those of ``train_ovss``.

    Returns:
        A dict: ``miou``, ``pixel_accuracy``, ``iou`` (class -> IoU or None), ``images``, ``seconds_per_image``,
        ``class_names``, ``mode``, ``markdown``. Fractions, not percentages.
    """
    refuse_credentials(storage_options)  # a flow parameter is stored in clear by the Prefect server
    data = _dataset(dataset, layout, classes, class_table, split, storage_options)
    given = _options(options, OvsegConfig, "options")
    model = TextModelSpec(dinotxt, bpe, backbone, head, device, dtype)
    result = evaluate_model(data, model, given, limit, storage_options)
    rows = [{"class": name, "IoU (%)": None if iou is None else round(100 * iou, 2)}
            for name, iou in result["iou"].items()]
    miou = None if result["miou"] is None else round(100 * result["miou"], 2)
    accuracy = None if result["pixel_accuracy"] is None else round(100 * result["pixel_accuracy"], 2)
    rows += [{"class": "mIoU", "IoU (%)": miou}, {"class": "pixel accuracy", "IoU (%)": accuracy}]
    create_table_artifact(rows, description=f"evaluate_ovss ({result['mode']}) on {storage.display_url(dataset)}: "
                                            f"{result['images']} images" + (" - RANDOM WEIGHTS" if
                                                                             result["random_weights"] else ""))
    return Completed(message=f"mIoU {miou} % over {result['images']} image(s)", data=result)
