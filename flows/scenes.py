"""Flow: ``label_scenes``, remote-sensing scenes (GeoTIFF/COG, any size, any URL) -> georeferenced masks.

Each scene is one task: windowed reads with band selection and a per-scene percentile stretch, a downscaled
whole-scene pass for global context, full-resolution windows stitched without seams, nodata masked out, and the
mask streamed chunk by chunk into the archive with the scene's CRS and transform. Memory is bounded by the window
size, not the scene. Incremental and failure handling as in ``label_collection``.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import Field

from dinoseg_core.io.archive import MaskArchive
from dinoseg_core.config import DEFAULT_BACKBONE
from dinoseg_core.config import MethodOptions
from dinoseg_core.geo import SceneConfig
from flows.labelling import (
    RESULT_SERIALIZER,
    _prefix,
    finish_run,
    run_jobs,
    task_runner,
)
from tasks.labelling import list_images
from tasks.references import load_references, prepare_concept
from tasks.runtime import BackboneSpec
from tasks.scenes import label_scene
from tasks.settings import LabelSettings


@flow(name="label-scenes", validate_parameters=True, result_serializer=RESULT_SERIALIZER)
def label_scenes(
    references: str,
    images: str,
    archive: str,
    backbone: str = DEFAULT_BACKBONE,
    device: str | None = None,
    dtype: Literal["float32", "bfloat16"] | None = None,
    storage_options: dict[str, Any] | None = None,
    method: MethodOptions | None = None,
    bands: list[int] | None = None,
    scene: dict[str, Any] | None = None,
    force: bool = False,
    cache: str | None = None,
    workers: int = Field(default=1, ge=1),
):
    """Label every concept of a reference manifest on every scene matching a glob.

    Args:
        images: glob of the scenes, e.g. ``s3://lake/scenes/*.tif``.
        bands: 1-based bands to use as RGB (``[4, 3, 2]``); default the first three (or one, replicated).
        scene: :class:`dinoseg_core.geo.SceneConfig` fields: ``window_size``, ``overlap``, ``global_context``,
            ``global_weight``, ``context_size``, ``threshold``.
        workers: scenes at once (each holds one window of every stage in memory).
    Other parameters as in ``label_collection``.
    """
    logger = get_run_logger()
    scene_config = SceneConfig.from_dict(scene or {})
    started = time.perf_counter()
    MaskArchive.open(archive, storage_options, mode="a")
    manifest = load_references(references, storage_options)
    items = list_images(images, storage_options)
    settings = LabelSettings(
        backbone=BackboneSpec(backbone, device, dtype), archive_url=archive, storage_options=storage_options,
        cache_url=cache, method_options=method.model_dump(exclude_none=True) if method is not None else {},
        force=force, input_prefix=_prefix(images), bands=tuple(bands) if bands else None,
    )
    concepts = [prepare_concept(manifest, name, settings) for name in manifest.concepts]
    logger.info("%d scene(s), %d concept(s): %s", len(items), len(concepts), ", ".join(manifest.concepts))
    labelling_started = time.perf_counter()
    outcomes = run_jobs(
        task_runner(workers), label_scene,
        [({"url": url, "stamp": stamp, "concepts": concepts, "settings": settings, "scene": scene_config}, [url])
         for url, stamp in items],
        f"dinoseg: {len(items)} scenes",
    )
    return finish_run(
        outcomes, archive, storage_options, started, labelling_started, str(flow_run.get_id() or uuid.uuid4()),
        {"references": references, "images": images, "backbone": backbone, "method": settings.method_options,
         "bands": bands, "scene": scene_config.to_dict(), "force": force},
    )
