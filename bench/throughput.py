"""Tiles per second of the label flow against the backbone alone on the same tiles, in the same process.

    python bench/throughput.py [--tiles 48] [--sizes 512 1024] [--backbone random:dinov3-vits16@0] [--workers N]
                               [--device cuda] [--contention] [--server]

- **backbone only** (the floor): read, decode and one backbone pass per batch of tiles; nothing else.
- **label flow**: ``label_collection`` over the same tiles, one concept, into a fresh archive (hashing, freshness
  checks, steps 6-9, archive writes, Prefect task runs), warm: the backbone, the positional basis and the reference
  embedding are loaded by a first run on one tile.
- ``--contention``: both are measured again while a second process runs torch matrix products with torch's
  default thread count (what "another torch job on the worker" does to us).
- ``--server``: runs against ``prefect server start`` on 127.0.0.1 (PREFECT_API_URL) instead of a test harness.

Prints the machine's load average before and after, the thread budget the run used, and a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

import yaml  # noqa: E402

from dinoseg_core.io import imageio, storage  # noqa: E402
from dinoseg_core.synthetic import generate_scene  # noqa: E402

BUSY = """
import torch, time
a = torch.randn(1024, 1024)
end = time.time() + {seconds}
while time.time() < end:
    a = (a @ a).tanh()
"""


def write_tiles(work: str, tiles: int, size: int) -> None:
    for i in range(tiles):
        imageio.write_image_png(f"{work}/tiles/t_{i:03d}.png", generate_scene(100 + i, size=size).image)
    ref = generate_scene(1, size=size)
    imageio.write_image_png(f"{work}/refs/r.png", ref.image)
    imageio.write_mask_png(f"{work}/refs/r_mask.png", ref.labels["roof"])
    manifest = {"config": {"image_size": size, "tau": 0.9},
                "concepts": {"roof": {"references": [{"image": "refs/r.png", "mask": "refs/r_mask.png"}]}}}
    storage.write_bytes(f"{work}/refs.yaml", yaml.safe_dump(manifest).encode())


def backbone_only(work: str, backbone: str, size: int, batch: int, device: str | None) -> float:
    """Seconds to read, decode and extract every tile, ``batch`` tiles per backbone pass."""
    from dinoseg_core.config import InsidConfig
    from tasks import runtime
    from tasks.runtime import BackboneSpec

    seg = runtime.segmenter(BackboneSpec(backbone, device), InsidConfig(image_size=size, tau=0.9))
    urls = storage.glob(f"{work}/tiles/*.png")
    seg.extract_targets([imageio.read_image(urls[0])])  # warm-up
    start = time.perf_counter()
    for i in range(0, len(urls), batch):
        images = [imageio.decode_image(storage.read_bytes(u), u) for u in urls[i : i + batch]]
        seg.extract_targets(images)
    return time.perf_counter() - start


def flow_run(work: str, args, archive: str) -> float:
    from flows.labelling import label_collection

    run = {"cache": f"{work}/cache", "batch_size": args.batch_size, "device": args.device,
           **({"workers": args.workers} if args.workers else {})}
    start = time.perf_counter()
    state = label_collection(references=f"{work}/refs.yaml", images=f"{work}/tiles/*.png", archive=archive,
                             backbone=args.backbone, run=run, return_state=True)
    seconds = time.perf_counter() - start
    summary = state.result()
    assert summary["failed"] == 0 and summary["labelled"] > 0, summary
    return seconds


def measure(work: str, args, label: str, rows: list) -> None:
    tiles = args.tiles
    floor = backbone_only(work, args.backbone, args.size, args.batch_size, args.device)
    flow = flow_run(work, args, f"{work}/{label.replace(' ', '_')}.zarr")
    rows.append((f"{args.size} px, {label}", tiles / floor, tiles / flow, floor / flow))
    print(f"  {args.size} px, {label}: backbone only {tiles / floor:.2f} tiles/s, flow {tiles / flow:.2f} tiles/s",
          flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=48)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512], help="tile sizes (px), one run each")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--backbone", default="random:dinov3-vits16@0")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=None, help="RunOptions.workers (default: its default)")
    parser.add_argument("--contention", action="store_true", help="also measure beside a busy torch process")
    parser.add_argument("--server", action="store_true", help="use `prefect server start` (PREFECT_API_URL)")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()}", flush=True)
    rows: list = []
    from prefect.testing.utilities import prefect_test_harness

    from tasks import runtime

    harness = None if args.server else prefect_test_harness(server_startup_timeout=120)
    if harness is not None:
        harness.__enter__()
    try:
        for size in args.sizes:
            args.size = size
            work = tempfile.mkdtemp(prefix="dinoseg-bench-throughput-")
            try:
                write_tiles(work, args.tiles, size)
                flow_run(work, args, f"{work}/warm.zarr")  # load the backbone, basis and references once
                measure(work, args, "quiet", rows)
                if args.contention:
                    busy = subprocess.Popen([sys.executable, "-c", BUSY.format(seconds=3600)])
                    try:
                        time.sleep(3)
                        measure(work, args, "beside a busy torch process", rows)
                    finally:
                        busy.kill()
                        busy.wait()
            finally:
                shutil.rmtree(work, ignore_errors=True)
    finally:
        if harness is not None:
            harness.__exit__(None, None, None)
    budget = runtime.thread_budget()
    print(f"\n{args.tiles} tiles, {args.backbone}, one concept, batch {args.batch_size}; thread budget {budget}")
    print("| machine | backbone only (tiles/s) | label flow (tiles/s) | flow / backbone |")
    print("|---|---|---|---|")
    for label, floor, flow, ratio in rows:
        print(f"| {label} | {floor:.2f} | {flow:.2f} | {ratio:.2f} |")
    if args.contention:
        for quiet, busy in zip(rows[::2], rows[1::2]):
            print(f"\n{quiet[0]}: flow rate beside a busy process / quiet: {busy[2] / quiet[2]:.2f}")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
