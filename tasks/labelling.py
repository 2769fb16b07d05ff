"""The labelling engine's unit of work: ``label-batch``, for every labeller and every kind of item.

A job is (items of a source) x (a labeller) -> archive records. For each item the batch decides, with the one
freshness rule (:func:`tasks.freshness.relabel_reason`), which concepts are out of date: first by its listing
stamp (no read at all when everything is up to date), then by the sha256 of its bytes. Out-of-date tiles are
decoded and handed to the labeller together (one backbone pass for the batch); a scene is handed over alone and
read window by window.

Failures (docs/reliability.md) are per item, whatever their kind: a permanent one (not found, access denied, bad
bytes) fails that item alone with its own reason; a transient one (throttling, HTTP 5xx, a dropped connection)
retries that item alone, after the batch's other items are done, with backoff (:data:`tasks.retry.ITEM_RETRY_DELAYS`),
and fails it alone when it persists; a fatal one (disk full) stops the batch at once and is raised with the batch's
outcomes so far (:class:`BatchStopped`), and the run stops. Only what fails for the whole batch (the archive or the
model cannot be opened) leaves the task, to be retried by Prefect when transient.

A labeller (:class:`Labeller`) is a small picklable value that knows its concepts, what each concept's masks depend
on (:class:`~tasks.freshness.MethodStamp`) and how to segment and write them; its heavy objects (models, embedded
references) live in the worker process (:mod:`tasks.runtime`). Two exist: an INSID3 concept set
(:class:`tasks.concepts.ConceptSet`) and a text class set (:class:`tasks.text.ClassSet`).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from prefect import task
from prefect.cache_policies import NO_CACHE

from dinoseg_core.errors import InputError, OutOfSpaceError, PermanentStorageError
from dinoseg_core.io import imageio, storage
from dinoseg_core.io.archive import MaskArchive, image_key
from dinoseg_core.io.storage import failure_kind
from tasks import retry
from tasks.freshness import MethodStamp, relabel_reason
from tasks.options import RunOptions, resolved_storage_options
from tasks.retry import STORAGE_RETRIES
from tasks.sources import ItemKind, WorkItem

_log = logging.getLogger(__name__)

#: Errors that belong to one item and will not go away on a retry (a labeller fails that item alone with them).
PERMANENT = (InputError, PermanentStorageError)
#: Reader threads per batch (freshness checks, reads, hashes, decodes: I/O-bound, memory bounded by the batch).
IO_THREADS = 8
#: Bytes per read when hashing a scene (bounded memory for scenes of many GB).
HASH_BLOCK = 16 * 2**20


@dataclass(frozen=True)
class LabelJob:
    """What every batch of a run shares besides the labeller: the archive, the collection's prefix (image keys
    are relative to it) and the run options."""

    archive_url: str
    input_prefix: str | None
    run: RunOptions


@dataclass(frozen=True)
class ImageOutcome:
    """What happened to one item: ``labelled`` (some concept written), ``skipped`` (all up to date) or
    ``failed`` (with the reason)."""

    uri: str
    status: str
    concepts: tuple[str, ...] = ()
    seconds: float = 0.0
    reason: str | None = None


@dataclass
class Pending:
    """An item with concepts to (re)write: its archive key, source identity, the concepts to write, and for a
    tile the decoded image (float32 (H, W, 3) in [0, 1]; None for a scene, which is read window by window)."""

    item: WorkItem
    key: str
    sha256: str
    stamp: str
    todo: tuple[str, ...]
    image: np.ndarray | None
    started: float
    read_seconds: float = 0.0
    #: (H, W) of the source file; a large tile is decoded reduced (imageio.decode_tile) and its masks are resized
    #: back to this size by the labeller
    source_hw: tuple[int, int] | None = None

    @property
    def url(self) -> str:
        return self.item.url

    def source_attrs(self) -> dict[str, Any]:
        """The provenance of the source, common to every mask written for this item."""
        return {"source_uri": self.url, "source_sha256": self.sha256, "source_stamp": self.stamp}


class Labeller(Protocol):
    """What the engine needs of a labeller. ``scenes``: whether scene items go through :meth:`label_scene`
    (windowed); otherwise they are decoded whole like tiles, and the labeller needs no ``label_scene``."""

    scenes: bool

    def methods(self, kind: ItemKind) -> dict[str, MethodStamp]:
        """Concept -> what its masks of an item of this kind depend on (and record as provenance)."""

    def label_tiles(self, tiles: list[Pending], archive: MaskArchive, job: LabelJob
                    ) -> Iterator[tuple[Pending, tuple[str, ...] | Exception]]:
        """Segment and write the concepts each tile needs; yields each tile with the concepts written, or with
        the permanent error that failed it (transient errors propagate: the batch is retried)."""

    def label_scene(self, scene: Pending, archive: MaskArchive, job: LabelJob) -> tuple[str, ...]:
        """Segment and write the concepts one scene needs, window by window; returns the concepts written."""


#: The reason of an image a full disk kept from being labelled.
BATCH_NOT_WRITTEN = "not written: the run stopped (the storage is full)"


class BatchStopped(OutOfSpaceError):
    """A fatal storage failure (disk full, quota) stopped a batch. ``outcomes``: one per item of the batch, in
    order: what was labelled or skipped before the stop, and ``not written`` for the rest; the message is the
    failure's. Not retried (:func:`tasks.retry.is_transient`); the run stops (:func:`flows.engine.run_jobs`)."""

    def __init__(self, message: str, outcomes: list[ImageOutcome] | None = None):
        super().__init__(message)
        self.outcomes = list(outcomes or [])


