"""Task logic without the Prefect engine (``task.fn``): incremental decisions, provenance, failures."""

import os

import numpy as np
import pytest

from dinoseg_core.io import imageio, storage
from dinoseg_core.io.archive import MaskArchive, image_key
from dinoseg_core.io.manifest import load_manifest
from tasks.labelling import label_batch, list_images
from tasks.references import prepare_concept
from tasks.runtime import BackboneSpec
from tasks.settings import LabelSettings
from tests.pipeline_data import TINY, write_collection


@pytest.fixture
def collection(tmp_path):
    root = str(tmp_path / "bucket")
    write_collection(root)
    settings = LabelSettings(
        backbone=BackboneSpec(TINY, device="cpu"), archive_url=str(tmp_path / "masks.zarr"),
        cache_url=str(tmp_path / "cache"), input_prefix=f"{root}/tiles",
    )
    manifest = load_manifest(f"{root}/refs.yaml")
    concepts = [prepare_concept.fn(manifest, name, settings) for name in manifest.concepts]
    return root, settings, manifest, concepts


def snapshot(path):
    """Every file under ``path`` with its modification time: equal snapshots mean nothing was written."""
    return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns for d, _, fs in os.walk(path) for f in fs}


def test_labels_then_skips_without_writing(collection, tmp_path):
    root, settings, _, concepts = collection
    items = list_images.fn(f"{root}/tiles/*.png")
    assert len(items) == 4 and all(stamp for _, stamp in items)
    first = label_batch.fn(items, concepts, settings)
    assert [o.status for o in first] == ["labelled"] * 4 and all(o.concepts == ("roof", "water") for o in first)
    archive = MaskArchive.open(settings.archive_url, mode="r")
    assert len(archive.list_masks()) == 8
    record = archive.mask_record("roof", image_key(items[0][0], settings.input_prefix))
    assert record["source_uri"] == items[0][0] and record["backbone"] == TINY and record["config"]["tau"] == 0.9
    assert record["reference_set_hash"] == concepts[0].reference_set_hash

    before = snapshot(settings.archive_url)
    second = label_batch.fn(items, concepts, settings)
    assert [o.status for o in second] == ["skipped"] * 4
    assert snapshot(settings.archive_url) == before
    # an explicit list has no stamps: images are read and hashed, and still skipped
    assert {o.status for o in label_batch.fn([(u, None) for u, _ in items], concepts, settings)} == {"skipped"}
    assert snapshot(settings.archive_url) == before


def test_a_changed_image_relabels_only_that_image(collection):
    root, settings, _, concepts = collection
    items = list_images.fn(f"{root}/tiles/*.png")
    label_batch.fn(items, concepts, settings)
    image = imageio.read_image(items[1][0])
    imageio.write_image_png(items[1][0], image[::-1].copy())  # new content, new sha256
    outcomes = label_batch.fn(list_images.fn(f"{root}/tiles/*.png"), concepts, settings)
    assert [o.status for o in outcomes] == ["skipped", "labelled", "skipped", "skipped"]


def test_touched_but_unchanged_image_is_not_relabelled(collection):
    root, settings, _, concepts = collection
    items = list_images.fn(f"{root}/tiles/*.png")
    label_batch.fn(items, concepts, settings)
    data = storage.read_bytes(items[2][0])
    storage.write_bytes(items[2][0], data)  # new mtime, same bytes
    outcomes = label_batch.fn(list_images.fn(f"{root}/tiles/*.png"), concepts, settings)
    assert {o.status for o in outcomes} == {"skipped"}


def test_a_changed_concept_config_relabels_only_that_concept(collection):
    root, settings, manifest, concepts = collection
    items = list_images.fn(f"{root}/tiles/*.png")
    label_batch.fn(items, concepts, settings)
    stricter = LabelSettings(**{**settings.__dict__, "method_options": {"merge_threshold": 0.5}})
    changed = [prepare_concept.fn(manifest, "roof", stricter), concepts[1]]
    outcomes = label_batch.fn(items, changed, settings)
    assert all(o.status == "labelled" and o.concepts == ("roof",) for o in outcomes)


def test_force_relabels_everything(collection):
    root, settings, _, concepts = collection
    items = list_images.fn(f"{root}/tiles/*.png")
    label_batch.fn(items, concepts, settings)
    forced = LabelSettings(**{**settings.__dict__, "force": True})
    assert {o.status for o in label_batch.fn(items, concepts, forced)} == {"labelled"}


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n\x00\x00", b"plain text, not an image"])
def test_a_bad_object_fails_alone(collection, content):
    root, settings, _, concepts = collection
    storage.write_bytes(f"{root}/tiles/tile_bad.png", content)
    outcomes = label_batch.fn(list_images.fn(f"{root}/tiles/*.png"), concepts, settings)
    statuses = {o.uri.rsplit("/", 1)[-1]: o.status for o in outcomes}
    assert statuses.pop("tile_bad.png") == "failed" and set(statuses.values()) == {"labelled"}
    failure = next(o for o in outcomes if o.status == "failed")
    assert "tile_bad.png" in failure.reason


def test_a_glob_that_matches_nothing_is_a_clear_error(tmp_path):
    from dinoseg_core.errors import InputError

    with pytest.raises(InputError, match="matches no object"):
        list_images.fn(f"{tmp_path}/nothing/*.png")


def test_reference_embeddings_are_persisted_and_reused_by_content(collection, tmp_path):
    _, settings, manifest, concepts = collection
    cached = sorted(os.listdir(tmp_path / "cache" / "references"))
    assert len(cached) == 2 and len(os.listdir(tmp_path / "cache" / "basis")) == 1
    from tasks import runtime

    runtime.clear()  # a fresh worker process: loads from the cache instead of embedding again
    again = prepare_concept.fn(manifest, "roof", settings)
    assert again == concepts[0] and sorted(os.listdir(tmp_path / "cache" / "references")) == cached
    assert np.isfinite(runtime.reference_set(again.reference_key, settings.cache()).prototype.numpy()).all()


def _label_in_process(args):
    from tasks.labelling import label_batch as task

    items, concepts, settings = args
    return [o.status for o in task.fn(items, concepts, settings)]


def test_two_processes_labelling_one_archive_at_once_corrupt_nothing(collection):
    import multiprocessing

    root, settings, _, concepts = collection
    items = list_images.fn(f"{root}/tiles/*.png")
    forced = LabelSettings(**{**settings.__dict__, "force": True})  # both write every mask: the worst case
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        results = pool.map(_label_in_process, [(items, concepts, forced), (items[::-1], concepts, forced)])
    assert results == [["labelled"] * 4, ["labelled"] * 4]
    archive = MaskArchive.open(settings.archive_url, mode="r")
    assert len(archive.list_masks()) == 8
    for concept, key in archive.list_masks():
        stored = archive.load(concept, key)  # checks the mask against the sha256 its record holds
        assert stored.mask.shape == (128, 128)
    # and a normal run afterwards sees everything up to date
    assert {o.status for o in label_batch.fn(items, concepts, settings)} == {"skipped"}
