"""Scale-out: wall time and images per second of label_collection on one collection, on the thread pool and on Dask
clusters of 1 and 2 worker processes (prefect-dask).

    python bench/dask.py [--tiles 64] [--size 512] [--backbone random:dinov3-vits16@0] [--batch-size 8]

Every run labels the whole collection (two concepts, roof and water) into a fresh archive; the reference
embeddings and positional basis are computed once beforehand and shared through the feature cache, as in
production. Dask rows come in two kinds:

- cold: the run starts its own local cluster (``dask_workers=N``): spawning the processes, importing torch and
  loading the backbone in each are part of the wall time, as they are for a deployment run with that setting;
- warm: the run goes to a cluster that is already up (``dask_address``) and whose workers have labelled before:
  the steady state of a long-lived cluster.

Dask worker processes run one thread and one torch thread each (Dask sets OMP_NUM_THREADS=1 in its workers); the
thread-pool rows run in this process with torch's default threads. Prints a Markdown table, with the machine's load
average around each run (other work on the machine skews the numbers).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

# this file is named like the dask package: keep its folder off the import path
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(os.path.abspath(__file__))]
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

import yaml  # noqa: E402

from dinoseg_core.io import imageio, storage  # noqa: E402
from dinoseg_core.synthetic import generate_scene  # noqa: E402


def write_collection(work: str, tiles: int, size: int) -> None:
    for i in range(tiles):
        imageio.write_image_png(f"{work}/tiles/t_{i:03d}.png", generate_scene(100 + i, size=size).image)
    ref = generate_scene(1, size=size)
    imageio.write_image_png(f"{work}/refs/r.png", ref.image)
    concepts = {}
    for concept in ("roof", "water"):
        imageio.write_mask_png(f"{work}/refs/r_{concept}.png", ref.labels[concept])
        concepts[concept] = {"references": [{"image": "refs/r.png", "mask": f"refs/r_{concept}.png"}]}
    manifest = {"config": {"image_size": size, "tau": 0.9}, "concepts": concepts}
    storage.write_bytes(f"{work}/refs.yaml", yaml.safe_dump(manifest).encode())


def _load_backbone(spec: str) -> int:
    """Run on each Dask worker: load the backbone the runs will use; returns the worker's torch threads."""
    import torch

    from tasks import runtime

    runtime.backbone(runtime.BackboneSpec(spec, "cpu"))
    return torch.get_num_threads()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=64)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--backbone", default="random:dinov3-vits16@0")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    import distributed
    import torch
    from prefect.testing.utilities import prefect_test_harness

    from flows.labelling import label_collection

    work = tempfile.mkdtemp(prefix="dinoseg-bench-dask-")
    rows = []
    try:
        write_collection(work, args.tiles, args.size)
        params = dict(references=f"{work}/refs.yaml", images=f"{work}/tiles/*.png", backbone=args.backbone,
                      return_state=True)
        run = dict(device="cpu", cache=f"{work}/cache", batch_size=args.batch_size)
        runs = 0

        def timed(label: str, layout: str, **extra) -> None:
            nonlocal runs
            runs += 1
            load = os.getloadavg()[0]
            start = time.perf_counter()
            state = label_collection(archive=f"{work}/a{runs}.zarr", **params, run={**run, **extra})
            wall = time.perf_counter() - start
            summary = state.result()
            assert summary["labelled"] == args.tiles, summary
            rows.append((label, layout, wall, args.tiles / wall, f"{load:.1f} / {os.getloadavg()[0]:.1f}"))
            print(f"  {label}: {wall:.1f} s", flush=True)

        with prefect_test_harness(server_startup_timeout=120):  # Dask workers report to a real server
            # warm-up: server, reference embeddings and basis into the feature cache, the backbone in this process
            label_collection(archive=f"{work}/warm.zarr", run=run, **{**params, "images": f"{work}/tiles/t_000.png*"})
            threads = torch.get_num_threads()
            timed("threads, workers=1", f"1 process x {threads} torch threads", workers=1)
            timed("threads, workers=2", f"1 process x {threads} torch threads", workers=2)
            for n in (1, 2):
                timed(f"dask cold, dask_workers={n}", f"{n} process(es) x 1 torch thread", task_runner="dask",
                      dask_workers=n)
            for n in (1, 2):
                with distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                              dashboard_address=":0") as cluster, \
                        distributed.Client(cluster) as client:
                    per_worker = set(client.run(_load_backbone, args.backbone).values())
                    timed(f"dask warm, {n} worker(s) at dask_address",
                          f"{n} process(es) x {'/'.join(map(str, per_worker))} torch thread(s)",
                          task_runner="dask", dask_address=cluster.scheduler_address)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{args.tiles} tiles of {args.size} px, {args.backbone}, 2 concepts, batch {args.batch_size}, "
          f"{os.cpu_count()} CPU cores, torch {torch.__version__}\n")
    print("| run | processes x threads | wall s | images / s | load avg before / after |")
    print("|---|---|---|---|---|")
    for label, layout, wall, rate, load in rows:
        print(f"| {label} | {layout} | {wall:.1f} | {rate:.2f} | {load} |")
    print("\nload avg: the machine's 1-minute load average; above the core count, other work shared the cores.")


if __name__ == "__main__":
    main()
