"""The INSID3 labeller: concepts shown by reference images and masks (a manifest), on tiles and on scenes.

``load-references`` reads the manifest; ``prepare-concept`` embeds a concept's references once (positional
basis, debiased features, prototype) and persists the embedding in the content-keyed feature cache, so that every
worker process loads it instead of recomputing. :class:`ConceptSet` is the labeller the engine
(:mod:`tasks.labelling`) drives: one backbone pass per batch of tiles for every concept, or a scene window by
window with whole-scene context, streamed into the archive.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError

from dinoseg_core.config import InsidConfig, apply_options
from dinoseg_core.errors import StorageError
from dinoseg_core.geo import SceneConfig, geo_attrs, segment_scene
from dinoseg_core.io import imageio, storage
from dinoseg_core.io.archive import MaskArchive
from dinoseg_core.io.featurestore import FeatureCache, content_key
from dinoseg_core.io.imageio import RASTER_SUFFIXES
from dinoseg_core.io.manifest import ReferenceManifest, concept_hash, load_manifest
from dinoseg_core.io.radiometry import EIGHT_BIT, Radiometry
from tasks import runtime
from tasks.freshness import MethodStamp
from tasks.labelling import PERMANENT, LabelJob, Pending
from tasks.options import RunOptions, resolved_storage_options
from tasks.retry import STORAGE_RETRIES
from tasks.runtime import BackboneSpec
from tasks.sources import ItemKind


@dataclass(frozen=True)
class PreparedConcept:
    """A concept ready to label: its effective config, the content key of its embedded reference set (in the
    feature cache), the reference-set hash recorded on every mask, and the references that are 8-bit images
    (PNG, JPEG, ...) rather than rasters read with the run's radiometry."""

    name: str
    config: InsidConfig
    reference_key: str
    reference_set_hash: str
    image_references: tuple[str, ...] = ()
    scene_overrides: tuple[tuple[str, Any], ...] = ()  # the manifest's per-concept ``scene`` fields


