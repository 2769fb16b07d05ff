"""Storage adapter: every byte dinoseg reads or writes goes through here.

Callers pass a URL plus ``storage_options`` (the zarr/fsspec convention) and :func:`url_to_fs` turns them into an
``(fsspec filesystem, path)`` pair. Supported out of the box: plain local paths, ``file://``, ``memory://``, and
``s3://`` (needs ``s3fs``); ``gs://`` works when ``gcsfs`` is installed, and any other protocol fsspec knows works
when its package is installed. A missing backend package raises :class:`~dinoseg_core.errors.MissingDependencyError`
naming the ``pip install`` line.

Errors: every failure is a :class:`~dinoseg_core.errors.StorageError` (an ``OSError``) whose message names the URL
and the cause; a missing object is an :class:`~dinoseg_core.errors.ObjectNotFoundError`, which is also a
``FileNotFoundError``. Messages never contain ``storage_options`` (credentials live there), and user:password
parts of URLs are masked.

This module knows nothing of images or of the method; see :mod:`dinoseg_core.io.imageio` for decoding.
"""

from __future__ import annotations

import os
import posixpath
import re
import uuid
from typing import Any

import fsspec
from fsspec.core import split_protocol
from fsspec.implementations.local import LocalFileSystem

from dinoseg_core.errors import DinosegError, InputError, MissingDependencyError, ObjectNotFoundError, StorageError

__all__ = [
    "display_url",
    "exists",
    "glob",
    "join",
    "protocol",
    "read_bytes",
    "stem",
    "url_to_fs",
    "write_bytes",
]

# Protocol -> (import name, pip line) for the optional backends users are most likely to reach for.
_OPTIONAL_BACKENDS: dict[str, tuple[str, str]] = {
    "s3": ("s3fs", "s3fs"),
    "s3a": ("s3fs", "s3fs"),
    "gs": ("gcsfs", "gcsfs"),
    "gcs": ("gcsfs", "gcsfs"),
    "az": ("adlfs", "adlfs"),
    "abfs": ("adlfs", "adlfs"),
    "abfss": ("adlfs", "adlfs"),
    "adl": ("adlfs", "adlfs"),
    "http": ("aiohttp", "aiohttp"),
    "https": ("aiohttp", "aiohttp"),
}

_USERINFO = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.\-]*://)[^/@]*@")


def display_url(url: Any) -> str:
    """``url`` as text safe to put in logs and error messages: a ``user:password@`` part is masked.

    Credentials passed in ``storage_options`` never reach messages in the first place.
    """
    text = os.fspath(url) if isinstance(url, os.PathLike) else str(url)
    return _USERINFO.sub(r"\1***@", text)


def _check_url(url: Any) -> str:
    if isinstance(url, os.PathLike):
        url = os.fspath(url)
    if isinstance(url, bytes):
        url = url.decode()
    if not isinstance(url, str) or not url.strip():
        raise InputError(
            f"Expected a non-empty path or URL (str), got {url!r}. Pass e.g. '/data/x.png' or 's3://bucket/x.png'."
        )
    return url


def protocol(url: str | os.PathLike[str]) -> str:
    """The storage protocol of ``url``: ``"file"`` for plain paths and ``file://`` URLs, else the scheme in lower case
    (``"s3"``, ``"memory"``, ...). For a chained URL (``simplecache::s3://b/k``) the protocol of the innermost URL,
    where the data lives."""
    url = _check_url(url)
    inner = url.rsplit("::", 1)[-1]
    proto, _ = split_protocol(inner)
    return (proto or "file").lower()


