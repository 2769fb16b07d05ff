"""Tiny labelled collections in the layouts of :mod:`dinoseg_core.io.fss_datasets`, generated and seeded.

Images are generated aerial scenes (:func:`dinoseg_core.synthetic.generate_scene`); their four concepts become class
ids by a per-image rotation, so that every class of a fold is held by several images.
"""

from __future__ import annotations

import io

import numpy as np
import yaml
from PIL import Image

from dinoseg_core.io import imageio, storage
from dinoseg_core.synthetic import CONCEPTS, generate_scene


def _label_png(labels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(labels.astype(np.uint8), mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def write_isaid(root: str, n_images: int = 6, size: int = 64, fold: int = 0, split_files: bool = True,
                storage_options=None) -> dict[str, np.ndarray]:
    """``root/val/images/P{i}.png``, ``root/val/semantic_png/P{i}_instance_color_RGB.png`` (class ids of ``fold``,
    255 on a 1-px ring around each object) and, with ``split_files``, ``root/splits/val/fold{0,1,2}.txt``.
    Returns name -> label map."""
    maps = {}
    lines: dict[int, list[str]] = {0: [], 1: [], 2: []}
    for i in range(n_images):
        scene = generate_scene(500 + i, size)
        labels = np.zeros((size, size), np.uint8)
        for k, concept in enumerate(CONCEPTS):
            class_id = 5 * fold + 1 + (k + i) % 5
            labels[scene.labels[concept]] = class_id
        ring = np.zeros_like(labels, bool)
        ring[:, 1:] |= labels[:, 1:] != labels[:, :-1]
        ring[1:, :] |= labels[1:, :] != labels[:-1, :]
        labels[ring & (np.arange(size)[None, :] % 3 == 0)] = 255  # some boundary pixels are "ignore"
        name = f"P{i:04d}"
        imageio.write_image_png(storage.join(root, "val", "images", f"{name}.png"), scene.image, storage_options)
        storage.write_bytes(storage.join(root, "val", "semantic_png", f"{name}_instance_color_RGB.png"),
                            _label_png(labels), storage_options)
        maps[name] = labels
        for class_id in sorted(set(np.unique(labels).tolist()) - {0, 255}):
            lines[(class_id - 1) // 5].append(f"{name}__{class_id}")
    if split_files:
        for f, entries in lines.items():
            storage.write_bytes(storage.join(root, "splits", "val", f"fold{f}.txt"),
                                ("\n".join(entries) + "\n").encode(), storage_options)
    return maps


def write_folder(root: str, n_images: int = 4, size: int = 64, concepts=("water", "roof"), storage_options=None
                 ) -> None:
    """``root/images/s{i}.png`` and ``root/masks/<concept>/s{i}.png`` (the folder layout)."""
    for i in range(n_images):
        scene = generate_scene(700 + i, size)
        imageio.write_image_png(storage.join(root, "images", f"s{i}.png"), scene.image, storage_options)
        for concept in concepts:
            imageio.write_mask_png(storage.join(root, "masks", concept, f"s{i}.png"), scene.labels[concept],
                                   storage_options)


def write_reference_manifest(root: str, concepts=("water", "roof"), shots: int = 3, size: int = 64,
                             config: dict | None = None, storage_options=None) -> str:
    """``root/refs.yaml`` with ``shots`` generated reference scenes per concept; returns its URL."""
    entries = {}
    for concept in concepts:
        refs = []
        for s in range(shots):
            scene = generate_scene(900 + 10 * s, size)
            imageio.write_image_png(storage.join(root, "refs", f"r{s}.png"), scene.image, storage_options)
            imageio.write_mask_png(storage.join(root, "refs", f"r{s}_{concept}.png"), scene.labels[concept],
                                   storage_options)
            refs.append({"image": f"refs/r{s}.png", "mask": f"refs/r{s}_{concept}.png"})
        entries[concept] = {"references": refs}
    doc = {"version": 1, "concepts": entries, **({"config": config} if config else {})}
    url = storage.join(root, "refs.yaml")
    storage.write_bytes(url, yaml.safe_dump(doc, sort_keys=False).encode(), storage_options)
    return url
