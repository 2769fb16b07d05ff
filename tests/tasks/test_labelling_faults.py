"""label-batch against a store that fails: every kind of bad object fails alone with its own reason, a passing
failure is retried for that object alone, a full disk stops the batch with what was and was not written.

Real moto S3 behind a fault-injecting proxy (tests/fault_proxy.py); real filesystems; the tiny random backbone.
"""

from __future__ import annotations

import errno

import pytest

from dinoseg_core.io import imageio, storage
from dinoseg_core.io.archive import MaskArchive
from dinoseg_core.synthetic import generate_scene
from tasks import retry
from tasks.labelling import BatchStopped, LabelJob, label_batch
from tasks.options import RunOptions
from tasks.sources import WorkItem, list_images
from tests.fault_proxy import FaultProxy
from tests.pipeline_data import concept_set, write_collection
from tests.quota_fs import QuotaFileSystem


@pytest.fixture
def quick_retries(monkeypatch):
    """Two item retries, 50 ms apart (the production backoff is seconds)."""
    monkeypatch.setattr(retry, "ITEM_RETRY_DELAYS", (0.05, 0.05))


def _by_name(outcomes):
    return {o.uri.rsplit("/", 1)[-1]: o for o in outcomes}


@pytest.mark.integration
def test_every_kind_of_bad_object_fails_alone_with_its_own_reason(s3_server, tmp_path, quick_retries):
    refs = str(tmp_path / "refs")
    write_collection(refs, tiles=0, size=64)
    labeller = concept_set(refs, cache=str(tmp_path / "cache"))
    bucket, direct = s3_server["make_bucket"](), s3_server["storage_options"]
    for index in range(6):
        imageio.write_image_png(f"{bucket}/tiles/t{index}.png", generate_scene(200 + index, size=64).image, direct)
    storage.write_bytes(f"{bucket}/tiles/t4.png", b"plain text, not a PNG", direct)
    with FaultProxy(s3_server["endpoint_url"]) as proxy:
        # botocore's own retries off: the test counts the requests dinoseg makes
        so = {**direct, "endpoint_url": proxy.url, "config_kwargs": {"retries": {"total_max_attempts": 1}}}
        items = list_images.fn(f"{bucket}/tiles/*.png", so) + [WorkItem(f"{bucket}/tiles/gone.png")]
        proxy.fail("tiles/t0.png", 403)
        proxy.fail("tiles/t1.png", 500)  # lasting
        proxy.fail("tiles/t2.png", 503, times=2)  # throttled twice, then served
        proxy.fail("tiles/t3.png", "drop", times=1)  # the connection dropped once
        job = LabelJob(str(tmp_path / "masks.zarr"), f"{bucket}/tiles", RunOptions(storage_options=so))
        outcomes = _by_name(label_batch.fn(items, labeller, job))
        hits = dict(proxy.hits)

    assert {name: o.status for name, o in outcomes.items()} == {
        "t0.png": "failed", "t1.png": "failed", "t2.png": "labelled", "t3.png": "labelled", "t4.png": "failed",
        "t5.png": "labelled", "gone.png": "failed"}
    assert all(o.concepts == ("roof", "water") for o in outcomes.values() if o.status == "labelled")
    # each failure names its own object and its own cause
    assert "t0.png" in outcomes["t0.png"].reason and "permission denied" in outcomes["t0.png"].reason
    assert "t1.png" in outcomes["t1.png"].reason and "still failing after 3 attempts" in outcomes["t1.png"].reason
    assert "t4.png" in outcomes["t4.png"].reason and "t0.png" not in outcomes["t4.png"].reason
    assert "gone.png" in outcomes["gone.png"].reason and "no such object" in outcomes["gone.png"].reason
    # a refusal is asked once; a lasting server error three times (the first try and two item retries)
    assert hits["tiles/t0.png"] == 1 and hits["tiles/t1.png"] == 3 and hits["tiles/t2.png"] == 2
    archive = MaskArchive.open(job.archive_url, mode="r")
    assert sorted(archive.mask_record("roof", key)["source_uri"].rsplit("/", 1)[-1]
                  for _, key in archive.list_masks("roof")) == ["t2.png", "t3.png", "t5.png"]


def test_a_full_disk_stops_the_batch_with_what_was_and_was_not_written(tmp_path):
    root = str(tmp_path / "c")
    write_collection(root, tiles=4, size=64)
    labeller = concept_set(root, cache=str(tmp_path / "cache"))
    items = list_images.fn(f"{root}/tiles/*.png")
    QuotaFileSystem.reset()
    job = LabelJob("quota://full/masks.zarr", f"{root}/tiles", RunOptions())
    MaskArchive.open(job.archive_url, mode="a")
    QuotaFileSystem.limit(2500)  # room for about one tile's two masks
    with pytest.raises(BatchStopped) as info:
        label_batch.fn(items, labeller, job)
    stopped = info.value
    assert isinstance(stopped, OSError) and stopped.errno == errno.ENOSPC
    assert "full" in str(stopped) and "No space left" in str(stopped)
    assert [o.uri for o in stopped.outcomes] == [item.url for item in items]
    labelled = [o for o in stopped.outcomes if o.status == "labelled"]
    unwritten = [o for o in stopped.outcomes if o.status == "failed"]
    assert len(labelled) + len(unwritten) == 4 and unwritten
    assert all(o.reason.startswith("not written") for o in unwritten)
    # not retried: a full disk is fatal, not transient
    assert not retry.transient(stopped) and retry.fatal(stopped)


def test_an_empty_reference_mask_is_named_by_its_own_file(tmp_path):
    import numpy as np

    from dinoseg_core.errors import InputError

    root = str(tmp_path / "c")
    write_collection(root, tiles=0, size=64)
    imageio.write_mask_png(f"{root}/refs/water.png", np.zeros((64, 64), bool))
    with pytest.raises(InputError) as info:
        concept_set(root, cache=str(tmp_path / "cache"))
    assert f"mask '{root}/refs/water.png' is empty" in str(info.value)
    assert "ref.png mask" not in str(info.value)
