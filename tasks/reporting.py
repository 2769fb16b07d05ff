"""Tasks: record a run in the archive's run log."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from dinoseg_core.io.archive import MaskArchive
from tasks.retry import STORAGE_RETRIES


@task(name="write-run-log", cache_policy=NO_CACHE, **STORAGE_RETRIES)
def write_run_log(archive_url: str, storage_options: dict | None, run_id: str, record: dict) -> None:
    """Store the run's record (counts, failures with reasons, parameters) under ``runs/<run_id>``."""
    MaskArchive.open(archive_url, storage_options, mode="a").write_run_log(run_id, record)
