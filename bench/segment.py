"""Seconds per target of `InContextSegmenter`, split by stage, for random-init DINOv3 backbones on CPU/GPU.

    python bench/segment.py [--backbones random:dinov3-vits16 random:dinov3-vitl16] [--sizes 512 1024] [--targets 4]

For each backbone and image size: the one-off costs (model load, positional basis, reference embedding), then
per-target stage times for 1 target and for N targets (mean), and what the reference code's habit of
re-extracting the references for every target would add. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from dinoseg_core.backbone import load_backbone
from dinoseg_core.config import InsidConfig
from dinoseg_core.segmenter import InContextSegmenter
from dinoseg_core.synthetic import generate_scene

STAGES = ("backbone", "matching", "clustering", "aggregation", "crf")


def run(spec: str, size: int, targets: int, crf: bool, device: str | None) -> list[str]:
    start = time.perf_counter()
    backbone = load_backbone(spec + "@0", device=device)
    load_s = time.perf_counter() - start
    segmenter = InContextSegmenter(backbone, InsidConfig(image_size=size, crf=crf))
    start = time.perf_counter()
    segmenter.basis()
    basis_s = time.perf_counter() - start
    reference = generate_scene(0, size=size)
    start = time.perf_counter()
    refs = segmenter.embed_references([reference.image], [reference.labels["roof"]])
    refs_s = time.perf_counter() - start
    images = [generate_scene(seed, size=size).image for seed in range(1, targets + 1)]
    segmenter.segment(refs, images[0])  # warm-up (allocator, threads)
    rows = []
    for count in (1, targets):
        per_target = []
        start = time.perf_counter()
        for image in images[:count]:
            per_target.append(segmenter.segment(refs, image).timings)
        wall = (time.perf_counter() - start) / count
        stage = {name: statistics.mean(t.get(name, 0.0) for t in per_target) for name in STAGES}
        rows.append(
            f"| {spec} | {size} | {count} | {wall:.3f} | "
            + " | ".join(f"{stage[name]:.3f}" for name in STAGES)
            + f" | {wall + refs_s:.3f} | {load_s:.1f} / {basis_s:.2f} / {refs_s:.2f} |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["random:dinov3-vits16", "random:dinov3-vitl16"])
    parser.add_argument("--sizes", nargs="+", type=int, default=[512, 1024])
    parser.add_argument("--targets", type=int, default=4)
    parser.add_argument("--crf", action="store_true")
    parser.add_argument("--device", default=None)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, crf={args.crf}")
    print(
        "| backbone | size | targets | s/target | "
        + " | ".join(STAGES)
        + " | s/target if refs re-extracted | load / basis / refs (s, once) |"
    )
    print("|" + "---|" * (9 + len(STAGES) - 3))
    for spec in args.backbones:
        for size in args.sizes:
            for row in run(spec, size, args.targets, args.crf, args.device):
                print(row, flush=True)


if __name__ == "__main__":
    main()
