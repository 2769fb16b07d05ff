"""Errors raised for user input and storage. Each refines a builtin so that ordinary ``except`` clauses still work,
and each message names the input and says how to fix it.

Storage failures come in three kinds (docs/reliability.md), each a class of its own:

- **permanent** (:class:`PermanentStorageError`: :class:`ObjectNotFoundError`, :class:`AccessDeniedError`, a
  request the store refuses as invalid): the same request fails the same way again; never retried, the object
  fails alone;
- **transient** (:class:`TransientStorageError`: throttling, HTTP 5xx, dropped connections, time-outs): retried
  with backoff;
- **fatal** (:class:`OutOfSpaceError`: disk full, quota, object too large): no later write can succeed either; the
  run stops and reports what was and was not written.

A plain :class:`StorageError` is classified by its cause: :func:`dinoseg_core.io.storage.failure_kind`.
"""

from __future__ import annotations

import errno


class DinosegError(Exception):
    """Base class of every error dinoseg raises on purpose."""


class InputError(DinosegError, ValueError):
    """A user-supplied value (image, mask, option, manifest field) is invalid."""


class CheckpointError(DinosegError, ValueError):
    """A backbone checkpoint is missing, unreadable, or not a DINOv3 checkpoint."""


class StorageError(DinosegError, OSError):
    """An object could not be read from or written to storage."""


class PermanentStorageError(StorageError):
    """The store answered, and will answer the same again: not found, access denied, a request it refuses as
    invalid. Never retried."""


class ObjectNotFoundError(PermanentStorageError, FileNotFoundError):
    """No object exists at a URL (file, S3 key, ...). Also a ``FileNotFoundError``, so ``except
    FileNotFoundError`` clauses keep working."""


class AccessDeniedError(PermanentStorageError, PermissionError):
    """The credentials in use may not read (or write) an object: HTTP 401/403, a local permission error. Also a
    ``PermissionError``."""


class TransientStorageError(StorageError):
    """A failure that may pass: throttling (HTTP 429/503, S3 ``SlowDown``), a server error (HTTP 5xx), a dropped
    or refused connection, a time-out. Retried with backoff."""


class OutOfSpaceError(StorageError):
    """The storage is full (``ENOSPC``), over a quota, or refuses an object as too large: no later write can
    succeed either, so the run stops. ``errno`` is ``ENOSPC``."""

    def __init__(self, *args: object):
        super().__init__(*args)
        self.errno = errno.ENOSPC  # set after construction: keeps str(err) the message


class ImageDecodeError(InputError):
    """Bytes that should hold an image could not be decoded (corrupt, truncated, empty, not an image)."""


class MissingDependencyError(DinosegError, ImportError):
    """An optional dependency is needed for the requested feature."""

    def __init__(self, package: str, feature: str, pip_name: str | None = None):
        super().__init__(
            f"{feature} needs the optional package '{package}'. Install it with: pip install {pip_name or package}"
        )
