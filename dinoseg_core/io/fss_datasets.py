"""Labelled collections for few-shot evaluation and calibration: images with per-concept ground truth, on any
fsspec URL, in four layouts (:func:`open_collection`).

``folder`` (the documented dinoseg layout)::

    root/images/<name>.png|.jpg|.tif     the images
    root/masks/<concept>/<name>.png      one binary mask per concept the image holds (any value > 0 is the concept)

Concepts are the folder names under ``masks/``, class ids 1..K in sorted order. An image holds a concept when its
mask file exists and is not empty (masks are read once, to index).

``manifest`` (a YAML or JSON file; relative paths resolve against its folder, as reference manifests)::

    version: 1
    classes: [water, roof]            # optional: the order of the class ids 1..K (default: sorted names)
    folds: [[water], [roof]]          # optional: the folds (default: one fold of every class)
    images:
      - image: scenes/a.png
        masks: {water: masks/a_water.png, roof: masks/a_roof.png}   # a listed mask: the image holds the concept

``isaid`` (iSAID-5i as the paper, HSNet / DCAMA-style repositories and INSID3's code read it)::

    root/<split>/images/<name>.png
    root/<split>/semantic_png/<name>_instance_color_RGB.png   # one channel: 0 background, 1..15 the classes, 255 ignore
    root/splits/<split>/fold{0,1,2}.txt                        # optional: lines "<name>__<class 1..15>"

15 classes (ship ... harbor, ids 1..15 as in the masks), 3 folds of 5 contiguous classes: fold f holds ids
5f+1 .. 5f+5. Without split files the label maps are scanned (an image holds every id it shows).

``coco20i`` (COCO-20i in HSNet's layout)::

    root/<split>2014/<name>.jpg
    root/annotations/<split>2014/<name>.png                    # 0 background, 1..80 the classes, 255 ignore
    root/splits/<split>/fold{0..3}.txt                         # optional: lines "<name>__<class 1..80>"

80 classes, 4 folds of 20. ``coco_split="interleaved"`` (default, HSNet's and PFENet's ``use_split_coco``): class
id c is in fold ``(c - 1) % 4``; ``"contiguous"``: fold f holds ids 20f+1 .. 20f+20. HSNet's ``fold*.pkl`` files
are not read (unpickling runs code): the label maps are scanned instead, or write the ``.txt`` form.

Folds are numbered from 0 everywhere. Label value 255 is *ignore* in ``isaid`` and ``coco20i``: such pixels count
for no metric (:class:`dinoseg_core.evaluate.IoUAccumulator`).
"""

from __future__ import annotations

import io
import os
import posixpath
import re
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import yaml
from PIL import Image

from dinoseg_core.errors import ImageDecodeError, InputError
from dinoseg_core.evaluate import LabelledImage
from dinoseg_core.io import imageio, storage
from dinoseg_core.io.manifest import resolve_uri

__all__ = [
    "COCO_CLASSES",
    "ISAID_CLASSES",
    "FewShotCollection",
    "ImageEntry",
    "Layout",
    "decode_label_map",
    "open_collection",
]

Layout = Literal["auto", "folder", "manifest", "isaid", "coco20i"]
IGNORE_VALUE = 255
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")

#: iSAID's 15 classes; class id = position + 1 (the value in the label maps).
ISAID_CLASSES = ("ship", "storage_tank", "baseball_diamond", "tennis_court", "basketball_court",
                 "ground_track_field", "bridge", "large_vehicle", "small_vehicle", "helicopter", "swimming_pool",
                 "roundabout", "soccer_ball_field", "plane", "harbor")
#: COCO's 80 classes in the order of their contiguous ids 1..80.
COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow", "elephant",
    "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard",
    "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange", "broccoli",
    "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed", "dining table", "toilet",
    "tv", "laptop", "mouse", "remote", "keyboard", "cell phone", "microwave", "oven", "toaster", "sink",
    "refrigerator", "book", "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush",
)


