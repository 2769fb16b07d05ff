"""Peak memory and seconds of `segment_scene` on large GeoTIFF scenes, with a random-init DINOv3 ViT-S.

    python bench/large_scene.py [--sizes 4096 8192 16384] [--window 512] [--image-size 512] [--overlap 64]
                                [--out bench/results/geo]
    python bench/large_scene.py --mode text [--sizes 1024 4096] [--classes roof,road,tree,water]

``--mode text``: classes named in text, through the whole command: a fresh subprocess per size runs
``dinoseg label-text`` in-process (``random:tiny`` dino.txt towers on ``random:dinov3-vits16``, default
open-vocabulary and scene settings: 640-px scene windows at full resolution, overlap 128) on the same generated
16-bit GeoTIFF into a local archive, and reports its peak RSS (``resource.getrusage``, the labelling process:
the temporary Prefect server it starts is a separate process, reported apart), the command's seconds and the
scene's own seconds (from the archive record), and checks that every class's mask is in the archive with the
scene's CRS. The load average is printed with each row.

For each size, a 4-band uint16 GeoTIFF (tiled, deflate) is written from tiles of the aerial-like generator
(``dinoseg_core.geo.synthetic``, tile by tile: the scene is never in memory), with a nodata block and its roof
ground truth. Then a fresh subprocess per size (so that peaks do not mix) loads the backbone, embeds one reference,
and runs `segment_scene` with a `ZarrMaskWriter` into a local zarr array; it reports its peak RSS (ru_maxrss),
the RSS after set-up (model + reference), the seconds of `segment_scene` and the stitcher's and writer's largest
buffers. The parent then computes the mask's IoU against the ground truth block by block and prints a Markdown
table. The goal: peak RSS flat across sizes (under 4 GB) and seconds linear in area.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

CONCEPT = "roof"
RANDOM_WEIGHTS_TAU = 0.9  # see docs/method.md, "Random weights and tau"


def rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run_one(args: argparse.Namespace) -> None:
    """The measured part, in its own process; prints one JSON line."""
    import torch

    from dinoseg_core.backbone import load_backbone
    from dinoseg_core.config import InsidConfig
    from dinoseg_core.geo import SceneConfig, segment_scene
    from dinoseg_core.geo.synthetic import RGB_BANDS
    from dinoseg_core.io.maskwriter import ZarrMaskWriter
    from dinoseg_core.io.raster import open_raster, raster_reader
    from dinoseg_core.segmenter import InContextSegmenter
    from dinoseg_core.synthetic import generate_scene

    torch.set_num_threads(args.threads or torch.get_num_threads())
    backbone = load_backbone(args.backbone, device=args.device)
    image_size = args.image_size or args.window
    segmenter = InContextSegmenter(backbone, InsidConfig(image_size=image_size, tau=RANDOM_WEIGHTS_TAU))
    reference = generate_scene(1_000_000, args.window)
    refs = segmenter.embed_references([reference.image], [reference.labels[CONCEPT]])
    source = open_raster(args.scene, bands=RGB_BANDS)
    setup_rss = rss_mb()

    last = [time.perf_counter()]

    def progress(done: int, total: int) -> None:
        if done % 100 == 0 or done == total:
            now = time.perf_counter()
            print(f"  {done}/{total} windows, {now - last[0]:.0f} s since last report, RSS {rss_mb():.0f} MB",
                  file=sys.stderr, flush=True)
            last[0] = now

    start = time.perf_counter()
    attributes = {"concept": CONCEPT}
    with raster_reader(source) as reader, ZarrMaskWriter.create(args.mask, source, attributes=attributes) as writer:
        result = segment_scene(segmenter, refs, reader.read, source.shape, writer, name=source.display_url,
                               config=SceneConfig(window_size=args.window, overlap=args.overlap), progress=progress)
    seconds = time.perf_counter() - start
    print(json.dumps({
        "size": source.width, "windows": result.windows, "skipped": result.windows_skipped, "seconds": seconds,
        "timings": result.timings, "setup_rss_mb": setup_rss,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "stitch_peak_mb": result.peak_stitch_bytes / 2**20, "writer_peak_mb": writer.peak_buffer_bytes / 2**20,
        "foreground": result.foreground_pixels / (source.width * source.height),
    }))


def run_one_text(args: argparse.Namespace) -> None:
    """``dinoseg label-text`` on one scene, in this process; prints one JSON line."""
    import torch

    from dinoseg.cli import main as cli
    from dinoseg_core.io.archive import MaskArchive

    torch.set_num_threads(args.threads or torch.get_num_threads())
    start = time.perf_counter()
    code = cli(["label-text", "--classes", args.classes, "--images", args.scene, "--archive", args.mask,
                "--dinotxt", "random:tiny@0", "--backbone", args.backbone, "--device", args.device,
                "--bands", "3,2,1", *(["--scene-overlap", str(args.overlap)] if args.overlap_given else []),
                *(["--scene-window-size", str(args.window)] if args.window_given else [])])
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    peak = usage.ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    archive = MaskArchive.open(args.mask, mode="r")
    records = [archive.mask_record(c, k) for c, k in archive.list_masks()]
    classes = args.classes.split(",")
    assert code == 0 and sorted(r["class"] for r in records) == sorted(classes), (code, records)
    assert all(r["proj:code"] == "EPSG:32633" for r in records)  # the scene's CRS, on every class
    record = records[0]
    print(json.dumps({
        "size": record["shape"][1], "windows": record["scene_windows"], "seconds": seconds,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "scene_seconds": record["scene_timings"]["total"], "timings": record["scene_timings"],
        "window_input": record["scene_window_input"], "peak_rss_mb": peak, "server_peak_rss_mb": children,
        "classes": {r["class"]: r["scene_foreground_pixels"] for r in records},
    }))


def iou_blockwise(mask_url: str, labels_path: str, block: int = 2048) -> float:
    import rasterio
    import zarr
    from rasterio.windows import Window

    mask = zarr.open_array(mask_url, mode="r", path="mask")
    inter = union = 0
    with rasterio.open(labels_path) as labels:
        for r in range(0, labels.height, block):
            for c in range(0, labels.width, block):
                h, w = min(block, labels.height - r), min(block, labels.width - c)
                truth = labels.read(1, window=Window(c, r, w, h)) == 1
                pred = np.asarray(mask[r : r + h, c : c + w]) > 0
                inter += int((truth & pred).sum())
                union += int((truth | pred).sum())
    return inter / max(union, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=["insid3", "text"], default="insid3",
                        help="insid3: segment_scene with a reference; text: dinoseg label-text")
    parser.add_argument("--sizes", nargs="+", type=int, default=[4096, 8192, 16384])
    parser.add_argument("--classes", default="roof,road,tree,water", help="text mode: the classes")
    parser.add_argument("--window", type=int, default=512, help="window side = model input (full resolution); "
                        "text mode: --scene-window-size when given (default: the command's, 640)")
    parser.add_argument("--image-size", type=int, default=0, help="model input side; default the window (full res)")
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--backbone", default="random:dinov3-vits16@0")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", default="bench/results/geo")
    parser.add_argument("--keep", action="store_true", help="keep the scenes and masks")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--scene", help=argparse.SUPPRESS)
    parser.add_argument("--mask", help=argparse.SUPPRESS)
    given = set(sys.argv)
    args = parser.parse_args()
    args.window_given, args.overlap_given = "--window" in given, "--overlap" in given
    if args.one:
        (run_one_text if args.mode == "text" else run_one)(args)
        return

    from dinoseg_core.geo.synthetic import write_synthetic_geotiff

    os.makedirs(args.out, exist_ok=True)
    rows = []
    for size in args.sizes:
        scene = os.path.join(args.out, f"scene_{size}.tif")
        labels = os.path.join(args.out, f"scene_{size}_{CONCEPT}.tif")
        mask = os.path.join(args.out, f"mask_{size}.zarr")
        start = time.perf_counter()
        # a nodata block in the upper-left corner, 1/8 of the side: those windows are skipped, and stay False
        write_synthetic_geotiff(scene, size, tile=1024, seed=3, distinct_tiles=16, labels_path=labels,
                                concept=CONCEPT, nodata_regions=[(0, 0, size // 8, size // 8)])
        print(f"{size}: scene written in {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
        cmd = [sys.executable, __file__, "--one", "--mode", args.mode, "--scene", scene, "--mask", mask,
               "--image-size", str(args.image_size), "--backbone", args.backbone, "--device", args.device,
               "--threads", str(args.threads), "--classes", args.classes]
        cmd += ["--window", str(args.window)] if args.mode == "insid3" or args.window_given else []
        cmd += ["--overlap", str(args.overlap)] if args.mode == "insid3" or args.overlap_given else []
        load_before = os.getloadavg()
        done = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
        record = json.loads(done.stdout.strip().splitlines()[-1])
        record["load"] = (load_before[0], os.getloadavg()[0])
        if args.mode == "insid3":
            record["iou"] = iou_blockwise(mask, labels)
        rows.append(record)
        print(json.dumps(record), file=sys.stderr, flush=True)
        if not args.keep:
            import shutil

            for path in (scene, labels):
                os.remove(path)
            shutil.rmtree(mask, ignore_errors=True)

    if args.mode == "text":
        print_text_table(args, rows)
        return
    base = rows[0]
    print(f"\nsegment_scene, {args.backbone} on {args.device}, window {args.window} px, model input "
          f"{args.image_size or args.window} px, overlap {args.overlap} px, global context on, roof concept, "
          "ZarrMaskWriter to local disk\n")
    print("| scene (px) | Mpx | windows (skipped) | seconds | s / Mpx | time / area vs first | peak RSS (MB) | "
          "RSS after set-up (MB) | stitch buffers (MB) | writer buffers (MB) | roof IoU |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        mpx = r["size"] ** 2 / 1e6
        ratio = (r["seconds"] / r["size"] ** 2) / (base["seconds"] / base["size"] ** 2)
        print(f"| {r['size']} | {mpx:.0f} | {r['windows']} ({r['skipped']}) | {r['seconds']:.0f} | "
              f"{r['seconds'] / mpx:.2f} | {ratio:.2f} | {r['peak_rss_mb']:.0f} | {r['setup_rss_mb']:.0f} | "
              f"{r['stitch_peak_mb']:.1f} | {r['writer_peak_mb']:.1f} | {r['iou']:.3f} |")


def print_text_table(args: argparse.Namespace, rows: list[dict]) -> None:
    print(f"\ndinoseg label-text on a 4-band uint16 GeoTIFF (bands 3,2,1), dino.txt random:tiny on {args.backbone}, "
          f"{args.device}, classes {args.classes}; scene windows {rows[0]['window_input'][0]} px model input, "
          "local zarr archive\n")
    print("| scene (px) | windows | command seconds | scene seconds | s / Mpx (scene) | command CPU seconds | "
          "peak RSS (MB) | Prefect server peak RSS (MB) | load average (before, after) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        mpx = r["size"] ** 2 / 1e6
        print(f"| {r['size']} x {r['size']} | {r['windows']} | {r['seconds']:.0f} | {r['scene_seconds']:.0f} | "
              f"{r['scene_seconds'] / mpx:.2f} | {r['cpu_seconds']:.0f} | {r['peak_rss_mb']:.0f} | "
              f"{r['server_peak_rss_mb']:.0f} | "
              f"{r['load'][0]:.1f}, {r['load'][1]:.1f} |")


if __name__ == "__main__":
    main()
