"""IoU of one generated scene as an 8-bit GeoTIFF and as a 16-bit 4-band GeoTIFF under each --radiometry.

    python bench/radiometry.py [--tiles 3 4] [--tile 512] [--image-size 512] [--backbone random:dinov3-vits16@0]
                               [--concept roof] [--out DIR]

Issue 12 measured one 1536 x 2048 scene (12 generated 512 px tiles) labelled through `dinoseg label` with 8-bit
PNG references: IoU 0.537 as an 8-bit GeoTIFF, 0.486 as a 16-bit 4-band GeoTIFF read with `--bands 2,3,4` and the
per-scene 2-98 % stretch. This script writes that pair of scenes from the same tiles (``dinoseg_core.synthetic``):

- ``scene_u8.tif``: RGB, ``uint8`` (value x 255, what the PNG references hold);
- ``scene_u16.tif``: 4 bands ``uint16``, band 1 near-infrared and bands 2, 3, 4 red, green, blue, scaled like
  surface reflectance x 10000 (``300 + 6000 x value``, as ``dinoseg_core.geo.synthetic``), so ``--bands 2,3,4``
  is RGB; two more 16-bit scenes of other tiles, one darker and one brighter (other illumination), complete a
  collection for ``collection-percentile``.

and labels them the way `dinoseg label` does (``open_raster`` with the radiometry, the manifest's PNG reference
shots embedded once, ``segment_scene`` window by window with whole-scene context, the flow's scene defaults), in
one process, one radiometry after the other. It prints a Markdown table: IoU against the generated ground truth,
the difference to the 8-bit scene, the stretch used and seconds, and the load average before and after. The
scenes go to ``--out`` (default a temporary folder, removed at the end); bench/results/radiometry.md holds a run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np

RANDOM_WEIGHTS_TAU = 0.9  # see docs/method.md, "Random weights and tau"
REFERENCE_SEEDS = (1_000_001, 1_000_002, 1_000_003)


def write_scenes(out: str, rows: int, cols: int, tile: int, concept: str) -> dict[str, str]:
    """The 8-bit scene, its 16-bit 4-band twin and two more 16-bit scenes (darker, brighter); returns the paths
    and the ground truth's."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    from dinoseg_core.synthetic import generate_scene

    os.makedirs(out, exist_ok=True)
    height, width = rows * tile, cols * tile
    common = {"driver": "GTiff", "height": height, "width": width, "tiled": True, "blockxsize": 256,
              "blockysize": 256, "compress": "deflate", "crs": "EPSG:32633",
              "transform": from_origin(500_000.0, 5_000_000.0, 0.5, 0.5)}
    paths = {name: os.path.join(out, f"{name}.tif") for name in ("scene_u8", "scene_u16", "dark_u16", "bright_u16",
                                                                 "truth")}
    gains = {"scene_u16": (300.0, 6000.0), "dark_u16": (200.0, 3000.0), "bright_u16": (900.0, 8000.0)}
    seeds = {"scene_u16": 0, "dark_u16": 50, "bright_u16": 90}
    files = {
        "scene_u8": rasterio.open(paths["scene_u8"], "w", **common, count=3, dtype="uint8", nodata=None),
        "truth": rasterio.open(paths["truth"], "w", **common, count=1, dtype="uint8", nodata=None),
        **{name: rasterio.open(paths[name], "w", **common, count=4, dtype="uint16", nodata=0) for name in gains},
    }
    try:
        for k in range(rows * cols):
            win = Window((k % cols) * tile, (k // cols) * tile, tile, tile)
            for name, (offset, gain) in gains.items():
                scene = generate_scene(seeds[name] + k, tile)
                rgb = scene.image.transpose(2, 0, 1)
                nir = np.clip(1.4 * rgb[1] - 0.4 * rgb[0] + 0.1, 0.0, 1.0)
                files[name].write((offset + gain * np.stack([nir, *rgb])).round().astype(np.uint16), window=win)
                if name == "scene_u16":
                    files["scene_u8"].write((rgb * 255).round().astype(np.uint8), window=win)
                    files["truth"].write(scene.labels[concept][None].astype(np.uint8), window=win)
    finally:
        for f in files.values():
            f.close()
    return paths


def label(segmenter, refs, url: str, bands, radiometry, scene_config, insid):
    """One scene labelled as the flow does; returns the mask, the source and seconds."""
    from dinoseg_core.geo import segment_scene
    from dinoseg_core.io.raster import open_raster, raster_reader

    source = open_raster(url, bands, radiometry=radiometry)
    mask = np.zeros(source.shape, bool)

    def write(row, col, block):
        mask[row : row + block.shape[0], col : col + block.shape[1]] = block

    start = time.perf_counter()
    with raster_reader(source) as reader:
        segment_scene(segmenter, refs, reader.read, source.shape, write, name=source.display_url,
                      config=scene_config, insid_config=insid)
    return mask, source, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", nargs=2, type=int, default=[3, 4], metavar=("ROWS", "COLS"))
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--backbone", default="random:dinov3-vits16@0")
    parser.add_argument("--concept", default="roof")
    parser.add_argument("--shots", type=int, default=3)
    parser.add_argument("--no-global-context", action="store_true")
    parser.add_argument("--out", default=None, help="folder for the scenes (default: a temporary one, removed)")
    args = parser.parse_args()
    load_before = os.getloadavg()

    import torch

    torch.manual_seed(0)
    out = args.out or tempfile.mkdtemp(prefix="dinoseg-radiometry-")
    try:
        run(args, out, load_before)
    finally:
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)


def run(args: argparse.Namespace, out: str, load_before: tuple[float, float, float]) -> None:
    import rasterio

    from dinoseg_core.backbone import load_backbone
    from dinoseg_core.config import InsidConfig, SceneConfig
    from dinoseg_core.io.radiometry import Radiometry
    from dinoseg_core.io.raster import collection_radiometry
    from dinoseg_core.segmenter import InContextSegmenter
    from dinoseg_core.synthetic import generate_scene

    paths = write_scenes(out, *args.tiles, args.tile, args.concept)
    with rasterio.open(paths["truth"]) as src:
        truth = src.read(1) > 0
    insid = InsidConfig(image_size=args.image_size, tau=RANDOM_WEIGHTS_TAU)
    segmenter = InContextSegmenter(load_backbone(args.backbone, device="cpu"), insid)
    shots = [generate_scene(seed, args.tile) for seed in REFERENCE_SEEDS[: args.shots]]
    # the PNG references: 8-bit, value x 255, decoded to value / 255 like imageio.decode_image
    refs = segmenter.embed_references([(s.image * 255).round() / 255.0 for s in shots],
                                      [s.labels[args.concept] for s in shots])
    scene_config = SceneConfig(global_context=not args.no_global_context)
    collection = collection_radiometry([paths["scene_u16"], paths["dark_u16"], paths["bright_u16"]], (2, 3, 4),
                                       "collection-percentile")
    runs = [("8-bit RGB", paths["scene_u8"], None, "scene-percentile"),
            ("16-bit, --bands 2,3,4", paths["scene_u16"], (2, 3, 4), "scene-percentile"),
            ("16-bit, --bands 2,3,4", paths["scene_u16"], (2, 3, 4), "fixed:300,6300"),
            ("16-bit, --bands 2,3,4", paths["scene_u16"], (2, 3, 4), "scale:0.000166667,-0.05"),
            ("16-bit, --bands 2,3,4", paths["scene_u16"], (2, 3, 4), collection)]
    rows, base = [], None
    for what, url, bands, radiometry in runs:
        mask, source, seconds = label(segmenter, refs, url, bands, Radiometry.parse(radiometry), scene_config, insid)
        iou = float((mask & truth).sum() / max((mask | truth).sum(), 1))
        base = iou if base is None else base
        stretch = "; ".join(f"{lo:.0f}-{hi:.0f}" for lo, hi in source.stretch[:3])
        rows.append(f"| {what} | `{source.radiometry}` | {stretch} | {iou:.3f} | {iou - base:+.3f} | {seconds:.0f} |")
        print(rows[-1], file=sys.stderr, flush=True)
    load_after = os.getloadavg()
    height, width = truth.shape
    print(f"Scene {height} x {width} px ({args.tiles[0] * args.tiles[1]} generated {args.tile} px tiles), concept "
          f"`{args.concept}`, {args.shots} 8-bit PNG reference shot(s), {args.backbone}, image_size "
          f"{args.image_size}, tau {RANDOM_WEIGHTS_TAU}, global context {'off' if args.no_global_context else 'on'}; "
          f"collection stretch from 3 scenes (this one, a darker and a brighter one). Load average "
          f"{load_before[0]:.1f} before, {load_after[0]:.1f} after.\n")
    print("| scene | radiometry | stretch (R; G; B) | IoU | vs 8-bit | seconds |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
