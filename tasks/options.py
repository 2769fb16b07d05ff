"""How a labelling run runs, whatever it labels: one typed settings model shared by every labelling flow.

What is labelled (references or classes, images, archive, backbone, method options) are each flow's own
parameters; how it runs (device, storage, freshness, batching, where batches run) is :class:`RunOptions`, the
``run`` parameter of every labelling flow and the source of the command line's run options.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

#: Where label batches run: a thread pool in the flow's process, or a Dask cluster (prefect-dask).
TaskRunnerKind = Literal["threads", "dask"]


class RunOptions(BaseModel):
    """How a labelling run runs. Every field has a default; a deployment or a command sets only what it changes,
    e.g. ``--param run='{"cache": "s3://lake/dinoseg/cache", "workers": 4}'``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    device: str | None = Field(default=None, description="torch device; None: cuda if available, else cpu")
    dtype: Literal["float32", "bfloat16"] | None = Field(default=None, description="backbone dtype; None: float32")
    cluster_backend: Literal["auto", "scipy", "torch"] = Field(
        default="auto", description="where step 7 (clustering) runs: scipy (CPU), torch (the backbone's device), or "
        "auto (torch on CUDA, else scipy); every backend gives the same partitions")
    compile: bool = Field(default=False, description="torch.compile the backbone (worth it for long GPU runs)")
    storage_options: dict[str, Any] | None = Field(
        default=None, description="fsspec options for every URL (endpoint, credentials; never logged)")
    force: bool = Field(default=False, description="relabel everything, even masks that are up to date")
    save_similarity: bool = Field(default=False, description="also store each mask's similarity map (float16)")
    cache: str | None = Field(
        default=None, description="URL of the feature cache (positional bases, reference embeddings); None: "
        "~/.cache/dinoseg/features")
    batch_size: int = Field(default=8, ge=1, description="tiles per task (a scene is a task of its own)")
    workers: int = Field(default=2, ge=1, description="tasks at once in the flow's process (task_runner threads)")
    task_runner: TaskRunnerKind = Field(
        default="threads", description="where batches run: 'threads' (the flow's process) or 'dask' (prefect-dask)")
    dask_address: str | None = Field(
        default=None, description="scheduler of a running Dask cluster (tcp://host:8786); None: a local cluster")
    dask_workers: int = Field(default=2, ge=1, description="processes of the local Dask cluster")
    stac_asset: str | None = Field(
        default=None, description="when images is a STAC catalog (.json): the asset of each item to label (visual, "
        "analytic...), or band names of one multi-band asset (red,green,blue); None: 'visual', else the only image "
        "asset")
    cog_output: bool = Field(
        default=False, description="also write each georeferenced mask as a Cloud-Optimized GeoTIFF beside the "
        "archive (masks.zarr -> masks.cogs/<concept>/<image key>.tif)")
    concurrency_limit: str | None = Field(
        default=None, description="a Prefect global concurrency limit; each batch holds one slot while it is in the "
        "backbone (`prefect gcl create gpu --limit 1`)")


def run_options(run: RunOptions | dict[str, Any] | None) -> RunOptions:
    """``run`` as :class:`RunOptions` (a dict is validated; None gives the defaults)."""
    if run is None:
        return RunOptions()
    return run if isinstance(run, RunOptions) else RunOptions.model_validate(run)
