"""Labelled segmentation datasets (images + label maps + class names) on any storage fsspec reads.

Storage adapter: it decodes files into arrays and knows nothing of the model. An item is
``(image float32 (H, W, 3) in [0, 1], label int64 (H, W))`` with label values ``0..K-1`` indexing
:attr:`SegDataset.class_names` and ``ignore_index`` (255) for unlabelled pixels.

Layouts:

- :meth:`SegDataset.from_folder`: ``<root>/images/<stem>.<jpg|png|...>`` and ``<root>/annotations/<stem>.png``
  whose pixel values are class indices (255 = ignore), plus the class list; or, with a class table as for
  COCO-Stuff, raw ids mapped to classes;
- :meth:`SegDataset.coco_stuff`: COCO-Stuff-164k, ``<root>/images/<split>/*.jpg`` and
  ``<root>/annotations/<split>/*.png`` (the ``stuffthingmaps`` PNGs: raw stuff/thing ids, 255 unlabelled),
  with a class table mapping raw ids to names (e.g. the 171 used ids of COCO-Stuff; ids not in the table are
  ignored). Class indices follow the table's ids in increasing order.

:meth:`SegDataset.check_labels` reads every label map (in parallel) and names each file with ids that are not
classes, so that a bad annotation fails before the first training step, not in the middle of a run.

Label PNGs are read as their raw values: palette images give the palette index, greyscale the grey level;
colour-coded RGB label images are refused (convert them to indexed PNGs first).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from PIL import Image

from dinoseg_core.errors import ImageDecodeError, InputError
from dinoseg_core.io import storage
from dinoseg_core.io.imageio import read_image
from dinoseg_core.ovseg.classes import validate_class_names

__all__ = ["ArraySegDataset", "SegDataset", "decode_label_map", "read_class_table"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")


def decode_label_map(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Raw label values (int64 (H, W)) of an indexed or greyscale PNG/TIFF.

    Raises:
        ImageDecodeError: unreadable, or a colour (RGB) image whose values are not indices.
    """
    try:
        img = Image.open(io.BytesIO(bytes(data)))
        img.load()
    except Exception as exc:
        raise ImageDecodeError(f"{name}: not a readable label image ({type(exc).__name__}: {exc}).") from exc
    if img.mode in ("P", "L", "I", "I;16", "I;16L", "I;16B", "1"):
        return np.asarray(img, dtype=np.int64)
    if img.mode in ("LA", "PA"):
        return np.asarray(img.getchannel(0), dtype=np.int64)
    raise ImageDecodeError(f"{name}: a '{img.mode}' label image; expected class indices in an indexed (P) or "
                           "greyscale (L) PNG. Convert colour-coded labels to indices first.")


