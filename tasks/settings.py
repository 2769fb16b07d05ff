"""Small, picklable values that tasks pass around instead of tensors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dinoseg_core.config import InsidConfig
from dinoseg_core.io.featurestore import FeatureCache
from tasks.runtime import BackboneSpec


@dataclass(frozen=True)
class LabelSettings:
    """Everything a labelling task needs besides the images and concepts.

    Attributes:
        backbone: which backbone (spec, device, dtype).
        archive_url: the Zarr mask archive.
        storage_options: fsspec options for every URL (credentials are never logged).
        cache_url: content-keyed cache of bases and reference embeddings (None: ``~/.cache/dinoseg/features``).
        method_options: InsidConfig fields given for this run; they win over the manifest's.
        force: relabel even what is up to date.
        save_similarity: also store the patch-grid similarity map (float16).
        input_prefix: the collection's prefix; image keys are relative to it.
        bands: 1-based raster bands of GeoTIFF scenes and references (None: the first three).
        concurrency_limit: a Prefect global concurrency limit; the backbone work of a task holds one slot of it.
    """

    backbone: BackboneSpec
    archive_url: str
    storage_options: dict[str, Any] | None = field(default=None, hash=False)
    cache_url: str | None = None
    method_options: dict[str, Any] = field(default_factory=dict, hash=False)
    force: bool = False
    save_similarity: bool = False
    input_prefix: str | None = None
    bands: tuple[int, ...] | None = None
    concurrency_limit: str | None = None

    def cache(self) -> FeatureCache:
        return FeatureCache(self.cache_url, self.storage_options if self.cache_url else None)


@dataclass(frozen=True)
class PreparedConcept:
    """A concept ready to label: its effective config, the content key of its embedded reference set (in the
    feature cache), and the reference-set hash recorded on every mask."""

    name: str
    config: InsidConfig
    reference_key: str
    reference_set_hash: str


@dataclass(frozen=True)
class ImageOutcome:
    """What happened to one image: ``labelled`` (some concept written), ``skipped`` (all up to date) or
    ``failed`` (with the reason)."""

    uri: str
    status: str
    concepts: tuple[str, ...] = ()
    seconds: float = 0.0
    reason: str | None = None
