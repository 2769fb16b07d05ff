"""The GPU check behind ``bench/device_check.sh``: throughput, memory and agreement figures as Markdown tables.

    python bench/device_check.py [--cpu] [--out FILE] [--models random:dinov3-vits16@0 random:dinov3-vitl16@0]
                                 [--size 1024] [--tiles 32] [--dtypes float32 bfloat16] [--compile]

For every random-weights backbone (ViT-S and ViT-L by default; their speed and memory are those of the trained
models) at ``--size`` px on the first CUDA device, in each dtype (float32, and bfloat16 autocast):

- backbone tiles/s: patch features (forward + L2 norm) of pre-normalised tiles already on the device, in batches
  of :func:`dinoseg_core.features.auto_batch_size`;
- pipeline tiles/s: the core ``InContextSegmenter`` loop from float (H, W, 3) images to masks: batched
  extraction (resize, normalise, backbone, debias) then steps 6-9 per tile, clustering on the backend that
  ``auto`` picks; and its ratio to the backbone's rate;
- peak GPU memory of each loop, and the batch-size helper's per-image estimate against the measured peak;
- clustering ms per tile, torch backend on the device against SciPy on the CPU, and whether the partitions are
  identical;
- bf16-vs-float32 patch-feature cosine (min and mean over patches);
- device-vs-CPU mask IoU: the same tiles segmented by the same weights on the CPU in float32.

``--cpu`` runs everything on the CPU with the 2-block random ViT at 128 px: a smoke test of this script (the
tables then hold CPU figures, labelled as such). Tiles are generated scenes (``dinoseg_core.synthetic``);
tau is 0.9, the value the tests use for random weights (their features are compressed). Progress goes to
stderr; the tables to stdout and to ``--out``.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

import numpy as np
import torch

from dinoseg_core.backbone import load_backbone
from dinoseg_core.cluster import agglomerative_clusters
from dinoseg_core.config import InsidConfig
from dinoseg_core.features import auto_batch_size, forward_bytes_per_image, patch_features
from dinoseg_core.preprocess import prepare_image
from dinoseg_core.segmenter import InContextSegmenter
from dinoseg_core.synthetic import generate_scene

TAU = 0.9  # random-weights features are compressed: the tests' value (tests/dinoseg_core/test_segmenter.py)
CONCEPT = "roof"
GIB = 1024**3

THROUGHPUT_COLUMNS = ["model", "dtype", "size", "batch", "backbone tiles/s", "pipeline tiles/s", "pipeline/backbone",
                      "peak mem backbone GiB", "peak mem pipeline GiB", "est. GiB/image", "measured GiB/image"]
AGREEMENT_COLUMNS = ["model", "patches", "cluster torch ms/tile", "cluster scipy ms/tile", "torch/scipy",
                     "partitions identical", "bf16 cos min", "bf16 cos mean", "mask IoU float32 vs CPU",
                     "mask IoU bf16 vs CPU"]


def log(message: str) -> None:
    print(f"[device_check {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def table(columns: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


class Device:
    """Synchronisation and peak-memory bookkeeping that are no-ops on the CPU."""

    def __init__(self, name: str):
        self.device = torch.device(name)
        self.cuda = self.device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def reset_peak(self) -> int:
        if not self.cuda:
            return 0
        self.sync()
        torch.cuda.reset_peak_memory_stats(self.device)
        return torch.cuda.memory_allocated(self.device)

    def peak(self) -> float | None:
        return torch.cuda.max_memory_allocated(self.device) if self.cuda else None


def environment(dev: Device) -> list[list[str]]:
    rows = [["python", platform.python_version()], ["torch", torch.__version__],
            ["CPU threads (torch)", str(torch.get_num_threads())], ["device", str(dev.device)]]
    if dev.cuda:
        props = torch.cuda.get_device_properties(dev.device)
        free, total = torch.cuda.mem_get_info(dev.device)
        rows += [["GPU", props.name], ["compute capability", f"{props.major}.{props.minor}"],
                 ["GPU memory free / total GiB", f"{free / GIB:.1f} / {total / GIB:.1f}"],
                 ["CUDA (torch build)", str(torch.version.cuda)], ["cuDNN", str(torch.backends.cudnn.version())],
                 ["bf16 supported", str(torch.cuda.is_bf16_supported())],
                 ["SDPA flash / mem-efficient enabled",
                  f"{torch.backends.cuda.flash_sdp_enabled()} / {torch.backends.cuda.mem_efficient_sdp_enabled()}"],
                 ["float32 matmul precision", torch.get_float32_matmul_precision()]]
        if shutil.which("nvidia-smi"):
            query = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,name,memory.total",
                                    "--format=csv,noheader"], capture_output=True, text=True, timeout=30, check=False)
            rows.append(["nvidia-smi", query.stdout.strip().replace("\n", "; ") or query.stderr.strip()[:200]])
    return rows


def timed_loop(dev: Device, tiles: int, batch: int, step) -> float:
    """tiles/s of ``step(start, count)`` over ``tiles`` items in batches of ``batch`` (after one warm-up batch)."""
    step(0, min(batch, tiles))
    dev.sync()
    start = time.perf_counter()
    for first in range(0, tiles, batch):
        step(first, min(batch, tiles - first))
    dev.sync()
    return tiles / (time.perf_counter() - start)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def gib(value: float | None) -> str:
    return "-" if value is None else f"{value / GIB:.2f}"


def measure_dtype(spec: str, dtype: str, args, dev: Device, images: list[np.ndarray], reference,
                  cluster_targets: list[torch.Tensor]) -> tuple[list[str], torch.Tensor, list[np.ndarray]]:
    """One backbone in one dtype: (throughput row, patch features of ``images`` on the host, their masks).
    Appends up to ``args.cluster_tiles`` targets' features (on the device) to ``cluster_targets``."""
    size = args.size
    log(f"{spec} {dtype}: loading on {dev.device}")
    backbone = load_backbone(spec, device=dev.device, dtype=dtype, compile=args.compile)
    batch = min(auto_batch_size(backbone, (size, size), default=args.batch), args.tiles)
    tiles = max(args.tiles, 2 * batch)
    norm = backbone.normalization
    distinct = torch.stack([prepare_image(image, (size, size), norm.mean, norm.std, dev.device) for image in images])
    pixels = distinct[torch.arange(batch) % len(images)]

    log(f"{spec} {dtype}: backbone loop, {tiles} tiles in batches of {batch}")
    base = dev.reset_peak()
    backbone_rate = timed_loop(dev, tiles, batch,
                               lambda first, count: patch_features(backbone, pixels[:count], batch_size=count))
    peak_backbone = dev.peak()
    measured = None if peak_backbone is None else (peak_backbone - base) / batch
    features = patch_features(backbone, distinct, batch_size=batch).float().cpu()

    log(f"{spec} {dtype}: pipeline loop")
    segmenter = InContextSegmenter(backbone, InsidConfig(image_size=size, tau=TAU), batch_size=batch)
    refs = segmenter.embed_references([reference.image], [reference.labels[CONCEPT]])
    masks: dict[int, np.ndarray] = {}  # scene index -> its mask (every pass computes the same one)

    def pipeline(first: int, count: int) -> None:
        indices = [(first + i) % len(images) for i in range(count)]
        for index, target in zip(indices, segmenter.extract_targets([images[i] for i in indices])):
            masks[index] = segmenter.segment_features(refs, target).mask  # cluster_backend "auto"
            if len(cluster_targets) < args.cluster_tiles:
                cluster_targets.append(target.features)

    base = dev.reset_peak()
    pipeline_rate = timed_loop(dev, tiles, batch, pipeline)
    peak_pipeline = dev.peak()
    row = [spec, dtype, str(size), str(batch), f"{backbone_rate:.2f}", f"{pipeline_rate:.2f}",
           f"{pipeline_rate / backbone_rate:.3f}", gib(peak_backbone), gib(peak_pipeline),
           f"{forward_bytes_per_image(backbone, (size, size)) / GIB:.3f}", gib(measured)]
    return row, features, [masks[i] for i in range(min(len(images), tiles))]


