"""``quota://``: an in-memory fsspec filesystem with a byte quota. A write beyond the quota raises
``OSError(ENOSPC, "No space left on device")``, as a full disk does, without root and without filling a real disk.
Every layer above it (storage, archive, zarr's FsspecStore, the engine) runs its real code.

    QuotaFileSystem.reset()                       # empty, no quota
    MaskArchive.open("quota://run/masks.zarr")    # ... write what must fit ...
    QuotaFileSystem.limit(2500)                   # from now on, 2500 more bytes fit
"""

from __future__ import annotations

import errno

import fsspec
from fsspec.implementations.memory import MemoryFileSystem


class QuotaFileSystem(MemoryFileSystem):
    protocol = ("quota",)
    root_marker = "/"
    store: dict = {}
    pseudo_dirs = [""]
    quota = 1 << 40
    used = 0

    @classmethod
    def reset(cls) -> None:
        cls.store.clear()
        cls.pseudo_dirs[:] = [""]
        cls.used, cls.quota = 0, 1 << 40

    @classmethod
    def limit(cls, more_bytes: int) -> None:
        """Let ``more_bytes`` more bytes be written, no more."""
        cls.quota = cls.used + more_bytes

    @classmethod
    def _spend(cls, size: int) -> None:
        if cls.used + size > cls.quota:
            raise OSError(errno.ENOSPC, "No space left on device")
        cls.used += size

    def pipe_file(self, path, value, mode="overwrite", **kwargs):
        self._spend(len(value))
        return super().pipe_file(path, value, mode=mode, **kwargs)

    def _open(self, path, mode="rb", **kwargs):
        handle = super()._open(path, mode, **kwargs)
        if "w" in mode or "a" in mode:
            commit = handle.commit

            def checked_commit():
                QuotaFileSystem._spend(handle.tell())
                commit()

            handle.commit = checked_commit
        return handle


fsspec.register_implementation("quota", QuotaFileSystem, clobber=True)
