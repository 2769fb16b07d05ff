"""Does calibration on the reference shots pick configs that hold on unseen targets?

    python bench/calibration.py [--backbone random:dinov3-vits16@0] [--size 512] [--image-size 512] [--targets 6]

Generated aerial scenes (:mod:`dinoseg_core.synthetic`), several concepts, 3 reference shots each (scenes never
used as targets). Per concept:

- **calibrated**: :func:`dinoseg_core.calibrate.calibrate_concept` (leave-one-out over the 3 shots) picks tau and
  merge_threshold from the default grid;
- **held-out IoU** of every config of that grid on the targets (references: the 3 shots; IoU accumulated over the
  targets, sum of intersections / sum of unions), from which **hindsight best** is the best config found on the
  targets themselves, and **default** the paper's (tau 0.6, alpha 0.2).

Prints one Markdown row per concept: held-out IoU of the default, of the calibrated config and of the hindsight
best, the ratio calibrated / best (the target is >= 0.9), and the seconds calibration took. Then the load average.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from dinoseg_core.backbone import load_backbone
from dinoseg_core.calibrate import DEFAULT_MERGE_THRESHOLDS, DEFAULT_TAUS, LabelledShot, calibrate_concept
from dinoseg_core.config import InsidConfig
from dinoseg_core.evaluate import reference_set_from_features
from dinoseg_core.segmenter import InContextSegmenter
from dinoseg_core.synthetic import CONCEPTS, generate_scene

REFERENCE_SEEDS = {"water": (11, 12, 13), "roof": (21, 22, 23), "field": (31, 32, 33), "road": (41, 42, 43)}
TARGET_SEED = 1000


def held_out(segmenter, shots, targets, target_features, concept):
    """IoU (accumulated over the targets) of every grid config, references = all shots."""
    ref_features = segmenter.extract_targets([s.image for s in shots], [s.name for s in shots])
    refs = reference_set_from_features(ref_features, [s.mask for s in shots])
    out = {}
    for tau in sorted({*DEFAULT_TAUS, 0.6}):
        for alpha in sorted({*DEFAULT_MERGE_THRESHOLDS, 0.2}):
            config = segmenter.config.replace(tau=tau, merge_threshold=alpha)
            inter = union = 0
            for scene, features in zip(targets, target_features):
                mask = segmenter.segment_features(refs, features, config).mask
                truth = scene.labels[concept]
                inter += int(np.count_nonzero(mask & truth))
                union += int(np.count_nonzero(mask | truth))
            out[(tau, alpha)] = inter / union if union else 0.0
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="random:dinov3-vits16@0")
    parser.add_argument("--size", type=int, default=512, help="generated scene side, px")
    parser.add_argument("--image-size", type=int, default=512, help="model input side (InsidConfig.image_size)")
    parser.add_argument("--targets", type=int, default=6, help="held-out target scenes")
    parser.add_argument("--concepts", nargs="+", default=list(CONCEPTS), choices=list(CONCEPTS))
    args = parser.parse_args()

    segmenter = InContextSegmenter(load_backbone(args.backbone, device="cpu"), InsidConfig(image_size=args.image_size))
    targets = [generate_scene(TARGET_SEED + i, args.size) for i in range(args.targets)]
    target_features = segmenter.extract_targets([s.image for s in targets])
    print(f"backbone {args.backbone}, scenes {args.size} px, model input {args.image_size} px, "
          f"3 reference shots per concept, {args.targets} held-out targets\n")
    print("| concept | default IoU (tau 0.6, alpha 0.2) | calibrated (tau, alpha) | calibrated IoU | "
          "hindsight best (tau, alpha) | best IoU | calibrated / best | calibration s |")
    print("|---|---|---|---|---|---|---|---|")
    for concept in args.concepts:
        shots = []
        for seed in REFERENCE_SEEDS[concept]:
            scene = generate_scene(seed, args.size)
            shots.append(LabelledShot(scene.image, scene.labels[concept], f"{concept}-{seed}"))
        start = time.perf_counter()
        calibration = calibrate_concept(segmenter, shots)
        seconds = time.perf_counter() - start
        ious = held_out(segmenter, shots, targets, target_features, concept)
        best_key = max(ious, key=ious.get)
        chosen = (calibration.chosen.tau, calibration.chosen.merge_threshold)
        ratio = ious[chosen] / ious[best_key] if ious[best_key] else float("nan")
        print(f"| {concept} | {ious[(0.6, 0.2)]:.3f} | {chosen[0]:g}, {chosen[1]:g} | {ious[chosen]:.3f} | "
              f"{best_key[0]:g}, {best_key[1]:g} | {ious[best_key]:.3f} | {ratio:.2f} | {seconds:.1f} |")
    print(f"\nload average {' / '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
