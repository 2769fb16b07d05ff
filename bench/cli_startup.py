"""The fixed cost of one `dinoseg` command, with and without a running Prefect server.

    python bench/cli_startup.py [--repeats 3]

Each command runs in a fresh process (as a user's would), on two generated 64 px tiles and the tiny random
backbone, so that what is timed is start-up, not labelling:

- ``dinoseg --help``;
- a refused argument (``--tau 1.5``): checked before torch, Prefect or a server;
- ``dinoseg label`` where every mask is up to date (a re-run that skips everything), first with a temporary
  Prefect server started by the command (no ``PREFECT_API_URL``; a Prefect home whose database exists), then
  against ``prefect server start`` on 127.0.0.1 with ``PREFECT_API_URL`` set.

Prints the median seconds of each and the load average, as a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import httpx
import yaml

from dinoseg_core.synthetic import write_demo_dataset


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def seconds(args: list[str], env: dict[str, str], expect: int = 0) -> float:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "dinoseg", *args], env=env, capture_output=True, text=True)
    took = time.perf_counter() - start
    if result.returncode != expect:
        raise SystemExit(f"dinoseg {' '.join(args)} exited {result.returncode}, not {expect}:\n{result.stderr}")
    return took


def start_server(env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port",
                               str(port)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/api"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return server, url
        except httpx.HTTPError:
            time.sleep(0.5)
    server.terminate()
    raise SystemExit("prefect server start did not answer within 120 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    options = parser.parse_args()
    work = tempfile.mkdtemp(prefix="dinoseg-cli-startup-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=f"{work}/prefect", PREFECT_SERVER_ANALYTICS_ENABLED="false", OMP_NUM_THREADS="1")
    server = None
    try:
        data = write_demo_dataset(f"{work}/data", n_references=1, n_targets=2, size=64, seed=0)
        reference = data["references"][0]
        manifest = {"version": 1, "config": {"image_size": 64, "tau": 0.9},
                    "concepts": {"roof": {"references": [{"image": reference["image"], "mask": reference["mask"]}]}}}
        with open(f"{work}/refs.yaml", "w") as f:
            yaml.safe_dump(manifest, f)
        label = ["label", "--references", f"{work}/refs.yaml", "--images", f"{work}/data/targets/", "--archive",
                 f"{work}/masks.zarr", "--backbone", "random:tiny@0", "--device", "cpu", "--cache", f"{work}/cache"]
        first = seconds(label, env)  # labels both tiles and creates the Prefect database
        rows = [("first `label` run (temporary server, new Prefect database, 2 tiles labelled)", [first])]
        cases = [("`dinoseg --help`", ["--help"], {}, 0),
                 ("refused argument (`label ... --tau 1.5`)", [*label, "--tau", "1.5"], {}, 2),
                 ("`label` re-run, all skipped, temporary server", label, {}, 0)]
        for name, args, extra, code in cases:
            rows.append((name, [seconds(args, {**env, **extra}, code) for _ in range(options.repeats)]))
        server, url = start_server(env)
        rows.append(("`label` re-run, all skipped, `prefect server start` + PREFECT_API_URL",
                     [seconds(label, {**env, "PREFECT_API_URL": url}) for _ in range(options.repeats)]))
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\nfixed cost of one command (median of {options.repeats}; load average {load}; {os.cpu_count()} CPUs)\n")
    print("| command | seconds |\n|---|---|")
    for name, times in rows:
        print(f"| {name} | {statistics.median(times):.2f} |")


if __name__ == "__main__":
    main()
