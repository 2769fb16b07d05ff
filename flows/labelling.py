"""Flows: ``label_collection`` (a reference manifest + a glob on object storage -> a Zarr mask archive) and
``segment_images`` (the same for an explicit list of images).

The flow body is a plain loop: list the images, prepare each concept once, label batches (each worker loads the
backbone once and serves many images), summarise. Re-running on the same inputs writes nothing.

Batches run on a thread pool in the flow's process (``task_runner="threads"``, the default) or on a Dask cluster
through prefect-dask (``task_runner="dask"``: a local cluster of ``dask_workers`` processes, or the scheduler at
``dask_address``). Flow results are plain dicts, serialised as JSON wherever result persistence is switched on.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Sequence
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.client.orchestration import get_client
from prefect.exceptions import ObjectNotFound
from prefect.futures import as_completed
from prefect.runtime import flow_run
from prefect.settings import get_current_settings
from prefect.states import Completed, Failed
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner
from pydantic import Field
from tqdm import tqdm

from dinoseg_core.io.archive import MaskArchive
from dinoseg_core.config import DEFAULT_BACKBONE
from dinoseg_core.config import MethodOptions
from dinoseg_core.errors import InputError
from tasks.labelling import label_batch, list_images
from tasks.references import load_references, prepare_concept
from tasks.reporting import write_run_log
from tasks.runtime import BackboneSpec
from tasks.settings import ImageOutcome, LabelSettings

#: Images per task: large enough to amortise a task's overhead and batch the backbone, small enough for progress.
DEFAULT_BATCH_SIZE = 8
#: Where label batches run: a thread pool in the flow's process, or a Dask cluster (prefect-dask).
TaskRunnerKind = Literal["threads", "dask"]
#: Flow results (the run's summary) are plain dicts: never pickled, wherever results are persisted.
RESULT_SERIALIZER = "json"


def _prefix(pattern: str) -> str:
    """The part of a glob pattern before its first wildcard, cut back to a folder: image keys are relative to it."""
    cut = min((i for i, ch in enumerate(pattern) if ch in "*?["), default=len(pattern))
    return pattern[:cut].rsplit("/", 1)[0]


def run_labelling(
    references: str,
    images: str | Sequence[str],
    archive: str,
    backbone: str,
    device: str | None,
    dtype: str | None,
    storage_options: dict[str, Any] | None,
    method: MethodOptions | None,
    force: bool,
    save_similarity: bool,
    cache: str | None,
    batch_size: int,
    workers: int,
    runner: TaskRunnerKind = "threads",
    dask_address: str | None = None,
    dask_workers: int = 2,
    concurrency_limit: str | None = None,
):
    """The body shared by both flows."""
    logger = get_run_logger()
    if batch_size < 1:
        raise InputError(f"batch_size={batch_size}: must be at least 1")
    if workers < 1:
        raise InputError(f"workers={workers}: must be at least 1")
    batch_runner = task_runner(workers, runner, dask_address, dask_workers)  # a bad choice fails before any work
    if concurrency_limit is not None:
        _check_concurrency_limit(concurrency_limit)
    started = time.perf_counter()
    run_id = str(flow_run.get_id() or uuid.uuid4())
    created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    MaskArchive.open(archive, storage_options, mode="a")  # fail fast on a foreign or unreadable archive
    manifest = load_references(references, storage_options)
    items = list_images(images, storage_options)
    settings = LabelSettings(
        backbone=BackboneSpec(backbone, device, dtype),
        archive_url=archive,
        storage_options=storage_options,
        cache_url=cache,
        method_options=method.model_dump(exclude_none=True) if method is not None else {},
        force=force,
        save_similarity=save_similarity,
        input_prefix=_prefix(images) if isinstance(images, str) else None,
        concurrency_limit=concurrency_limit,
    )
    concepts = [prepare_concept(manifest, name, settings) for name in manifest.concepts]
    logger.info("%d image(s), %d concept(s): %s", len(items), len(concepts), ", ".join(manifest.concepts))

    batches = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
    labelling_started = time.perf_counter()
    outcomes = run_jobs(
        batch_runner, label_batch,
        [({"items": batch, "concepts": concepts, "settings": settings}, [url for url, _ in batch]) for batch in batches],
        f"dinoseg: {len(items)} images",
    )
    return finish_run(outcomes, archive, storage_options, started, labelling_started, run_id, {
        "started": created, "references": references, "images": images if isinstance(images, str) else list(images),
        "backbone": backbone, "method": settings.method_options, "force": force,
    })


def run_jobs(runner: TaskRunner, task, jobs: list[tuple[dict[str, Any], list[str]]], description: str) -> list[ImageOutcome]:
    """Submit ``task`` once per (parameters, image URLs) job on ``runner`` and collect the outcomes as they come, with
    a progress artifact and, on a terminal, a progress bar. A job whose retries ran out fails each of its images
    with the job's error as the reason."""
    total = sum(len(urls) for _, urls in jobs)
    progress = create_progress_artifact(0.0, description=description)
    outcomes: list[ImageOutcome] = []
    bar = tqdm(total=total, desc="label", unit="image", disable=None)  # shown on a terminal only
    with runner:
        futures = {runner.submit(task, parameters): urls for parameters, urls in jobs}
        for future in as_completed(list(futures)):
            try:
                result = future.result()
                outcomes.extend(result if isinstance(result, list) else [result])
            except Exception as exc:  # retries exhausted: every image of the job failed for this reason
                reason = f"{type(exc).__name__}: {exc}"
                outcomes.extend(ImageOutcome(url, "failed", reason=reason) for url in futures[future])
            update_progress_artifact(progress, 100.0 * len(outcomes) / max(total, 1))
            bar.update(len(futures[future]))
    bar.close()
    return outcomes