def read_class_table(url: str | os.PathLike[str], storage_options: dict[str, Any] | None = None) -> dict[int, str]:
    """A raw-id -> class-name table from JSON (``{"0": "person", ...}`` or ``[[0, "person"], ...]``) or text
    (one ``id name`` / ``id: name`` / ``id,name`` / ``id<TAB>name`` per line; ``#`` comments)."""
    shown = storage.display_url(url)
    text = storage.read_bytes(url, storage_options).decode("utf-8")
    table: dict[int, str] = {}
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        for number, line in enumerate(text.splitlines(), start=1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            for sep in ("\t", ":", ",", " "):
                if sep in line:
                    key, value = line.split(sep, 1)
                    break
            else:
                raise InputError(f"{shown}: line {number} {line!r} is not 'id name'")
            try:
                table[int(key.strip())] = value.strip()
            except ValueError:
                raise InputError(f"{shown}: line {number} {line!r}: {key.strip()!r} is not an integer id") from None
        return table
    items = data.items() if isinstance(data, dict) else data
    try:
        return {int(k): str(v) for k, v in items}
    except (TypeError, ValueError) as exc:
        raise InputError(f"{shown}: expected {{id: name}} or [[id, name], ...] JSON ({exc})") from exc


_TABLE_HINT = ("If the annotations hold raw ids, give a class table mapping raw id -> class name "
               "(--class-table table.txt with one 'id name' per line, or JSON {\"id\": \"name\"}; any layout, the "
               "folder one included), or name as many classes as the ids need (--classes), or fix the annotations.")


class SegDataset:
    """Images and label maps at URLs, with a class list and an optional raw-value -> class-index map.

    Args:
        image_urls / label_urls: paired lists (same length, same order).
        class_names: the K classes.
        label_map: raw label value -> class index (0..K-1); values not in it become ``ignore_index``. Without it,
            raw values are class indices already (values >= K other than ``ignore_index`` are an error).
        ignore_index: label value of unlabelled pixels.
    """

    def __init__(self, image_urls: Sequence[str], label_urls: Sequence[str], class_names: Sequence[str], *,
                 label_map: Mapping[int, int] | None = None, ignore_index: int = 255,
                 storage_options: dict[str, Any] | None = None):
        if len(image_urls) != len(label_urls):
            raise InputError(f"{len(image_urls)} images but {len(label_urls)} label maps; give one label per image")
        if not image_urls:
            raise InputError("the dataset is empty: no images found")
        self.image_urls = list(image_urls)
        self.label_urls = list(label_urls)
        self.class_names = validate_class_names(class_names)
        self.ignore_index = ignore_index
        self.storage_options = storage_options
        self._lut: np.ndarray | None = None
        if label_map is not None:
            top = max(max(label_map, default=0), ignore_index)
            lut = np.full(top + 1, ignore_index, dtype=np.int64)
            for raw, index in label_map.items():
                if not 0 <= index < len(self.class_names):
                    raise InputError(f"label_map sends raw value {raw} to class index {index}, outside 0..."
                                     f"{len(self.class_names) - 1}")
                lut[raw] = index
            self._lut = lut

    def __len__(self) -> int:
        return len(self.image_urls)

    def __repr__(self) -> str:
        return f"SegDataset({len(self)} images, {len(self.class_names)} classes)"

    def name(self, index: int) -> str:
        """The image URL of item ``index``."""
        return self.image_urls[index]

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image = read_image(self.image_urls[index], self.storage_options)
        shown = storage.display_url(self.label_urls[index])
        raw = decode_label_map(storage.read_bytes(self.label_urls[index], self.storage_options), shown)
        if raw.shape != image.shape[:2]:
            raise InputError(f"{shown}: label map is {raw.shape[1]}x{raw.shape[0]} but its image "
                             f"{storage.display_url(self.image_urls[index])} is {image.shape[1]}x{image.shape[0]}")
        if self._lut is not None:
            label = np.where(raw < len(self._lut), self._lut[np.clip(raw, 0, len(self._lut) - 1)], self.ignore_index)
        else:
            label = raw
            bad = (label >= len(self.class_names)) & (label != self.ignore_index)
            if bad.any():
                raise InputError(f"{shown}: label values {sorted(np.unique(label[bad]).tolist())[:5]} are not class "
                                 f"indices 0..{len(self.class_names) - 1} or {self.ignore_index} (ignore); "
                                 f"{_TABLE_HINT}")
        return image, label.astype(np.int64)

    def _unexpected(self, index: int) -> list[int]:
        url = self.label_urls[index]
        raw = decode_label_map(storage.read_bytes(url, self.storage_options), storage.display_url(url))
        values = np.unique(raw)
        return [int(v) for v in values if v >= len(self.class_names) and v != self.ignore_index]

    def check_labels(self, workers: int = 8, progress: bool | None = None) -> None:
        """Read every label map and refuse the dataset if any holds a value that is not a class index or the
        ignore value (with a class table, unmapped ids are ignored by design and nothing is checked).

        Args:
            workers: label maps read at once (threads; the reads are I/O).
            progress: a progress bar on stderr; None: only on a terminal (tqdm's ``disable=None``).

        Raises:
            InputError: naming every file with unexpected ids (the first 10 files) and the ids, and how to fix it.
        """
        if self._lut is not None:
            return
        from tqdm.auto import tqdm

        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            found = list(tqdm(pool.map(self._unexpected, range(len(self))), total=len(self), unit="label map",
                              desc="checking label ids", disable=None if progress is None else not progress))
        bad = [(self.label_urls[i], ids) for i, ids in enumerate(found) if ids]
        if not bad:
            return
        every = sorted({v for _, ids in bad for v in ids})
        listed = "; ".join(f"{storage.display_url(url)}: {ids[:10]}" for url, ids in bad[:10])
        more = f"; and {len(bad) - 10} more file(s)" if len(bad) > 10 else ""
        raise InputError(
            f"{len(bad)} of {len(self)} annotation(s) hold label ids that are not class indices "
            f"0..{len(self.class_names) - 1} ({len(self.class_names)} classes) or {self.ignore_index} (ignore): "
            f"{listed}{more}. Unexpected ids: {every[:20]}. {_TABLE_HINT}"
        )

    @classmethod
    def from_folder(cls, root: str, class_names: Sequence[str] | str | None = None, *, images: str = "images",
                    labels: str = "annotations", label_suffix: str = ".png", ignore_index: int = 255,
                    class_table: Mapping[int, str] | str | None = None,
                    storage_options: dict[str, Any] | None = None) -> SegDataset:
        """Pair ``<root>/<images>/<stem>.*`` with ``<root>/<labels>/<stem><label_suffix>``. Label values are class
        indices of ``class_names``; or, with ``class_table`` (raw id -> name, or its URL, as for COCO-Stuff),
        raw ids mapped to the table's classes in increasing id order (ids not in it are ignored). An image without
        a label map is an error naming it."""
        if (class_names is None) == (class_table is None):
            raise InputError("the folder layout needs either class names (label values 0, 1, ... in order) or a "
                             "class table (raw id -> class name), not both")
        label_map = None
        if class_table is not None:
            class_names, label_map = _table_classes(class_table, ignore_index, storage_options)
        image_urls = [u for u in storage.glob(storage.join(root, images, "*"), storage_options)
                      if u.lower().endswith(IMAGE_SUFFIXES)]
        label_dir = storage.join(root, labels)
        found = {storage.stem(u): u for u in storage.glob(storage.join(label_dir, "*" + label_suffix),
                                                          storage_options)}
        missing = [u for u in image_urls if storage.stem(u) not in found]
        if missing:
            raise InputError(f"{len(missing)} image(s) have no label map in {storage.display_url(label_dir)}, e.g. "
                             f"{[storage.display_url(u) for u in missing[:3]]}; expected <stem>{label_suffix} each")
        return cls(image_urls, [found[storage.stem(u)] for u in image_urls], class_names, label_map=label_map,
                   ignore_index=ignore_index, storage_options=storage_options)

    @classmethod
    def coco_stuff(cls, root: str, class_table: Mapping[int, str] | str, *, split: str = "val2017",
                   ignore_index: int = 255, storage_options: dict[str, Any] | None = None) -> SegDataset:
        """COCO-Stuff layout (see the module docstring). ``class_table``: raw id -> name, or the URL of such a
        table (:func:`read_class_table`)."""
        names, label_map = _table_classes(class_table, ignore_index, storage_options)
        image_urls = [u for u in storage.glob(storage.join(root, "images", split, "*"), storage_options)
                      if u.lower().endswith(IMAGE_SUFFIXES)]
        label_dir = storage.join(root, "annotations", split)
        found = {storage.stem(u): u for u in storage.glob(storage.join(label_dir, "*.png"), storage_options)}
        missing = [u for u in image_urls if storage.stem(u) not in found]
        if missing:
            raise InputError(f"{len(missing)} COCO-Stuff image(s) have no annotation in "
                             f"{storage.display_url(label_dir)}, e.g. {[storage.display_url(u) for u in missing[:3]]}")
        return cls(image_urls, [found[storage.stem(u)] for u in image_urls], names,
                   label_map=label_map, ignore_index=ignore_index,
                   storage_options=storage_options)


def _table_classes(class_table: Mapping[int, str] | str | os.PathLike[str], ignore_index: int,
                   storage_options: dict[str, Any] | None) -> tuple[list[str], dict[int, int]]:
    """(class names in increasing raw id order, raw id -> class index) of a class table or its URL."""
    if isinstance(class_table, (str, os.PathLike)):
        class_table = read_class_table(class_table, storage_options)
    if not class_table:
        raise InputError("the class table is empty; map each raw label id to a class name")
    ids = sorted(class_table)
    if ignore_index in class_table:
        raise InputError(f"the class table maps the ignore value {ignore_index} to {class_table[ignore_index]!r}")
    return [class_table[i] for i in ids], {raw: i for i, raw in enumerate(ids)}


class ArraySegDataset:
    """An in-memory dataset: ``images`` float32 (H, W, 3) in [0, 1], ``labels`` int (H, W) class indices."""

    def __init__(self, images: Sequence[np.ndarray], labels: Sequence[np.ndarray], class_names: Sequence[str], *,
                 ignore_index: int = 255):
        if len(images) != len(labels) or not images:
            raise InputError(f"{len(images)} images and {len(labels)} label maps; give one label per image (>= 1)")
        for i, (image, label) in enumerate(zip(images, labels)):
            if image.shape[:2] != label.shape:
                raise InputError(f"item {i}: label {label.shape} does not match image {image.shape[:2]}")
        self.images = list(images)
        self.labels = [np.asarray(label, dtype=np.int64) for label in labels]
        self.class_names = validate_class_names(class_names)
        self.ignore_index = ignore_index

    def __len__(self) -> int:
        return len(self.images)

    def name(self, index: int) -> str:
        return f"item[{index}]"

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.images[index], self.labels[index]
