"""The Zarr v3 mask archive: one store that a nightly run fills incrementally and any number of readers browse.

Storage adapter only (zarr + fsspec through :mod:`dinoseg_core.io.storage`); it knows nothing of the method. The
archive works on any URL zarr and fsspec can open: local paths, ``file://``, ``memory://``, ``s3://`` ...

The layout (schema version 1), the provenance attributes, image keys, atomic publishing and what concurrent
writers may do are described once, in ``docs/archive.md``. In short: ``masks/<concept>/<image_key>/`` is a
record (group attrs: the current mask's provenance) pointing at an immutable version group ``<version>/`` that
holds ``mask`` (uint8 (H, W), 0/255) and optionally ``similarity`` (float16 (h, w)); a version becomes visible
by one atomic write of the record's ``zarr.json``; ``runs/<run_id>/`` holds the run logs.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import hashlib
import json
import logging
import os
import posixpath
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from dinoseg_core.errors import InputError, ObjectNotFoundError, StorageError
from dinoseg_core.io import storage

__all__ = [
    "SCHEMA_VERSION",
    "MaskArchive",
    "StoredMask",
    "config_digest",
    "image_key",
]

_log = logging.getLogger(__name__)

#: Schema version written to and checked against the root group's ``dinoseg_schema_version`` attribute.
SCHEMA_VERSION = 1
#: Chunk side of the mask arrays (unsharded, so parallel writers of different arrays never share an object).
MASK_CHUNK = 512
#: Attributes every :meth:`MaskArchive.write_mask` call must provide.
REQUIRED_ATTRS = ("source_uri", "source_sha256", "backbone", "backbone_fingerprint", "config", "reference_set_hash")
#: Attributes the archive sets itself (a caller's value is overwritten).
_ARCHIVE_ATTRS = ("concept", "image_key", "config_digest", "dinoseg_version", "created", "status", "version",
                  "group", "shape", "mask_sha256", "similarity_shape")

_LAYOUT = "masks/<concept>/<image_key>/<version>/{mask,similarity}; runs/<run_id>"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_VERSION = re.compile(r"^v(\d{8}T\d{6})Z-[0-9a-f]{8}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_Mode = Literal["r", "r+", "a", "w-"]


# --------------------------------------------------------------------------------------------------- helpers
@functools.lru_cache(maxsize=1)
def dinoseg_version() -> str:
    """The installed dinoseg version, ``"0+unknown"`` when running from a source tree that is not installed."""
    import dinoseg_core

    version = getattr(dinoseg_core, "__version__", None)
    if version:
        return str(version)
    try:
        from importlib.metadata import PackageNotFoundError
        from importlib.metadata import version as _dist_version

        return _dist_version("dinoseg")
    except PackageNotFoundError:
        return "0+unknown"


def _utcnow() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def config_digest(config: Mapping[str, Any]) -> str:
    """sha256 of a mask's ``config`` attribute (JSON, sorted keys): what the archive records as ``config_digest``.
    For an INSID3 config it equals ``InsidConfig.digest()`` of the same fields."""
    if not isinstance(config, Mapping):
        raise InputError(f"config must be a dict (the method's config as written in provenance), got "
                         f"{type(config).__name__}; pass config.to_dict()")
    return hashlib.sha256(json.dumps(_jsonable(dict(config), "config"), sort_keys=True).encode()).hexdigest()


def _normalise_uri(uri: str) -> str:
    """One spelling per object: local paths absolute and without ``file://``; other URLs without a trailing slash."""
    uri = str(os.fspath(uri)).strip()
    if not uri:
        raise InputError("image_key(): the source URI is empty")
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    if "://" not in uri and "::" not in uri:
        return os.path.normpath(os.path.abspath(uri))
    return uri.rstrip("/")