@task(name="label-batch", cache_policy=NO_CACHE, task_run_name="label-{items[0].url}+", **STORAGE_RETRIES)
def label_batch(items: list[WorkItem], labeller: Labeller, job: LabelJob) -> list[ImageOutcome]:
    """Label ``items`` with ``labeller`` into the job's archive; returns one outcome per item, in order.

    Raises:
        BatchStopped: the storage is full: the batch stopped, with the outcomes so far.
        Exception: what fails for the whole batch before any item (the archive cannot be opened).
    """
    archive = MaskArchive.open(job.archive_url, resolved_storage_options(job.run), mode="a")
    outcomes: dict[str, ImageOutcome] = {}
    first: dict[str, tuple[tuple[str, ...], float]] = {}  # url -> (concepts out of date at the first try, start)
    queue, attempt = list(items), 1
    try:
        while queue:
            again = _attempt(queue, labeller, archive, job, outcomes, first)
            if not again:
                break
            if attempt > len(retry.ITEM_RETRY_DELAYS):
                for item, exc in again:
                    outcomes[item.url] = _failed(item.url, first.get(item.url, ((), time.perf_counter()))[1],
                                                 f"{exc} (still failing after {attempt} attempts)")
                break
            delay = retry.ITEM_RETRY_DELAYS[attempt - 1]
            _log.warning("%d item(s) met a transient storage failure; trying them again in %.0f s (first: %s)",
                         len(again), delay, again[0][1])
            time.sleep(delay)
            queue, attempt = [item for item, _ in again], attempt + 1
    except Exception as exc:
        if failure_kind(exc) != "fatal":
            raise
        done = [outcomes.get(item.url) or ImageOutcome(item.url, "failed", reason=BATCH_NOT_WRITTEN)
                for item in items]
        raise BatchStopped(str(exc), done) from exc
    return [outcomes[item.url] for item in items]


def _attempt(queue: list[WorkItem], labeller: Labeller, archive: MaskArchive, job: LabelJob,
             outcomes: dict[str, ImageOutcome], first: dict[str, tuple[tuple[str, ...], float]]
             ) -> list[tuple[WorkItem, Exception]]:
    """One try at every item of ``queue``: outcomes go into ``outcomes``; returns the items whose storage failed
    transiently, with the error. A fatal error is raised."""
    again: list[tuple[WorkItem, Exception]] = []

    def settle(item: WorkItem, exc: Exception) -> None:
        kind = failure_kind(exc)
        if kind == "fatal":
            raise exc
        if kind == "transient":
            again.append((item, exc))
        else:
            outcomes[item.url] = _failed(item.url, first.get(item.url, ((), time.perf_counter()))[1], exc)

    tiles: list[Pending] = []
    # freshness checks, reads, hashes and decodes are I/O-bound: the batch's items go through them at once
    with ThreadPoolExecutor(max_workers=max(1, min(IO_THREADS, len(queue)))) as pool:
        checked = list(pool.map(lambda item: _check(item, labeller, archive, job), queue))
    for item, (pending, error, started) in zip(queue, checked):
        todo, began = first.get(item.url, ((), started))
        first[item.url] = (todo or (pending.todo if pending is not None else ()), began)
        if error is not None:
            settle(item, error)
        elif pending is None:  # up to date: written by an earlier try of this batch, or before
            outcomes[item.url] = _done(item.url, first[item.url])
        elif pending.image is None:
            try:
                labeller.label_scene(pending, archive, job)
                outcomes[item.url] = _done(item.url, first[item.url])
            except Exception as exc:
                settle(item, exc)
        else:
            tiles.append(pending)
    _label_tiles(tiles, labeller, archive, job, outcomes, first, settle)
    return again


