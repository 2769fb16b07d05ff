"""Flow: ``vacuum_archive``, the archive's housekeeping (weekly in prefect.yaml).

A writer that crashes between writing a mask version and publishing it leaves the version behind: nobody reads it
(records point at published versions only), but raw zarr readers list it and it takes space. Vacuuming deletes
such versions once they are older than a grace period, so a run still writing elsewhere is never disturbed.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from pydantic import Field

from flows.engine import RESULT_SERIALIZER
from tasks.options import refuse_credentials
from tasks.reporting import vacuum_archive as vacuum_task


@flow(name="vacuum-archive", validate_parameters=True, result_serializer=RESULT_SERIALIZER)
def vacuum_archive(archive: str, older_than_hours: float = Field(default=24.0, gt=0),
                   storage_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Delete the unpublished mask versions of ``archive`` older than ``older_than_hours`` (never a published one).

    Args:
        archive: URL of the Zarr mask archive.
        older_than_hours: grace period; a version younger than this may belong to a run still writing.
        storage_options: fsspec options (non-secret: credentials come from the environment).
    Returns:
        ``{"archive": ..., "removed": N}``.
    """
    refuse_credentials(storage_options)  # a flow parameter is stored in clear by the Prefect server
    removed = vacuum_task(archive, storage_options, older_than_hours * 3600.0)
    get_run_logger().info("removed %d unpublished version(s) older than %s h from %s", removed, older_than_hours,
                          archive)
    return {"archive": archive, "removed": removed}
