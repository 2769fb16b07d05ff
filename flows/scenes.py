"""Flow: ``label_scenes``, remote-sensing scenes (GeoTIFF/COG, any size, any URL) -> georeferenced masks.

The same engine and parameters as ``label_collection``, which also routes GeoTIFF/COG items to the scene path;
this entry point names the intent in the Prefect UI. Each scene is one task: windowed reads with band selection
and a per-scene percentile stretch, a downscaled whole-scene pass for global context, full-resolution windows
stitched without seams, nodata masked out, and the mask streamed chunk by chunk into the archive with the scene's
CRS and transform. Memory is bounded by the window size, not the scene.
"""

from __future__ import annotations

from prefect import flow

from dinoseg_core.config import DEFAULT_BACKBONE, MethodOptions, SceneOptions
from flows.engine import RESULT_SERIALIZER
from flows.labelling import label_with_references
from tasks.options import RunOptions


@flow(name="label-scenes", validate_parameters=True, result_serializer=RESULT_SERIALIZER)
def label_scenes(
    references: str,
    images: str | list[str],
    archive: str,
    backbone: str = DEFAULT_BACKBONE,
    method: MethodOptions | None = None,
    scene: SceneOptions | None = None,
    bands: list[int] | None = None,
    run: RunOptions | None = None,
):
    """Label every concept of a reference manifest on every scene of a collection (``s3://lake/scenes/*.tif``).
    Parameters as in ``label_collection``."""
    return label_with_references(references, images, archive, backbone, method, scene, bands, run)
