"""The engine's label-batch with the INSID3 labeller, without the Prefect engine (``task.fn``): incremental
decisions, provenance, failures, concurrent writers."""

import dataclasses
import os

import numpy as np
import pytest

from dinoseg_core.io import imageio, storage
from dinoseg_core.io.archive import MaskArchive, image_key
from tasks.labelling import LabelJob, label_batch
from tasks.options import RunOptions
from tasks.sources import WorkItem, list_images
from tests.pipeline_data import TINY, concept_set, write_collection


@pytest.fixture
def collection(tmp_path):
    """(root, job, labeller): four tiles, two concepts, an empty archive."""
    root = str(tmp_path / "bucket")
    write_collection(root)
    cache = str(tmp_path / "cache")
    job = LabelJob(str(tmp_path / "masks.zarr"), f"{root}/tiles", RunOptions(cache=cache))
    return root, job, concept_set(root, cache=cache)


def with_run(job: LabelJob, **changes) -> LabelJob:
    return LabelJob(job.archive_url, job.input_prefix, job.run.model_copy(update=changes))


def snapshot(path):
    """Every file under ``path`` with its modification time: equal snapshots mean nothing was written."""
    return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns for d, _, fs in os.walk(path) for f in fs}


def test_labels_then_skips_without_writing(collection, tmp_path):
    root, job, labeller = collection
    items = list_images.fn(f"{root}/tiles/*.png")
    assert len(items) == 4 and all(item.stamp and item.kind == "tile" for item in items)
    first = label_batch.fn(items, labeller, job)
    assert [o.status for o in first] == ["labelled"] * 4 and all(o.concepts == ("roof", "water") for o in first)
    archive = MaskArchive.open(job.archive_url, mode="r")
    assert len(archive.list_masks()) == 8
    record = archive.mask_record("roof", image_key(items[0].url, job.input_prefix))
    assert record["source_uri"] == items[0].url and record["backbone"] == TINY and record["config"]["tau"] == 0.9
    assert record["reference_set_hash"] == labeller.concepts[0].reference_set_hash
    assert record["backbone_random"] is True and record["source_stamp"] == items[0].stamp

    before = snapshot(job.archive_url)
    second = label_batch.fn(items, labeller, job)
    assert [o.status for o in second] == ["skipped"] * 4
    assert snapshot(job.archive_url) == before
    # an explicit list has no stamps: images are read and hashed, and still skipped
    unstamped = [WorkItem(item.url) for item in items]
    assert {o.status for o in label_batch.fn(unstamped, labeller, job)} == {"skipped"}
    assert snapshot(job.archive_url) == before


def test_a_changed_image_relabels_only_that_image(collection):
    root, job, labeller = collection
    items = list_images.fn(f"{root}/tiles/*.png")
    label_batch.fn(items, labeller, job)
    image = imageio.read_image(items[1].url)
    imageio.write_image_png(items[1].url, image[::-1].copy())  # new content, new sha256
    outcomes = label_batch.fn(list_images.fn(f"{root}/tiles/*.png"), labeller, job)
    assert [o.status for o in outcomes] == ["skipped", "labelled", "skipped", "skipped"]


def test_touched_but_unchanged_image_is_not_relabelled(collection):
    root, job, labeller = collection
    items = list_images.fn(f"{root}/tiles/*.png")
    label_batch.fn(items, labeller, job)
    data = storage.read_bytes(items[2].url)
    storage.write_bytes(items[2].url, data)  # new mtime, same bytes
    outcomes = label_batch.fn(list_images.fn(f"{root}/tiles/*.png"), labeller, job)
    assert {o.status for o in outcomes} == {"skipped"}


def test_a_changed_concept_config_relabels_only_that_concept(collection):
    root, job, labeller = collection
    items = list_images.fn(f"{root}/tiles/*.png")
    label_batch.fn(items, labeller, job)
    stricter = concept_set(root, method={"merge_threshold": 0.5}, cache=job.run.cache)
    changed = dataclasses.replace(labeller, concepts=(stricter.concepts[0], labeller.concepts[1]))
    outcomes = label_batch.fn(items, changed, job)
    assert all(o.status == "labelled" and o.concepts == ("roof",) for o in outcomes)