@dataclass(frozen=True)
class ConceptSet:
    """The INSID3 labeller: prepared concepts on one backbone, plus how scenes are read and windowed.

    Attributes:
        backbone: which backbone (spec, device, dtype); ``fingerprint``/``random``: of its loaded weights.
        concepts: the prepared concepts, in manifest order.
        scene: windowing and global context of scene items; ``bands``: their 1-based bands (None: the first 3).
        cache_url: the feature cache holding the embedded reference sets (None: the default local cache).
        radiometry: how scenes (and raster references) are scaled, resolved (a collection stretch's ranges known);
            None: ``scene.radiometry``.
        scene_given: the scene fields the run set explicitly: they win over a concept's own ``scene`` overrides.
    """

    backbone: BackboneSpec
    fingerprint: str
    random: bool
    concepts: tuple[PreparedConcept, ...]
    scene: SceneConfig = field(default_factory=SceneConfig)
    bands: tuple[int, ...] | None = None
    cache_url: str | None = None
    radiometry: Radiometry | None = None
    scene_given: tuple[str, ...] = ()
    scenes = True

    def scene_for(self, concept: PreparedConcept) -> SceneConfig:
        """The scene config of ``concept``: the run's, with the concept's manifest ``scene`` fields applied (except
        those the run set explicitly)."""
        own = {k: v for k, v in concept.scene_overrides if k not in self.scene_given}
        return self.scene.replace(**own) if own else self.scene

    @property
    def input_side(self) -> int:
        """The longest side the backbone sees: a larger tile is decoded reduced towards it (imageio.decode_tile)."""
        return max(c.config.image_size for c in self.concepts)

    @property
    def scene_radiometry(self) -> Radiometry:
        return self.radiometry or Radiometry.parse(self.scene.radiometry)

    def methods(self, kind: ItemKind) -> dict[str, MethodStamp]:
        """A scene mask also depends on the windowing, the bands and the radiometry (a collection stretch with its
        ranges): they are part of its config."""
        def config(c: PreparedConcept) -> dict[str, Any]:
            if kind == "tile":
                return c.config.to_dict()
            ranges = {k: v for k, v in self.scene_radiometry.stamp().items() if k == "radiometry_ranges"}
            return {**c.config.to_dict(), "scene": self.scene_for(c).to_dict(),
                    "bands": list(self.bands) if self.bands else None, **ranges}

        return {c.name: MethodStamp(self.backbone.spec, self.fingerprint, self.random, config(c),
                                    c.reference_set_hash) for c in self.concepts}

    def label_tiles(self, tiles: list[Pending], archive: MaskArchive, job: LabelJob
                    ) -> Iterator[tuple[Pending, tuple[str, ...] | Exception]]:
        """One backbone pass per batch and feature configuration; every concept of that configuration reuses it."""
        if not tiles:
            return
        so = resolved_storage_options(job.run)
        cache = feature_cache(self.cache_url, so)
        methods = self.methods("tile")
        by_name = {c.name: c for c in self.concepts}
        written: dict[str, list[str]] = {t.url: [] for t in tiles}
        failed: dict[str, Exception] = {}
        for fkey in dict.fromkeys(runtime.feature_key(c.config) for c in self.concepts):
            group = [t for t in tiles if t.url not in failed
                     and any(runtime.feature_key(by_name[n].config) == fkey for n in t.todo)]
            if not group:
                continue
            first = next(c for c in self.concepts if runtime.feature_key(c.config) == fkey)
            seg = runtime.segmenter(self.backbone, first.config, so, cache, job.run.cluster_backend)
            # only the forward holds the device: steps 6-9 and the writes below overlap the next batch's forward
            with runtime.backbone_turn(seg.backbone.device, job.run.concurrency_limit):
                features = seg.extract_each([t.image for t in group], [t.url for t in group])
            for tile, target in zip(group, features):
                try:
                    if isinstance(target, Exception):
                        raise target
                    for name in (n for n in tile.todo if runtime.feature_key(by_name[n].config) == fkey):
                        concept = by_name[name]
                        result = seg.segment_features(self._references(concept, cache, seg), target,
                                                      concept.config)
                        timings = {"read": tile.read_seconds, **result.timings}
                        archive.write_mask(
                            name, tile.key, _at_source_size(result.mask, getattr(tile, "source_hw", None)),
                            attrs={**tile.source_attrs(), **methods[name].attrs(),
                                   "timings": {k: round(v, 4) for k, v in timings.items()}},
                            similarity=result.similarity if job.run.save_similarity else None,
                        )
                        written[tile.url].append(name)
                except PERMANENT as exc:
                    failed[tile.url] = exc
        for tile in tiles:
            yield tile, failed.get(tile.url) or tuple(written[tile.url])

    def label_scene(self, scene: Pending, archive: MaskArchive, job: LabelJob) -> tuple[str, ...]:
        """Every out-of-date concept on one scene, window by window; each mask is streamed chunk by chunk into a
        new archive version carrying the scene's CRS and transform, and published atomically."""
        from dinoseg_core.io.maskwriter import ZarrMaskWriter
        from dinoseg_core.io.raster import open_raster, raster_reader

        so = resolved_storage_options(job.run)
        cache = feature_cache(self.cache_url, so)
        methods = self.methods("scene")
        source = open_raster(scene.url, self.bands, so, radiometry=self.scene_radiometry)
        for name in scene.todo:
            concept = next(c for c in self.concepts if c.name == name)
            if concept.image_references and source.dtype != EIGHT_BIT and self.scene_radiometry.kind.endswith(
                    "percentile"):  # fixed: and scale: are the user's own match to the references
                _warn_image_references(concept, source)
            seg = runtime.segmenter(self.backbone, concept.config, so, cache, job.run.cluster_backend)
            refs = self._references(concept, cache, seg)

            def fill(group, concept=concept, seg=seg, refs=refs):
                # a scene keeps the device for all its windows (a window's steps 6-9 are short beside its forward)
                with (ZarrMaskWriter.create(group, source, attributes={"long_name": f"{concept.name} mask"}) as writer,
                      raster_reader(source) as reader,
                      runtime.backbone_turn(seg.backbone.device, job.run.concurrency_limit)):
                    result = segment_scene(seg, refs, reader.read, source.shape, writer, name=source.display_url,
                                           config=self.scene_for(concept), insid_config=concept.config)
                extra = {"scene_windows": result.windows, "scene_timings": result.timings,
                         "scene_foreground_pixels": result.foreground_pixels}
                return {**extra, **(geo_attrs(source) if source.georeferenced else {})}

            archive.write_streamed_mask(name, scene.key, {**scene.source_attrs(), **methods[name].attrs(),
                                                          "raster": source.to_dict()}, fill)
        return scene.todo

    def _references(self, concept: PreparedConcept, cache: FeatureCache, seg):
        refs = runtime.reference_set(concept.reference_key, cache, seg.backbone.device)
        if refs is None:
            raise StorageError(f"reference set of concept {concept.name!r} missing from {cache.url}")
        return refs


_warned: set[tuple[str, str, str]] = set()
_warned_lock = threading.Lock()


def _warn_image_references(concept: PreparedConcept, source) -> None:
    """Once per process, concept and data type: a non-8-bit scene compared with 8-bit image references is scaled
    by the run's radiometry, the references by whoever made them; say what to do about it."""
    key = (concept.name, concept.reference_set_hash, source.dtype)
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    shown = ", ".join(storage.display_url(u) for u in concept.image_references[:3])
    more = f" and {len(concept.image_references) - 3} more" if len(concept.image_references) > 3 else ""
    try:
        logger = get_run_logger()
    except MissingContextError:  # a labeller driven outside a flow or task run
        logger = logging.getLogger("dinoseg.concepts")
    logger.warning(
        "concept %r: scene %s is %s, read with radiometry %s, but its references %s%s are 8-bit images, scaled "
        "however they were made: a concept that looks different in the scenes and in the references scores lower "
        "(docs/scenes.md, Radiometry). Cut the references from the collection as GeoTIFFs with their masks (they are "
        "then read with the same radiometry), or give the --radiometry the PNGs were made with (e.g. fixed:LOW,HIGH "
        "with the values that became 0 and 255, or scale:FACTOR[,OFFSET]).", concept.name, source.display_url, source.dtype,
        source.radiometry, shown, more)


