"""Tasks on the archive itself: open (or create) it, record a run in its run log, vacuum unpublished versions."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from dinoseg_core.errors import ObjectNotFoundError
from dinoseg_core.io.archive import MaskArchive
from tasks.retry import STORAGE_RETRIES


@task(name="open-archive", cache_policy=NO_CACHE, **STORAGE_RETRIES)
def open_archive(archive_url: str, storage_options: dict | None, create: bool) -> bool:
    """Check (``create`` False) or create if absent (``create`` True) the archive; returns whether it existed.
    A foreign or unreadable store fails either way; a run checks before its work and creates only once its inputs
    proved valid, so an invalid run leaves nothing behind."""
    try:
        MaskArchive.open(archive_url, storage_options, mode="r+")
        return True
    except ObjectNotFoundError:
        if create:
            MaskArchive.open(archive_url, storage_options, mode="a")
        return False


@task(name="write-run-log", cache_policy=NO_CACHE, **STORAGE_RETRIES)
def write_run_log(archive_url: str, storage_options: dict | None, run_id: str, record: dict) -> bool:
    """Store the run's record (counts, failures with reasons, parameters) under ``runs/<run_id>``, when it says
    something new: a run that labelled nothing and met only failures the last log of the same images already
    lists (a re-run over the same corrupt objects) writes nothing. Returns whether it wrote."""
    archive = MaskArchive.open(archive_url, storage_options, mode="a")
    if not record.get("labelled") and not _new_failures(archive, record):
        return False
    archive.write_run_log(run_id, record)
    return True


def _new_failures(archive: MaskArchive, record: dict) -> bool:
    """Whether ``record`` has a failure (image and reason) that the latest run log of the same images lacks."""
    failures = {(f.get("uri"), f.get("reason")) for f in record.get("failures") or []}
    if not failures:
        return False
    same = [log for log in archive.run_logs() if log.get("images") == record.get("images")]
    if not same:
        return True
    latest = max(same, key=lambda log: (str(log.get("started") or ""), str(log.get("written") or "")))
    known = {(f.get("uri"), f.get("reason")) for f in latest.get("failures") or []}
    return not failures <= known


@task(name="vacuum-archive", cache_policy=NO_CACHE, **STORAGE_RETRIES)
def vacuum_archive(archive_url: str, storage_options: dict | None, older_than_s: float) -> int:
    """Delete the versions no record points at (left by crashed writers) older than ``older_than_s`` seconds;
    never a published version, nor one a running writer may still publish. Returns how many."""
    return MaskArchive.open(archive_url, storage_options, mode="r+").vacuum(older_than_s)
