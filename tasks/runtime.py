"""What a worker process keeps between tasks: the backbone (loaded once per process, not once per task),
segmenters sharing its positional bases, and embedded reference sets; and who may use the backbone when.

One owner of the device at a time: a batch holds its device's turn (:func:`backbone_turn`) only while it is in the
backbone, so that the other batches of the process read, hash, decode, run steps 6-9 and write meanwhile, and two
forwards never split the cores between them. The thread budget (:func:`thread_budget`) is set once per process and
reported in every run log.

Tasks receive only small, picklable values (specs, keys, URLs); the heavy objects live here, looked up by key.
Reference sets and bases are also persisted in a content-keyed :class:`FeatureCache` so that other processes
(Dask workers, later runs) load them instead of recomputing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from prefect.concurrency.sync import concurrency

from dinoseg_core.backbone import Backbone, load_backbone
from dinoseg_core.basis import BasisCache, PositionalBasis
from dinoseg_core.config import InsidConfig
from dinoseg_core.features import auto_batch_size
from dinoseg_core.io.featurestore import (
    FeatureCache,
    content_key,
    reference_set_from_bytes,
    reference_set_to_bytes,
)
from dinoseg_core.prototype import ReferenceSet
from dinoseg_core.segmenter import FEATURE_FIELDS, InContextSegmenter

log = logging.getLogger("dinoseg.runtime")

_lock = threading.RLock()
_backbones: dict[tuple, Backbone] = {}
_bases: dict[str, BasisCache] = {}
_segmenters: dict[tuple, InContextSegmenter] = {}
_references: dict[str, ReferenceSet] = {}
_persisted: set[tuple[str, str, str]] = set()  # (cache url, kind, key) known to be in a cache
_device_turns: dict[str, threading.Lock] = {}


@dataclass(frozen=True)
class BackboneSpec:
    """Which backbone, where: the ``--backbone`` value plus device and dtype (None = automatic), and whether its
    forward is compiled."""

    spec: str
    device: str | None = None
    dtype: str | None = None
    compile: bool = False


def backbone(spec: BackboneSpec, storage_options: dict | None = None) -> Backbone:
    """The process's backbone for ``spec``, loaded on first use."""
    key = (spec, json.dumps(storage_options or {}, sort_keys=True, default=str))
    with _lock:
        if key not in _backbones:
            _backbones[key] = load_backbone(
                spec.spec, device=spec.device, dtype=spec.dtype, storage_options=storage_options, compile=spec.compile
            )
        return _backbones[key]


@contextlib.contextmanager
def backbone_turn(device: Any, limit: str | None = None) -> Iterator[None]:
    """The backbone's turn for one batch on ``device``: this process's lock for the device (one batch in the
    backbone at a time) and then, with ``limit``, a slot of that Prefect global concurrency limit (so that no
    global slot is held while waiting for the local turn)."""
    with _lock:
        turn = _device_turns.setdefault(str(device), threading.Lock())
    with turn, backbone_slot(limit):
        yield


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a container's share), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def thread_budget() -> dict[str, Any]:
    """The process's thread budget, once set: torch's intra-op threads are at most the available cores, and the
    backbone has one user per device at a time (:func:`backbone_turn`), so its forwards never oversubscribe the
    cores; OpenMP's idle threads sleep (``OMP_WAIT_POLICY=PASSIVE``, set by :mod:`dinoseg_core` unless the
    environment says otherwise) instead of spinning against other processes."""
    cores = available_cores()
    with _lock:
        if torch.get_num_threads() > cores:
            torch.set_num_threads(cores)
    return {"cores": cores, "torch_threads": torch.get_num_threads(), "backbone_users_per_device": 1,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset (OpenMP default: active)")}


@contextlib.contextmanager
def backbone_slot(limit: str | None) -> Iterator[None]:
    """Hold one slot of the Prefect global concurrency limit ``limit`` (None: no limit) for backbone work, so that
    a GPU serves at most that many batches at once across every task, process and flow run.

    ``strict=True``: a limit that does not exist is an error, not silently no limit at all.
    """
    if limit is None:
        yield
        return
    with concurrency(limit, occupy=1, strict=True):
        yield


def feature_key(config: InsidConfig) -> tuple:
    """The config fields that change features: targets are extracted once per distinct value."""
    return tuple(getattr(config, name) for name in FEATURE_FIELDS)


def segmenter(
    spec: BackboneSpec, config: InsidConfig, storage_options: dict | None = None, cache: FeatureCache | None = None,
    cluster_backend: str = "auto",
) -> InContextSegmenter:
    """A segmenter for ``config``'s feature fields and a clustering backend; its positional basis is loaded from
    ``cache`` if persisted there, else computed once and persisted."""
    model = backbone(spec, storage_options)
    with _lock:
        key = (model.fingerprint, feature_key(config), cluster_backend)
        if key not in _segmenters:
            bases = _bases.setdefault(model.fingerprint, BasisCache())
            # images per forward from the device's free memory (on the CPU: the default)
            per_forward = auto_batch_size(model, (config.image_size, config.image_size))
            _segmenters[key] = InContextSegmenter(model, config, basis_cache=bases, cluster_backend=cluster_backend,
                                                  batch_size=per_forward)
        seg = _segmenters[key]
        if config.resize_mode == "square" and cache is not None:
            _share_basis(seg, cache)
        return seg


def _share_basis(seg: InContextSegmenter, cache: FeatureCache) -> None:
    """Load the square-input basis from ``cache`` if another process persisted it, else persist ours."""
    size = seg.config.image_size
    key = content_key("basis", seg.backbone.fingerprint, str(size), seg.config.basis_source, str(seg.k))
    if (cache.url, "basis", key) in _persisted:
        return
    data = cache.get("basis", key)
    if data is not None:
        seg.add_basis(PositionalBasis.from_bytes(data, name=f"{cache.url}/basis/{key}"))
    else:
        cache.put("basis", key, seg.basis().to_bytes())
    _persisted.add((cache.url, "basis", key))


def reference_set(key: str, cache: FeatureCache | None, device=None) -> ReferenceSet | None:
    """An embedded reference set by content key: from this process's memory, else from ``cache``."""
    with _lock:
        if key in _references:
            return _references[key]
    data = cache.get("references", key) if cache is not None else None
    if data is None:
        return None
    refs = reference_set_from_bytes(data, name=key, device=device)
    with _lock:
        _references[key] = refs
        _persisted.add((cache.url, "references", key))
    return refs


def remember_reference_set(key: str, refs: ReferenceSet, cache: FeatureCache | None) -> None:
    """Keep ``refs`` in this process and make sure ``cache`` holds it for other processes."""
    with _lock:
        _references[key] = refs
    if cache is not None and (cache.url, "references", key) not in _persisted:
        if cache.get("references", key) is None:
            cache.put("references", key, reference_set_to_bytes(refs))
        _persisted.add((cache.url, "references", key))


def clear() -> None:
    """Forget everything (tests; or to free memory between unrelated jobs in a long-lived worker)."""
    with _lock:
        _backbones.clear()
        _bases.clear()
        _segmenters.clear()
        _references.clear()
        _persisted.clear()