def _at_source_size(mask, source_hw: tuple[int, int] | None):
    """A mask of a tile decoded reduced (:func:`dinoseg_core.io.imageio.decode_tile`), at its file's size."""
    if source_hw is None or tuple(mask.shape) == tuple(source_hw):
        return mask
    from dinoseg_core.preprocess import resize_mask

    return resize_mask(mask, tuple(source_hw))


def feature_cache(url: str | None, storage_options: dict | None) -> FeatureCache:
    """The run's feature cache (the storage options apply to a URL given by the user, not to the local default)."""
    return FeatureCache(url, storage_options if url else None)


@task(name="load-references", cache_policy=NO_CACHE, **STORAGE_RETRIES)
def load_references(url: str, storage_options: dict | None = None,
                    allow_reference_urls: list[str] | None = None) -> ReferenceManifest:
    """Read and validate a reference manifest (YAML/JSON) at ``url``; its references must stay within its own
    storage unless they start with one of ``allow_reference_urls`` (refused before any is read)."""
    return load_manifest(url, storage_options, allow_reference_urls or ())


@task(name="prepare-concept", cache_policy=NO_CACHE, task_run_name="prepare-{concept}", **STORAGE_RETRIES)
def prepare_concept(manifest: ReferenceManifest, concept: str, backbone: BackboneSpec,
                    method: dict[str, Any] | None, bands: tuple[int, ...] | None, run: RunOptions,
                    radiometry: Radiometry | None = None) -> PreparedConcept:
    """Hash a concept's reference images and masks, embed them once (positional basis, debiased features,
    prototype) and persist the embedding in the feature cache under a content key. ``method``: INSID3 options of
    this run, which win over the manifest's; ``radiometry``: the run's (resolved), which raster references are read
    with (None: each reference scene's own percentile stretch)."""
    spec = manifest.concept(concept)
    config = apply_options(manifest.config_for(concept), method)
    so = resolved_storage_options(run)
    cache = feature_cache(run.cache, so)
    max_pixels = imageio.max_tile_pixels(config.image_size, run.max_image_pixels)
    wanted = {url for p in spec.references for url in (p.image_url, p.mask_url)}
    contents = {url: storage.read_bytes(url, so) for url in manifest.reference_urls() if url in wanted}
    hashes = {url: hashlib.sha256(data).hexdigest() for url, data in contents.items()}
    pairs = [(hashes[p.image_url], hashes[p.mask_url]) for p in spec.references]
    seg = runtime.segmenter(backbone, config, so, cache)
    with runtime.backbone_turn(seg.backbone.device, run.concurrency_limit):  # the basis and the embedding
        scaled = [] if radiometry is None or radiometry.is_default else [repr(radiometry)]  # default: the old keys
        key = content_key(
            "references", seg.backbone.fingerprint, repr(runtime.feature_key(config)),
            [h for pair in pairs for h in pair], repr(bands), *scaled,
        )
        refs = runtime.reference_set(key, cache, seg.backbone.device)
        if refs is None:
            shots = [_read_shot(p, contents, bands, so, radiometry, max_pixels) for p in spec.references]
            refs = seg.embed_references([i for i, _ in shots], [m for _, m in shots],
                                        names=[p.image_url for p in spec.references],
                                        mask_names=[p.mask_url for p in spec.references])
    runtime.remember_reference_set(key, refs, cache)
    images = tuple(p.image_url for p in spec.references if not p.image_url.lower().endswith(RASTER_SUFFIXES))
    return PreparedConcept(concept, config, key, concept_hash(manifest, concept, hashes), images,
                           tuple(sorted(spec.scene_overrides.items())))


def _read_shot(pair, contents: dict[str, bytes], bands: tuple[int, ...] | None, storage_options: dict | None,
               radiometry: Radiometry | None = None, max_pixels: int | None = None):
    """(image, mask) of one reference: GeoTIFF/COG references through rasterio (the run's bands and radiometry,
    nodata removed from the mask), other images decoded from the bytes already read. An image or raster of more
    than ``max_pixels`` is refused from its header or metadata, before anything is decoded."""
    if pair.image_url.lower().endswith(RASTER_SUFFIXES):
        from dinoseg_core.io.raster import open_raster, read_reference

        if max_pixels is not None:
            height, width = open_raster(pair.image_url, bands, storage_options).shape
            imageio.check_pixels(pair.image_url, width, height, max_pixels)
        return read_reference(pair.image_url, pair.mask_url, bands=bands, storage_options=storage_options,
                              radiometry=radiometry)
    return (imageio.decode_image(contents[pair.image_url], pair.image_url, max_pixels=max_pixels),
            imageio.decode_mask(contents[pair.mask_url], pair.mask_url, max_pixels=max_pixels))