def finish_run(
    outcomes: list[ImageOutcome], archive: str, storage_options: dict[str, Any] | None, started: float,
    labelling_started: float, run_id: str, parameters: dict[str, Any], *, extra: dict[str, Any] | None = None,
    extra_rows: list[dict[str, Any]] = (), title: str = "dinoseg labelling summary",
):
    """The end of every labelling flow: summary table artifact, run log (only when something happened) and the
    final state: Completed, or Failed listing the failures so that a schedule's owner sees them."""
    summary = {**_summary(outcomes, time.perf_counter() - started, time.perf_counter() - labelling_started),
               **(extra or {})}
    get_run_logger().info("labelled %(labelled)d, skipped %(skipped)d, failed %(failed)d", summary)
    create_table_artifact(
        [{"status": k, "images": summary[k]} for k in ("labelled", "skipped", "failed")]
        + [{"status": "seconds per labelled image", "images": summary["seconds_per_labelled_image"]}]
        + list(extra_rows)
        + [{"status": f"failed: {f['uri']}", "images": f["reason"]} for f in summary["failures"]],
        description=title,
    )
    if summary["labelled"] or summary["failed"]:  # a run that changed nothing writes nothing
        write_run_log(archive, storage_options, run_id, {"run_id": run_id, **parameters, **summary})
    if summary["failed"]:
        names = "; ".join(f"{f['uri']}: {f['reason']}" for f in summary["failures"][:20])
        return Failed(message=f"{summary['failed']} of {len(outcomes)} image(s) failed: {names}", data=summary)
    return Completed(message=f"labelled {summary['labelled']}, skipped {summary['skipped']}", data=summary)


def _summary(outcomes: list[ImageOutcome], seconds: float, labelling_seconds: float) -> dict[str, Any]:
    """Counts, failures, and wall seconds of the labelling stage per labelled image (0 when none)."""
    counts = {status: sum(o.status == status for o in outcomes) for status in ("labelled", "skipped", "failed")}
    per_image = labelling_seconds / counts["labelled"] if counts["labelled"] else 0.0
    return {
        **counts,
        "seconds": round(seconds, 3),
        "seconds_per_labelled_image": round(per_image, 4),
        "failures": [{"uri": o.uri, "reason": o.reason} for o in outcomes if o.status == "failed"],
    }


def task_runner(
    workers: int, kind: TaskRunnerKind = "threads", dask_address: str | None = None, dask_workers: int = 2
) -> TaskRunner:
    """Where label batches run.

    - ``threads``: a thread pool of ``workers`` in the flow's process; the threads share its backbone.
    - ``dask``: a Dask cluster through prefect-dask. With ``dask_address`` (``tcp://host:8786``) the batches go to
      that running scheduler and its workers, which keep their backbone between runs; otherwise the run starts a
      local cluster of ``dask_workers`` processes with one thread each, closed at the end of the run. Either way
      every worker process loads the backbone once and labels many batches.
    """
    if kind == "threads":
        return ThreadPoolTaskRunner(max_workers=workers)
    if kind != "dask":
        raise InputError(f"task_runner={kind!r}: must be 'threads' or 'dask'")
    if dask_workers < 1:
        raise InputError(f"dask_workers={dask_workers}: must be at least 1")
    if get_current_settings().api.url is None:
        # without a server, every Dask worker process would start an ephemeral one of its own (and record its
        # task runs there, after ~40 s of start-up)
        raise InputError(
            "task_runner='dask' needs a Prefect server that the Dask workers can reach: start one "
            "(`prefect server start`) and set PREFECT_API_URL, or use task_runner='threads'"
        )
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError as exc:
        raise InputError(
            "task_runner='dask' needs prefect-dask and distributed: pip install 'dinoseg[dask]'"
        ) from exc
    if dask_address:
        return DaskTaskRunner(address=dask_address)
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        # one thread per process: torch already uses the cores of a process; the dashboard takes a free port
        cluster_kwargs={"n_workers": dask_workers, "threads_per_worker": 1, "processes": True,
                        "dashboard_address": ":0"},
    )


