"""A reference mask writer for :func:`dinoseg_core.geo.segment_scene`: a chunked zarr array, written chunk by chunk.

The stitcher hands out blocks that follow the window layout, not the zarr chunks. Writing them straight into the
array would make zarr read-modify-write every chunk a block only partly covers (several GETs and PUTs per chunk
on S3, and unsafe with any second writer). :class:`ZarrMaskWriter` instead buffers blocks per chunk and writes a
chunk once, whole, when its last pixel has arrived. The buffered chunks are the ones along the stitching front:
at most about two rows of chunks (``2 x chunk x scene width`` bytes, 16 MB for a 16k-px-wide scene with 512-px
chunks), never the scene.

Array layout, as in :mod:`dinoseg_core.io.archive`: ``uint8 (H, W)``, 0 / 255, fill value 0, chunks 512 x 512, no
sharding, ``dimension_names ("y", "x")``; with ``georeference=True`` also ``spatial_ref``, ``x`` and ``y`` arrays
and the CF / GeoZarr attributes of :mod:`dinoseg_core.geo.georef`, so that ``xarray.open_zarr(url)`` +
``rioxarray`` place the mask.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dinoseg_core.io import storage
from dinoseg_core.errors import InputError, StorageError
from dinoseg_core.geo.georef import write_georeference

__all__ = ["MASK_CHUNK", "ZarrMaskWriter"]

#: Chunk side of mask arrays (the archive's).
MASK_CHUNK = 512


class ZarrMaskWriter:
    """``writer(row_off, col_off, mask)`` for :func:`segment_scene`, writing into a 2-D uint8 zarr ``array``.

    Use as a context manager (or call :meth:`close`): closing checks that every chunk was completed.
    """

    def __init__(self, array: Any):
        if len(array.shape) != 2:
            raise InputError(f"ZarrMaskWriter needs a 2-D (y, x) array, got shape {array.shape}")
        self.array = array
        self.shape = tuple(int(v) for v in array.shape)
        self.chunks = tuple(int(v) for v in array.chunks)
        self._buffers: dict[tuple[int, int], np.ndarray] = {}
        self._missing: dict[tuple[int, int], int] = {}
        self.chunks_written = 0
        self.peak_buffer_bytes = 0

    @classmethod
    def create(
        cls,
        url_or_group: Any,
        source: Any,
        *,
        name: str = "mask",
        storage_options: dict[str, Any] | None = None,
        chunks: int = MASK_CHUNK,
        attributes: dict[str, Any] | None = None,
        georeference: bool | None = None,
    ) -> ZarrMaskWriter:
        """Create the mask array ``name`` for ``source``'s grid in a zarr group and return its writer.

        Args:
            url_or_group: an open writable ``zarr.Group``, or a URL/path where a new group is created (replacing
                whatever is there).
            source: the :class:`~dinoseg_core.geo.RasterSource` (its size, and its CRS for georeferencing).
            attributes: extra attributes of the mask array (provenance, concept, ...).
            georeference: write the CF/GeoZarr georeferencing; default: when the source is georeferenced.
        """
        import zarr

        if isinstance(url_or_group, zarr.Group):
            group = url_or_group
        else:
            url = str(url_or_group)
            try:
                group = zarr.open_group(url, mode="w", storage_options=storage_options
                                        if storage.protocol(url) != "file" else None)
            except Exception as exc:
                raise StorageError(f"Cannot create a zarr group at {storage.display_url(url)}: {exc}") from exc
        height, width = int(source.height), int(source.width)
        array = group.create_array(
            name, shape=(height, width), dtype="uint8", chunks=(min(chunks, height), min(chunks, width)),
            fill_value=0, dimension_names=("y", "x"), overwrite=True,
            attributes={"flag_values": [0, 255], **(attributes or {})},
        )
        if georeference is None:
            georeference = bool(getattr(source, "georeferenced", False))
        if georeference:
            write_georeference(group, source, name)
        return cls(array)

    def __call__(self, row_off: int, col_off: int, mask: np.ndarray) -> None:
        h, w = mask.shape
        if row_off < 0 or col_off < 0 or row_off + h > self.shape[0] or col_off + w > self.shape[1]:
            raise InputError(f"block at ({row_off}, {col_off}) of {h}x{w} px is outside the {self.shape} array")
        ch, cw = self.chunks
        values = mask.astype(np.uint8) * np.uint8(255)
        for ci in range(row_off // ch, (row_off + h - 1) // ch + 1):
            for cj in range(col_off // cw, (col_off + w - 1) // cw + 1):
                y0, x0 = ci * ch, cj * cw
                y1, x1 = min(y0 + ch, self.shape[0]), min(x0 + cw, self.shape[1])
                key = (ci, cj)
                if key not in self._buffers:
                    self._buffers[key] = np.zeros((y1 - y0, x1 - x0), np.uint8)
                    self._missing[key] = (y1 - y0) * (x1 - x0)
                ya, yb = max(y0, row_off), min(y1, row_off + h)
                xa, xb = max(x0, col_off), min(x1, col_off + w)
                self._buffers[key][ya - y0 : yb - y0, xa - x0 : xb - x0] = values[ya - row_off : yb - row_off,
                                                                                  xa - col_off : xb - col_off]
                self._missing[key] -= (yb - ya) * (xb - xa)
                if self._missing[key] <= 0:
                    self._flush(key)
        self.peak_buffer_bytes = max(self.peak_buffer_bytes, sum(b.nbytes for b in self._buffers.values()))

    def _flush(self, key: tuple[int, int]) -> None:
        ci, cj = key
        ch, cw = self.chunks
        data = self._buffers.pop(key)
        del self._missing[key]
        try:
            self.array[ci * ch : ci * ch + data.shape[0], cj * cw : cj * cw + data.shape[1]] = data
        except Exception as exc:
            raise StorageError(f"Cannot write mask chunk {key} of {self.array.name}: {exc}") from exc
        self.chunks_written += 1

    def close(self) -> None:
        """Raise if a chunk is still incomplete (a window was never stitched)."""
        if self._buffers:
            pending = sorted(self._buffers)[:5]
            raise InputError(f"{len(self._buffers)} mask chunk(s) incomplete, e.g. {pending}: the scene was not "
                             "fully stitched")

    def __enter__(self) -> ZarrMaskWriter:
        return self

    def __exit__(self, exc_type: Any, *_: object) -> None:
        if exc_type is None:
            self.close()
