"""Storage adapters: everything in dinoseg that takes a URL. They know nothing of the method.

- :mod:`~dinoseg_core.io.storage`: one normalisation of ``URL + storage_options`` for every fsspec backend,
  errors mapped to :mod:`dinoseg_core.errors`;
- :mod:`~dinoseg_core.io.imageio`: image and mask decoding and PNG writing;
- :mod:`~dinoseg_core.io.raster`: GeoTIFF/COG windows (rasterio/GDAL), band selection, stretch, nodata;
- :mod:`~dinoseg_core.io.maskwriter`: a chunked, georeferenced zarr mask written window by window;
- :mod:`~dinoseg_core.io.archive`: the versioned Zarr mask archive;
- :mod:`~dinoseg_core.io.manifest`: reference manifests (YAML/JSON);
- :mod:`~dinoseg_core.io.featurestore`: the content-keyed cache of positional bases and reference embeddings;
- :mod:`~dinoseg_core.io.checkpoints`: model weights fetched from any URL into a local cache;
- :mod:`~dinoseg_core.io.heads`: trained dinov3.seg head checkpoints (safetensors) at any URL.
"""