def image_key(uri: str, base: str | None = None, *, max_readable: int = 80) -> str:
    """A stable, readable archive key for the image at ``uri``.

    ``<readable>-<12 hex>``: the readable part is the path of ``uri`` relative to ``base`` (an input prefix such
    as ``s3://lake/tiles``) when ``uri`` lies under it, else the whole path without the protocol, with every
    character outside ``[A-Za-z0-9._-]`` (``/`` included) turned into ``_`` and cut from the left to
    ``max_readable`` characters. The hex digits are the sha256 of the full normalised URI (local paths made
    absolute), so two ``tile.png`` in different folders, or two paths that sanitise alike, get different keys,
    and the same URI always gets the same key. Moving the data to another prefix changes the keys.
    """
    full = _normalise_uri(uri)
    readable = full.split("://", 1)[-1]
    if base is not None:
        prefix = _normalise_uri(base).rstrip("/") + "/"
        if full.startswith(prefix):
            readable = full[len(prefix):]
    readable = _UNSAFE.sub("_", readable.replace("/", "_"))
    if len(readable) > max_readable:
        readable = readable[-max_readable:]
    readable = readable.lstrip("._-") or "image"
    return f"{readable}-{hashlib.sha256(full.encode()).hexdigest()[:12]}"


def _check_name(value: Any, what: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value) or value.startswith("__"):
        raise InputError(
            f"{what} {value!r} is not a valid archive name: use 1-200 characters from A-Z a-z 0-9 . _ - starting "
            f"with a letter or digit (for images, derive the key with dinoseg_core.io.archive.image_key(uri))"
        )
    return value


