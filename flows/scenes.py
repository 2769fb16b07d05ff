"""Flow: ``label_scenes``, remote-sensing scenes (GeoTIFF/COG, any size, any URL) -> georeferenced masks.

The same flow as ``label_collection`` (which routes GeoTIFF/COG items to the scene path itself), under a name that
says the intent in the Prefect UI. Each scene is one task: windowed reads with band selection and a per-scene
percentile stretch, a downscaled whole-scene pass for global context, full-resolution windows stitched without
seams, nodata masked out, and the mask streamed chunk by chunk into the archive with the scene's CRS and
transform. Memory is bounded by the window size, not the scene.
"""

from __future__ import annotations

from flows.labelling import label_collection

label_scenes = label_collection.with_options(name="label-scenes")