def url_to_fs(
    url: str | os.PathLike[str], storage_options: dict[str, Any] | None = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """Normalise ``url`` + ``storage_options`` into an ``(fs, path)`` pair, ``path`` as ``fs`` expects it.

    Relative local paths are made absolute. fsspec caches filesystem instances per (protocol, options), so calling
    this for every object is cheap.

    Raises:
        InputError: ``url`` is empty or not text.
        MissingDependencyError: the protocol's backend package (``s3fs``, ``gcsfs``, ...) is not installed.
        StorageError: the protocol is unknown or the filesystem cannot be created from ``storage_options``.
    """
    url = _check_url(url)
    options = dict(storage_options or {})
    try:
        return fsspec.core.url_to_fs(url, **options)
    except ImportError as exc:
        proto = protocol(url)
        package, pip_name = _OPTIONAL_BACKENDS.get(proto, (getattr(exc, "name", None) or proto, None))
        raise MissingDependencyError(package, f"Accessing {proto}:// URLs ({display_url(url)})", pip_name) from exc
    except ValueError as exc:
        if "Protocol not known" in str(exc):
            raise StorageError(
                f"Unknown storage protocol '{protocol(url)}' in {display_url(url)}. Use a local path, file://, "
                "memory://, s3:// or another protocol fsspec supports."
            ) from exc
        raise StorageError(f"Cannot open a filesystem for {display_url(url)}: {_cause(exc)}") from exc
    except DinosegError:
        raise
    except Exception as exc:  # a backend rejecting storage_options, e.g. a bad endpoint URL
        raise StorageError(f"Cannot open a filesystem for {display_url(url)}: {_cause(exc)}") from exc


def _cause(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _storage_error(action: str, url: str, exc: BaseException) -> StorageError:
    """Translate a backend exception into our hierarchy, keeping FileNotFoundError semantics."""
    shown = display_url(url)
    if isinstance(exc, FileNotFoundError):
        if action == "write":
            err: StorageError = ObjectNotFoundError(
                f"Cannot write {shown}: its bucket or parent location does not exist ({_cause(exc)})"
            )
        else:
            err = ObjectNotFoundError(f"Cannot {action} {shown}: no such object ({_cause(exc)})")
    elif isinstance(exc, IsADirectoryError):
        err = StorageError(f"Cannot {action} {shown}: it is a directory, not an object")
    elif isinstance(exc, PermissionError):
        err = StorageError(f"Cannot {action} {shown}: permission denied ({_cause(exc)}). Check the credentials "
                           "in storage_options or the environment.")
    else:
        err = StorageError(f"Cannot {action} {shown}: {_cause(exc)}")
    err.url = shown  # not OSError.filename: setting that rewrites str(err) as "[Errno None] None: ..."
    return err


def read_bytes(url: str | os.PathLike[str], storage_options: dict[str, Any] | None = None) -> bytes:
    """Return the whole object at ``url``.

    Raises:
        ObjectNotFoundError: nothing at ``url`` (also a ``FileNotFoundError``).
        StorageError: any other failure (a directory, permissions, network), naming the URL and the cause.
    """
    fs, path = url_to_fs(url, storage_options)
    try:
        return fs.cat_file(path)
    except DinosegError:
        raise
    except Exception as exc:
        raise _storage_error("read", str(url), exc) from exc


def write_bytes(url: str | os.PathLike[str], data: bytes | bytearray | memoryview,
                storage_options: dict[str, Any] | None = None) -> None:
    """Write ``data`` to ``url``, replacing any existing object, so that readers see the old or the new object and
    never a partial one.

    Local filesystem: missing parent directories are created; the bytes go to a hidden temporary file in the target
    directory which is then renamed over the target with ``os.replace`` (atomic on POSIX). This protects readers,
    not against power loss: the file is not fsynced. Object stores (S3, GCS) are atomic per PUT. Other backends
    (``memory://``, ...) write in one call.

    Raises:
        InputError: ``data`` is not bytes-like.
        ObjectNotFoundError: the bucket does not exist.
        StorageError: any other failure, naming the URL and the cause.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise InputError(f"write_bytes({display_url(url)!r}) expects bytes, got {type(data).__name__}; encode first.")
    fs, path = url_to_fs(url, storage_options)
    try:
        if isinstance(fs, LocalFileSystem):
            _atomic_local_write(path, bytes(data))
        else:
            fs.pipe_file(path, bytes(data))
    except DinosegError:
        raise
    except Exception as exc:
        raise _storage_error("write", str(url), exc) from exc


def _atomic_local_write(path: str, data: bytes) -> None:
    directory, name = os.path.split(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    if os.path.isdir(path):
        raise IsADirectoryError(path)
    tmp = os.path.join(directory, f".{name}.{uuid.uuid4().hex}.tmp")
    # os.open with 0o666 honours the umask, unlike tempfile.mkstemp (always 0o600).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def exists(url: str | os.PathLike[str], storage_options: dict[str, Any] | None = None) -> bool:
    """Whether an object (or a directory / key prefix) exists at ``url``. A missing bucket gives ``False``.

    Cached listings of the backend are dropped first, so objects written by other processes are seen.
    """
    fs, path = url_to_fs(url, storage_options)
    try:
        fs.invalidate_cache(path)
        return bool(fs.exists(path))
    except DinosegError:
        raise
    except FileNotFoundError:
        return False
    except Exception as exc:
        raise _storage_error("check", str(url), exc) from exc


def glob(pattern: str | os.PathLike[str], storage_options: dict[str, Any] | None = None) -> list[str]:
    """Objects matching ``pattern``; see :func:`glob_stamped`, which also returns each object's stamp."""
    return [url for url, _ in glob_stamped(pattern, storage_options)]


def stamp(info: dict[str, Any]) -> str:
    """A cheap change marker of an object from its listing entry: the ETag where the store has one (S3, GCS),
    else size and modification time. Equal stamps mean unchanged content for all practical purposes; a
    different stamp only means "read it and compare the sha256"."""
    etag = info.get("ETag") or info.get("etag") or info.get("md5Hash")
    if etag:
        return f"etag:{str(etag).strip(chr(34))}:{info.get('size')}"
    mtime = info.get("mtime") or info.get("LastModified") or info.get("last_modified") or info.get("updated")
    return f"mtime:{mtime}:{info.get('size')}"


def stat_stamp(url: str | os.PathLike[str], storage_options: dict[str, Any] | None = None) -> str:
    """:func:`stamp` of one object (one HEAD request on object stores)."""
    fs, path = url_to_fs(url, storage_options)
    try:
        fs.invalidate_cache(path)
        return stamp(fs.info(path))
    except DinosegError:
        raise
    except Exception as exc:
        raise _storage_error("check", str(url), exc) from exc


def glob_stamped(pattern: str | os.PathLike[str], storage_options: dict[str, Any] | None = None) -> list[tuple[str, str]]:
    """Objects matching ``pattern`` (``*``, ``?``, ``[...]``, and ``**`` for any number of directories, including
    none), as a sorted list of URLs in the form the pattern used: ``s3://bucket/key`` for ``s3://`` patterns,
    ``memory://...``, ``file:///abs/path`` for ``file://``, and absolute paths for plain path patterns. Only objects
    (files) are returned, never directories. No match gives ``[]``.

    Cached listings are dropped first, so objects written by other processes are seen. Chained URLs
    (``simplecache::...``) are not supported here.
    """
    pattern = _check_url(pattern)
    if "::" in pattern:
        raise InputError(f"glob() does not support chained URLs ({display_url(pattern)}); glob the inner URL.")
    fs, path = url_to_fs(pattern, storage_options)
    proto, _ = split_protocol(pattern)
    try:
        fs.invalidate_cache(_literal_prefix(path))
        found = fs.glob(path, detail=True)
    except DinosegError:
        raise
    except FileNotFoundError:
        return []
    except Exception as exc:
        raise _storage_error("list", pattern, exc) from exc
    files = [(p, info) for p, info in found.items() if info.get("type", "file") != "directory"]
    return sorted((_unstrip(proto, p), stamp(info)) for p, info in files)


def _literal_prefix(path: str) -> str:
    """The part of a glob pattern before its first wildcard, cut back to a directory."""
    cut = min((i for i, ch in enumerate(path) if ch in "*?["), default=len(path))
    return path[:cut].rsplit("/", 1)[0] if cut < len(path) else path


def _unstrip(proto: str | None, path: str) -> str:
    if proto is None:
        return path
    if proto.lower() in ("file", "local", "memory"):
        # file:// keeps the absolute path ("file:///tmp/x"); memory:// paths are rooted, "memory://a" == "memory:///a".
        return f"{proto}://{path}" if proto.lower() != "memory" else f"{proto}://{path.lstrip('/')}"
    return f"{proto}://{path}"


def join(base_url: str | os.PathLike[str], *parts: str) -> str:
    """Join path components onto ``base_url`` with ``/``, keeping its protocol: ``join("s3://b/root", "x", "y.png")
    == "s3://b/root/x/y.png"``. Leading and trailing slashes of ``parts`` are ignored and empty parts skipped, so a
    part never resets the URL to a root."""
    base = _check_url(base_url)
    pieces = [p.strip("/") for p in (os.fspath(p) for p in parts) if p and p.strip("/")]
    if not pieces:
        return base
    proto, _ = split_protocol(base)
    if proto is not None and base.endswith("://"):
        head = base
    elif base.rstrip("/") == "":
        head = "/"
    else:
        head = base.rstrip("/") + "/"
    return head + "/".join(pieces)


def stem(url: str | os.PathLike[str]) -> str:
    """The final component of ``url`` without its last suffix and without a query string:
    ``stem("s3://b/tiles/t_001.png") == "t_001"``, ``stem("x/a.tar.gz") == "a.tar"``."""
    url = _check_url(url)
    _, path = split_protocol(url.rsplit("::", 1)[-1])
    path = path.split("?", 1)[0].split("#", 1)[0].rstrip("/")
    name = posixpath.basename(path.replace(os.sep, "/") if os.sep != "/" else path)
    dot = name.rfind(".")
    return name[:dot] if dot > 0 else name