def _jsonable(value: Any, where: str) -> Any:
    """``value`` as plain JSON types (numpy scalars/arrays, tuples, dataclasses, paths and datetimes converted)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(dataclasses.asdict(value), where)
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise InputError(f"{where}: attribute keys must be strings, got {key!r}")
            out[key] = _jsonable(item, f"{where}.{key}")
        return out
    if isinstance(value, (list, tuple)):
        return [_jsonable(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (_dt.datetime, _dt.date)):
        return value.isoformat()
    raise InputError(f"{where}: {type(value).__name__} is not JSON-serialisable; pass str, numbers, lists or dicts")


def _group_doc(attributes: Mapping[str, Any]) -> bytes:
    return json.dumps(
        {"zarr_format": 3, "node_type": "group", "attributes": dict(attributes)}, indent=2, sort_keys=False
    ).encode()


def _new_version() -> str:
    now = _dt.datetime.now(_dt.timezone.utc)
    return f"v{now:%Y%m%dT%H%M%S}Z-{uuid.uuid4().hex[:8]}"


def _version_time(version: str) -> float | None:
    match = _VERSION.match(version)
    if not match:
        return None
    stamp = _dt.datetime.strptime(match.group(1), "%Y%m%dT%H%M%S").replace(tzinfo=_dt.timezone.utc)
    return stamp.timestamp()


def _as_mask(mask: Any) -> np.ndarray:
    arr = np.asarray(mask)
    if arr.dtype != np.bool_:
        raise InputError(
            f"mask must be a boolean (H, W) array, got dtype {arr.dtype}; convert it first, e.g. mask > 0"
        )
    if arr.ndim != 2 or 0 in arr.shape:
        raise InputError(f"mask must be a non-empty 2-D (H, W) array, got shape {arr.shape}")
    return arr


def _mask_bytes(mask: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(mask, dtype=np.uint8) * np.uint8(255)


def _sha256(data: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(data).tobytes()).hexdigest()


@dataclass(frozen=True)
class StoredMask:
    """A consistent (record, mask, similarity) triple read from the archive.

    ``record``: the provenance attributes; ``mask``: bool (H, W); ``similarity``: float32 (h, w) or None.
    """

    record: dict[str, Any]
    mask: np.ndarray
    similarity: np.ndarray | None = None


# ------------------------------------------------------------------------------------------------ the archive
class MaskArchive:
    """A dinoseg mask archive (layout: docs/archive.md). Create or open one with :meth:`open`."""

    def __init__(self, url: str, storage_options: dict[str, Any] | None, mode: _Mode, root_attrs: dict[str, Any]):
        self.url = _normalise_root(url)
        self.storage_options = dict(storage_options or {})
        self.mode = mode
        self.attrs = root_attrs
        self._fs, self._root = storage.url_to_fs(self.url, self.storage_options)
        self._root = self._root.rstrip("/")
        self._local = storage.protocol(self.url) == "file"
        self._async_fs = None
        self._known_concepts: set[str] = set()

    # ---------------------------------------------------------------------------------------- open / create
    @classmethod
    def open(cls, url: str, storage_options: dict[str, Any] | None = None, mode: _Mode = "a") -> "MaskArchive":
        """Open the archive at ``url``; create it when absent and ``mode`` allows.

        Args:
            url: local path or fsspec URL of the archive root (e.g. ``s3://lake/masks.zarr``).
            storage_options: fsspec options (credentials, ``endpoint_url``), never logged.
            mode: ``"r"`` read only, must exist; ``"r+"`` read/write, must exist; ``"a"`` read/write, created
                when absent; ``"w-"`` create, fail when something exists.

        Raises:
            ObjectNotFoundError: no archive at ``url`` and ``mode`` is ``"r"`` or ``"r+"``.
            InputError: ``url`` holds something else (a zarr store that is not a dinoseg archive, a zarr v2
                store, a non-empty directory, a file), an archive of a newer schema, or ``mode`` is unknown.
            StorageError: the storage could not be read or written.
        """
        if mode not in ("r", "r+", "a", "w-"):
            raise InputError(
                f"mode={mode!r}: use 'r' (read), 'r+' (read/write), 'a' (create if absent) or 'w-' (create)"
            )
        shown = storage.display_url(url)
        root_url = _normalise_root(url)
        meta = _read_json(storage.join(root_url, "zarr.json"), storage_options)
        if meta is not None:
            if mode == "w-":
                raise InputError(f"{shown} already exists; open it with mode='a' or choose another URL")
            return cls(root_url, storage_options, mode, _check_root(meta, shown))
        fs, path = storage.url_to_fs(root_url, storage_options)
        _refuse_foreign(fs, path, shown)
        if mode in ("r", "r+"):
            raise ObjectNotFoundError(f"No dinoseg mask archive at {shown}; create one with mode='a'")
        attrs = {
            "dinoseg_schema_version": SCHEMA_VERSION,
            "created": _utcnow(),
            "dinoseg_version": dinoseg_version(),
            "dinoseg_layout": _LAYOUT,
        }
        # Root first: another process racing to create the same archive then sees a dinoseg root, not debris.
        storage.write_bytes(storage.join(root_url, "zarr.json"), _group_doc(attrs), storage_options)
        for child in ("masks", "runs"):
            storage.write_bytes(storage.join(root_url, child, "zarr.json"), _group_doc({}), storage_options)
        return cls(root_url, storage_options, mode, attrs)

    def __repr__(self) -> str:
        return f"MaskArchive({storage.display_url(self.url)!r}, mode={self.mode!r})"

    def __reduce__(self):  # picklable for process pools / task runners: reopen, never recreate
        return (MaskArchive.open, (self.url, self.storage_options, "r" if self.mode == "r" else "r+"))

    @property
    def writable(self) -> bool:
        return self.mode != "r"

    def _check_writable(self) -> None:
        if not self.writable:
            raise InputError(f"{self!r} was opened read-only; open it with mode='a' or 'r+' to write")

    # --------------------------------------------------------------------------------------- path helpers
    def _url(self, *parts: str) -> str:
        return storage.join(self.url, *parts)

    def _path(self, *parts: str) -> str:
        return posixpath.join(self._root, *parts) if self._root else "/".join(parts)

    def _zarr_store(self, subpath: str, read_only: bool):
        """A zarr store rooted at ``subpath`` of the archive.

        Rooting the store at the version group keeps zarr from writing "missing" parent group metadata itself:
        ``create_array`` does exists-then-put on every ancestor, which on an object store could clobber a record
        published by another process in between.
        """
        from zarr.storage import FsspecStore, LocalStore

        if self._local:
            return LocalStore(self._path(subpath), read_only=read_only)
        if self._async_fs is None:
            self._async_fs = FsspecStore.from_url(self.url, storage_options=self.storage_options).fs
        return FsspecStore(self._async_fs, read_only=read_only, path=self._path(subpath))

    def _write_group(self, subpath: str, attributes: Mapping[str, Any]) -> None:
        storage.write_bytes(self._url(subpath, "zarr.json"), _group_doc(attributes), self.storage_options)

    def _list_dirs(self, subpath: str) -> list[str]:
        path = self._path(subpath)
        try:
            self._fs.invalidate_cache(path)
            entries = self._fs.ls(path, detail=True)
        except FileNotFoundError:
            return []
        except Exception as exc:
            raise StorageError(f"Cannot list {storage.display_url(self._url(subpath))}: {exc}") from exc
        names = []
        for entry in entries:
            if entry.get("type") == "directory":
                name = posixpath.basename(entry["name"].rstrip("/"))
                if name and not name.startswith("."):
                    names.append(name)
        return sorted(names)

    def _read_records(self, subpaths: list[str]) -> dict[str, dict[str, Any]]:
        """subpath -> attributes of the complete records among ``subpaths`` (one batched read on object stores)."""
        if not subpaths:
            return {}
        wanted = {self._path(s, "zarr.json"): s for s in subpaths}
        try:
            found = self._fs.cat(list(wanted), on_error="omit")
        except FileNotFoundError:
            found = {}
        except Exception as exc:
            raise StorageError(f"Cannot read mask records of {self!r}: {exc}") from exc
        out = {}
        for path, data in found.items():
            sub = wanted.get(path) or wanted.get(self._fs._strip_protocol(path))
            if sub is None or isinstance(data, Exception):
                continue
            attrs = _complete_attrs(data)
            if attrs is not None:
                out[sub] = attrs
        return out

    # ------------------------------------------------------------------------------------------- writing
    def write_mask(
        self,
        concept: str,
        image_key: str,
        mask: np.ndarray,
        attrs: Mapping[str, Any],
        similarity: np.ndarray | None = None,
    ) -> dict[str, Any]:
        """Write (or replace) the mask of ``concept`` for ``image_key`` and publish it atomically.

        Args:
            concept: concept name (a manifest concept).
            image_key: key of the source image, from :func:`image_key`.
            mask: bool (H, W) at the image's original size; stored as uint8 0/255.
            attrs: provenance; must hold ``source_uri``, ``source_sha256``, ``backbone``,
                ``backbone_fingerprint``, ``config`` (the method's config, a dict), ``reference_set_hash``; any
                other JSON-able keys are kept. The archive sets ``concept``, ``image_key``, ``config_digest``,
                ``dinoseg_version``, ``created``, ``status``, ``version``, ``group``, ``shape``,
                ``mask_sha256`` and ``similarity_shape``.
            similarity: optional float (h, w) patch-grid similarity; stored as float16.

        Returns:
            The published record (as :meth:`mask_record` would return it).
        """
        self._check_writable()
        _check_name(concept, "concept")
        _check_name(image_key, "image_key")
        mask = _as_mask(mask)
        sim = None
        if similarity is not None:
            sim = np.asarray(similarity)
            if sim.ndim != 2 or 0 in sim.shape or not np.issubdtype(sim.dtype, np.number):
                raise InputError(f"similarity must be a non-empty numeric (h, w) array, got {sim.dtype} {sim.shape}")
            sim = sim.astype(np.float16)
        mask_u8 = _mask_bytes(mask)
        record = self._provenance(concept, image_key, attrs, mask_u8.shape, _sha256(mask_u8), sim, _new_version())
        self._ensure_concept(concept)
        version = record["version"]
        vpath = record["group"]
        self._write_group(vpath, {**record, "status": "writing"})
        self._write_arrays(vpath, concept, mask_u8, sim)
        self._write_group(vpath, record)
        self._publish(concept, image_key, version, record)
        return dict(record)

    def write_streamed_mask(
        self, concept: str, image_key: str, attrs: Mapping[str, Any], fill: Callable[[Any], Mapping[str, Any] | None]
    ) -> dict[str, Any]:
        """Write a mask too large for memory (a whole remote-sensing scene), published atomically like
        :meth:`write_mask`.

        ``fill(group)`` receives the new version's open, writable ``zarr.Group`` and must create the uint8
        ``(H, W)`` array ``mask`` in it, chunk by chunk (e.g. with
        :class:`dinoseg_core.io.maskwriter.ZarrMaskWriter`); arrays it adds beside it (georeferencing) are kept, and
        the dict it returns is merged into the provenance. The mask's sha256 is then computed by reading it back
        in bands of chunk rows (bounded memory), so :meth:`load` checks streamed masks like any other.
        """
        import zarr

        self._check_writable()
        _check_name(concept, "concept")
        _check_name(image_key, "image_key")
        self._ensure_concept(concept)
        version = _new_version()
        vpath = f"masks/{concept}/{image_key}/{version}"
        self._write_group(vpath, {"status": "writing", "version": version, "concept": concept})
        try:
            group = zarr.open_group(self._zarr_store(vpath, read_only=False), mode="r+")
            extra = fill(group) or {}
            mask = group["mask"]
        except KeyError as exc:
            raise InputError(f"write_streamed_mask({concept!r}, {image_key!r}): fill() created no 'mask' array") from exc
        if len(mask.shape) != 2 or mask.dtype != np.uint8:
            raise InputError(f"streamed mask must be uint8 (H, W), got {mask.dtype} {mask.shape}")
        digest = hashlib.sha256()
        band = max(1, int(mask.chunks[0]))
        for row in range(0, mask.shape[0], band):
            digest.update(np.ascontiguousarray(mask[row : row + band]).tobytes())
        record = self._provenance(concept, image_key, {**attrs, **extra}, tuple(mask.shape), digest.hexdigest(),
                                  None, version)
        self._write_group(vpath, record)
        self._publish(concept, image_key, version, record)
        return dict(record)

    def _provenance(self, concept: str, key: str, attrs: Mapping[str, Any], shape: tuple[int, ...], mask_sha256: str,
                    sim: np.ndarray | None, version: str) -> dict[str, Any]:
        if not isinstance(attrs, Mapping):
            raise InputError(f"attrs must be a dict of provenance attributes, got {type(attrs).__name__}")
        missing = [name for name in REQUIRED_ATTRS if attrs.get(name) in (None, "")]
        if missing:
            raise InputError(
                f"write_mask({concept!r}, {key!r}): attrs lack {missing}; every mask records "
                f"{list(REQUIRED_ATTRS)} so that later runs can tell whether it is up to date"
            )
        record = _jsonable(dict(attrs), "attrs")
        if not isinstance(record["config"], dict):
            raise InputError(
                f"attrs['config'] must be the method's config as a dict (config.to_dict()), got "
                f"{type(attrs['config']).__name__}"
            )
        record.update(
            concept=concept,
            image_key=key,
            config_digest=config_digest(record["config"]),
            dinoseg_version=dinoseg_version(),
            created=_utcnow(),
            status="complete",
            version=version,
            group=f"masks/{concept}/{key}/{version}",
            shape=list(shape),
            mask_sha256=mask_sha256,
            similarity_shape=list(sim.shape) if sim is not None else None,
        )
        return record

    def _ensure_concept(self, concept: str) -> None:
        if concept in self._known_concepts:
            return
        if not self._fs.exists(self._path("masks", concept, "zarr.json")):
            # Identical bytes from every writer, so a race between two creators is harmless.
            self._write_group(f"masks/{concept}", {"concept": concept})
        self._known_concepts.add(concept)

    def _write_arrays(self, vpath: str, concept: str, mask_u8: np.ndarray, sim: np.ndarray | None) -> None:
        import zarr

        store = self._zarr_store(vpath, read_only=False)
        h, w = mask_u8.shape
        try:
            zarr.create_array(
                store, name="mask", data=mask_u8, chunks=(min(MASK_CHUNK, h), min(MASK_CHUNK, w)), fill_value=0,
                dimension_names=("y", "x"),
                attributes={"long_name": f"{concept} mask", "flag_values": [0, 255],
                            "flag_meanings": f"background {concept}"},
            )
            if sim is not None:
                zarr.create_array(
                    store, name="similarity", data=sim, chunks=sim.shape, fill_value=0.0,
                    dimension_names=("py", "px"),
                    attributes={"long_name": f"cosine similarity of target patches with the {concept} prototype",
                                "units": "1"},
                )
        except Exception as exc:
            raise StorageError(f"Cannot write mask arrays to {storage.display_url(self._url(vpath))}: {exc}") from exc

    def _publish(self, concept: str, key: str, version: str, record: Mapping[str, Any]) -> None:
        """Point the record at ``version`` (one atomic object write), then drop the version it replaced.

        The previous version is read just before the write, so a writer only ever deletes a version that was
        current before its own publish: never the one current after it (versions are never re-published).
        """
        previous = self._read_records([f"masks/{concept}/{key}"]).get(f"masks/{concept}/{key}")
        self._write_group(f"masks/{concept}/{key}", record)
        old = previous.get("version") if previous else None
        if old and old != version:
            try:
                self._delete_version(concept, key, old)
            except StorageError as exc:  # the new mask is published; a leftover is only wasted space
                _log.warning("%s; vacuum() will remove it later", exc)

    def _delete_version(self, concept: str, key: str, version: str) -> None:
        # Unpublish the version's group metadata first, then its arrays; a reader in between gets a clean miss.
        path = self._path("masks", concept, key, version)
        for target, recursive in ((posixpath.join(path, "zarr.json"), False), (path, True)):
            try:
                self._fs.rm(target, recursive=recursive)
            except FileNotFoundError:
                pass
            except Exception as exc:
                shown = storage.display_url(self._url("masks", concept, key, version))
                raise StorageError(f"Cannot delete {shown}: {exc}") from exc

    # ------------------------------------------------------------------------------------------- reading
    def mask_record(self, concept: str, image_key: str) -> dict[str, Any] | None:
        """Provenance attributes of the complete mask of ``concept`` for ``image_key``; None when absent (never
        published, deleted, or only an unfinished write exists)."""
        _check_name(concept, "concept")
        _check_name(image_key, "image_key")
        sub = f"masks/{concept}/{image_key}"
        return self._read_records([sub]).get(sub)

    def mask_records(self, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Any] | None]:
        """:meth:`mask_record` of many ``(concept, image_key)`` pairs in one batched read (concurrent requests on
        object stores): what an incremental run reads to decide what is up to date."""
        subs = {(c, k): f"masks/{_check_name(c, 'concept')}/{_check_name(k, 'image_key')}" for c, k in pairs}
        found = self._read_records(list(subs.values()))
        return {pair: found.get(sub) for pair, sub in subs.items()}

    def list_concepts(self) -> list[str]:
        """Concepts with at least a group in the archive, sorted."""
        return [name for name in self._list_dirs("masks") if _NAME.match(name)]

    def records(self, concept: str) -> dict[str, dict[str, Any]]:
        """``{image_key: record}`` of every complete mask of ``concept``: one listing and one batched read."""
        _check_name(concept, "concept")
        keys = self._list_dirs(f"masks/{concept}")
        found = self._read_records([f"masks/{concept}/{key}" for key in keys])
        return {sub.rsplit("/", 1)[-1]: rec for sub, rec in sorted(found.items())}

    def list_masks(self, concept: str | None = None) -> list[tuple[str, str]]:
        """Sorted ``(concept, image_key)`` pairs of every complete mask (of one ``concept`` when given)."""
        concepts = [_check_name(concept, "concept")] if concept is not None else self.list_concepts()
        out = []
        for name in concepts:
            keys = self._list_dirs(f"masks/{name}")
            records = self._read_records([f"masks/{name}/{key}" for key in keys])
            out.extend((name, key) for key in keys if f"masks/{name}/{key}" in records)
        return sorted(out)

    def load(self, concept: str, image_key: str, *, similarity: bool = False, attempts: int = 6) -> StoredMask:
        """Read the current mask (and optionally similarity) together with the record it belongs to.

        The mask's sha256 is checked against the record; on a mismatch or a vanished version (a relabel
        published in between) the record is read again, up to ``attempts`` times.

        Raises:
            ObjectNotFoundError: no complete mask of ``concept`` for ``image_key``.
            StorageError: the mask never matched its record (corruption) or could not be read.
        """
        import zarr

        problem = ""
        for attempt in range(max(1, attempts)):
            if attempt:
                time.sleep(min(0.5, 0.02 * 2**attempt))
            rec = self.mask_record(concept, image_key)
            if rec is None:
                raise ObjectNotFoundError(
                    f"No complete mask of concept {concept!r} for image key {image_key!r} in {self!r}"
                )
            store = self._zarr_store(rec["group"], read_only=True)
            try:
                data = np.asarray(zarr.open_array(store, path="mask", mode="r")[...])
                sim = None
                if similarity and rec.get("similarity_shape"):
                    sim = np.asarray(zarr.open_array(store, path="similarity", mode="r")[...], dtype=np.float32)
            except FileNotFoundError as exc:  # zarr's "node not found" errors are FileNotFoundErrors
                problem = f"version {rec['version']} vanished ({type(exc).__name__})"
                continue
            except Exception as exc:
                raise StorageError(f"Cannot read {storage.display_url(self._url(rec['group']))}: {exc}") from exc
            if list(data.shape) == list(rec["shape"]) and _sha256(data) == rec["mask_sha256"]:
                return StoredMask(record=rec, mask=data > 0, similarity=sim)
            problem = f"data of version {rec['version']} does not match its mask_sha256"
        raise StorageError(
            f"Cannot read a consistent mask of {concept!r} for {image_key!r} from {self!r} after {attempts} "
            f"attempts: {problem}. Relabel the image (it will be rewritten) if this persists."
        )

    def mask_array(self, concept: str, image_key: str) -> tuple[dict[str, Any], Any]:
        """(record, lazy read-only zarr array of the mask, uint8 0/255) for masks too large to load whole
        (remote-sensing scenes): read it in blocks. Raises ObjectNotFoundError without a complete mask."""
        import zarr

        rec = self.mask_record(concept, image_key)
        if rec is None:
            raise ObjectNotFoundError(f"No complete mask of concept {concept!r} for image key {image_key!r} in {self!r}")
        return rec, zarr.open_array(self._zarr_store(rec["group"], read_only=True), path="mask", mode="r")

    def read_mask(self, concept: str, image_key: str) -> np.ndarray:
        """The current mask as bool (H, W). Raises ObjectNotFoundError when there is none."""
        return self.load(concept, image_key).mask

    # ------------------------------------------------------------------------------------------ run logs
    def write_run_log(self, run_id: str, record: Mapping[str, Any]) -> None:
        """Write (or overwrite) the log of run ``run_id`` as the attrs of group ``runs/<run_id>``.

        Suggested keys: ``start``, ``end`` (ISO UTC), ``counts`` ({labelled, skipped, failed}), ``failures``
        ([{uri, reason}]), ``parameters``. Any JSON-able dict is accepted; call again to update.
        """
        self._check_writable()
        _check_name(run_id, "run_id")
        if not isinstance(record, Mapping):
            raise InputError(f"run log record must be a dict, got {type(record).__name__}")
        doc = _jsonable(dict(record), f"run log {run_id}")
        doc["run_id"] = run_id
        doc.setdefault("written", _utcnow())
        self._write_group(f"runs/{run_id}", doc)

    def run_log(self, run_id: str) -> dict[str, Any] | None:
        """The log of run ``run_id``, None when there is none."""
        _check_name(run_id, "run_id")
        meta = _read_json(self._url("runs", run_id, "zarr.json"), self.storage_options)
        return dict(meta.get("attributes") or {}) if isinstance(meta, dict) else None

    def run_logs(self) -> list[dict[str, Any]]:
        """Every run log, oldest first (by ``start`` or ``started``, the labelling flows' key, then ``written``)."""
        names = self._list_dirs("runs")
        paths = {self._path("runs", name, "zarr.json"): name for name in names}
        try:
            found = self._fs.cat(list(paths), on_error="omit") if paths else {}
        except FileNotFoundError:
            found = {}
        logs = []
        for data in found.values():
            if isinstance(data, Exception):
                continue
            try:
                attrs = json.loads(data).get("attributes") or {}
            except (ValueError, AttributeError):
                continue
            if attrs.get("run_id"):
                logs.append(attrs)
        return sorted(logs, key=lambda log: (str(log.get("start") or log.get("started") or ""),
                                             str(log.get("written") or ""), str(log["run_id"])))

    # ------------------------------------------------------------------------------------------ maintenance
    def vacuum(self, older_than_s: float = 3600.0) -> int:
        """Delete versions no record points at (left by crashed writers or lost same-image races) that are older
        than ``older_than_s`` seconds, so writes still in progress elsewhere are spared. Returns the count."""
        self._check_writable()
        cutoff = time.time() - older_than_s
        removed = 0
        for concept in self.list_concepts():
            keys = self._list_dirs(f"masks/{concept}")
            records = self._read_records([f"masks/{concept}/{key}" for key in keys])
            for key in keys:
                current = (records.get(f"masks/{concept}/{key}") or {}).get("version")
                for version in self._list_dirs(f"masks/{concept}/{key}"):
                    stamp = _version_time(version)
                    if version != current and stamp is not None and stamp <= cutoff:
                        self._delete_version(concept, key, version)
                        removed += 1
                if current is None and self._local:  # an emptied folder of a never-published image
                    try:
                        os.rmdir(self._path("masks", concept, key))  # fails, harmlessly, unless empty
                    except OSError:
                        pass
        return removed

    def consolidate(self) -> None:
        """Write zarr consolidated metadata at the root, for read-mostly snapshots opened with
        ``zarr.open_consolidated``. Stale after the next write: run it only after the last write of a run. The
        archive's own methods never read it. Cost grows with the number of masks."""
        import warnings

        import zarr

        self._check_writable()
        try:
            with warnings.catch_warnings():  # "not part of the v3 spec" (known, documented above)
                warnings.simplefilter("ignore", UserWarning)
                zarr.consolidate_metadata(self._zarr_store("", read_only=False))
        except Exception as exc:
            raise StorageError(f"Cannot consolidate the metadata of {self!r}: {exc}") from exc


# ------------------------------------------------------------------------------------------ module helpers
def _normalise_root(url: Any) -> str:
    """Archive URL without a trailing slash; a plain local path made absolute (so pickled handles and run logs
    stay valid in another working directory)."""
    text = str(os.fspath(url)).strip()
    if not text:
        raise InputError("The archive URL is empty; pass a local path or a URL such as s3://bucket/masks.zarr")
    if "://" not in text and "::" not in text:
        return os.path.abspath(text)
    return text.rstrip("/") if not text.endswith("://") else text


def _read_json(url: str, storage_options: dict[str, Any] | None) -> dict[str, Any] | None:
    try:
        data = storage.read_bytes(url, storage_options)
    except FileNotFoundError:
        return None
    except StorageError as exc:
        if isinstance(exc.__cause__, NotADirectoryError):  # the "archive" is a file; the caller says so
            return None
        raise
    try:
        doc = json.loads(data)
    except ValueError as exc:
        shown = storage.display_url(url)
        raise InputError(f"{shown} is not valid JSON ({exc}); this is not a dinoseg archive") from exc
    return doc if isinstance(doc, dict) else None


def _complete_attrs(data: bytes) -> dict[str, Any] | None:
    try:
        doc = json.loads(data)
    except ValueError:
        return None
    if not isinstance(doc, dict) or doc.get("node_type") != "group":
        return None
    attrs = doc.get("attributes")
    if not isinstance(attrs, dict) or attrs.get("status") != "complete":
        return None
    if not all(isinstance(attrs.get(k), str) for k in ("version", "group", "mask_sha256")):
        return None
    return attrs


def _check_root(meta: dict[str, Any], shown: str) -> dict[str, Any]:
    if meta.get("zarr_format") != 3 or meta.get("node_type") != "group":
        raise InputError(
            f"{shown} is not a dinoseg mask archive: its zarr.json is a zarr v{meta.get('zarr_format')} "
            f"{meta.get('node_type')}, not a v3 group. Choose a new URL for the archive."
        )
    attrs = meta.get("attributes") or {}
    version = attrs.get("dinoseg_schema_version")
    if version is None:
        raise InputError(
            f"{shown} is a zarr store but not a dinoseg mask archive (its root has no dinoseg_schema_version "
            "attribute); refusing to write into it. Choose a new URL for the archive."
        )
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise InputError(f"{shown}: invalid dinoseg_schema_version {version!r} in its root zarr.json")
    if version > SCHEMA_VERSION:
        raise InputError(
            f"{shown} was written with archive schema version {version}; this dinoseg ({dinoseg_version()}) "
            f"reads version {SCHEMA_VERSION}. Upgrade dinoseg."
        )
    return dict(attrs)


def _refuse_foreign(fs: Any, path: str, shown: str) -> None:
    """Refuse to create an archive over something that is not one (a zarr v2 store, a file, a full folder)."""
    try:
        fs.invalidate_cache(path)
        if not fs.exists(path):
            return
        if not fs.isdir(path):
            raise InputError(f"{shown} is a file, not a dinoseg mask archive; choose a new URL for the archive")
        names = [posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False)]
    except FileNotFoundError:
        return
    except InputError:
        raise
    except Exception as exc:
        raise StorageError(f"Cannot inspect {shown}: {exc}") from exc
    if {".zgroup", ".zarray", ".zattrs"} & set(names):
        raise InputError(f"{shown} is a zarr v2 store, not a dinoseg mask archive (zarr v3); choose a new URL")
    visible = [n for n in names if n and not n.startswith(".")]
    if visible:
        raise InputError(
            f"{shown} exists and is not a dinoseg mask archive (no zarr.json; it holds {sorted(visible)[:5]}); "
            "refusing to write into it. Choose a new or empty location for the archive."
        )
