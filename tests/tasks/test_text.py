"""Open-vocabulary task logic without the Prefect engine (``task.fn``): incremental decisions, provenance, one
mask per class, failures, the per-process model cache, dataset specs."""

from __future__ import annotations

import os

import numpy as np
import pytest

from dinoseg_core.io import imageio, storage
from dinoseg_core.io.archive import MaskArchive, image_key
from dinoseg_core.errors import InputError
from dinoseg_core.ovseg import OvsegConfig
from dinoseg_core.ovseg.train import loss_curve
from tasks import text
from tasks.labelling import list_images
from tasks.text import DatasetSpec, TextModelSpec, TextSettings, label_text_batch, prepare_classes
from tests.ovseg_factory import shapes_image

#: Tiny random towers (2-block 64-wide backbone and vision head, 2-layer text tower): behaviour, not accuracy.
MODEL = TextModelSpec("random:tiny@0", device="cpu")
CLASSES = ("grass", "red square", "blue disk")
#: One 64-px window per image, one template: the cheapest inference that still runs every stage.
OPTIONS = {"short_side": 64, "window": 64, "stride": 32, "templates": ["a photo of a {}."]}


def write_tiles(root: str, n: int = 3, size: int = 64) -> list[str]:
    urls = []
    for i in range(n):
        url = storage.join(root, "tiles", f"tile_{i:02d}.png")
        imageio.write_image_png(url, shapes_image(100 + i, size)[0])
        urls.append(url)
    return urls


def snapshot(path):
    """Every file under ``path`` with its modification time: equal snapshots mean nothing was written."""
    return {os.path.join(d, f): os.stat(os.path.join(d, f)).st_mtime_ns for d, _, fs in os.walk(path) for f in fs}


@pytest.fixture
def collection(tmp_path):
    root = str(tmp_path / "bucket")
    write_tiles(root)
    settings = TextSettings(model=MODEL, archive_url=str(tmp_path / "masks.zarr"), classes=CLASSES,
                            options=OPTIONS, input_prefix=f"{root}/tiles")
    return root, settings, prepare_classes.fn(settings)


def test_prepare_classes_names_concepts_and_digests(collection):
    _, settings, prepared = collection
    assert prepared.names == CLASSES and prepared.concepts == ("grass", "red_square", "blue_disk")
    assert prepared.mode == "zero-shot" and prepared.is_random
    again = prepare_classes.fn(settings)
    assert again == prepared  # deterministic: the basis of incremental runs
    other = prepare_classes.fn(TextSettings(model=MODEL, archive_url=settings.archive_url,
                                            classes=CLASSES + ("water",), options=OPTIONS))
    assert other.reference_set_hash != prepared.reference_set_hash  # classes compete: a new class relabels all
    assert other.fingerprint == prepared.fingerprint
    prefixed = TextSettings(model=MODEL, archive_url="x", classes=CLASSES, concept_prefix="text-")
    assert prefixed.concepts() == ("text-grass", "text-red_square", "text-blue_disk")


def test_labels_every_class_then_skips_without_writing(collection):
    root, settings, prepared = collection
    items = list_images.fn(f"{root}/tiles/*.png")
    first = label_text_batch.fn(items, prepared, settings)
    assert [o.status for o in first] == ["labelled"] * 3
    assert all(o.concepts == prepared.concepts for o in first)
    archive = MaskArchive.open(settings.archive_url, mode="r")
    assert len(archive.list_masks()) == 9
    key = image_key(items[0][0], settings.input_prefix)
    masks = [archive.load(c, key) for c in prepared.concepts]
    assert all(m.mask.shape == (64, 64) for m in masks)
    assert (sum(m.mask.astype(int) for m in masks) <= 1).all()  # one label map: classes never overlap
    record = masks[1].record
    assert record["class"] == "red square" and record["label_value"] == 2
    assert record["source_uri"] == items[0][0] and record["dinotxt"] == "random:tiny@0"
    assert record["backbone_random"] is True and record["config"]["mode"] == "zero-shot"
    assert record["config"]["window"] == 64 and record["classes"] == list(CLASSES)
    assert record["class_table"] == {"0": "background", "1": "grass", "2": "red square", "3": "blue disk"}

    before = snapshot(settings.archive_url)
    assert [o.status for o in label_text_batch.fn(items, prepared, settings)] == ["skipped"] * 3
    # an explicit list has no stamps: images are read and hashed, and still skipped
    assert {o.status for o in label_text_batch.fn([(u, None) for u, _ in items], prepared, settings)} == {"skipped"}
    assert snapshot(settings.archive_url) == before


