"""Open-vocabulary segmentation benchmarks: seconds per image at 640 px, and (``--compare``) measured comparisons of
the heads, the learning rate and the inference recipes on generated data.

    python bench/ovseg.py [--backbones random:dinov3-vits16 random:dinov3-vitl16] [--text dinotxt] [--images 2]
                          [--classes 10] [--size 640x853] [--device cpu] [--threads N]
                          [--out bench/results/ovseg.md]
    python bench/ovseg.py --compare heads   [--heads small catseg] [--lrs 1e-4 3e-4 1e-3 3e-3 1e-2] [--steps 100]
                          [--size 128] [--data shapes|scenes]
    python bench/ovseg.py --compare lr      (the same, for the default head kind only)
    python bench/ovseg.py --compare recipes [--heads KIND] [--lrs LR] [--size 256]

Random weights throughout (no Meta weights here). Without ``--compare``: for each backbone, the one-off costs
(load, embedding the class list with the default 7-template ensemble), then per image the mean wall time of
``TextSegmenter.segment`` with the default OvsegConfig (short side 640, windows 384 / stride 256 + one global view:
2 x 3 windows + 1 view for a 4:3 image), zero-shot and with a default dinov3.seg head (random init); the text tower
is dino.txt's real one (24 layers, 1280 wide; ``--text tiny`` for a 2-layer one).

``--compare`` trains heads with :func:`dinoseg_core.ovseg.train` over frozen random towers (a random ViT-S/16
backbone, a vision head sized to it, the 2-layer ``tiny`` text tower) on generated data: the coloured shapes of
``tests/ovseg_factory.py`` (``--data shapes``, 4 classes) or the synthetic aerial scenes of
:mod:`dinoseg_core.synthetic` (``--data scenes``: ground, field, water, road, roof). Each run: a fresh head seeded 0,
``--steps`` steps of the default TrainConfig (batch 4, cosine schedule, 7 templates) at the given learning rate,
16 training images, then the mIoU on 6 held-out images.

- ``heads``: small and catseg at each of ``--lrs``: parameters, loss, mIoU before/after, seconds per step and per
  image, and the head's own forward time on a batch of 8 windows of 384 px (24 x 24 patches, 10 classes);
- ``lr``: the same for the default head kind (the learning-rate sweep);
- ``recipes``: zero-shot and a trained head (images of ``--size`` px, training at short side 512 with 128 px
  crops) evaluated with ``--recipe dinoseg`` and ``--recipe dinotxt`` (and dinotxt with the training templates).

Prints Markdown tables (with the load average before and after) and writes them to ``--out``.
"""

from __future__ import annotations

import argparse
import inspect
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests.ovseg_factory

from dinoseg_core.ovseg import OvsegConfig, SegModel, TextSegmenter, TrainConfig, evaluate, load_dinotxt, train
from dinoseg_core.ovseg.config import DEFAULT_TEMPLATES, SegHeadConfig
from dinoseg_core.ovseg.data import ArraySegDataset
from dinoseg_core.ovseg.model import build_head, head_parameters
from dinoseg_core.ovseg.windows import local_global_logits, resize_short_side, sliding_windows
from dinoseg_core.synthetic import CONCEPTS, generate_scene

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


# ---------------------------------------------------------------------------------------------------- --compare

TRAIN_IMAGES, VAL_IMAGES = 16, 6


def _load() -> str:
    return "load average " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


def dataset(kind: str, n: int, size: int, seed: int) -> ArraySegDataset:
    """``n`` generated images with exact labels: coloured shapes (4 classes) or synthetic aerial scenes."""
    if kind == "shapes":
        from tests.ovseg_factory import shapes_dataset

        return shapes_dataset(n, size=size, seed=seed)
    images, labels = [], []
    for i in range(n):
        scene = generate_scene(seed * 1000 + i, size=size)
        label = np.zeros(scene.image.shape[:2], np.int64)
        for index, concept in enumerate(CONCEPTS):
            label[scene.labels[concept]] = index + 1
        images.append(scene.image)
        labels.append(label)
    return ArraySegDataset(images, labels, ("ground",) + CONCEPTS)