def test_force_relabels_everything(collection):
    root, job, labeller = collection
    items = list_images.fn(f"{root}/tiles/*.png")
    label_batch.fn(items, labeller, job)
    assert {o.status for o in label_batch.fn(items, labeller, with_run(job, force=True))} == {"labelled"}


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n\x00\x00", b"plain text, not an image"])
def test_a_bad_object_fails_alone(collection, content):
    root, job, labeller = collection
    storage.write_bytes(f"{root}/tiles/tile_bad.png", content)
    outcomes = label_batch.fn(list_images.fn(f"{root}/tiles/*.png"), labeller, job)
    statuses = {o.uri.rsplit("/", 1)[-1]: o.status for o in outcomes}
    assert statuses.pop("tile_bad.png") == "failed" and set(statuses.values()) == {"labelled"}
    failure = next(o for o in outcomes if o.status == "failed")
    assert "tile_bad.png" in failure.reason


def test_a_glob_that_matches_nothing_is_a_clear_error(tmp_path):
    from dinoseg_core.errors import InputError

    with pytest.raises(InputError, match="matches no object"):
        list_images.fn(f"{tmp_path}/nothing/*.png")


def test_reference_embeddings_are_persisted_and_reused_by_content(collection, tmp_path):
    root, job, labeller = collection
    cached = sorted(os.listdir(tmp_path / "cache" / "references"))
    assert len(cached) == 2 and len(os.listdir(tmp_path / "cache" / "basis")) == 1
    from tasks import runtime
    from tasks.concepts import feature_cache

    runtime.clear()  # a fresh worker process: loads from the cache instead of embedding again
    again = concept_set(root, cache=job.run.cache)
    assert again == labeller and sorted(os.listdir(tmp_path / "cache" / "references")) == cached
    refs = runtime.reference_set(again.concepts[0].reference_key, feature_cache(job.run.cache, None))
    assert np.isfinite(refs.prototype.numpy()).all()


def _label_in_process(args):
    from tasks.labelling import label_batch as task

    items, labeller, job = args
    return [o.status for o in task.fn(items, labeller, job)]


def test_two_processes_labelling_one_archive_at_once_corrupt_nothing(collection):
    import multiprocessing

    root, job, labeller = collection
    items = list_images.fn(f"{root}/tiles/*.png")
    forced = with_run(job, force=True)  # both write every mask: the worst case
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = pool.map(_label_in_process, [(items, labeller, forced), (items[::-1], labeller, forced)])
    assert results == [["labelled"] * 4, ["labelled"] * 4]
    archive = MaskArchive.open(job.archive_url, mode="r")
    assert len(archive.list_masks()) == 8
    for concept, key in archive.list_masks():
        stored = archive.load(concept, key)  # checks the mask against the sha256 its record holds
        assert stored.mask.shape == (128, 128)
    # and a normal run afterwards sees everything up to date
    assert {o.status for o in label_batch.fn(items, labeller, job)} == {"skipped"}


def test_the_clustering_backend_changes_where_step_7_runs_not_the_masks(collection, tmp_path):
    root, job, labeller = collection
    items = list_images.fn(f"{root}/tiles/*.png")
    label_batch.fn(items, labeller, with_run(job, cluster_backend="scipy"))
    other = LabelJob(str(tmp_path / "torch.zarr"), job.input_prefix, job.run.model_copy(update={"cluster_backend": "torch"}))
    label_batch.fn(items, labeller, other)
    scipy_archive, torch_archive = (MaskArchive.open(url, mode="r") for url in (job.archive_url, other.archive_url))
    for concept, key in scipy_archive.list_masks():
        assert scipy_archive.mask_record(concept, key)["mask_sha256"] == torch_archive.mask_record(concept, key)["mask_sha256"]
    # and the backend is not part of what a mask depends on: the scipy archive is up to date for a torch run
    assert {o.status for o in label_batch.fn(items, labeller, with_run(job, cluster_backend="torch"))} == {"skipped"}
