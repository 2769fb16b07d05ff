"""Clustering (INSID3 step 7): the SciPy backend against the torch (RAC) backend, and scikit-learn's estimator.

    python bench/cluster.py [--backbone random:tiny@0] [--sizes 512 1024] [--taus 0.6 0.9] [--device cpu]
                            [--scenes 2] [--repeats 3] [--sklearn]

For each image size (N = (size / 16)^2 patches), scene and tau: milliseconds per clustering (median of
``--repeats``, the backends interleaved so that load drifts hit both alike), the torch/scipy time ratio, and
whether the partitions are label-for-label identical, for the torch backend in float64 (what ``backend="torch"``
runs) and in float32 (to show why it is not the default). ``--device cuda`` times the torch backend on the GPU
(synchronised; scipy always runs on the CPU). The machine's load average is printed before and after: on a
shared machine the absolute numbers move with it, the ratios less so.

The default backbone is the 2-block random ViT: its patch features spread like trained DINOv3 features (mean
cosine ~0.4), so tau 0.6..0.9 cuts tens to hundreds of clusters; random ViT-S / ViT-L features are compressed
(mean cosine ~0.66) and tau 0.6 merges nearly everything.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch

from dinoseg_core.backbone import load_backbone
from dinoseg_core.cluster import agglomerative_clusters, torch_average_linkage
from dinoseg_core.config import InsidConfig
from dinoseg_core.segmenter import InContextSegmenter
from dinoseg_core.synthetic import generate_scene


def sklearn_labels(features, tau):
    from sklearn.cluster import AgglomerativeClustering

    x = features.double().cpu()
    distances = np.clip(1.0 - (x @ x.T).numpy(), 0.0, 2.0)
    model = AgglomerativeClustering(n_clusters=None, metric="precomputed", linkage="average",
                                    distance_threshold=1 - tau)
    return model.fit_predict(distances)


def same_partition(a, b) -> bool:
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f}, {five:.2f}, {fifteen:.2f} ({os.cpu_count()} CPUs, torch threads {torch.get_num_threads()})"


def time_backends(
    features: torch.Tensor, tau: float, repeats: int, sklearn: bool
) -> dict[str, tuple[float, np.ndarray]]:
    """{name: (median ms, labels)} for scipy, torch float64, torch float32 (and scikit-learn), interleaved."""
    sync = torch.cuda.synchronize if features.is_cuda else (lambda: None)
    runs = {
        "scipy": lambda: agglomerative_clusters(features, tau, backend="scipy"),
        "torch64": lambda: agglomerative_clusters(features, tau, backend="torch"),
        "torch32": lambda: torch_average_linkage(features, tau, dtype=torch.float32).cpu().numpy(),
    }
    if sklearn:
        runs["sklearn"] = lambda: sklearn_labels(features, tau)
    times: dict[str, list[float]] = {name: [] for name in runs}
    labels = {}
    for name, run in runs.items():  # warm-up (allocator, CUDA kernels)
        labels[name] = run()
    for _ in range(repeats):
        for name, run in runs.items():
            sync()
            start = time.perf_counter()
            labels[name] = run()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: (1e3 * statistics.median(times[name]), labels[name]) for name in runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="random:tiny@0")
    parser.add_argument("--sizes", nargs="+", type=int, default=[512, 1024])
    parser.add_argument("--taus", nargs="+", type=float, default=[0.6, 0.9])
    parser.add_argument("--scenes", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="where the features (and the torch backend) live")
    parser.add_argument("--sklearn", action="store_true", help="also time scikit-learn's estimator")
    args = parser.parse_args()
    print(f"load average before: {load_average()}", flush=True)
    backbone = load_backbone(args.backbone, device=args.device)
    header = ["grid", "patches", "tau", "clusters", "scipy ms", "torch f64 ms", "torch/scipy", "f64 identical",
              "torch f32 ms", "f32 identical"]
    if args.sklearn:
        header += ["scikit-learn ms", "sklearn identical"]
    print(f"\nbackbone {args.backbone}, torch backend on {args.device}, median of {args.repeats}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for size in args.sizes:
        segmenter = InContextSegmenter(backbone, InsidConfig(image_size=size))
        for seed in range(1, args.scenes + 1):
            features = segmenter.extract_target(generate_scene(seed, size=size).image).features
            for tau in args.taus:
                result = time_backends(features, tau, args.repeats, args.sklearn)
                scipy_ms, reference = result["scipy"]
                grid = size // backbone.patch_size
                cells = [f"{grid}x{grid}", str(features.shape[0]), f"{tau}", str(reference.max() + 1),
                         f"{scipy_ms:.0f}", f"{result['torch64'][0]:.0f}", f"{result['torch64'][0] / scipy_ms:.2f}",
                         str(np.array_equal(result["torch64"][1], reference)), f"{result['torch32'][0]:.0f}",
                         str(np.array_equal(result["torch32"][1], reference))]
                if args.sklearn:
                    cells += [f"{result['sklearn'][0]:.0f}", str(same_partition(result["sklearn"][1], reference))]
                print("| " + " | ".join(cells) + " |", flush=True)
    print(f"\nload average after: {load_average()}")


if __name__ == "__main__":
    main()
