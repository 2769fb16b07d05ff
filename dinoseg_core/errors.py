"""Errors raised for user input. Each refines a builtin so that ordinary ``except`` clauses still work,
and each message names the input and says how to fix it."""

from __future__ import annotations


class DinosegError(Exception):
    """Base class of every error dinoseg raises on purpose."""


class InputError(DinosegError, ValueError):
    """A user-supplied value (image, mask, option, manifest field) is invalid."""


class CheckpointError(DinosegError, ValueError):
    """A backbone checkpoint is missing, unreadable, or not a DINOv3 checkpoint."""


class StorageError(DinosegError, OSError):
    """An object could not be read from or written to storage."""


class ImageDecodeError(InputError):
    """Bytes that should hold an image could not be decoded (corrupt, truncated, empty, not an image)."""


class MissingDependencyError(DinosegError, ImportError):
    """An optional dependency is needed for the requested feature."""

    def __init__(self, package: str, feature: str, pip_name: str | None = None):
        super().__init__(
            f"{feature} needs the optional package '{package}'. Install it with: pip install {pip_name or package}"
        )


class ObjectNotFoundError(StorageError, FileNotFoundError):
    """No object exists at a URL (file, S3 key, ...). Also a ``FileNotFoundError``, so ``except
    FileNotFoundError`` clauses keep working."""
