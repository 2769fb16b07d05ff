"""Content-keyed persistence of expensive intermediate results: positional bases and embedded reference sets.

Storage adapter (fsspec + safetensors, never pickle). Keys are sha256 digests of everything the result depends on
(image and mask bytes, backbone fingerprint, the config fields that change features), so a cache can be shared by
every worker of a run, by later runs, and by several machines (point it at ``s3://...``)::

    <cache>/basis/<key>.safetensors
    <cache>/references/<key>.safetensors
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from dinoseg_core.io import storage
from dinoseg_core.errors import InputError, ObjectNotFoundError
from dinoseg_core.prototype import ReferenceSet, ReferenceShot


def default_cache_url() -> str:
    """``$DINOSEG_CACHE_DIR/features`` or ``~/.cache/dinoseg/features``."""
    root = os.environ.get("DINOSEG_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "dinoseg")
    return os.path.join(root, "features")


def content_key(*parts: str | bytes | Iterable[str]) -> str:
    """sha256 over the given parts (strings, bytes, or lists of strings), unambiguously delimited."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, (list, tuple)):
            part = json.dumps(list(part))
        data = part if isinstance(part, bytes) else str(part).encode()
        digest.update(len(data).to_bytes(8, "little") + data)
    return digest.hexdigest()


def reference_set_to_bytes(references: ReferenceSet) -> bytes:
    """Serialise the debiased features, patch masks and prototype of a reference set (safetensors)."""
    tensors = {"prototype": references.prototype.detach().cpu().contiguous()}
    grids = []
    for index, shot in enumerate(references.shots):
        tensors[f"shot{index}.features"] = shot.features_debiased.detach().cpu().contiguous()
        tensors[f"shot{index}.mask"] = shot.mask.detach().cpu().to(torch.uint8).contiguous()
        grids.append(list(shot.grid))
    return st_save(tensors, metadata={"dinoseg_reference_set": json.dumps({"grids": grids})})


def reference_set_from_bytes(data: bytes, name: str = "reference set", device=None) -> ReferenceSet:
    try:
        tensors = st_load(data)
        header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])
        grids = json.loads(header["__metadata__"]["dinoseg_reference_set"])["grids"]
    except Exception as exc:  # any parse failure means: not one of ours
        raise InputError(f"{name!r} is not a dinoseg reference-set file: {exc}") from exc
    shots = tuple(
        ReferenceShot(
            features_debiased=tensors[f"shot{i}.features"].to(device),
            mask=tensors[f"shot{i}.mask"].to(device=device, dtype=torch.bool),
            grid=tuple(grid),
        )
        for i, grid in enumerate(grids)
    )
    return ReferenceSet(shots=shots, prototype=tensors["prototype"].to(device))


class FeatureCache:
    """Bytes by (kind, key) under a URL; ``None`` for a miss. Writes are atomic per object (see storage)."""

    def __init__(self, url: str | None = None, storage_options: dict | None = None):
        self.url = url or default_cache_url()
        self.storage_options = storage_options

    def _url(self, kind: str, key: str) -> str:
        return storage.join(self.url, kind, f"{key}.safetensors")

    def get(self, kind: str, key: str) -> bytes | None:
        try:
            return storage.read_bytes(self._url(kind, key), self.storage_options)
        except ObjectNotFoundError:
            return None

    def put(self, kind: str, key: str, data: bytes) -> str:
        url = self._url(kind, key)
        storage.write_bytes(url, data, self.storage_options)
        return url
