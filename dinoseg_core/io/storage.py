"""Storage adapter: every byte dinoseg reads or writes goes through here.

Callers pass a URL plus ``storage_options`` (the zarr/fsspec convention) and :func:`url_to_fs` turns them into an
``(fsspec filesystem, path)`` pair. Supported out of the box: plain local paths, ``file://``, ``memory://``, and
``s3://`` (needs ``s3fs``); ``gs://`` works when ``gcsfs`` is installed, and any other protocol fsspec knows works
when its package is installed. A missing backend package raises :class:`~dinoseg_core.errors.MissingDependencyError`
naming the ``pip install`` line.

Errors: every failure is a :class:`~dinoseg_core.errors.StorageError` (an ``OSError``) whose message names the URL
and the cause, of the class its cause calls for (:func:`failure_kind`, docs/reliability.md): a missing object is an
:class:`~dinoseg_core.errors.ObjectNotFoundError` (also a ``FileNotFoundError``), a refusal an
:class:`~dinoseg_core.errors.AccessDeniedError` (also a ``PermissionError``), throttling, HTTP 5xx, dropped
connections and time-outs a :class:`~dinoseg_core.errors.TransientStorageError`, a full disk or quota an
:class:`~dinoseg_core.errors.OutOfSpaceError`. Messages never contain ``storage_options`` (credentials live
there), and user:password parts of URLs are masked.

This module knows nothing of images or of the method; see :mod:`dinoseg_core.io.imageio` for decoding.
"""

from __future__ import annotations

import errno
import os
import posixpath
import re
import uuid
from typing import Any, Literal

import fsspec
from fsspec.core import split_protocol
from fsspec.implementations.local import LocalFileSystem

from dinoseg_core.errors import (
    AccessDeniedError,
    DinosegError,
    InputError,
    MissingDependencyError,
    ObjectNotFoundError,
    OutOfSpaceError,
    PermanentStorageError,
    StorageError,
    TransientStorageError,
)

__all__ = [
    "display_url",
    "exists",
    "failure_kind",
    "gdal_storage_error",
    "glob",
    "join",
    "protocol",
    "read_bytes",
    "stem",
    "storage_error",
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
            raise PermanentStorageError(
                f"Unknown storage protocol '{protocol(url)}' in {display_url(url)}. Use a local path, file://, "
                "memory://, s3:// or another protocol fsspec supports."
            ) from exc
        raise PermanentStorageError(f"Cannot open a filesystem for {display_url(url)}: {_cause(exc)}") from exc
    except DinosegError:
        raise
    except Exception as exc:  # a backend rejecting storage_options, e.g. a bad endpoint URL
        raise PermanentStorageError(f"Cannot open a filesystem for {display_url(url)}: {_cause(exc)}") from exc


def _cause(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --- what kind of failure: permanent, transient or fatal (docs/reliability.md) ---------------------------------

FailureKind = Literal["permanent", "transient", "fatal"]

#: errno values of a full disk, a quota, a file or object too large (s3fs maps S3's EntityTooLarge to EMSGSIZE).
_FULL_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EMSGSIZE, *((errno.EDQUOT,) if hasattr(errno, "EDQUOT") else ())}
#: errno values of a busy or failing service and of a broken connection (s3fs maps SlowDown/503 to EBUSY and
#: InternalError/500 to EREMOTEIO).
_PASSING_ERRNOS = {
    getattr(errno, name) for name in (
        "EBUSY", "EREMOTEIO", "EAGAIN", "ETIMEDOUT", "ECONNRESET", "ECONNREFUSED", "ECONNABORTED", "EPIPE",
        "ENETDOWN", "ENETUNREACH", "ENETRESET", "EHOSTUNREACH", "EHOSTDOWN", "ESHUTDOWN",
    ) if hasattr(errno, name)
}
#: S3 (and S3-like) error codes.
_THROTTLE_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequests",
                   "RequestThrottled", "ServiceUnavailable", "InternalError", "RequestTimeout", "OperationAborted"}
_FULL_CODES = {"EntityTooLarge", "QuotaExceeded", "XMinioStorageFull", "InsufficientStorage",
               "StorageQuotaExceeded"}
