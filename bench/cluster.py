"""Clustering (INSID3 step 7): dinoseg's SciPy path against scikit-learn's estimator on real patch features.

    python bench/cluster.py [--backbone random:dinov3-vits16@0] [--sizes 512 1024]

Prints seconds (median of 3) and whether the two partitions are identical.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from sklearn.cluster import AgglomerativeClustering

from dinoseg_core.backbone import load_backbone
from dinoseg_core.cluster import agglomerative_clusters
from dinoseg_core.config import InsidConfig
from dinoseg_core.segmenter import InContextSegmenter
from dinoseg_core.synthetic import generate_scene


def sklearn_labels(features, tau):
    x = features.double()
    distances = np.clip(1.0 - (x @ x.T).numpy(), 0.0, 2.0)
    model = AgglomerativeClustering(n_clusters=None, metric="precomputed", linkage="average", distance_threshold=1 - tau)
    return model.fit_predict(distances)


def timed(fn, repeats=3):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def same_partition(a, b) -> bool:
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="random:dinov3-vits16@0")
    parser.add_argument("--sizes", nargs="+", type=int, default=[512, 1024])
    parser.add_argument("--tau", type=float, default=InsidConfig().tau)
    args = parser.parse_args()
    backbone = load_backbone(args.backbone, device="cpu")
    print("| grid | patches | clusters | dinoseg s | scikit-learn s | identical partition |")
    print("|---|---|---|---|---|---|")
    for size in args.sizes:
        segmenter = InContextSegmenter(backbone, InsidConfig(image_size=size))
        for seed in (1, 2):
            features = segmenter.extract_target(generate_scene(seed, size=size).image).features
            ours_s, ours = timed(lambda: agglomerative_clusters(features, args.tau))
            theirs_s, theirs = timed(lambda: sklearn_labels(features, args.tau))
            grid = size // backbone.patch_size
            print(
                f"| {grid}x{grid} | {features.shape[0]} | {ours.max() + 1} | {ours_s:.3f} | {theirs_s:.3f} | "
                f"{same_partition(ours, theirs)} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
