"""``dinoseg serve`` against a real Prefect server: the served deployment appears, a run triggered through the REST
API completes in the serving process's subprocess and writes its masks, and SIGTERM stops the server promptly."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import httpx
import pytest

from dinoseg_core.io.archive import MaskArchive
from tests.deployments.conftest import REPO, stop, tail
from tests.pipeline_data import TINY, write_collection

pytestmark = pytest.mark.integration

FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
#: Seconds ``dinoseg serve`` may take to exit after SIGTERM when no run is in progress.
STOP_SECONDS = 10.0


def _poll(what, fetch, timeout: float, log):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fetch()
        if value is not None:
            return value
        time.sleep(0.5)
    pytest.fail(f"{what} not within {timeout} s:\n{tail(log)}")


def test_serve_runs_a_triggered_flow_and_stops_on_sigterm(prefect_server, tmp_path):
    api, env, logs = prefect_server["api_url"], prefect_server["env"], prefect_server["logs"]
    root = tmp_path / "lake"
    write_collection(str(root), tiles=2, size=64, concepts=("roof",))
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"references": f"{root}/refs.yaml", "images": f"{root}/tiles/*.png",
                                  "archive": str(tmp_path / "served.zarr"), "backbone": TINY,
                                  "method": {"image_size": 64}, "run": {"device": "cpu",
                                                                       "cache": str(tmp_path / "cache")}}))
    log = logs / "serve.log"
    serve_env = {**env, "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    with open(log, "ab") as out:
        server = subprocess.Popen([sys.executable, "-m", "dinoseg", "serve", "--flow", "label-collection", "--name",
                                   "test", "--params", str(params)], env=serve_env, cwd=REPO, stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def deployment():
            response = httpx.get(f"{api}/deployments/name/label-collection/test", timeout=5)
            return response.json() if response.status_code == 200 else None

        served = _poll("the served deployment", deployment, 90, log)
        assert served["parameters"]["backbone"] == TINY and served["work_pool_name"] is None
        created = httpx.post(f"{api}/deployments/{served['id']}/create_flow_run", json={}, timeout=10)
        created.raise_for_status()
        run_id = created.json()["id"]

        def final():
            run = httpx.get(f"{api}/flow_runs/{run_id}", timeout=5).json()
            return run if run["state"]["type"] in FINAL else None

        run = _poll("the flow run's end", final, 180, log)
        assert run["state"]["type"] == "COMPLETED", f"{run['state']}\n{tail(log)}"
        assert len(MaskArchive.open(str(tmp_path / "served.zarr"), mode="r").list_masks()) == 2

        started = time.monotonic()
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        seconds = time.monotonic() - started
        print(f"dinoseg serve stopped {seconds:.2f} s after SIGTERM (exit code {server.returncode})")
        assert seconds < STOP_SECONDS, tail(log)
    finally:
        stop(server)
