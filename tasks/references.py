"""Tasks: read a reference manifest, and embed a concept's references once (persisted by content)."""

from __future__ import annotations

import hashlib

from prefect import task
from prefect.cache_policies import NO_CACHE

from dinoseg_core.io import imageio, storage
from dinoseg_core.config import apply_options
from dinoseg_core.io.featurestore import content_key
from dinoseg_core.io.imageio import RASTER_SUFFIXES
from dinoseg_core.io.manifest import ReferenceManifest, concept_hash, load_manifest
from tasks import runtime
from tasks.retry import STORAGE_RETRIES
from tasks.settings import LabelSettings, PreparedConcept


@task(name="load-references", cache_policy=NO_CACHE, **STORAGE_RETRIES)
def load_references(url: str, storage_options: dict | None = None) -> ReferenceManifest:
    """Read and validate a reference manifest (YAML/JSON) at ``url``."""
    return load_manifest(url, storage_options)


@task(name="prepare-concept", cache_policy=NO_CACHE, task_run_name="prepare-{concept}", **STORAGE_RETRIES)
def prepare_concept(manifest: ReferenceManifest, concept: str, settings: LabelSettings) -> PreparedConcept:
    """Hash a concept's reference images and masks, embed them once (positional basis, debiased features,
    prototype) and persist the embedding in the feature cache under a content key."""
    spec = manifest.concept(concept)
    config = apply_options(manifest.config_for(concept), settings.method_options)
    so = settings.storage_options
    cache = settings.cache()
    contents = {url: storage.read_bytes(url, so) for url in manifest.reference_urls() if _belongs(spec, url)}
    hashes = {url: hashlib.sha256(data).hexdigest() for url, data in contents.items()}
    pairs = [(hashes[p.image_url], hashes[p.mask_url]) for p in spec.references]
    with runtime.backbone_slot(settings.concurrency_limit):  # the basis and the embedding use the backbone
        seg = runtime.segmenter(settings.backbone, config, so, cache)
        key = content_key(
            "references", seg.backbone.fingerprint, repr(runtime.feature_key(config)),
            [h for pair in pairs for h in pair], repr(settings.bands),
        )
        refs = runtime.reference_set(key, cache, seg.backbone.device)
        if refs is None:
            shots = [_read_shot(p, contents, settings) for p in spec.references]
            refs = seg.embed_references([i for i, _ in shots], [m for _, m in shots],
                                        names=[p.image_url for p in spec.references])
    runtime.remember_reference_set(key, refs, cache)
    return PreparedConcept(concept, config, key, concept_hash(manifest, concept, hashes))


def _read_shot(pair, contents: dict[str, bytes], settings: LabelSettings):
    """(image, mask) of one reference: GeoTIFF/COG references through rasterio (the run's bands, the scene's
    stretch, nodata removed from the mask), other images decoded from the bytes already read."""
    if pair.image_url.lower().endswith(RASTER_SUFFIXES):
        from dinoseg_core.io.raster import read_reference

        return read_reference(pair.image_url, pair.mask_url, bands=settings.bands,
                              storage_options=settings.storage_options)
    return (imageio.decode_image(contents[pair.image_url], pair.image_url),
            imageio.decode_mask(contents[pair.mask_url], pair.mask_url))


def _belongs(spec, url: str) -> bool:
    return any(url in (p.image_url, p.mask_url) for p in spec.references)
