"""Head checkpoints of the open-vocabulary model (dinov3.seg) at any URL fsspec reads: safetensors files.

Storage adapter: what a checkpoint holds is the model's business (:func:`dinoseg_core.ovseg.model.checkpoint_state`,
:meth:`~dinoseg_core.ovseg.model.SegModel.from_checkpoint`); this module turns it into bytes at a URL and back.
File layout: the tensors (``head.<param>``, ``optim.<i>.<state>``, ``loss_history``) and, in the safetensors
header's ``__metadata__``, one entry ``dinoseg`` holding the JSON metadata (whose ``format`` must be
:data:`~dinoseg_core.ovseg.model.CHECKPOINT_FORMAT`; ``head`` names the head kind, ``small`` or ``catseg``, and
``head_config`` its architecture; a file without ``head`` predates head kinds and holds a small head).

- :func:`load_seg_model` / :func:`save_seg_model`: a whole :class:`~dinoseg_core.ovseg.model.SegModel` head;
- :class:`HeadCheckpoint`: the resumable checkpoint of :func:`dinoseg_core.ovseg.train.train` at a URL;
- :func:`read_head_checkpoint` / :func:`write_head_checkpoint`: (tensors, metadata) at a URL.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch

from dinoseg_core.errors import CheckpointError
from dinoseg_core.io import storage
from dinoseg_core.ovseg.dinotxt import DinoTxt
from dinoseg_core.ovseg.model import CHECKPOINT_FORMAT, SegModel

__all__ = [
    "HeadCheckpoint",
    "decode_head_checkpoint",
    "encode_head_checkpoint",
    "load_seg_model",
    "read_head_checkpoint",
    "save_seg_model",
    "write_head_checkpoint",
]


def encode_head_checkpoint(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> bytes:
    """A checkpoint as safetensors bytes (the metadata as JSON in the header)."""
    from safetensors.torch import save

    return save(tensors, metadata={"dinoseg": json.dumps(meta)})


def decode_head_checkpoint(data: bytes, name: str = "<bytes>") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, metadata) of a head checkpoint's bytes; ``name`` is used in messages.

    Raises:
        CheckpointError: not safetensors, or not a dinoseg head checkpoint.
    """
    from safetensors.torch import load

    try:
        tensors = load(data)
        # safetensors.torch.load drops the metadata; it sits in the JSON header after an 8-byte length.
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8:8 + header_len])
        raw = (header.get("__metadata__") or {}).get("dinoseg")
    except Exception as exc:
        raise CheckpointError(f"{name}: not a safetensors file ({type(exc).__name__}: {exc}); expected a dinoseg "
                              "head checkpoint.") from exc
    try:
        meta = json.loads(raw) if raw else {}
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{name}: corrupt dinoseg metadata ({exc}).") from exc
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{name}: not a dinoseg head checkpoint (format {meta.get('format')!r}, expected "
                              f"{CHECKPOINT_FORMAT!r}).")
    return tensors, meta


def read_head_checkpoint(url: str | os.PathLike[str], storage_options: dict[str, Any] | None = None
                         ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, metadata) of the head checkpoint at ``url``.

    Raises:
        CheckpointError: unreadable, not safetensors, or not a dinoseg head checkpoint.
        ObjectNotFoundError: nothing at ``url``.
    """
    return decode_head_checkpoint(storage.read_bytes(url, storage_options), storage.display_url(url))


def write_head_checkpoint(url: str | os.PathLike[str], tensors: dict[str, torch.Tensor], meta: dict[str, Any],
                          storage_options: dict[str, Any] | None = None) -> None:
    """Write a head checkpoint to ``url``, atomically where the storage allows."""
    storage.write_bytes(url, encode_head_checkpoint(tensors, meta), storage_options)


def load_seg_model(url: str | os.PathLike[str], dinotxt: DinoTxt, storage_options: dict[str, Any] | None = None, *,
                   allow_other_dinotxt: bool = False, kind: str | None = None) -> SegModel:
    """A :class:`SegModel` over ``dinotxt`` with the head at ``url`` (written by :func:`save_seg_model` or by
    training with a :class:`HeadCheckpoint`), of the kind the file records.

    Args:
        kind: the head kind expected (``"small"`` / ``"catseg"``); None: whichever the file holds.

    Raises:
        CheckpointError: not a head checkpoint, a missing/unexpected/misshapen tensor, a head of another kind than
            ``kind`` (both named), or (unless ``allow_other_dinotxt``) a head trained on other dino.txt weights
            than ``dinotxt``.
        ObjectNotFoundError: nothing at ``url``.
    """
    tensors, meta = read_head_checkpoint(url, storage_options)
    return SegModel.from_checkpoint(tensors, meta, dinotxt, name=storage.display_url(url),
                                    allow_other_dinotxt=allow_other_dinotxt, kind=kind)


def save_seg_model(model: SegModel, url: str | os.PathLike[str], storage_options: dict[str, Any] | None = None,
                   metadata: dict[str, Any] | None = None) -> None:
    """Write ``model``'s head (weights, kind, config and the dino.txt fingerprint, plus ``metadata``) to ``url``."""
    tensors, meta = model.checkpoint(metadata)
    write_head_checkpoint(url, tensors, meta, storage_options)


class HeadCheckpoint:
    """The checkpoint of a training run at ``url``, for ``train(..., checkpoint=HeadCheckpoint(url, so))``.

    Attributes:
        url: where it lives, as given.
        name: the URL as shown in messages (credentials masked).
    """

    def __init__(self, url: str | os.PathLike[str], storage_options: dict[str, Any] | None = None):
        self.url = os.fspath(url) if isinstance(url, os.PathLike) else str(url)
        self.storage_options = storage_options
        self.name = storage.display_url(self.url)

    def __repr__(self) -> str:
        return f"HeadCheckpoint({self.name!r})"

    def read(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """(tensors, metadata) of the checkpoint saved so far, or None when there is none yet."""
        if not storage.exists(self.url, self.storage_options):
            return None
        return read_head_checkpoint(self.url, self.storage_options)

    def write(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        """Replace the checkpoint (atomically where the storage allows)."""
        write_head_checkpoint(self.url, tensors, meta, self.storage_options)