def _label_tiles(tiles: list[Pending], labeller: Labeller, archive: MaskArchive, job: LabelJob,
                 outcomes: dict[str, ImageOutcome], first: dict[str, tuple[tuple[str, ...], float]], settle) -> None:
    """The tiles through the labeller together; if the labeller fails as a whole (an error not of one tile, e.g.
    a write that fails), the tiles it did not report on go through it one by one, so that each fails (or not)
    for its own reason."""
    if not tiles:
        return
    reported: set[str] = set()
    try:
        for tile, result in labeller.label_tiles(tiles, archive, job):
            reported.add(tile.url)
            if isinstance(result, Exception):
                settle(tile.item, result)
            else:
                outcomes[tile.url] = _done(tile.url, first[tile.url])
    except Exception as exc:
        rest = [t for t in tiles if t.url not in reported]
        kind = failure_kind(exc)
        if kind == "fatal":
            raise
        if len(rest) == 1 or kind == "transient":  # a transient failure: those tiles are tried again later
            for tile in rest:
                settle(tile.item, exc)
            return
        for tile in rest:
            _label_tiles([tile], labeller, archive, job, outcomes, first, settle)


def _done(url: str, first: tuple[tuple[str, ...], float]) -> ImageOutcome:
    """``labelled`` with the concepts that were out of date at the first try (all written now), or ``skipped``."""
    todo, started = first
    if todo:
        return ImageOutcome(url, "labelled", todo, time.perf_counter() - started)
    return ImageOutcome(url, "skipped", seconds=time.perf_counter() - started)


def _check(item: WorkItem, labeller: Labeller, archive: MaskArchive, job: LabelJob
           ) -> tuple[Pending | None, Exception | None, float]:
    """:func:`_out_of_date` in a reader thread; any error is returned for the item (the caller sorts it)."""
    started = time.perf_counter()
    try:
        return _out_of_date(item, labeller, archive, job, started), None, started
    except Exception as exc:
        return None, exc, started


def _failed(url: str, started: float, exc: Exception | str) -> ImageOutcome:
    return ImageOutcome(url, "failed", seconds=time.perf_counter() - started, reason=str(exc))


def _out_of_date(item: WorkItem, labeller: Labeller, archive: MaskArchive, job: LabelJob, started: float
                 ) -> Pending | None:
    """The item with the concepts to write, read as far as its labeller needs; None when all are up to date.
    The listing stamp decides without a read when nothing changed; otherwise the sha256 of the bytes does."""
    so, force = resolved_storage_options(job.run), job.run.force
    kind: ItemKind = item.kind if labeller.scenes else "tile"
    methods = labeller.methods(kind)
    key = image_key(item.url, job.input_prefix)
    records = archive.mask_records([(concept, key) for concept in methods])
    if item.stamp is not None and not any(
        relabel_reason(records[c, key], m, stamp=item.stamp, force=force) for c, m in methods.items()
    ):
        return None
    if kind == "scene":
        data, sha = None, object_sha256(item.url, so)
    else:
        data = storage.read_bytes(item.url, so)
        sha = hashlib.sha256(data).hexdigest()
    todo = tuple(c for c, m in methods.items() if relabel_reason(records[c, key], m, sha256=sha, force=force))
    if not todo:
        return None
    stamp = item.stamp or storage.stat_stamp(item.url, so)
    image = source_hw = None
    if data is not None:  # pixel count checked from the header first; a large tile decoded at the size used
        image, source_hw = imageio.decode_tile(data, item.url, max_pixels=job.run.max_image_pixels,
                                               input_side=getattr(labeller, "input_side", None))
    return Pending(item, key, sha, stamp, todo, image, started, read_seconds=time.perf_counter() - started,
                   source_hw=source_hw)


def object_sha256(url: str, storage_options: dict | None) -> str:
    """sha256 of an object read in blocks (bounded memory for scenes of many GB)."""
    fs, path = storage.url_to_fs(url, storage_options)
    digest = hashlib.sha256()
    try:
        with fs.open(path, "rb") as handle:
            while block := handle.read(HASH_BLOCK):
                digest.update(block)
    except Exception as exc:
        raise storage.storage_error("read", url, exc) from exc
    return digest.hexdigest()
