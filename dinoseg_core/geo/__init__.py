"""Remote-sensing scenes (reading rasters and writing masks is storage: :mod:`dinoseg_core.io.raster`,
:mod:`dinoseg_core.io.maskwriter`): GeoTIFF/COG windows in, whole-scene masks out with their coordinates, polygons exported.

- :mod:`~dinoseg_core.geo.windows`: :class:`WindowGrid` and the seamless :class:`Stitcher`;
- :mod:`~dinoseg_core.geo.scene`: :func:`segment_scene` (windows + global context + stitching, bounded memory;
  the scene comes in through a ``read(window)`` callable);
- :mod:`~dinoseg_core.geo.georef`: :func:`geo_attrs`, :func:`write_georeference` (CF ``spatial_ref`` + GeoZarr
  ``proj:``/``spatial:`` attributes; rioxarray reads them);
- :mod:`~dinoseg_core.geo.export`: :func:`masks_to_polygons`, :func:`array_to_polygons`, :func:`export_vectors`
  (GeoJSON, GeoPackage, GeoParquet);
- :mod:`~dinoseg_core.geo.synthetic`: synthetic multi-band GeoTIFFs from the aerial-like generator.

Needs the ``geo`` extra (rasterio; shapely for export; geopandas + pyogrio / pyarrow for GeoPackage / GeoParquet).
"""

from dinoseg_core.geo.export import array_to_polygons, export_vectors, masks_to_polygons
from dinoseg_core.geo.georef import (
    coordinates,
    geo_attrs,
    georeference_from_attrs,
    spatial_ref_attrs,
    write_georeference,
)
from dinoseg_core.geo.scene import SceneConfig, SceneOptions, SceneReader, SceneResult, segment_scene
from dinoseg_core.geo.windows import Stitcher, WindowGrid

__all__ = [
    "SceneConfig",
    "SceneOptions",
    "SceneReader",
    "SceneResult",
    "Stitcher",
    "WindowGrid",
    "array_to_polygons",
    "coordinates",
    "export_vectors",
    "geo_attrs",
    "georeference_from_attrs",
    "masks_to_polygons",
    "segment_scene",
    "spatial_ref_attrs",
    "write_georeference",
]