#: Exception classes (by name, anywhere in the class's MRO) of dropped connections and time-outs in the HTTP
#: stacks under fsspec: botocore (HTTPClientError: EndpointConnectionError, ConnectionClosedError, Read/Connect
#: timeouts), aiohttp, httpx/urllib3, fsspec's own FSTimeoutError.
_PASSING_CLASSES = {"HTTPClientError", "ClientConnectionError", "ClientPayloadError", "ServerDisconnectedError",
                    "ServerTimeoutError", "IncompleteReadError", "ResponseStreamingError", "ProtocolError",
                    "ConnectionClosedError", "EndpointConnectionError", "ReadTimeoutError", "ConnectTimeoutError",
                    "FSTimeoutError", "TimeoutException", "NetworkError", "RemoteProtocolError"}
#: What GDAL/curl (and stores answering in prose) say, for errors that carry no status or errno: the first match
#: in this order wins.
_MESSAGE_KINDS: tuple[tuple[re.Pattern[str], FailureKind], ...] = (
    (re.compile(r"no space left|disk quota|quota exceeded|EntityTooLarge|StorageFull|insufficient storage|"
                r"file too large|HTTP (?:response|error) code:? ?507", re.I), "fatal"),
    (re.compile(r"reduce your request rate|SlowDown|too many requests|throttl|service ?unavailable|"
                r"internal ?error|bad gateway|gateway time-?out|HTTP (?:response|error) code:? ?(?:429|5\d\d)|"
                r"curl error|timed? ?out|connection (?:reset|refused|aborted|closed)|could not resolve|"
                r"recv failure|send failure|empty reply|failed to connect|broken pipe|please try again", re.I),
     "transient"),
    (re.compile(r"HTTP (?:response|error) code:? ?4\d\d|access ?denied|forbidden|InvalidAccessKeyId|"
                r"SignatureDoesNotMatch|ExpiredToken|NoSuchKey|NoSuchBucket", re.I), "permanent"),
)


