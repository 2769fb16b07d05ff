"""The engine's label-batch with the open-vocabulary labeller, without the Prefect engine (``task.fn``):
incremental decisions, provenance, one mask per class, failures, the per-process model cache."""

from __future__ import annotations

import os

import numpy as np
import pytest

from dinoseg_core.errors import InputError
from dinoseg_core.io import imageio, storage
from dinoseg_core.io.archive import MaskArchive, image_key
from dinoseg_core.ovseg import OvsegConfig
from tasks import text
from tasks.labelling import LabelJob, label_batch
from tasks.options import RunOptions
from tasks.sources import WorkItem, list_images
from tasks.text import TextModelSpec, prepare_classes
from tests.ovseg_factory import shapes_image
from tests.pipeline_data import write_text_tiles

#: Tiny random towers (2-block 64-wide backbone and vision head, 2-layer text tower): behaviour, not accuracy.
MODEL = TextModelSpec("random:tiny@0", device="cpu")
CLASSES = ("grass", "red square", "blue disk")
#: One 64-px window per image, one template: the cheapest inference that still runs every stage.
OPTIONS = {"short_side": 64, "window": 64, "stride": 32, "templates": ["a photo of a {}."]}




def snapshot(path):
    """Every file under ``path`` with its modification time: equal snapshots mean nothing was written."""
    return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns for d, _, fs in os.walk(path) for f in fs}


@pytest.fixture
def collection(tmp_path):
    """(root, job, labeller): three tiles, three classes, an empty archive."""
    root = str(tmp_path / "bucket")
    write_text_tiles(root)
    job = LabelJob(str(tmp_path / "masks.zarr"), f"{root}/tiles", RunOptions())
    return root, job, prepare_classes.fn(MODEL, CLASSES, OPTIONS)


def with_run(job: LabelJob, **changes) -> LabelJob:
    return LabelJob(job.archive_url, job.input_prefix, job.run.model_copy(update=changes))


def test_prepare_classes_names_concepts_and_digests(collection):
    _, _, prepared = collection
    assert prepared.names == CLASSES and prepared.concepts == ("grass", "red_square", "blue_disk")
    assert prepared.mode == "zero-shot" and prepared.is_random
    again = prepare_classes.fn(MODEL, CLASSES, OPTIONS)
    assert again.methods("tile") == prepared.methods("tile")  # deterministic: the basis of incremental runs
    other = prepare_classes.fn(MODEL, CLASSES + ("water",), OPTIONS).methods("tile")["grass"]
    grass = prepared.methods("tile")["grass"]
    assert other.reference_set_hash != grass.reference_set_hash  # classes compete: a new class relabels all
    assert other.fingerprint == grass.fingerprint
    prefixed = prepare_classes.fn(MODEL, CLASSES, OPTIONS, concept_prefix="text-")
    assert prefixed.concepts == ("text-grass", "text-red_square", "text-blue_disk")


def test_labels_every_class_then_skips_without_writing(collection):
    root, job, prepared = collection
    items = list_images.fn(f"{root}/tiles/*.png")
    first = label_batch.fn(items, prepared, job)
    assert [o.status for o in first] == ["labelled"] * 3
    assert all(o.concepts == prepared.concepts for o in first)
    archive = MaskArchive.open(job.archive_url, mode="r")
    assert len(archive.list_masks()) == 9
    key = image_key(items[0].url, job.input_prefix)
    masks = [archive.load(c, key) for c in prepared.concepts]
    assert all(m.mask.shape == (64, 64) for m in masks)
    assert (sum(m.mask.astype(int) for m in masks) <= 1).all()  # one label map: classes never overlap
    record = masks[1].record
    assert record["class"] == "red square" and record["label_value"] == 2
    assert record["source_uri"] == items[0].url and record["dinotxt"] == "random:tiny@0"
    assert record["backbone_random"] is True and record["config"]["mode"] == "zero-shot"
    assert record["config"]["window"] == 64 and record["classes"] == list(CLASSES)
    assert record["class_table"] == {"0": "background", "1": "grass", "2": "red square", "3": "blue disk"}

    before = snapshot(job.archive_url)
    assert [o.status for o in label_batch.fn(items, prepared, job)] == ["skipped"] * 3
    # an explicit list has no stamps: images are read and hashed, and still skipped
    assert {o.status for o in label_batch.fn([WorkItem(i.url) for i in items], prepared, job)} == {"skipped"}
    assert snapshot(job.archive_url) == before


