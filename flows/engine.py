"""The body every labelling flow shares: list the images, prepare the labeller once, label batches, summarise.

A labelling flow is (a source of images) x (a labeller) -> archive records. The flows in :mod:`flows.labelling`,
:mod:`flows.scenes` and :mod:`flows.text` differ only in how they prepare their labeller; everything else (batching,
where batches run, progress, failures, the run log, the final state) is :func:`label` here.

Batches run on a thread pool in the flow's process (``run.task_runner="threads"``, the default) or on a Dask
cluster through prefect-dask (``"dask"``: a local cluster of ``run.dask_workers`` processes, or the scheduler at
``run.dask_address``). Flow results are plain dicts, serialised as JSON wherever result persistence is on.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

from prefect import get_run_logger
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
from tqdm import tqdm

from dinoseg_core.errors import InputError, OutOfSpaceError
from tasks.labelling import BATCH_NOT_WRITTEN, BatchStopped, ImageOutcome, LabelJob, Labeller, label_batch
from tasks.options import RunOptions, resolved_storage_options, run_options
from tasks.outputs import write_outputs
from tasks.reporting import open_archive, write_run_log
from tasks.retry import fatal
from tasks.runtime import thread_budget
from tasks.sources import WorkItem, input_prefix, list_images

#: Flow results (the run's summary) are plain dicts: never pickled, wherever results are persisted.
RESULT_SERIALIZER = "json"


def label(
    images: str | Sequence[str],
    archive: str,
    run: RunOptions | dict[str, Any] | None,
    prepare: Callable[[RunOptions], Labeller],
    parameters: dict[str, Any],
    *,
    title: str = "dinoseg labelling summary",
) -> Completed | Failed:
    """Label every image of ``images`` with the labeller ``prepare(run)`` returns, into ``archive``.

    ``parameters`` (what was asked, never credentials) go into the run log. Returns the final state: Completed,
    or Failed listing the failures, with the summary dict as its data.
    """
    run = run_options(run)
    started = time.perf_counter()
    run_id = str(flow_run.get_id() or uuid.uuid4())
    created = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    runner = task_runner(run)  # a bad choice fails before any work
    threads = thread_budget()
    if run.concurrency_limit is not None:
        _check_concurrency_limit(run.concurrency_limit)
    so = resolved_storage_options(run)  # a Secret block's credentials are merged in this process, never a parameter
    open_archive(archive, so, create=False)  # a foreign or unreadable archive fails before any work
    items = list_images(images, so, run.stac_asset, run.allow_reference_urls or ())
    labeller = with_item_bands(prepare(run), items)
    open_archive(archive, so, create=True)  # created only now: an invalid run leaves no empty archive behind
    job = LabelJob(archive, input_prefix(images, items), run)
    jobs = [({"items": batch, "labeller": labeller, "job": job}, [item.url for item in batch])
            for batch in batches(items, run.batch_size, labeller.scenes)]
    kinds = {item.kind for item in items} if labeller.scenes else {"tile"}
    get_run_logger().info("%d image(s) (%s) in %d batch(es); %d batch(es) at once; threads %s", len(items),
                          ", ".join(sorted(kinds)), len(jobs), run.workers, threads)
    labelling_started = time.perf_counter()
    outcomes, stopped = run_jobs(runner, jobs, f"dinoseg: {len(items)} images")
    if stopped is None:  # a full disk: nothing more is written
        outcomes = write_outputs(outcomes, job, list(labeller.methods("tile")), run_id, artifact_key("overlay"))
    record = {"started": created, "images": images if isinstance(images, str) else list(images),
              **parameters, "run": run.model_dump(exclude={"storage_options"}), "threads": threads}
    return finish_run(outcomes, archive, so, started, labelling_started, run_id, record, title=title,
                      stopped=stopped)


def with_item_bands(labeller: Labeller, items: list[WorkItem]) -> Labeller:
    """The labeller reading scenes with the bands a STAC catalog chose by name (``run.stac_asset``), when the items
    carry some: every item must carry the same, and they win over a labeller without bands of its own."""
    chosen = {item.bands for item in items if item.bands is not None}
    if not chosen:
        return labeller
    if len(chosen) > 1:
        raise InputError(f"run.stac_asset: the band names give different bands in different items ({sorted(chosen)}); "
                         "label such items in separate runs")
    bands = chosen.pop()
    if not hasattr(labeller, "bands"):
        raise InputError("run.stac_asset: band names choose bands of GeoTIFF scenes, which this flow reads as tiles "
                         "(first three bands); choose an RGB asset (e.g. visual) instead")
    if labeller.bands not in (None, bands):
        raise InputError(f"bands={list(labeller.bands)} and run.stac_asset's bands {list(bands)} disagree; give one")
    return dataclasses.replace(labeller, bands=bands)


def batches(items: list[WorkItem], batch_size: int, scenes: bool) -> list[list[WorkItem]]:
    """Tiles in batches of ``batch_size`` (one backbone pass each); a scene, read window by window, is a batch
    of its own when the labeller windows scenes."""
    tiles = [i for i in items if not (scenes and i.kind == "scene")]
    return [[i] for i in items if scenes and i.kind == "scene"] + [
        tiles[start : start + batch_size] for start in range(0, len(tiles), batch_size)]


def artifact_key(kind: str, flow_name: str | None = None) -> str:
    """The stable key of a run's ``kind`` artifact (``summary``, ``progress``, ``failures``):
    ``dinoseg-<flow name>-<kind>``, e.g. ``dinoseg-label-collection-summary``, so that the Prefect UI lists every
    run's artifact of that kind under one key. The flow name defaults to the running flow's; Prefect's key rules
    (lowercase letters, digits and dashes) are applied to it."""
    name = flow_name or flow_run.get_flow_name() or "run"
    return f"dinoseg-{re.sub(r'[^a-z0-9]+', '-', name.lower()).strip('-') or 'run'}-{kind}"


def run_jobs(runner: TaskRunner, jobs: list[tuple[dict[str, Any], list[str]]], description: str
             ) -> tuple[list[ImageOutcome], BaseException | None]:
    """Submit ``label_batch`` once per (parameters, image URLs) job on ``runner`` and collect the outcomes as they
    come, with a progress artifact (key :func:`artifact_key` ``("progress")``) and, on a terminal, a progress bar.
    Returns the outcomes and the fatal error that stopped the run (None when none did).

    A job whose retries ran out fails each of its images with the job's error as the reason. A fatal storage error
    (disk full: :class:`tasks.labelling.BatchStopped`) stops the run: jobs not started are cancelled and their
    images reported ``not written``; jobs under way end on their own (their writes fail the same way)."""
    total = sum(len(urls) for _, urls in jobs)
    progress = create_progress_artifact(0.0, key=artifact_key("progress"), description=description)
    outcomes: list[ImageOutcome] = []
    stopped: BaseException | None = None
    # shown on a terminal only (a worker's or a test's stderr is not one): done/total, failed, images/s, ETA
    bar = tqdm(total=total, desc=flow_run.get_flow_name() or "label", unit="image", disable=None, dynamic_ncols=True)
    bar.set_postfix(failed=0, refresh=False)
    with runner:
        futures = {runner.submit(label_batch, parameters): urls for parameters, urls in jobs}
        left = dict(futures)
        for future in as_completed(list(futures)):
            left.pop(future, None)
            batch, fatal = _batch_outcomes(future, futures[future])
            outcomes.extend(batch)
            update_progress_artifact(progress, 100.0 * len(outcomes) / max(total, 1))
            bar.set_postfix(failed=sum(o.status == "failed" for o in outcomes), refresh=False)
            bar.update(len(futures[future]))
            if fatal is not None:
                stopped = fatal
                break
        if stopped is not None:
            get_run_logger().error("the run stops: %s", stopped)
            for future, urls in left.items():
                wrapped = getattr(future, "wrapped_future", None)
                if wrapped is not None and wrapped.cancel():  # not started: nothing of it was written
                    outcomes.extend(ImageOutcome(url, "failed", reason=NOT_WRITTEN) for url in urls)
                else:
                    outcomes.extend(_batch_outcomes(future, urls)[0])
    bar.close()
    return outcomes, stopped


#: The reason of an image a full disk kept from being labelled.
NOT_WRITTEN = BATCH_NOT_WRITTEN


def _batch_outcomes(future: Any, urls: list[str]) -> tuple[list[ImageOutcome], BaseException | None]:
    """A finished job's outcomes, and the fatal error that stopped it (None when none did)."""
    try:
        return future.result(), None
    except Exception as exc:
        if isinstance(exc, BatchStopped) or fatal(exc):
            done = getattr(exc, "outcomes", None) or [ImageOutcome(url, "failed", reason=NOT_WRITTEN) for url in urls]
            return done, exc
        reason = f"{type(exc).__name__}: {exc}"  # retries exhausted: every image of the job failed for this reason
        return [ImageOutcome(url, "failed", reason=reason) for url in urls], None


