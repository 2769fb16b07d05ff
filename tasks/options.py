"""How a labelling run runs, whatever it labels: one typed settings model shared by every labelling flow.

What is labelled (references or classes, images, archive, backbone, method options) are each flow's own
parameters; how it runs (device, storage, freshness, batching, where batches run) is :class:`RunOptions`, the
``run`` parameter of every labelling flow and the source of the command line's run options.
"""

from __future__ import annotations

import json
import re
import threading
import time
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from dinoseg_core.errors import InputError

#: Where label batches run: a thread pool in the flow's process, or a Dask cluster (prefect-dask).
TaskRunnerKind = Literal["threads", "dask"]


class RunOptions(BaseModel):
    """How a labelling run runs. Every field has a default; a deployment or a command sets only what it changes,
    e.g. ``--param run='{"cache": "s3://lake/dinoseg/cache", "workers": 4}'``."""

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)  # errors never show secrets

    device: str | None = Field(default=None, description="torch device; None: cuda if available, else cpu")
    dtype: Literal["float32", "bfloat16"] | None = Field(default=None, description="backbone dtype; None: float32")
    cluster_backend: Literal["auto", "scipy", "torch"] = Field(
        default="auto", description="where step 7 (clustering) runs: scipy (CPU), torch (the backbone's device), or "
        "auto (torch on CUDA, else scipy); every backend gives the same partitions")
    compile: bool = Field(default=False, description="torch.compile the backbone (worth it for long GPU runs)")
    storage_options: dict[str, Any] | None = Field(
        default=None, description="fsspec options for every URL (endpoint, region, profile); credentials are "
        "refused here (parameters are stored in clear): see secret_storage_options")
    secret_storage_options: str | None = Field(
        default=None, description="name of a Prefect Secret block holding a JSON object of fsspec options with "
        "credentials (key, secret, token); merged over storage_options where the storage is read, never a parameter")
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
        "analytic...), or band names of one multi-band asset (red,green,blue), or of single-band assets (one per "
        "band, stacked as one scene); None: 'visual', else the only image asset")
    cog_output: bool = Field(
        default=False, description="also write each georeferenced mask as a Cloud-Optimized GeoTIFF beside the "
        "archive (masks.zarr -> masks.cogs/<concept>/<image key>.tif)")
    concurrency_limit: str | None = Field(
        default=None, description="a Prefect global concurrency limit; each batch holds one slot while it is in the "
        "backbone (`prefect gcl create gpu --limit 1`)")
    allow_reference_urls: list[str] | None = Field(
        default=None, description="URL prefixes a manifest's references may point to outside the manifest's own "
        "bucket or filesystem, e.g. s3://shared/refs/ (repeatable); None: none")
    max_image_pixels: int | None = Field(
        default=None, ge=1, description="largest tile (width x height) decoded, checked from its header; None: 256 x "
        "the backbone's input (8192 x 8192 at 512 px); larger tiles fail alone, tiles over 2x the input are decoded "
        "reduced")

    @field_validator("storage_options")
    @classmethod
    def _no_credentials(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if found := credential_fields(value):
            raise ValueError(credentials_refused(found, "run options"))
        return value


#: Parts of a storage option's name (lower case, letters and digits only) that mark a credential.
_CREDENTIAL_PARTS = ("secret", "token", "password", "passwd", "credential", "accesskey", "privatekey", "apikey",
                     "connectionstring", "signature", "sas")


#: gcsfs ``token`` values that name a way to find credentials rather than hold one.
_TOKEN_MODES = ("anon", "google_default", "cloud", "cache", "browser")


def credential_fields(value: Any, path: str = "storage_options") -> list[str]:
    """Where ``value`` (fsspec storage options, nested mappings and lists too) holds credentials: a key named like
    ``key``, ``*_key``, ``secret``, ``token``, ``password``, ``credentials``, ... (any case), or a URL with a
    password. Non-secret settings such as ``endpoint_url``, ``profile``, ``region_name``, ``SSEKMSKeyId`` or gcsfs's
    ``token: anon`` pass."""
    found: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            name = re.sub(r"[^a-z0-9]", "", str(key).lower())
            where = f"{path}.{key}"
            if name == "token" and item in _TOKEN_MODES:
                continue  # gcsfs's ways of finding credentials, not credentials
            if name.endswith("key") or any(part in name for part in _CREDENTIAL_PARTS):
                found.append(where)
            else:
                found.extend(credential_fields(item, where))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found.extend(credential_fields(item, f"{path}[{index}]"))
    elif isinstance(value, str) and "://" in value:
        try:
            has_password = urlsplit(value).password is not None
        except ValueError:
            has_password = False
        if has_password:
            found.append(f"{path} (a URL with a password)")
    return found


def credentials_refused(found: list[str], taken_as: str = "flow parameters") -> str:
    """The message refusing credentials ``found`` (from :func:`credential_fields`) and saying where they go."""
    return (f"{', '.join(found)}: credentials are not taken as {taken_as} (a flow's parameters are stored in "
            "clear on the Prefect server). Give them to the process that runs the flow instead: environment "
            "variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_PROFILE; "
            "GOOGLE_APPLICATION_CREDENTIALS), a named profile (storage_options {\"profile\": \"NAME\"}), or a "
            "Prefect Secret block holding them as JSON, named by secret_storage_options "
            "(--secret-storage-options NAME)")


def refuse_credentials(storage_options: dict[str, Any] | None) -> None:
    """Raise :class:`InputError` when a flow's plain ``storage_options`` parameter holds credentials."""
    if found := credential_fields(storage_options):
        raise InputError(credentials_refused(found))


#: Seconds a Secret block's value is reused in a process before it is loaded again (rotated credentials).
SECRET_TTL_S = 300.0
_secrets: dict[str, tuple[float, dict[str, Any]]] = {}
_secrets_lock = threading.Lock()


def resolved_storage_options(run: RunOptions) -> dict[str, Any] | None:
    """The run's fsspec options where they are used: ``run.storage_options`` with the JSON object of the Prefect
    Secret block named ``run.secret_storage_options`` merged over them (nested mappings such as ``client_kwargs``
    key by key). The block is loaded in the calling process (a worker's, not the flow's parameters), through the
    Prefect API it is configured with, and reused for :data:`SECRET_TTL_S`. Never pass the result as a parameter.

    Raises:
        InputError: no such block, or its value is not a JSON object.
    """
    if not run.secret_storage_options:
        return run.storage_options
    return _merged(run.storage_options or {}, _secret_options(run.secret_storage_options))


def _merged(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _secret_options(name: str) -> dict[str, Any]:
    from dinoseg_core.errors import InputError

    with _secrets_lock:
        cached = _secrets.get(name)
        if cached is not None and time.monotonic() - cached[0] < SECRET_TTL_S:
            return cached[1]
        from prefect.blocks.system import Secret

        try:
            value = Secret.load(name, _sync=True).get()
        except ValueError as exc:
            raise InputError(
                f"secret_storage_options {name!r}: no Prefect Secret block of that name ({type(exc).__name__}); "
                f"create it with Secret(value={{\"key\": ..., \"secret\": ...}}).save({name!r}) or in the UI"
            ) from None
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                value = None
        if not isinstance(value, dict):  # the value itself is never shown
            raise InputError(f"secret_storage_options {name!r}: the Secret block must hold a JSON object of fsspec "
                             'options, e.g. {"key": "...", "secret": "..."}')
        _secrets[name] = (time.monotonic(), value)
        return value


def run_options(run: RunOptions | dict[str, Any] | None) -> RunOptions:
    """``run`` as :class:`RunOptions` (a dict is validated; None gives the defaults)."""
    if run is None:
        return RunOptions()
    return run if isinstance(run, RunOptions) else RunOptions.model_validate(run)
