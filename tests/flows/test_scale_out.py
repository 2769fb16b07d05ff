"""Scale-out: batches on a Dask cluster of worker processes (prefect-dask) give the same archive as one process;
a global concurrency limit bounds the batches in the backbone at once."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import ValidationError

from dinoseg_core.errors import InputError
from dinoseg_core.io.archive import MaskArchive
from dinoseg_core.segmenter import InContextSegmenter
from flows.engine import task_runner
from flows.labelling import label_collection
from tasks.options import RunOptions
from tests.pipeline_data import TINY, write_collection

#: Provenance that differs between two runs of the same inputs by design: when, how long, which version group.
RUN_SPECIFIC = {"created", "timings", "version", "group", "dinoseg_version"}


def archive_contents(url: str) -> dict:
    """Every mask of an archive with its provenance, less what is specific to the run that wrote it."""
    archive = MaskArchive.open(url, mode="r")
    contents = {}
    for concept, key in archive.list_masks():
        stored = archive.load(concept, key)
        record = {k: v for k, v in stored.record.items() if k not in RUN_SPECIFIC}
        contents[concept, key] = (stored.mask, record)
    return contents


def _backbones_loaded() -> int:
    """Run on each Dask worker: how many backbones its process holds."""
    from tasks import runtime

    return len(runtime._backbones)


def test_task_runner_choice():
    threads = task_runner(RunOptions(workers=3))
    assert isinstance(threads, ThreadPoolTaskRunner) and threads._max_workers == 3
    pytest.importorskip("prefect_dask")
    remote = task_runner(RunOptions(task_runner="dask", dask_address="tcp://10.0.0.5:8786"))
    assert remote.address == "tcp://10.0.0.5:8786"
    local = task_runner(RunOptions(task_runner="dask", dask_workers=4))
    assert local.cluster_kwargs["n_workers"] == 4 and local.cluster_kwargs["threads_per_worker"] == 1
    assert local.cluster_kwargs["processes"] is True
    with pytest.raises(ValidationError, match="'threads' or 'dask'"):
        RunOptions(task_runner="ray")
    with temporary_settings(restore_defaults={PREFECT_API_URL}), pytest.raises(InputError, match="PREFECT_API_URL"):
        task_runner(RunOptions(task_runner="dask"))


@pytest.mark.slow
def test_a_dask_cluster_of_two_processes_labels_like_one_process(tmp_path):
    distributed = pytest.importorskip("distributed")
    root = str(tmp_path / "bucket")
    write_collection(root, tiles=8)
    params = dict(references=f"{root}/refs.yaml", images=f"{root}/tiles/*.png", backbone=TINY, return_state=True)
    run = dict(device="cpu", cache=str(tmp_path / "cache"), batch_size=2)

    single = label_collection(archive=str(tmp_path / "one.zarr"), run={**run, "workers": 1}, **params)
    assert single.is_completed() and single.result()["labelled"] == 8

    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
    with cluster, distributed.Client(cluster) as client, distributed.get_task_stream(client) as stream:
        scaled = label_collection(archive=str(tmp_path / "two.zarr"), **params, run={
            **run, "task_runner": "dask", "dask_address": cluster.scheduler_address})
        loaded = client.run(_backbones_loaded)
    assert scaled.is_completed(), scaled.message
    assert scaled.result()["labelled"] == 8
    batch_workers = {t["worker"] for t in stream.data if "label" in str(t["key"])}
    assert len(batch_workers) == 2, stream.data  # both worker processes labelled batches...
    assert sorted(loaded.values()) == [1, 1]  # ...and each loaded the backbone once for its batches

    one, two = archive_contents(str(tmp_path / "one.zarr")), archive_contents(str(tmp_path / "two.zarr"))
    assert one.keys() == two.keys() and len(one) == 16
    for name, (mask, record) in one.items():
        assert np.array_equal(mask, two[name][0]), name
        assert record == two[name][1], name


@pytest.mark.slow
def test_a_global_concurrency_limit_bounds_batches_in_the_backbone(tmp_path, monkeypatch):
    root = str(tmp_path / "bucket")
    write_collection(root, tiles=4)
    params = dict(references=f"{root}/refs.yaml", images=f"{root}/tiles/*.png", backbone=TINY, return_state=True)
    run = dict(device="cpu", cache=str(tmp_path / "cache"), batch_size=1, workers=4)

    missing = label_collection(archive=str(tmp_path / "a.zarr"), run={**run, "concurrency_limit": "no-such-limit"},
                               **params)
    assert missing.is_failed()
    assert "prefect gcl create no-such-limit" in str(missing.result(raise_on_failure=False))

    inside, most, lock = 0, 0, threading.Lock()
    extract = InContextSegmenter.extract_targets

    def counting(self, *args, **kwargs):
        nonlocal inside, most
        with lock:
            inside += 1
            most = max(most, inside)
        try:
            return extract(self, *args, **kwargs)
        finally:
            with lock:
                inside -= 1

    monkeypatch.setattr(InContextSegmenter, "extract_targets", counting)
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name="gpu-test", limit=1))
    state = label_collection(archive=str(tmp_path / "b.zarr"), run={**run, "concurrency_limit": "gpu-test"}, **params)
    assert state.is_completed(), state.message
    assert state.result()["labelled"] == 4 and most == 1
