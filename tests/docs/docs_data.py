"""The data the docs' examples read, generated (seeded, small) into a local folder once and uploaded to the test's
S3 bucket ``lake`` before each page, so that ``s3://lake/...`` in the docs means what a user's bucket would hold.

Layout (keys of the bucket; the docs use exactly these):

- ``tiles/2024/tile_000.png``, ``tiles/2024/tile_001.png``, ``tiles/2025/tile_002.png``: aerial-like RGB tiles
  (:func:`dinoseg_core.synthetic.generate_scene`), so that ``s3://lake/tiles/`` (a folder), the glob
  ``s3://lake/tiles/**/*.png`` and a single tile all mean something;
- ``refs/a.png`` with masks ``refs/a_roof.png`` and ``refs/a_water.png``, ``refs/b.png`` with ``refs/b_roof.png``:
  reference images and masks for a manifest (the manifest itself is written by the docs);
- ``scenes/scene_0.tif``, ``scenes/scene_1.tif``: 4-band uint16 GeoTIFFs (blue, green, red, NIR; nodata 0; UTM
  33N), :func:`dinoseg_core.geo.synthetic.write_synthetic_geotiff`;
- ``refs/scene_ref.tif`` and ``refs/scene_ref_roof.tif``: a GeoTIFF reference and its roof mask raster;
- ``datasets/shapes/images/*.png`` and ``datasets/shapes/annotations/*.png``: a labelled dataset in the folder
  layout of ``train-ovss`` / ``eval-ovss``, classes ``grass,red square,blue disk,yellow bar``
  (:func:`tests.ovseg_factory.shapes_image`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from dinoseg_core.geo.synthetic import write_synthetic_geotiff
from dinoseg_core.io import imageio
from dinoseg_core.synthetic import generate_scene
from tests.ovseg_factory import shapes_image

BUCKET = "lake"
#: Side of every generated tile and reference: one 128-px model input each (see SUBSTITUTIONS in test_docs.py).
TILE = 128
#: Scenes of 2 x 2 windows of 128 px (overlap 32, see SUBSTITUTIONS).
SCENE = 192


def write_lake(root: Path) -> Path:
    """Write the bucket's content under ``root`` (a local folder mirroring the bucket's keys); returns ``root``."""
    for index, folder in enumerate(("2024", "2024", "2025")):
        imageio.write_image_png(str(root / "tiles" / folder / f"tile_{index:03d}.png"),
                                generate_scene(100 + index, size=TILE).image)
    for name, seed, concepts in (("a", 1, ("roof", "water")), ("b", 2, ("roof",))):
        scene = generate_scene(seed, size=TILE)
        imageio.write_image_png(str(root / "refs" / f"{name}.png"), scene.image)
        for concept in concepts:
            imageio.write_mask_png(str(root / "refs" / f"{name}_{concept}.png"), scene.labels[concept])
    (root / "scenes").mkdir(parents=True, exist_ok=True)
    for index in range(2):
        write_synthetic_geotiff(root / "scenes" / f"scene_{index}.tif", SCENE, tile=128, seed=10 + index)
    write_synthetic_geotiff(root / "refs" / "scene_ref.tif", TILE, tile=128, seed=3,
                            labels_path=root / "refs" / "scene_ref_roof.tif", concept="roof")
    for index in range(4):
        image, label = shapes_image(200 + index, 64)
        imageio.write_image_png(str(root / "datasets" / "shapes" / "images" / f"img_{index}.png"), image)
        annotation = root / "datasets" / "shapes" / "annotations" / f"img_{index}.png"
        annotation.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(label.astype(np.uint8)).save(annotation)
    return root


def upload(root: Path, client, bucket: str = BUCKET) -> None:
    """Empty ``bucket`` (creating it if needed) and upload every file under ``root`` at its relative path."""
    existing = {b["Name"] for b in client.list_buckets().get("Buckets", [])}
    if bucket not in existing:
        client.create_bucket(Bucket=bucket)
    paginator = client.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys})
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            client.upload_file(str(path), bucket, path.relative_to(root).as_posix())