def test_changes_relabel_what_they_affect(collection):
    root, job, prepared = collection
    items = list_images.fn(f"{root}/tiles/*.png")
    label_batch.fn(items, prepared, job)
    archive = MaskArchive.open(job.archive_url, mode="a")
    key0 = image_key(items[0].url, job.input_prefix)

    # a changed image: only that image, every class
    imageio.write_image_png(items[1].url, shapes_image(999, 64)[0])
    outcomes = label_batch.fn(list_images.fn(f"{root}/tiles/*.png"), prepared, job)
    assert [o.status for o in outcomes] == ["skipped", "labelled", "skipped"]
    assert outcomes[1].concepts == prepared.concepts

    # one class's mask gone: only that class is written again
    storage.url_to_fs(job.archive_url)[0].rm(f"{job.archive_url}/masks/blue_disk/{key0}", recursive=True)
    outcomes = label_batch.fn(list_images.fn(f"{root}/tiles/*.png"), prepared, job)
    assert [o.status for o in outcomes] == ["labelled", "skipped", "skipped"]
    assert outcomes[0].concepts == ("blue_disk",)

    # another config: everything
    other = prepare_classes.fn(MODEL, CLASSES, {**OPTIONS, "background_threshold": 0.9})
    outcomes = label_batch.fn(items, other, job)
    assert {o.status for o in outcomes} == {"labelled"}
    assert archive.mask_record("grass", key0)["config"]["background_threshold"] == 0.9

    # force
    outcomes = label_batch.fn(items[:1], prepared, with_run(job, force=True, save_similarity=True))
    assert outcomes[0].status == "labelled" and outcomes[0].concepts == prepared.concepts
    similarity = archive.load("red_square", key0, similarity=True).similarity
    assert similarity is not None and similarity.shape == (16, 16)  # 64 px / output stride 4
    assert np.all((similarity >= 0) & (similarity <= 1))