class RunStopped(OutOfSpaceError):
    """The run stopped on a full disk (or quota): the message says why, and what was and was not written;
    ``summary`` is the run's summary (what :func:`finish_run` returns otherwise)."""

    def __init__(self, message: str, summary: dict[str, Any] | None = None):
        super().__init__(message)
        self.summary = summary or {}


def finish_run(
    outcomes: list[ImageOutcome], archive: str, storage_options: dict[str, Any] | None, started: float,
    labelling_started: float, run_id: str, parameters: dict[str, Any], *, title: str = "dinoseg labelling summary",
    stopped: BaseException | None = None,
) -> Completed | Failed:
    """The end of every labelling flow: the summary table artifact (``metric``, ``value``), a failures table
    (``uri``, ``reason``) when images failed, both keyed by :func:`artifact_key`; the run log (only when something
    happened) and the final state: Completed, or Failed listing the failures so that a schedule's owner sees
    them.

    Raises:
        RunStopped: ``stopped`` (a full disk) ended the run; raised after the artifacts, whether or not the run log
            could be written, naming what was and was not written.
    """
    summary = _summary(outcomes, time.perf_counter() - started, time.perf_counter() - labelling_started)
    if stopped is not None:
        summary["stopped"] = str(stopped)
    get_run_logger().info("labelled %(labelled)d, skipped %(skipped)d, failed %(failed)d", summary)
    create_table_artifact(
        [{"metric": f"images {k}", "value": summary[k]} for k in ("labelled", "skipped", "failed")]
        + [{"metric": "seconds", "value": summary["seconds"]},
           {"metric": "seconds per labelled image", "value": summary["seconds_per_labelled_image"]}]
        + ([{"metric": "stopped", "value": summary["stopped"]}] if stopped is not None else []),
        key=artifact_key("summary"), description=title,
    )
    if summary["failures"]:
        create_table_artifact(summary["failures"], key=artifact_key("failures"),
                              description=f"{title}: {summary['failed']} image(s) failed"
                              + (" or not written (the run stopped: the storage is full)" if stopped else ""))
    if summary["labelled"] or summary["failed"]:  # a run that changed nothing writes nothing
        try:
            write_run_log(archive, storage_options, run_id, {"run_id": run_id, **parameters, **summary})
        except Exception as exc:
            if stopped is None and not fatal(exc):
                raise
            stopped = stopped or exc
            summary["run_log"] = f"not written: {exc}"
            get_run_logger().error("the run log could not be written: %s", exc)
    if stopped is not None:
        raise RunStopped(_stopped_message(stopped, summary, outcomes), summary)
    if summary["failed"]:
        names = "; ".join(f"{f['uri']}: {f['reason']}" for f in summary["failures"][:20])
        return Failed(message=f"{summary['failed']} of {len(outcomes)} image(s) failed: {names}", data=summary)
    return Completed(message=f"labelled {summary['labelled']}, skipped {summary['skipped']}", data=summary)


