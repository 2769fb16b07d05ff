"""Flows: ``label_collection`` (a reference manifest + a collection on object storage -> a Zarr mask archive) and
``segment_images``, the same flow under the name its deployments use for explicit lists of images.

The flow body is the engine's loop (:func:`flows.engine.label`): list the images, prepare each concept once
(embed its references), label batches (each worker loads the backbone once and serves many images), summarise.
Tiles and GeoTIFF/COG scenes may be mixed: scenes are read window by window. Re-running on the same inputs
writes nothing.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from dinoseg_core.config import (
    DEFAULT_BACKBONE,
    MethodOptions,
    SceneConfig,
    SceneOptions,
    apply_options,
)
from dinoseg_core.io.radiometry import Radiometry
from flows.engine import RESULT_SERIALIZER, label
from tasks.concepts import ConceptSet, load_references, prepare_concept
from tasks.options import RunOptions, resolved_storage_options
from tasks.radiometry import resolve_radiometry, run_record
from tasks.runtime import BackboneSpec
from tasks.runtime import backbone as load_backbone


@flow(name="label-collection", validate_parameters=True, result_serializer=RESULT_SERIALIZER)
def label_collection(
    references: str,
    images: str | list[str],
    archive: str,
    backbone: str = DEFAULT_BACKBONE,
    method: MethodOptions | None = None,
    scene: SceneOptions | None = None,
    bands: list[int] | None = None,
    run: RunOptions | None = None,
):
    """Label every concept of a reference manifest on every image of a collection, into a Zarr mask archive.

    Args:
        references: URL of the reference manifest (YAML/JSON: concept -> reference images and masks).
        images: the collection: a glob (``s3://lake/tiles/**/*.png``), a folder or prefix (every image under it),
            a single file, or a list of URLs. GeoTIFF/COG items are scenes, read window by window.
        archive: URL of the Zarr mask archive (created if missing).
        backbone: DINOv3 backbone spec (preset, hub id, model directory/URL, Meta .pth, random:<preset>).
        method: INSID3 options for this run (win over the manifest's); unset fields keep the defaults.
        scene: how scenes are windowed (window_size, overlap, global_context, global_weight, context_size,
            threshold) and scaled (radiometry: scene-percentile, collection-percentile, fixed:LOW,HIGH, ...; raster
            references are read the same way); unset fields keep the defaults.
        bands: 1-based bands of GeoTIFF scenes and references to use as RGB (``[4, 3, 2]``); default the first 3.
        run: how the run runs (device, storage_options, force, cache, batch_size, workers, task_runner, ...; see
            :class:`tasks.options.RunOptions`).
    """
    method_given = method.model_dump(exclude_none=True) if method is not None else {}
    scene_config = apply_options(SceneConfig(), scene)
    # the fields this run sets win over a concept's own manifest ``scene`` (as ``method`` over its ``config``)
    given = scene.model_dump(exclude_none=True) if hasattr(scene, "model_dump") else dict(scene or {})
    scene_given = tuple(sorted(k for k, v in given.items() if v is not None))
    band_tuple = tuple(bands) if bands else None

    def prepare(options: RunOptions) -> ConceptSet:
        so = resolved_storage_options(options)  # a Secret block's credentials stay in this process
        manifest = load_references(references, so, options.allow_reference_urls)
        # a collection stretch: the archive's recorded one, else computed now and recorded in this run's log
        radiometry = Radiometry.parse(scene_config.radiometry)
        if radiometry.needs_collection:
            radiometry = resolve_radiometry(radiometry, archive, images, band_tuple, so)
        parameters["radiometry"] = run_record(radiometry, band_tuple)
        spec = BackboneSpec(backbone, options.device, options.dtype, options.compile)
        concepts = tuple(prepare_concept(manifest, name, spec, method_given, band_tuple, options, radiometry)
                         for name in manifest.concepts)
        model = load_backbone(spec, so)
        get_run_logger().info("%d concept(s): %s", len(concepts), ", ".join(manifest.concepts))
        return ConceptSet(spec, model.fingerprint, model.is_random, concepts, scene_config, band_tuple, options.cache,
                          radiometry, scene_given=scene_given)

    parameters = {
        "references": references, "backbone": backbone, "method": method_given,
        "scene": scene_config.to_dict(), "bands": list(bands) if bands else None,
    }
    return label(images, archive, run, prepare, parameters)


#: The same flow under the name of the ``segment-images`` deployments: an explicit list of image URLs, typically.
segment_images = label_collection.with_options(name="segment-images")