def cpu_masks(spec: str, args, images: list[np.ndarray], reference) -> list[np.ndarray]:
    """Masks of the first ``args.iou_tiles`` images by the same weights on the CPU in float32."""
    log(f"{spec}: CPU float32 reference masks for {args.iou_tiles} tiles")
    segmenter = InContextSegmenter(load_backbone(spec, device="cpu"), InsidConfig(image_size=args.size, tau=TAU))
    refs = segmenter.embed_references([reference.image], [reference.labels[CONCEPT]])
    return [segmenter.segment(refs, image).mask for image in images[: args.iou_tiles]]


def check_model(spec: str, args, dev: Device, images: list[np.ndarray], reference) -> tuple[list[list[str]], list[str]]:
    throughput_rows = []
    features_by_dtype: dict[str, torch.Tensor] = {}
    masks_by_dtype: dict[str, list[np.ndarray]] = {}
    cluster_targets: list[torch.Tensor] = []
    for dtype in args.dtypes:
        row, features_by_dtype[dtype], masks_by_dtype[dtype] = measure_dtype(
            spec, dtype, args, dev, images, reference, cluster_targets)
        throughput_rows.append(row)
        gc.collect()
        if dev.cuda:
            torch.cuda.empty_cache()

    log(f"{spec}: clustering, torch on {dev.device} vs scipy, {len(cluster_targets)} tiles")
    torch_ms, scipy_ms, identical = [], [], 0
    for features in cluster_targets:
        agglomerative_clusters(features, TAU, backend="torch")  # warm-up
        dev.sync()
        start = time.perf_counter()
        ours = agglomerative_clusters(features, TAU, backend="torch")  # returns host labels: synchronised
        torch_ms.append(1e3 * (time.perf_counter() - start))
        start = time.perf_counter()
        theirs = agglomerative_clusters(features, TAU, backend="scipy")
        scipy_ms.append(1e3 * (time.perf_counter() - start))
        identical += int(np.array_equal(ours, theirs))
    del cluster_targets

    reference_masks = cpu_masks(spec, args, images, reference)
    gc.collect()

    def mask_iou(dtype: str) -> str:
        if dtype not in masks_by_dtype:
            return "-"
        scores = [iou(a, b) for a, b in zip(masks_by_dtype[dtype], reference_masks)]
        return f"{statistics.mean(scores):.4f} (min {min(scores):.4f})"

    cos = "-", "-"
    if "float32" in features_by_dtype and "bfloat16" in features_by_dtype:
        cosine = (features_by_dtype["float32"] * features_by_dtype["bfloat16"]).sum(dim=1)
        cos = f"{float(cosine.min()):.5f}", f"{float(cosine.mean()):.5f}"
    torch_median = statistics.median(torch_ms) if torch_ms else None
    scipy_median = statistics.median(scipy_ms) if scipy_ms else None
    agreement = [
        spec, str((args.size // 16) ** 2), "-" if torch_median is None else f"{torch_median:.1f}",
        "-" if scipy_median is None else f"{scipy_median:.1f}",
        "-" if torch_median is None else f"{torch_median / scipy_median:.3f}",
        f"{identical}/{len(torch_ms)}", cos[0], cos[1], mask_iou("float32"), mask_iou("bfloat16"),
    ]
    return throughput_rows, agreement


def flow_section(args, dev: Device) -> str:
    """The lead's flow benchmark (``bench/throughput.py``), when present, with a small tile count."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "throughput.py")
    if not os.path.exists(script):
        return "bench/throughput.py is not in this checkout: flow tiles/s not measured."
    if dev.device.type == "cpu" and not args.flow:
        return "Flow benchmark skipped in --cpu mode (pass --flow to run it)."
    command = [sys.executable, script, *args.flow_args.split()]
    log(f"flow benchmark: {' '.join(command)}")
    try:
        run = subprocess.run(command, capture_output=True, text=True, timeout=args.flow_timeout, check=False)
    except subprocess.TimeoutExpired:
        return f"`{' '.join(command[1:])}` did not finish within {args.flow_timeout} s."
    output = (run.stdout.strip() or run.stderr.strip()[-2000:])
    return f"`{' '.join(command[1:])}` (exit {run.returncode}):\n\n{output}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="run on the CPU with a tiny model and small inputs")
    parser.add_argument("--out", help="also write the Markdown report to this file")
    parser.add_argument("--models", nargs="+")
    parser.add_argument("--size", type=int)
    parser.add_argument("--tiles", type=int, help="tiles per timed loop (at least two batches are timed)")
    parser.add_argument("--batch", type=int, default=8, help="batch size where free memory is not known (CPU)")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    parser.add_argument("--scenes", type=int, help="distinct generated scenes the tiles cycle through")
    parser.add_argument("--cluster-tiles", type=int, default=4)
    parser.add_argument("--iou-tiles", type=int, help="tiles segmented again on the CPU for the mask IoU")
    parser.add_argument("--compile", action="store_true", help="torch.compile the backbone (adds compile time)")
    parser.add_argument("--flow", action="store_true", help="run bench/throughput.py also in --cpu mode")
    parser.add_argument("--flow-args", default=os.environ.get("DEVICE_CHECK_FLOW_ARGS", "--tiles 16 --sizes 1024"))
    parser.add_argument("--flow-timeout", type=int, default=180)
    args = parser.parse_args(argv)
    if args.cpu:
        name = "cpu"
        defaults = {"models": ["random:tiny@0"], "size": 128, "tiles": 8, "scenes": 4, "iou_tiles": 2}
    else:
        if not torch.cuda.is_available():
            print("No CUDA device is visible to torch "
                  f"(torch {torch.__version__}, CUDA build {torch.version.cuda}); run with --cpu for the CPU smoke "
                  "test, or install a CUDA build of torch.", file=sys.stderr)
            return 2
        name = "cuda"
        defaults = {"models": ["random:dinov3-vits16@0", "random:dinov3-vitl16@0"], "size": 1024, "tiles": 32,
                    "scenes": 8, "iou_tiles": 3}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.iou_tiles = min(args.iou_tiles, args.scenes)
    dev = Device(name)
    started = time.perf_counter()
    log(f"generating {args.scenes + 1} scenes at {args.size} px")
    reference = generate_scene(0, size=args.size)
    images = [generate_scene(seed, size=args.size).image for seed in range(1, args.scenes + 1)]

    throughput_rows, agreement_rows = [], []
    for spec in args.models:
        rows, agreement = check_model(spec, args, dev, images, reference)
        throughput_rows += rows
        agreement_rows.append(agreement)
    flow = flow_section(args, dev)

    where = "CPU (smoke test: not GPU figures)" if args.cpu else f"{dev.device}"
    report = "\n\n".join([
        f"# dinoseg device check: {where}",
        (f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}; random weights, generated scenes, tau {TAU}, "
         f"{args.scenes} distinct tiles; load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}."),
        "## Environment", table(["item", "value"], environment(dev)),
        "## Throughput", table(THROUGHPUT_COLUMNS, throughput_rows),
        "## Clustering and agreement", table(AGREEMENT_COLUMNS, agreement_rows),
        "## Flow (bench/throughput.py)", flow,
        f"Total {time.perf_counter() - started:.0f} s.",
    ]) + "\n"
    print(report)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