def _check_concurrency_limit(name: str) -> None:
    """Fail before any work when the global concurrency limit ``name`` does not exist (``strict=True`` would
    otherwise fail every batch with the same error)."""
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            raise InputError(
                f"concurrency_limit={name!r}: no global concurrency limit of that name on this Prefect server; "
                f"create it with `prefect gcl create {name} --limit 1` (slots = label batches in the backbone at "
                f"once), or leave concurrency_limit unset"
            ) from None


@flow(name="label-collection", validate_parameters=True, result_serializer=RESULT_SERIALIZER)
def label_collection(
    references: str,
    images: str,
    archive: str,
    backbone: str = DEFAULT_BACKBONE,
    device: str | None = None,
    dtype: Literal["float32", "bfloat16"] | None = None,
    storage_options: dict[str, Any] | None = None,
    method: MethodOptions | None = None,
    force: bool = False,
    save_similarity: bool = False,
    cache: str | None = None,
    batch_size: int = Field(default=DEFAULT_BATCH_SIZE, ge=1),
    workers: int = Field(default=2, ge=1),
    task_runner: TaskRunnerKind = "threads",
    dask_address: str | None = None,
    dask_workers: int = Field(default=2, ge=1),
    concurrency_limit: str | None = None,
):
    """Label every concept of a reference manifest on every image matching a glob, into a Zarr mask archive.

    Args:
        references: URL of the reference manifest (YAML/JSON: concept -> reference images and masks).
        images: glob pattern of the collection, e.g. ``s3://lake/tiles/**/*.png``.
        archive: URL of the Zarr mask archive (created if missing).
        backbone: DINOv3 backbone spec (preset, hub id, model directory/URL, Meta .pth, random:<preset>).
        storage_options: fsspec options for every URL (endpoint, credentials; never logged).
        method: INSID3 options for this run (win over the manifest's); unset fields keep the defaults.
        force: relabel everything, even masks that are up to date.
        save_similarity: also store each mask's patch-grid similarity map (float16).
        cache: URL of the feature cache (positional bases, reference embeddings); default ~/.cache/dinoseg.
        batch_size: images per task; workers: tasks at once in this process (task_runner "threads").
        task_runner: where batches run: "threads" (this process) or "dask" (prefect-dask).
        dask_address: scheduler of a running Dask cluster (``tcp://host:8786``); unset: a local cluster.
        dask_workers: processes of the local Dask cluster (one thread each, one backbone each).
        concurrency_limit: name of a Prefect global concurrency limit; each batch holds one slot while it is in
            the backbone (``prefect gcl create gpu --limit 1``: one batch per GPU at a time).
    """
    return run_labelling(references, images, archive, backbone, device, dtype, storage_options, method, force,
                         save_similarity, cache, batch_size, workers, task_runner, dask_address, dask_workers,
                         concurrency_limit)


@flow(name="segment-images", validate_parameters=True, result_serializer=RESULT_SERIALIZER)
def segment_images(
    references: str,
    images: list[str],
    archive: str,
    backbone: str = DEFAULT_BACKBONE,
    device: str | None = None,
    dtype: Literal["float32", "bfloat16"] | None = None,
    storage_options: dict[str, Any] | None = None,
    method: MethodOptions | None = None,
    force: bool = False,
    save_similarity: bool = False,
    cache: str | None = None,
    batch_size: int = Field(default=DEFAULT_BATCH_SIZE, ge=1),
    workers: int = Field(default=2, ge=1),
    task_runner: TaskRunnerKind = "threads",
    dask_address: str | None = None,
    dask_workers: int = Field(default=2, ge=1),
    concurrency_limit: str | None = None,
):
    """Like :func:`label_collection` for an explicit list of image URLs."""
    if not images:
        raise InputError("images: give at least one image URL")
    return run_labelling(references, images, archive, backbone, device, dtype, storage_options, method, force,
                         save_similarity, cache, batch_size, workers, task_runner, dask_address, dask_workers,
                         concurrency_limit)
