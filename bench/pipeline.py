"""Overhead of the label_collection flow over a plain loop of the core on the same tiles.

    python bench/pipeline.py [--tiles 50] [--size 512] [--backbone random:dinov3-vits16@0]

Both sides read each tile, segment one concept, and write the mask into a fresh Zarr archive; the flow adds
Prefect (ephemeral server, task runs, artifacts), manifest handling, hashing and incremental checks. One-off costs
(backbone load, positional basis, reference embedding) are paid before timing on both sides. Prints a table.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import tempfile
import time

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

import yaml  # noqa: E402

from dinoseg_core.io import imageio, storage  # noqa: E402
from dinoseg_core.io.archive import MaskArchive, image_key  # noqa: E402
from dinoseg_core.config import InsidConfig  # noqa: E402
from dinoseg_core.synthetic import generate_scene  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=50)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--backbone", default="random:dinov3-vits16@0")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="label batches at once (RunOptions.workers)")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="dinoseg-bench-")
    try:
        method = {"image_size": args.size, "tau": 0.9}
        for i in range(args.tiles):
            imageio.write_image_png(f"{work}/tiles/t_{i:03d}.png", generate_scene(100 + i, size=args.size).image)
        ref = generate_scene(1, size=args.size)
        imageio.write_image_png(f"{work}/refs/r.png", ref.image)
        imageio.write_mask_png(f"{work}/refs/r_mask.png", ref.labels["roof"])
        manifest = {"config": method, "concepts": {"roof": {"references": [{"image": "refs/r.png", "mask": "refs/r_mask.png"}]}}}
        storage.write_bytes(f"{work}/refs.yaml", yaml.safe_dump(manifest).encode())
        tiles = storage.glob(f"{work}/tiles/*.png")

        # plain loop of the core
        from tasks import runtime
        from tasks.runtime import BackboneSpec

        seg = runtime.segmenter(BackboneSpec(args.backbone), InsidConfig(**method))
        refs = seg.embed_references([ref.image], [ref.labels["roof"]])
        seg.segment(refs, ref.image)  # warm-up
        archive = MaskArchive.open(f"{work}/plain.zarr")
        start = time.perf_counter()
        for url in tiles:
            data = storage.read_bytes(url)
            result = seg.segment(refs, imageio.decode_image(data, url))
            archive.write_mask("roof", image_key(url), result.mask, attrs={
                "source_uri": url, "source_sha256": hashlib.sha256(data).hexdigest(), "backbone": args.backbone,
                "backbone_fingerprint": seg.backbone.fingerprint, "config": seg.config.to_dict(), "reference_set_hash": "x"})
        plain = time.perf_counter() - start

        # the flow (same process: the backbone is already loaded, as in a long-lived worker)
        from flows.labelling import label_collection

        params = dict(references=f"{work}/refs.yaml", images=f"{work}/tiles/*.png", backbone=args.backbone,
                      run={"cache": f"{work}/cache", "batch_size": args.batch_size, "workers": args.workers})
        label_collection(archive=f"{work}/warm.zarr", **{**params, "images": f"{work}/tiles/t_000.png*"})  # server up
        start = time.perf_counter()
        state = label_collection(archive=f"{work}/flow.zarr", return_state=True, **params)
        flow_s = time.perf_counter() - start
        summary = state.result()
        start = time.perf_counter()
        again = label_collection(archive=f"{work}/flow.zarr", return_state=True, **params).result()
        rerun_s = time.perf_counter() - start

        n = len(tiles)
        print(f"{n} tiles of {args.size} px, {args.backbone}, one concept, batch {args.batch_size}\n")
        print("| run | wall s | s / image | images / s |")
        print("|---|---|---|---|")
        print(f"| plain loop of the core | {plain:.1f} | {plain / n:.3f} | {n / plain:.2f} |")
        print(f"| label_collection flow | {flow_s:.1f} | {flow_s / n:.3f} | {n / flow_s:.2f} |")
        print(f"| flow re-run (all skipped: {again['skipped']}) | {rerun_s:.1f} | {rerun_s / n:.3f} | - |")
        print(f"\nflow overhead per image: {(flow_s - plain) / n * 1000:.0f} ms ({(flow_s / plain - 1) * 100:.1f} %); "
              f"labelled {summary['labelled']}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
