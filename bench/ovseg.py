"""Seconds per image of open-vocabulary segmentation at 640 px: zero-shot dino.txt and the dinov3.seg head.

    python bench/ovseg.py [--backbones random:dinov3-vits16 random:dinov3-vitl16] [--text dinotxt] [--images 2]
                          [--classes 10] [--size 640x853] [--device cpu] [--threads N]
                          [--out bench/results/ovseg.md]

Random weights (speed only; the masks mean nothing): the vision head is sized to the backbone, the text tower is
dino.txt's real one (24 layers, 1280 wide; ``--text tiny`` for a 2-layer one). For each backbone: the one-off
costs (load, embedding the class list with the default 7-template ensemble), then per image the mean wall time
of ``TextSegmenter.segment`` with the default OvsegConfig (short side 640, windows 384 / stride 256 + one global
view: 2 x 3 windows + 1 view for a 4:3 image), zero-shot and with a default-size dinov3.seg head (random init).
Prints a Markdown table and writes it to ``--out``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from dinoseg_core.ovseg import OvsegConfig, SegModel, TextSegmenter, load_dinotxt
from dinoseg_core.ovseg.windows import resize_short_side, sliding_windows
from dinoseg_core.synthetic import generate_scene

CLASS_POOL = ("building", "road", "water", "field", "tree", "car", "roof", "grass", "sand", "solar panel",
              "parking lot", "bridge", "railway", "swimming pool", "flooded field", "forest")


def run(backbone: str, text: str, images: int, classes: int, size: tuple[int, int], device: str | None) -> list[str]:
    start = time.perf_counter()
    dinotxt = load_dinotxt(f"random:{text}@0", backbone=backbone + "@0", device=device)
    load_s = time.perf_counter() - start
    config = OvsegConfig()
    names = list(CLASS_POOL[:classes])
    zero_shot = TextSegmenter(dinotxt, config)
    start = time.perf_counter()
    embeddings = zero_shot.embed_classes(names)
    embed_s = time.perf_counter() - start
    torch.manual_seed(0)
    trained = TextSegmenter(SegModel(dinotxt), config)
    pictures = [generate_scene(seed, size=max(size)).image[: size[0], : size[1]] for seed in range(images)]
    working = resize_short_side(*size, config.short_side, dinotxt.patch_size)
    views = len(sliding_windows(*working, config.window, config.stride)) + int(config.global_view)
    rows = []
    for mode, segmenter in (("zero-shot", zero_shot), ("dinov3.seg", trained)):
        segmenter.segment(pictures[0][:64, :64], embeddings)  # warm-up
        times = []
        for picture in pictures:
            start = time.perf_counter()
            segmenter.segment(picture, embeddings)
            times.append(time.perf_counter() - start)
        rows.append(f"| {backbone} | {text} | {mode} | {size[0]}x{size[1]} -> {working[0]}x{working[1]} | {views} | "
                    f"{classes} | {statistics.mean(times):.2f} | {load_s:.1f} / {embed_s:.1f} |")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["random:dinov3-vits16", "random:dinov3-vitl16"])
    parser.add_argument("--text", default="dinotxt", choices=["dinotxt", "tiny"])
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--size", default="640x853", help="HxW of the test images")
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "ovseg.md"))
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.lower().split("x"))
    if args.threads:
        torch.set_num_threads(args.threads)
    header = [
        (f"torch {torch.__version__}, threads {torch.get_num_threads()}, device {args.device or 'default'}, "
        f"random weights, OvsegConfig defaults"),
        "",
        ("| backbone | text tower | mode | image -> working size | views | classes | s/image | "
        "load / class embedding (s, once) |"),
        "|---|---|---|---|---|---|---|---|",
    ]
    print("\n".join(header), flush=True)
    rows = []
    for backbone in args.backbones:
        rows += run(backbone, args.text, args.images, args.classes, size, args.device)
    if args.out:
        os.makedirs(os.path.dirname(args.out), exist_ok=True)
        with open(args.out, "w") as fh:
            fh.write("\n".join(header + rows) + "\n")


if __name__ == "__main__":
    main()
