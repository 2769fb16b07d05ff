"""prefect.yaml end to end, as docs/deployments.md walks through it: a Prefect server, a process work pool, ``prefect deploy
--all``, a worker, ``prefect deployment run ... --param ...``; the masks land in an S3 archive (moto), the run's
summary in S3 result storage as JSON, and a run with a bad parameter ends Failed with the reason in its logs. The
variants in deployments/ deploy too."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import httpx
import pytest

from dinoseg_core.io import storage
from dinoseg_core.io.archive import MaskArchive
from tests.deployments.conftest import PREFECT, REPO, start, stop, tail
from tests.pipeline_data import TINY, write_collection

pytestmark = pytest.mark.integration

FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
VARIANTS = sorted(p.relative_to(REPO).as_posix() for p in (REPO / "deployments").glob("*.yaml"))


class Commands:
    """Commands run in the background from the repository root; ``wait`` checks their exit code, and every one
    still running at the end is killed."""

    def __init__(self, env: dict[str, str]):
        self.env, self.running = env, []

    def start(self, *args: str) -> subprocess.Popen:
        proc = subprocess.Popen(list(args), env=self.env, cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        self.running.append(proc)
        return proc

    def prefect(self, *args: str) -> subprocess.Popen:
        return self.start(PREFECT, "--no-prompt", *args)

    @staticmethod
    def wait(proc: subprocess.Popen, timeout: float = 120) -> str:
        out, _ = proc.communicate(timeout=timeout)
        assert proc.returncode == 0, f"{' '.join(proc.args)} exited {proc.returncode}:\n{out}"
        return out

    def kill_all(self) -> None:
        for proc in self.running:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def deployment_run(commands: Commands, name: str, params: dict) -> subprocess.Popen:
    """``prefect deployment run NAME --param k=v ...`` (values as JSON unless plain strings)."""
    args = []
    for key, value in params.items():
        args += ["--param", f"{key}={value if isinstance(value, str) else json.dumps(value)}"]
    return commands.prefect("deployment", "run", name, *args)


def wait_final(api: str, run_id: str, worker_log, timeout: float = 150) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        run = httpx.get(f"{api}/flow_runs/{run_id}", timeout=10).json()
        if run["state"]["type"] in FINAL:
            return run
        assert time.monotonic() < deadline, (f"flow run {run_id} not finished after {timeout} s (state "
                                             f"{run['state']['type']}); worker log:\n{tail(worker_log)}")
        time.sleep(0.5)


def logs_of(api: str, run_id: str) -> list[dict]:
    body = {"logs": {"flow_run_id": {"any_": [run_id]}}, "sort": "TIMESTAMP_ASC", "limit": 200, "offset": 0}
    response = httpx.post(f"{api}/logs/filter", json=body, timeout=10)
    response.raise_for_status()
    return response.json()


def deployments_by_name(api: str) -> dict[str, dict]:
    page = {"limit": 100, "offset": 0}
    flows = {f["id"]: f["name"] for f in httpx.post(f"{api}/flows/filter", json=page, timeout=10).json()}
    return {f"{flows[d['flow_id']]}/{d['name']}": d
            for d in httpx.post(f"{api}/deployments/filter", json=page, timeout=10).json()}


def test_deploy_run_and_fail_through_a_worker(prefect_server, s3_server, tmp_path):
    api, env, logs = prefect_server["api_url"], prefect_server["env"], prefect_server["logs"]
    so = s3_server["storage_options"]
    bucket = s3_server["make_bucket"]()
    write_collection(f"{bucket}/lake", tiles=3, storage_options=so)
    commands = Commands(env)
    worker_log = logs / "worker.log"
    worker = None
    try:
        for pool in [commands.prefect("work-pool", "create", name, "--type", "process")
                     for name in ("dinoseg", "dinoseg-gpu")]:
            commands.wait(pool)
        # deploy, point result storage at S3 and start a worker, at once
        deploy = commands.prefect("deploy", "--all", "--prefect-file", "prefect.yaml")
        results = commands.start(sys.executable, "deployments/result_storage.py", f"{bucket}/prefect-results",
                                 "--storage-options", json.dumps(so))
        worker_env = {**env, "PREFECT_WORKER_QUERY_SECONDS": "1",
                      "PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK": "remote-file-system/dinoseg-results"}
        worker = start([PREFECT, "worker", "start", "--pool", "dinoseg", "--name", "test-worker"], worker_env,
                       worker_log, cwd=tmp_path)  # not the checkout: the pull step has to find it
        commands.wait(deploy)
        assert "remote-file-system/dinoseg-results" in commands.wait(results)

        run = {"device": "cpu", "storage_options": so, "cache": f"{bucket}/cache"}
        good = deployment_run(commands, "label-collection/on-demand", {
            "references": f"{bucket}/lake/refs.yaml", "images": f"{bucket}/lake/tiles/*.png",
            "archive": f"{bucket}/masks.zarr", "backbone": TINY, "run": {**run, "batch_size": 2}})
        bad = deployment_run(commands, "label-collection/on-demand", {
            "references": f"{bucket}/lake/no-such-manifest.yaml", "images": f"{bucket}/lake/tiles/*.png",
            "archive": f"{bucket}/bad.zarr", "backbone": TINY, "run": run})
        ill_typed = deployment_run(commands, "label-collection/on-demand", {
            "references": f"{bucket}/lake/refs.yaml", "images": f"{bucket}/lake/tiles/*.png",
            "archive": f"{bucket}/masks.zarr", "run": {"batch_size": "eight"}})
        good_id, bad_id = (re.search(r"UUID: ([0-9a-f-]{36})", commands.wait(p)).group(1) for p in (good, bad))
        out, _ = ill_typed.communicate(timeout=120)
        assert ill_typed.returncode != 0 and "batch_size" in out, out  # refused: no run is created
        variants = [commands.prefect("deploy", "--all", "--prefect-file", path) for path in VARIANTS]

        run = wait_final(api, good_id, worker_log)
        assert run["state"]["type"] == "COMPLETED", f"{run['state']}\n{tail(worker_log)}"
        assert run["state"]["message"] == "labelled 3, skipped 0"
        archive = MaskArchive.open(f"{bucket}/masks.zarr", so, mode="r")
        masks = archive.list_masks()
        assert sorted({c for c, _ in masks}) == ["roof", "water"] and len(masks) == 6
        stored = archive.load("roof", masks[0][1])
        assert stored.mask.shape == (128, 128) and stored.record["backbone"] == TINY
        assert stored.record["source_uri"].startswith(f"{bucket}/lake/tiles/")
        # the run's result, its summary, is in the S3 result storage as JSON (no pickle)
        data = run["state"]["data"]
        assert data["serializer"]["type"] == "json" and data["storage_block_id"]
        key = data["storage_key"]
        summary = json.loads(storage.read_bytes(key if "://" in key else f"{bucket}/prefect-results/{key}", so))
        assert summary["labelled"] == 3 and summary["failed"] == 0

        run = wait_final(api, bad_id, worker_log)
        assert run["state"]["type"] == "FAILED", f"{run['state']}\n{tail(worker_log)}"
        assert "no-such-manifest.yaml" in run["state"]["message"]
        errors = [entry["message"] for entry in logs_of(api, bad_id) if entry["level"] >= 40]
        assert any("no-such-manifest.yaml" in m and "no such object" in m for m in errors), errors

        for proc in variants:
            commands.wait(proc)
        deployed = deployments_by_name(api)
        assert {"label-collection/nightly", "label-collection/on-demand", "segment-images/on-demand", "vacuum-archive/weekly",
                "label-collection/buildings-sat", "label-collection/gpu-nightly",
                "label-collection/dask"} <= set(deployed)
        nightly = deployed["label-collection/nightly"]
        schedules = [(s["schedule"]["cron"], s["schedule"]["timezone"]) for s in nightly["schedules"]]
        assert schedules == [("0 2 * * *", "UTC")]
        assert deployed["label-collection/on-demand"]["job_variables"]["env"]["DINOSEG_CHECKOUT"] == str(REPO)
        gpu = deployed["label-collection/gpu-nightly"]
        assert gpu["global_concurrency_limit"]["limit"] == 1
        assert gpu["concurrency_options"]["collision_strategy"] == "ENQUEUE"
        assert gpu["parameters"]["run"]["concurrency_limit"] == "gpu"
        assert gpu["job_variables"]["env"]["DINOSEG_CHECKOUT"] == "/opt/dinoseg"
    finally:
        if worker is not None:
            stop(worker)
        commands.kill_all()