def test_a_bad_image_fails_alone_and_the_model_loads_only_when_needed(collection, monkeypatch):
    root, job, prepared = collection
    storage.write_bytes(f"{root}/tiles/tile_zz.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    items = list_images.fn(f"{root}/tiles/*.png") + [WorkItem(f"{root}/tiles/missing.png")]
    outcomes = label_batch.fn(items, prepared, job)
    assert [o.status for o in outcomes] == ["labelled"] * 3 + ["failed", "failed"]
    assert "tile_zz.png" in outcomes[3].reason and "missing.png" in outcomes[4].reason

    text.clear()  # a fresh worker: with nothing to label, it never loads the model
    monkeypatch.setattr(text, "load_dinotxt", lambda *a, **k: pytest.fail("the model was loaded"))
    outcomes = label_batch.fn(items[:3], prepared, job)
    assert [o.status for o in outcomes] == ["skipped"] * 3


def test_the_model_is_loaded_once_per_process():
    text.clear()
    first = text.text_model(MODEL)
    assert text.text_model(MODEL) is first
    seg = text.segmenter(MODEL, OvsegConfig(**{**OPTIONS, "templates": tuple(OPTIONS["templates"])}))
    assert seg.dinotxt is first and seg.mode == "zero-shot"
    assert text.class_embeddings(seg, CLASSES) is text.class_embeddings(seg, CLASSES)
    text.clear()
    assert text.text_model(MODEL) is not first


def test_prompts_longer_than_the_context_are_named(tmp_path):
    with pytest.raises(InputError, match=r"class 'x{90}' .* tokens long"):
        prepare_classes.fn(MODEL, ("road", "x" * 90), OPTIONS)


@pytest.mark.slow
def test_a_geotiff_scene_streams_every_class_with_the_scenes_crs(tmp_path):
    """A GeoTIFF item is a scene: windowed, each class's mask streamed into the archive (equal to what
    segment_scene stitched), carrying the scene's CRS and transform; an unchanged scene is skipped, a changed
    window relabels."""
    import rasterio

    from dinoseg_core.config import SceneConfig
    from dinoseg_core.io.raster import open_raster, raster_reader
    from dinoseg_core.ovseg.scene import segment_scene
    from tests.dinoseg_core.geo_data import band_stack, write_geotiff

    (tmp_path / "scenes").mkdir()
    path = write_geotiff(tmp_path / "scenes" / "scene.tif", band_stack(96, 160, count=4))
    scene = SceneConfig(window_size=64, overlap=16)
    prepared = prepare_classes.fn(MODEL, CLASSES, OPTIONS, scene=scene, bands=(3, 2, 1))
    job = LabelJob(str(tmp_path / "masks.zarr"), str(tmp_path / "scenes"), RunOptions())
    items = list_images.fn(str(tmp_path / "scenes"))
    assert [i.kind for i in items] == ["scene"]
    outcomes = label_batch.fn(items, prepared, job)
    assert outcomes[0].status == "labelled" and outcomes[0].concepts == prepared.concepts

    source = open_raster(path, (3, 2, 1))
    seg = text.segmenter(MODEL, prepared.config())
    labels = np.zeros(source.shape, np.uint16)

    def collect(row, col, block):
        labels[row : row + block.shape[0], col : col + block.shape[1]] = block

    with raster_reader(source) as reader:
        result = segment_scene(seg, text.class_embeddings(seg, CLASSES), reader.read, source.shape, collect,
                               config=prepared.scene)
    assert result.windows == 6 and result.global_view is not None
    archive = MaskArchive.open(job.archive_url, mode="r")
    with rasterio.open(path) as src:
        crs, transform = src.crs, src.transform
    key = image_key(path, job.input_prefix)
    assert sorted(archive.list_masks()) == sorted((c, key) for c in prepared.concepts)
    for value, concept in enumerate(prepared.concepts, start=1):
        stored = archive.load(concept, key)
        np.testing.assert_array_equal(stored.mask, labels == value)
        record = stored.record
        assert record["proj:code"] == crs.to_string() and record["spatial:transform"] == list(transform)[:6]
        assert record["config"]["scene"]["window_size"] == 64 and record["config"]["bands"] == [3, 2, 1]
        assert record["scene_foreground_pixels"] == int((labels == value).sum())
    assert label_batch.fn(items, prepared, job)[0].status == "skipped"
    wider = prepare_classes.fn(MODEL, CLASSES, OPTIONS, scene=scene.replace(window_size=96), bands=(3, 2, 1))
    assert label_batch.fn(items, wider, job)[0].status == "labelled"


def test_a_tile_decoded_reduced_gets_masks_of_its_files_size(collection):
    """A tile over twice the short side is decoded reduced (input_side); its masks are resized back, nearest, so
    they keep the file's size and never overlap."""
    root, job, prepared = collection
    assert prepared.input_side == 64
    url = f"{root}/big/tile.png"
    imageio.write_image_png(url, np.kron(shapes_image(7, 100)[0], np.ones((2, 3, 1), np.float32)))  # 200 x 300
    outcomes = label_batch.fn([WorkItem(url)], prepared, LabelJob(job.archive_url, f"{root}/big", job.run))
    assert outcomes[0].status == "labelled", outcomes[0].reason
    archive = MaskArchive.open(job.archive_url, mode="r")
    masks = [archive.load(c, image_key(url, f"{root}/big")).mask for c in prepared.concepts]
    assert all(m.shape == (200, 300) for m in masks)
    assert (sum(m.astype(int) for m in masks) == 1).all()  # every pixel in exactly one class