#: How many unwritten or failed images a stopped run's message names (the failures artifact has them all).
STOPPED_NAMES = 50


def _stopped_message(stopped: BaseException, summary: dict[str, Any], outcomes: list[ImageOutcome]) -> str:
    unwritten = [o.uri for o in outcomes if o.status == "failed" and o.reason == NOT_WRITTEN]
    failed = [o for o in outcomes if o.status == "failed" and o.reason != NOT_WRITTEN]
    lines = [f"the run stopped: {stopped}",
             f"written: {summary['labelled']} image(s) labelled, {summary['skipped']} already up to date; "
             f"not written: {len(unwritten)}; failed: {len(failed)}"
             + ("; the run log could not be written" if "run_log" in summary else "")]
    lines += [f"  not written: {uri}" for uri in unwritten[:STOPPED_NAMES]]
    lines += [f"  failed: {o.uri}: {o.reason}" for o in failed[:STOPPED_NAMES]]
    hidden = max(0, len(unwritten) - STOPPED_NAMES) + max(0, len(failed) - STOPPED_NAMES)
    if hidden:
        lines.append(f"  ... and {hidden} more: the artifact {artifact_key('failures')} lists them all")
    return "\n".join(lines)


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


def task_runner(run: RunOptions) -> TaskRunner:
    """Where label batches run.

    - ``threads``: a thread pool of ``run.workers`` in the flow's process; the threads share its backbone.
    - ``dask``: a Dask cluster through prefect-dask. With ``run.dask_address`` (``tcp://host:8786``) the batches go
      to that running scheduler and its workers, which keep their backbone between runs; otherwise the run starts a
      local cluster of ``run.dask_workers`` processes with one thread each, closed at the end of the run. Either way
      every worker process loads the backbone once and labels many batches.
    """
    if run.task_runner == "threads":
        return ThreadPoolTaskRunner(max_workers=run.workers)
    if get_current_settings().api.url is None:
        # without a server, every Dask worker process would start an ephemeral one of its own (and record its
        # task runs there, after ~40 s of start-up)
        raise InputError(
            "run.task_runner='dask' needs a Prefect server that the Dask workers can reach: start one "
            "(`prefect server start`) and set PREFECT_API_URL, or use task_runner='threads'"
        )
    try:
        from prefect_dask import DaskTaskRunner
    except ImportError as exc:
        raise InputError("run.task_runner='dask' needs prefect-dask and distributed: pip install 'dinoseg[dask]'"
                         ) from exc
    if run.dask_address:
        return DaskTaskRunner(address=run.dask_address)
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        # one thread per process: torch already uses the cores of a process; the dashboard takes a free port
        cluster_kwargs={"n_workers": run.dask_workers, "threads_per_worker": 1, "processes": True,
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
                f"run.concurrency_limit={name!r}: no global concurrency limit of that name on this Prefect server; "
                f"create it with `prefect gcl create {name} --limit 1` (slots = label batches in the backbone at "
                f"once), or leave concurrency_limit unset"
            ) from None