@dataclass(frozen=True)
class ImageEntry:
    """One image of a collection: its URL and its ground truth, either a label map of class ids (``label_url``)
    or one binary mask per class it holds (``mask_urls``: class id -> URL)."""

    key: str
    image_url: str
    label_url: str | None = None
    mask_urls: dict[int, str] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class FewShotCollection:
    """A labelled collection: classes (id -> name), folds (class ids), images, and which images hold each class.

    Attributes:
        index: class id -> keys of the images holding it (sorted).
        ignore_value: the label-map value counted for no metric (label-map layouts), None otherwise.
    """

    layout: str
    root: str
    classes: dict[int, str] = field(hash=False)
    folds: tuple[tuple[int, ...], ...]
    images: dict[str, ImageEntry] = field(hash=False)
    index: dict[int, tuple[str, ...]] = field(hash=False)
    ignore_value: int | None = None

    def fold_classes(self, fold: int) -> tuple[int, ...]:
        """The class ids of ``fold`` (0-based); InputError naming the folds there are."""
        if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < len(self.folds):
            raise InputError(f"fold={fold!r}: {storage.display_url(self.root)} ({self.layout}) has folds "
                             f"0..{len(self.folds) - 1}")
        return self.folds[fold]

    def class_id(self, name: str) -> int:
        """The id of the class called ``name``; InputError naming the known ones otherwise."""
        for class_id, known in self.classes.items():
            if known == name:
                return class_id
        raise InputError(f"class {name!r} is not in {storage.display_url(self.root)}; it has "
                         f"{list(self.classes.values())}")

    def load(self, key: str, storage_options: dict[str, Any] | None = None) -> LabelledImage:
        """The image and its ground truth (:class:`~dinoseg_core.evaluate.LabelledImage`)."""
        entry = self.images[key]
        image = imageio.read_image(entry.image_url, storage_options)
        if entry.label_url is not None:
            labels = read_label_map(entry.label_url, storage_options)
            _check_shape(labels, image, entry.label_url, entry.image_url)
            present = [int(v) for v in np.unique(labels) if int(v) in self.classes]
            ignore = labels == self.ignore_value if self.ignore_value is not None else None
            return LabelledImage(image, {v: labels == v for v in present},
                                 ignore if ignore is not None and ignore.any() else None)
        masks = {}
        for class_id, url in entry.mask_urls.items():
            mask = imageio.read_mask(url, storage_options)
            _check_shape(mask, image, url, entry.image_url)
            masks[class_id] = mask
        return LabelledImage(image, masks)

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary: layout, root, classes with their image counts, folds."""
        return {"layout": self.layout, "root": self.root, "images": len(self.images),
                "classes": {str(c): {"name": n, "images": len(self.index.get(c, ()))} for c, n in self.classes.items()},
                "folds": [list(f) for f in self.folds]}


def _check_shape(mask: np.ndarray, image: np.ndarray, mask_url: str, image_url: str) -> None:
    if mask.shape != image.shape[:2]:
        raise InputError(f"{storage.display_url(mask_url)} is {mask.shape[1]}x{mask.shape[0]} px but its image "
                         f"{storage.display_url(image_url)} is {image.shape[1]}x{image.shape[0]}; a ground-truth "
                         "mask must have its image's size")


def decode_label_map(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """A label map's bytes (one-channel PNG: ``L``, ``P`` (palette indices), ``I;16``, ``I``) -> int32 (H, W).

    Raises:
        InputError: a colour image (class ids must be one channel; an RGB rendering of the labels is not a map).
    """
    try:
        img = Image.open(io.BytesIO(bytes(data)))
        img.load()
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageDecodeError(f"{name}: not a readable label map ({type(exc).__name__}: {exc})") from exc
    if img.mode not in ("1", "L", "P", "I", "I;16", "I;16B", "I;16L"):
        raise InputError(f"{name}: a label map must be a one-channel image of class ids (L, P or 16-bit), got "
                         f"mode {img.mode!r}")
    return np.asarray(img).astype(np.int32)


def read_label_map(url: str, storage_options: dict[str, Any] | None = None) -> np.ndarray:
    """Read and decode the label map at ``url`` (:func:`decode_label_map`)."""
    return decode_label_map(storage.read_bytes(url, storage_options), storage.display_url(url))


# ------------------------------------------------------------------------------------------------------- layouts
def open_collection(
    url: str,
    layout: Layout = "auto",
    *,
    split: str = "val",
    folds: int | None = None,
    coco_split: Literal["interleaved", "contiguous"] = "interleaved",
    splits: str | None = None,
    storage_options: dict[str, Any] | None = None,
) -> FewShotCollection:
    """Open a labelled collection (see the module docstring for the layouts).

    Args:
        url: the collection's root folder, or a manifest file (``.yaml``/``.yml``/``.json``).
        layout: ``auto`` picks ``manifest`` for a YAML/JSON file, ``isaid`` when ``<split>/semantic_png`` exists,
            ``coco20i`` when ``annotations/<split>2014`` exists, else ``folder``.
        split: the benchmark split (``isaid``, ``coco20i``).
        folds: number of contiguous folds of the classes (``folder``; default 1, every class in one fold).
        coco_split: COCO-20i's class-to-fold rule.
        splits: the folder holding ``fold0.txt``, ... (``isaid``, ``coco20i``; default ``<url>/splits/<split>``), e.g.
            the ``data/splits/isaid/val`` folder of an FSS code repository.
    Raises:
        InputError: nothing in the layout at ``url`` (names what was looked for), a bad manifest, unknown classes.
    """
    url = str(os.fspath(url)).rstrip("/")
    if url and "://" not in url and "::" not in url:
        url = os.path.abspath(url)
    if layout == "auto":
        layout = _detect(url, split, storage_options)
    if layout == "manifest":
        return _manifest(url, storage_options)
    if layout == "isaid":
        return _label_map_layout(url, "isaid", storage.join(url, split, "images"),
                                 storage.join(url, split, "semantic_png"), "_instance_color_RGB.png",
                                 dict(enumerate(ISAID_CLASSES, start=1)),
                                 tuple(tuple(range(5 * f + 1, 5 * f + 6)) for f in range(3)),
                                 splits or storage.join(url, "splits", split), storage_options, splits is not None)
    if layout == "coco20i":
        if coco_split not in ("interleaved", "contiguous"):
            raise InputError(f"coco_split={coco_split!r}: 'interleaved' (class c in fold (c-1) % 4) or 'contiguous'")
        fold_ids = (tuple(range(f + 1, 81, 4)) if coco_split == "interleaved"
                    else tuple(range(20 * f + 1, 20 * f + 21)) for f in range(4))
        return _label_map_layout(url, "coco20i", storage.join(url, f"{split}2014"),
                                 storage.join(url, "annotations", f"{split}2014"), ".png",
                                 dict(enumerate(COCO_CLASSES, start=1)), tuple(fold_ids),
                                 splits or storage.join(url, "splits", split), storage_options, splits is not None)
    if layout == "folder":
        return _folder(url, folds or 1, storage_options)
    raise InputError(f"layout={layout!r}: choose auto, folder, manifest, isaid or coco20i")


def _detect(url: str, split: str, storage_options: dict[str, Any] | None) -> str:
    if url.lower().endswith((".yaml", ".yml", ".json")):
        return "manifest"
    if storage.exists(storage.join(url, split, "semantic_png"), storage_options):
        return "isaid"
    if storage.exists(storage.join(url, "annotations", f"{split}2014"), storage_options):
        return "coco20i"
    return "folder"


def _stem(url: str) -> str:
    return posixpath.basename(url.rstrip("/")).rsplit(".", 1)[0]


def _list(folder: str, suffixes: tuple[str, ...], storage_options: dict[str, Any] | None) -> list[str]:
    return sorted(u for u in storage.glob(storage.join(folder, "*"), storage_options) if u.lower().endswith(suffixes))


def _scan(urls: dict[str, str], read, storage_options: dict[str, Any] | None) -> dict[str, Any]:
    """``read(url, storage_options)`` of every value, 8 at a time; key -> result."""
    keys = list(urls)
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(keys)))) as pool:
        return dict(zip(keys, pool.map(lambda k: read(urls[k], storage_options), keys)))


def _index(pairs: list[tuple[str, int]], classes: Mapping[int, str]) -> dict[int, tuple[str, ...]]:
    out: dict[int, set[str]] = {c: set() for c in classes}
    for key, class_id in pairs:
        out[class_id].add(key)
    return {c: tuple(sorted(keys)) for c, keys in out.items()}


_SPLIT_LINE = re.compile(r"^(?P<name>.+)__(?P<class>\d+)$")


def _label_map_layout(root: str, layout: str, image_dir: str, label_dir: str, label_suffix: str,
                      classes: dict[int, str], folds: tuple[tuple[int, ...], ...], split_dir: str,
                      storage_options: dict[str, Any] | None, explicit: bool = False) -> FewShotCollection:
    image_urls = _list(image_dir, _IMAGE_SUFFIXES, storage_options)
    if not image_urls:
        raise InputError(f"{storage.display_url(root)}: no images in {storage.display_url(image_dir)}; the {layout} "
                         "layout is described in dinoseg_core/io/fss_datasets.py (and docs/quality.md)")
    images = {_stem(u): ImageEntry(_stem(u), u, storage.join(label_dir, _stem(u) + label_suffix)) for u in image_urls}
    pairs: list[tuple[str, int]] = []
    split_files = [storage.join(split_dir, f"fold{f}.txt") for f in range(len(folds))]
    present = [storage.exists(u, storage_options) for u in split_files]
    if explicit and not all(present):
        missing = [storage.display_url(u) for u, ok in zip(split_files, present) if not ok]
        raise InputError(f"splits: {missing} not found; the folder must hold fold0.txt .. fold{len(folds) - 1}.txt")
    if all(present):
        for url in split_files:
            for number, line in enumerate(storage.read_bytes(url, storage_options).decode().splitlines(), start=1):
                if not line.strip():
                    continue
                match = _SPLIT_LINE.match(line.strip())
                if not match or int(match["class"]) not in classes:
                    raise InputError(f"{storage.display_url(url)} line {number}: {line.strip()!r} is not "
                                     f"'<image name>__<class id 1..{len(classes)}>'")
                if match["name"] not in images:
                    raise InputError(f"{storage.display_url(url)} line {number}: image {match['name']!r} is not in "
                                     f"{storage.display_url(image_dir)}")
                pairs.append((match["name"], int(match["class"])))
    else:
        for url in (e.label_url for e in images.values()):
            if not storage.exists(url, storage_options):
                raise InputError(f"{storage.display_url(url)}: missing label map (every image of {layout} needs one)")
        maps = _scan({k: e.label_url for k, e in images.items()}, read_label_map, storage_options)
        pairs = [(k, int(v)) for k, labels in maps.items() for v in np.unique(labels) if int(v) in classes]
    return FewShotCollection(layout, root, classes, folds, images, _index(pairs, classes), IGNORE_VALUE)


def _folder(root: str, n_folds: int, storage_options: dict[str, Any] | None) -> FewShotCollection:
    image_urls = _list(storage.join(root, "images"), _IMAGE_SUFFIXES, storage_options)
    if not image_urls:
        raise InputError(f"{storage.display_url(root)}: no images in images/; a labelled collection in the folder "
                         "layout holds images/<name>.png and masks/<concept>/<name>.png (see docs/quality.md), or "
                         "give a manifest (.yaml) or --layout isaid / coco20i")
    images = {_stem(u): u for u in image_urls}
    mask_urls = [u for u in storage.glob(storage.join(root, "masks", "*", "*"), storage_options)
                 if u.lower().endswith(_IMAGE_SUFFIXES)]
    names = sorted({posixpath.basename(posixpath.dirname(u)) for u in mask_urls})
    if not names:
        raise InputError(f"{storage.display_url(root)}: no masks in masks/<concept>/; add one folder per concept "
                         "holding <image name>.png masks")
    classes = dict(enumerate(names, start=1))
    ids = {n: i for i, n in classes.items()}
    stray = [u for u in mask_urls if _stem(u) not in images]
    if stray:
        raise InputError(f"{storage.display_url(stray[0])}: no image {_stem(stray[0])}.* in images/ for this mask "
                         f"({len(stray)} such mask(s)); masks are named after their image")
    found = {(_stem(u), ids[posixpath.basename(posixpath.dirname(u))]): u for u in mask_urls}
    present = _scan({f"{k}\0{c}": u for (k, c), u in found.items()}, lambda u, so: bool(imageio.read_mask(u, so).any()),
                    storage_options)
    kept = {kc: u for kc, u in found.items() if present[f"{kc[0]}\0{kc[1]}"]}
    entries = {k: ImageEntry(k, u, None, {c: url for (key, c), url in kept.items() if key == k})
               for k, u in images.items()}
    return FewShotCollection("folder", root, classes, _split(list(classes), n_folds, root), entries,
                             _index(list(kept), classes))


def _split(ids: list[int], n_folds: int, root: str) -> tuple[tuple[int, ...], ...]:
    if isinstance(n_folds, bool) or not isinstance(n_folds, int) or not 1 <= n_folds <= len(ids):
        raise InputError(f"folds={n_folds!r}: {storage.display_url(root)} has {len(ids)} classes; give 1 to "
                         f"{len(ids)} folds")
    size = -(-len(ids) // n_folds)
    return tuple(tuple(ids[i: i + size]) for i in range(0, len(ids), size))


def _manifest(url: str, storage_options: dict[str, Any] | None) -> FewShotCollection:
    shown = storage.display_url(url)
    text = storage.read_bytes(url, storage_options).decode("utf-8-sig")
    try:
        doc = yaml.safe_load(text)  # JSON is YAML
    except yaml.YAMLError as exc:
        raise InputError(f"{shown}: not valid YAML/JSON ({exc})") from None
    if not isinstance(doc, Mapping) or not isinstance(doc.get("images"), list) or not doc["images"]:
        raise InputError(f"{shown}: a labelled-collection manifest needs a non-empty 'images' list of "
                         "{image: ..., masks: {concept: ...}} entries")
    unknown = sorted(set(doc) - {"version", "description", "classes", "folds", "images"})
    if unknown:
        raise InputError(f"{shown}: unknown field(s) {unknown}; known: version, description, classes, folds, images")
    entries_raw = []
    for i, item in enumerate(doc["images"]):
        if (not isinstance(item, Mapping) or not isinstance(item.get("image"), str)
                or not isinstance(item.get("masks", {}), Mapping) or set(item) - {"image", "masks", "name"}):
            raise InputError(f"{shown}: images[{i}] must be {{image: <path>, masks: {{<concept>: <path>}}}}")
        entries_raw.append(item)
    seen = sorted({c for item in entries_raw for c in item.get("masks", {})})
    names = doc.get("classes") or seen
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names) or len(set(names)) != len(names):
        raise InputError(f"{shown}: classes must be a list of distinct concept names")
    missing = sorted(set(seen) - set(names))
    if missing:
        raise InputError(f"{shown}: concept(s) {missing} have masks but are not in classes {names}")
    classes = dict(enumerate(names, start=1))
    ids = {n: i for i, n in classes.items()}
    folds_raw = doc.get("folds") or [names]
    if (not isinstance(folds_raw, list) or not all(isinstance(f, list) and f for f in folds_raw)
            or any(n not in ids for f in folds_raw for n in f)):
        raise InputError(f"{shown}: folds must be a list of non-empty lists of class names from {names}")
    images, pairs = {}, []
    for i, item in enumerate(entries_raw):
        image_url = resolve_uri(url, item["image"])
        key = item.get("name") or _stem(image_url)
        if key in images:
            raise InputError(f"{shown}: images[{i}]: a second image named {key!r}; give each a distinct 'name'")
        masks = {ids[c]: resolve_uri(url, path) for c, path in item.get("masks", {}).items()}
        images[key] = ImageEntry(key, image_url, None, masks)
        pairs += [(key, c) for c in masks]
    return FewShotCollection("manifest", url, classes, tuple(tuple(ids[n] for n in f) for f in folds_raw), images,
                             _index(pairs, classes))
