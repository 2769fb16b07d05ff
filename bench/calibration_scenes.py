"""Does the global weight chosen on held-out scenes hold on unseen scenes, and what does extracting each window once
save?

    python bench/calibration_scenes.py [--backbone random:dinov3-vits16@0] [--size 512] [--image-size 256]

Generated 16-bit GeoTIFF scenes (:func:`dinoseg_core.geo.synthetic.write_synthetic_geotiff`, read with bands 3,2,1
and ``fixed:300,6300``, i.e. the PNG references' scaling), 3 generated PNG-style reference shots per concept. Per
concept, :func:`dinoseg_core.calibrate.calibrate_global_weight` picks the global weight on 2 calibration scenes
(at tau 0.9, merge_threshold 0.2); every weight of the grid is then measured on 2 other scenes, which give the
hindsight best. Prints one Markdown row per concept, the seconds of the search with each window extracted once
and with every window extracted again for each weight (``max_cached_windows=0``), then the load average.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from dinoseg_core.backbone import load_backbone
from dinoseg_core.calibrate import DEFAULT_GLOBAL_WEIGHTS, LabelledScene, LabelledShot, calibrate_global_weight
from dinoseg_core.config import InsidConfig, SceneConfig
from dinoseg_core.geo.synthetic import write_synthetic_geotiff
from dinoseg_core.io.radiometry import Radiometry
from dinoseg_core.io.raster import open_raster, raster_reader
from dinoseg_core.segmenter import InContextSegmenter
from dinoseg_core.synthetic import generate_scene

WEIGHTS = (*DEFAULT_GLOBAL_WEIGHTS, 1.0)


def search(seg, shots, paths, config, scene, cached=64):
    import contextlib

    import rasterio

    with contextlib.ExitStack() as stack:
        scenes = []
        for image, labels, concept in paths:
            source = open_raster(image, (3, 2, 1), radiometry=Radiometry.parse("fixed:300,6300"))
            with rasterio.open(labels) as ds:
                truth = ds.read(1) == 1
            scenes.append(LabelledScene(stack.enter_context(raster_reader(source)).read, source.shape, truth, image))
        return calibrate_global_weight(seg, shots, scenes, insid_config=config, scene_config=scene, weights=WEIGHTS,
                                       max_cached_windows=cached)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbone", default="random:dinov3-vits16@0")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--image-size", type=int, default=256)
    args = parser.parse_args()
    seg = InContextSegmenter(load_backbone(args.backbone, device="cpu"), InsidConfig(image_size=args.image_size))
    config = InsidConfig(image_size=args.image_size, tau=0.9, merge_threshold=0.2)
    scene = SceneConfig(overlap=args.image_size // 4)
    print("| concept | chosen weight (calibration scenes) | unseen IoU at chosen | at default 0.5 | hindsight best "
          "(weight) | chosen / best | search s (windows once) | search s (every weight) |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for concept in ("water", "roof"):
            shots = [LabelledShot(generate_scene(s, 256).image, generate_scene(s, 256).labels[concept], f"r{s}")
                     for s in (11, 12, 13)]
            paths = {}
            for seed in (101, 102, 201, 202):
                image, labels = f"{tmp}/{concept}{seed}.tif", f"{tmp}/{concept}{seed}_l.tif"
                write_synthetic_geotiff(image, args.size, tile=256, seed=seed, labels_path=labels, concept=concept)
                paths[seed] = (image, labels, concept)
            start = time.perf_counter()
            chosen = search(seg, shots, [paths[101], paths[102]], config, scene)
            once = time.perf_counter() - start
            start = time.perf_counter()
            search(seg, shots, [paths[101], paths[102]], config, scene, cached=0)
            every = time.perf_counter() - start
            unseen = search(seg, shots, [paths[201], paths[202]], config, scene)
            by_weight = {t.global_weight: t.iou for t in unseen.trials}
            best = max(unseen.trials, key=lambda t: t.iou)
            w = chosen.chosen.global_weight
            print(f"| {concept} | {w:g} | {by_weight[w]:.3f} | {by_weight[0.5]:.3f} | {best.iou:.3f} "
                  f"({best.global_weight:g}) | {by_weight[w] / best.iou if best.iou else 0:.2f} | {once:.1f} "
                  f"({chosen.extracted} passes) | {every:.1f} |", flush=True)
    print("load average:", " / ".join(f"{v:.1f}" for v in os.getloadavg()))


if __name__ == "__main__":
    main()