def compare_towers():
    return load_dinotxt("random:tiny@0", backbone="random:dinov3-vits16@0", device="cpu")


def train_head(dinotxt, kind: str, lr: float, data: ArraySegDataset, steps: int, short_side: int, crop: int):
    torch.manual_seed(0)
    model = SegModel(dinotxt, config=SegHeadConfig(kind=kind, feature_dim=dinotxt.embed_dim))
    config = TrainConfig(lr=lr, short_side=short_side, crop=crop)
    result = train(model, data, steps, config=config)
    return model, result


def _eval(model, data: ArraySegDataset, config: OvsegConfig) -> tuple[float, float]:
    """(mIoU %, seconds per image)."""
    result = evaluate(TextSegmenter(model, config), data)
    return 100 * result.miou, result.seconds_per_image


def head_forward_seconds(kind: str, width: int = 384, classes: int = 10, repeats: int = 3) -> float:
    """Median seconds of one head forward on 8 windows of 384 px (24 x 24 patches), ``classes`` classes."""
    torch.manual_seed(0)
    head = build_head(SegHeadConfig(kind=kind, feature_dim=width)).eval()
    cls, patches = torch.randn(8, width), torch.randn(8, width, 24, 24)
    text = torch.nn.functional.normalize(torch.randn(2, classes, width), dim=-1)
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            start = time.perf_counter()
            head(cls, patches, text[0], text[1])
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def compare_heads(args) -> list[str]:
    """Every head kind of ``args.heads`` at every learning rate of ``args.lrs`` (``--compare heads`` and ``lr``)."""
    dinotxt = compare_towers()
    train_set = dataset(args.data, TRAIN_IMAGES, args.size, 0)
    val_set = dataset(args.data, VAL_IMAGES, args.size, 1)
    single = OvsegConfig(short_side=args.size, window=args.size, stride=args.size // 2, templates=DEFAULT_TEMPLATES)
    rows = [f"{_load()} (start); data {args.data}, {args.size} px, {args.steps} steps, batch 4, cosine schedule, "
            "ViT-S/16 random towers, default SegHeadConfig of each kind", "",
            "| head | parameters (ViT-S / ViT-L width) | head forward, 8 windows of 384 px, 10 classes (s) | "
            "mIoU untrained | lr | loss first 10 -> last 10 | mIoU | s/step | s/image |",
            "|---|---|---|---|---|---|---|---|---|"]
    print("\n".join(rows), flush=True)
    for kind in args.heads:
        params = (f"{head_parameters(build_head(SegHeadConfig(kind=kind, feature_dim=384))) / 1e6:.2f} M / "
                  f"{head_parameters(build_head(SegHeadConfig(kind=kind, feature_dim=1024))) / 1e6:.2f} M")
        forward = head_forward_seconds(kind)
        torch.manual_seed(0)
        untrained, _ = _eval(SegModel(dinotxt, config=SegHeadConfig(kind=kind, feature_dim=dinotxt.embed_dim)),
                             val_set, single)
        for lr in args.lrs:
            model, result = train_head(dinotxt, kind, lr, train_set, args.steps, args.size, args.size)
            miou, per_image = _eval(model, val_set, single)
            losses = result.losses
            rows.append(f"| {kind} | {params} | {forward:.2f} | {untrained:.1f} | {lr:g} | {np.mean(losses[:10]):.3f} "
                        f"-> {np.mean(losses[-10:]):.3f} | {miou:.1f} | {result.seconds / max(len(losses), 1):.2f} | "
                        f"{per_image:.2f} |")
            print(rows[-1], flush=True)
    rows.append(f"\n{_load()} (end)")
    print(rows[-1])
    return rows


def compare_recipes(args) -> list[str]:
    if "average" not in inspect.signature(local_global_logits).parameters:
        raise SystemExit("local_global_logits has no 'average' parameter yet: --recipe dinotxt would average logits, "
                         "not probabilities; nothing measured")
    dinotxt = compare_towers()
    train_set = dataset(args.data, TRAIN_IMAGES, args.size, 0)
    val_set = dataset(args.data, VAL_IMAGES, args.size, 1)
    kind, lr = args.heads[0], args.lrs[0]
    model, result = train_head(dinotxt, kind, lr, train_set, args.steps, 512, 128)
    configs = [("dinoseg", OvsegConfig(recipe="dinoseg")), ("dinotxt", OvsegConfig(recipe="dinotxt")),
               ("dinotxt, the 7 training templates", OvsegConfig(recipe="dinotxt", templates=DEFAULT_TEMPLATES))]
    rows = [f"{_load()} (start); data {args.data}, {VAL_IMAGES} images of {args.size} px; head {kind} trained "
            f"{args.steps} steps at lr {lr:g} (short side 512, 128 px crops, 7 templates; loss "
            f"{np.mean(result.losses[:10]):.3f} -> {np.mean(result.losses[-10:]):.3f}); ViT-S/16 random towers", "",
            "| mode | recipe | working size | views per image | templates | mIoU | s/image |",
            "|---|---|---|---|---|---|---|"]
    print("\n".join(rows), flush=True)
    for mode, scorer in (("zero-shot", dinotxt), (f"trained {kind} head", model)):
        for name, config in configs:
            if mode == "zero-shot" and name.startswith("dinotxt, the"):
                continue
            working = resize_short_side(args.size, args.size, config.short_side, dinotxt.patch_size)
            views = len(sliding_windows(*working, config.window, config.stride))
            views += int(config.global_view and views > 1)
            miou, per_image = _eval(scorer, val_set, config)
            rows.append(f"| {mode} | {name} | {working[0]}x{working[1]} | {views} | {len(config.templates)} | "
                        f"{miou:.1f} | {per_image:.2f} |")
            print(rows[-1], flush=True)
    rows.append(f"\n{_load()} (end)")
    print(rows[-1])
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
    parser.add_argument("--out", default=None, help="default bench/results/ovseg.md (ovseg_<compare>.md)")
    parser.add_argument("--compare", choices=["heads", "lr", "recipes"], default=None,
                        help="train and compare on generated data instead of timing (see the module docstring)")
    parser.add_argument("--data", choices=["shapes", "scenes"], default="shapes", help="--compare: generated data")
    parser.add_argument("--heads", nargs="+", default=None, choices=["small", "catseg"],
                        help="--compare: head kinds (heads: both; lr, recipes: the default kind)")
    parser.add_argument("--lrs", nargs="+", type=float, default=None, help="--compare: learning rates")
    parser.add_argument("--steps", type=int, default=100, help="--compare: training steps per run")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.compare:
        default_size = {"heads": 128, "lr": 128, "recipes": 256}[args.compare]
        args.size = default_size if args.size == "640x853" else int(args.size)
        args.heads = args.heads or (["small", "catseg"] if args.compare == "heads" else [SegHeadConfig().kind])
        args.lrs = args.lrs or ([TrainConfig().lr] if args.compare == "recipes" else [1e-4, 3e-4, 1e-3, 3e-3, 1e-2])
        rows = {"heads": compare_heads, "lr": compare_heads, "recipes": compare_recipes}[args.compare](args)
        header = [f"# bench/ovseg.py --compare {args.compare} ({' '.join(sys.argv[1:])})", "",
                  f"torch {torch.__version__}, threads {torch.get_num_threads()}", ""]
        out = args.out or os.path.join(os.path.dirname(__file__), "results", f"ovseg_{args.compare}.md")
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with open(out, "w") as fh:
            fh.write("\n".join(header + rows) + "\n")
        return
    args.out = args.out or os.path.join(os.path.dirname(__file__), "results", "ovseg.md")
    size = tuple(int(v) for v in args.size.lower().split("x"))
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