def failure_kind(exc: BaseException) -> FailureKind:
    """What kind of storage failure ``exc`` is: ``"permanent"`` (not found, access denied, bad input: the same
    request fails again), ``"transient"`` (throttling, HTTP 5xx, dropped connections, time-outs: worth retrying)
    or ``"fatal"`` (no space, quota, object too large: no later write succeeds either).

    The classes of :mod:`dinoseg_core.errors` answer for themselves; otherwise the exception and its causes are
    read: OS errno, HTTP status and S3 error code (botocore, aiohttp), the HTTP client's exception classes, and
    last what GDAL/curl wrote in the message. What none of these recognise is permanent: it is not retried.
    """
    chain = _chain(exc)
    for link in chain:
        kind = _kind_of(link)
        if kind is not None:
            return kind
    text = " | ".join(str(link) for link in chain)
    for pattern, kind in _MESSAGE_KINDS:
        if pattern.search(text):
            return kind
    return "permanent"


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and its causes (explicit first), without cycles."""
    out: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(out) < 16 and all(current is not seen for seen in out):
        out.append(current)
        current = current.__cause__ or current.__context__
    return out


def _kind_of(exc: BaseException) -> FailureKind | None:
    """The kind one exception states by its class, errno or HTTP status; None when it states none."""
    if isinstance(exc, OutOfSpaceError):
        return "fatal"
    if isinstance(exc, TransientStorageError):
        return "transient"
    if isinstance(exc, (PermanentStorageError, InputError)):
        return "permanent"
    response = getattr(exc, "response", None)  # botocore ClientError
    if isinstance(response, dict) and isinstance(response.get("Error"), dict):
        code = str(response["Error"].get("Code") or "")
        status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        return _http_kind(int(status) if str(status).isdigit() else (int(code) if code.isdigit() else None), code)
    status = getattr(exc, "status", None)  # aiohttp ClientResponseError (fsspec's http://)
    if isinstance(status, int) and 400 <= status < 600 and type(exc).__name__ == "ClientResponseError":
        return _http_kind(status, "")
    if isinstance(exc, OSError) and exc.errno is not None:
        if exc.errno in _FULL_ERRNOS:
            return "fatal"
        if exc.errno in _PASSING_ERRNOS:
            return "transient"
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return "permanent"
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return "transient"
    if any(cls.__name__ in _PASSING_CLASSES for cls in type(exc).__mro__):
        return "transient"
    return None


def _http_kind(status: int | None, code: str) -> FailureKind | None:
    if code in _FULL_CODES or status == 507:
        return "fatal"
    if code in _THROTTLE_CODES or status in (408, 429) or (status is not None and status >= 500):
        return "transient"
    if status is not None and 400 <= status < 500:
        return "permanent"
    return None


def storage_error(action: str, url: Any, exc: BaseException) -> StorageError:
    """``exc``, met while trying to ``action`` (read, write, list, ...) ``url``, as the dinoseg error of its kind
    (:func:`failure_kind`), naming the URL and the cause; a classified dinoseg storage error is returned as it is,
    a plain :class:`StorageError` keeps its message and gets its class. Raise it ``from exc``."""
    if isinstance(exc, StorageError) and type(exc) is not StorageError:
        return exc
    shown = display_url(url)
    kind = failure_kind(exc)
    if kind == "fatal":
        cls: type[StorageError] = OutOfSpaceError
        message = (f"Cannot {action} {shown}: the storage is full or over its quota ({_cause(exc)}). Free space "
                   "(or raise the quota), then run again: what was written is kept.")
    elif kind == "transient":
        cls, message = TransientStorageError, (f"Cannot {action} {shown}: a failure that may pass (throttling, a "
                                               f"server error or the network: {_cause(exc)})")
    elif _is_not_found(exc):
        cls = ObjectNotFoundError
        message = (f"Cannot write {shown}: its bucket or parent location does not exist ({_cause(exc)})"
                   if action == "write" else f"Cannot {action} {shown}: no such object ({_cause(exc)})")
    elif _is_denied(exc):
        cls, message = AccessDeniedError, (f"Cannot {action} {shown}: permission denied ({_cause(exc)}). Check the "
                                           "credentials in storage_options or the environment.")
    elif any(isinstance(link, IsADirectoryError) for link in _chain(exc)):
        cls, message = PermanentStorageError, f"Cannot {action} {shown}: it is a directory, not an object"
    else:
        cls, message = PermanentStorageError, f"Cannot {action} {shown}: {_cause(exc)}"
    err = cls(str(exc) if isinstance(exc, StorageError) else message)
    err.url = getattr(exc, "url", shown)  # not OSError.filename: that rewrites str(err) as "[Errno None] None: ..."
    return err


def _is_not_found(exc: BaseException) -> bool:
    return any(isinstance(link, FileNotFoundError) or _status(link) == 404 for link in _chain(exc)) or bool(
        re.search(r"HTTP (?:response|error) code:? ?404|NoSuchKey|NoSuchBucket", str(exc)))


def _is_denied(exc: BaseException) -> bool:
    return any(isinstance(link, PermissionError) or _status(link) in (401, 403) for link in _chain(exc)) or bool(
        re.search(r"HTTP (?:response|error) code:? ?40[13]|access ?denied|forbidden|InvalidAccessKeyId|"
                  r"SignatureDoesNotMatch|ExpiredToken", str(exc), re.I))


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        return int(status) if str(status).isdigit() else None
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) else None


def gdal_storage_error(action: str, url: Any, exc: BaseException) -> StorageError | None:
    """A GDAL/rasterio error that is really the store's answer (HTTP 403/404/5xx, "Please reduce your request
    rate", a curl time-out, a full disk) as the storage error of its kind (:func:`storage_error`); None when GDAL
    complains of the bytes themselves (then the file is corrupt or not a raster)."""
    if not any(_kind_of(link) is not None for link in _chain(exc)) and not any(
            pattern.search(str(exc)) for pattern, _ in _MESSAGE_KINDS):
        return None
    return storage_error(action, url, exc)


def read_bytes(url: str | os.PathLike[str], storage_options: dict[str, Any] | None = None) -> bytes:
    """Return the whole object at ``url``.

    Raises:
        ObjectNotFoundError: nothing at ``url`` (also a ``FileNotFoundError``).
        StorageError: any other failure, naming the URL and the cause, of its kind (:func:`storage_error`):
            AccessDeniedError, TransientStorageError, OutOfSpaceError or PermanentStorageError.
    """
    fs, path = url_to_fs(url, storage_options)
    try:
        return fs.cat_file(path)
    except DinosegError:
        raise
    except Exception as exc:
        raise storage_error("read", str(url), exc) from exc


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
        OutOfSpaceError: the disk is full or a quota is reached (fatal: no later write succeeds either).
        StorageError: any other failure, naming the URL and the cause, of its kind (:func:`storage_error`).
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
        raise storage_error("write", str(url), exc) from exc


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
        raise storage_error("check", str(url), exc) from exc


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
        raise storage_error("check", str(url), exc) from exc


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
        raise storage_error("list", pattern, exc) from exc
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