def test_changes_relabel_what_they_affect(collection):
    root, settings, prepared = collection
    items = list_images.fn(f"{root}/tiles/*.png")
    label_text_batch.fn(items, prepared, settings)
    archive = MaskArchive.open(settings.archive_url, mode="a")
    key0 = image_key(items[0][0], settings.input_prefix)

    # a changed image: only that image, every class
    imageio.write_image_png(items[1][0], shapes_image(999, 64)[0])
    outcomes = label_text_batch.fn(list_images.fn(f"{root}/tiles/*.png"), prepared, settings)
    assert [o.status for o in outcomes] == ["skipped", "labelled", "skipped"]
    assert outcomes[1].concepts == prepared.concepts

    # one class's mask deleted: only that class is written again
    archive.delete_mask("blue_disk", key0)
    outcomes = label_text_batch.fn(list_images.fn(f"{root}/tiles/*.png"), prepared, settings)
    assert [o.status for o in outcomes] == ["labelled", "skipped", "skipped"]
    assert outcomes[0].concepts == ("blue_disk",)

    # another config: everything
    other = TextSettings(model=MODEL, archive_url=settings.archive_url, classes=CLASSES,
                         options={**OPTIONS, "background_threshold": 0.9}, input_prefix=settings.input_prefix)
    outcomes = label_text_batch.fn(items, prepare_classes.fn(other), other)
    assert {o.status for o in outcomes} == {"labelled"}
    assert archive.mask_record("grass", key0)["config"]["background_threshold"] == 0.9

    # force
    forced = TextSettings(model=MODEL, archive_url=settings.archive_url, classes=CLASSES, options=OPTIONS,
                          input_prefix=settings.input_prefix, force=True, save_similarity=True)
    outcomes = label_text_batch.fn(items[:1], prepared, forced)
    assert outcomes[0].status == "labelled" and outcomes[0].concepts == prepared.concepts
    similarity = archive.read_similarity("red_square", key0)
    assert similarity is not None and similarity.shape == (16, 16)  # 64 px / output stride 4
    assert np.all((similarity >= 0) & (similarity <= 1))


def test_a_bad_image_fails_alone_and_the_model_loads_only_when_needed(collection, monkeypatch):
    root, settings, prepared = collection
    storage.write_bytes(f"{root}/tiles/tile_zz.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    items = list_images.fn(f"{root}/tiles/*.png") + [(f"{root}/tiles/missing.png", None)]
    outcomes = label_text_batch.fn(items, prepared, settings)
    assert [o.status for o in outcomes] == ["labelled"] * 3 + ["failed", "failed"]
    assert "tile_zz.png" in outcomes[3].reason and "missing.png" in outcomes[4].reason

    text.clear()  # a fresh worker: with nothing to label, it never loads the model
    monkeypatch.setattr(text, "load_dinotxt", lambda *a, **k: pytest.fail("the model was loaded"))
    outcomes = label_text_batch.fn(items[:3], prepared, settings)
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
    settings = TextSettings(model=MODEL, archive_url=str(tmp_path / "a.zarr"), classes=("road", "x" * 90),
                            options=OPTIONS)
    with pytest.raises(InputError, match=r"class 'x{90}' .* tokens long"):
        prepare_classes.fn(settings)


def test_dataset_specs_say_what_is_missing():
    with pytest.raises(InputError, match="folder layout needs classes"):
        DatasetSpec("memory://data")
    with pytest.raises(InputError, match="coco-stuff layout needs class_table"):
        DatasetSpec("memory://data", layout="coco-stuff")
    with pytest.raises(InputError, match="duplicates"):
        DatasetSpec("memory://data", classes=("road", "Road"))
    assert DatasetSpec("memory://data", classes=(" road ", "water")).classes == ("road", "water")


def test_loss_curve_means_every_n_steps():
    curve = loss_curve([4.0, 2.0, 3.0, 1.0, 0.5], 2)
    assert curve == [{"step": 2, "loss": 3.0, "min": 2.0, "max": 4.0},
                     {"step": 4, "loss": 2.0, "min": 1.0, "max": 3.0},
                     {"step": 5, "loss": 0.5, "min": 0.5, "max": 0.5}]
    assert loss_curve([], 3) == []
    with pytest.raises(InputError):
        loss_curve([1.0], 0)
