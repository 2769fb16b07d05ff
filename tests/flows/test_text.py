"""The open-vocabulary flows under a real (temporary) Prefect server, with tiny random towers on small generated
images: label_with_text (read back, incremental, failures, bad class lists), train_ovss (loss falls, safetensors
checkpoint, resume), evaluate_ovss (per-class IoU), and their commands."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from dinoseg.cli import main as cli
from dinoseg_core.errors import InputError
from dinoseg_core.io import imageio, storage
from dinoseg_core.io.archive import MaskArchive, image_key
from dinoseg_core.io.heads import load_seg_model
from dinoseg_core.ovseg import load_dinotxt
from flows.text import evaluate_ovss, label_with_text, sparkline, train_ovss
from tests.ovseg_factory import SHAPE_CLASSES, shapes_image
from tests.pipeline_data import (
    artifacts_of,
    assert_failure_named_everywhere,
    write_text_tiles,
)

TINY = "random:tiny@0"
CLASSES = "grass,red square,blue disk"
#: One 64-px window per image and one template: every stage runs, at the lowest cost.
OPTIONS = {"short_side": 64, "window": 64, "stride": 32, "templates": ["a photo of a {}."]}
TRAIN = {"batch_size": 2, "lr": 1e-2, "short_side": 64, "crop": 64, "schedule": "constant",
         "templates": ["a photo of a {}."], "checkpoint_every": 8}
HEAD = {"hidden": 16, "early_blocks": 0, "spatial_blocks": 1, "class_blocks": 1, "class_heads": 2,
        "decoder_channels": [8]}




def write_dataset(root: str, n: int, seed: int, size: int = 64) -> str:
    """A folder-layout dataset of coloured shapes: ``images/*.png`` + ``annotations/*.png`` (class indices)."""
    for i in range(n):
        image, label = shapes_image(seed * 1000 + i, size)
        imageio.write_image_png(storage.join(root, "images", f"{i:03d}.png"), image)
        buf = io.BytesIO()
        Image.fromarray(label.astype(np.uint8), mode="L").save(buf, format="PNG")
        storage.write_bytes(storage.join(root, "annotations", f"{i:03d}.png"), buf.getvalue())
    return root


def label(*, batch_size=8, **params):
    return label_with_text(dinotxt=TINY, options=OPTIONS, run={"device": "cpu", "batch_size": batch_size},
                           return_state=True, **params)


def test_label_with_text_writes_masks_a_user_reads_back_then_skips(tmp_path):
    root = str(tmp_path / "bucket")
    urls = write_text_tiles(root)
    params = dict(classes=CLASSES, images=f"{root}/tiles/*.png", archive=str(tmp_path / "a.zarr"))
    first = label(**params)
    assert first.is_completed(), first.message
    summary = first.result()
    assert summary["labelled"] == 3 and summary["failed"] == 0
    assert summary["concepts"] == {"grass": "grass", "red square": "red_square", "blue disk": "blue_disk"}
    assert {"progress", "table"} <= {a["type"] for a in artifacts_of(first)}

    archive = MaskArchive.open(params["archive"], mode="r")
    key = image_key(urls[0], f"{root}/tiles")
    stored = archive.load("red_square", key)
    assert stored.mask.shape == (64, 64) and stored.mask.dtype == bool
    assert stored.record["class"] == "red square" and stored.record["source_uri"] == urls[0]
    assert len(archive.list_masks()) == 9

    second = label(**params)
    assert second.is_completed() and second.result()["skipped"] == 3 and second.result()["labelled"] == 0
    assert len(archive.run_logs()) == 1  # the no-op run wrote nothing, not even a log
    assert archive.run_logs()[0]["flow"] == "label-with-text"


def test_a_corrupt_image_fails_alone_and_is_named_everywhere(tmp_path):
    root = str(tmp_path / "bucket")
    write_text_tiles(root, n=2)
    storage.write_bytes(f"{root}/tiles/tile_zz_truncated.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    state = label(classes=CLASSES, images=f"{root}/tiles/*.png", archive=str(tmp_path / "a.zarr"), batch_size=2)
    assert_failure_named_everywhere(state, str(tmp_path / "a.zarr"), "tile_zz_truncated.png", labelled=2)


@pytest.mark.parametrize("classes, message", [
    ("building,road,Road", r"classes: class names #1 'road' and #2 'Road' are duplicates"),
    ("building,,road", r"classes: class name #1 is empty"),
    (["building", "very " * 20 + "long field"], r"class 'very very .*long field' with template .* tokens long"),
], ids=["duplicate", "empty", "too-long"])
def test_bad_class_lists_fail_early_with_a_clear_message(tmp_path, classes, message):
    root = str(tmp_path / "bucket")
    write_text_tiles(root, n=1)
    state = label(classes=classes, images=f"{root}/tiles/*.png", archive=str(tmp_path / "a.zarr"))
    assert state.is_failed()
    assert pytest.raises(InputError, state.result).match(message)
    assert not (tmp_path / "a.zarr" / "masks" / "building").exists()


@pytest.mark.slow
def test_train_lowers_the_loss_writes_a_checkpoint_and_resumes_then_evaluate(tmp_path):
    data = write_dataset(str(tmp_path / "train"), n=8, seed=0)
    checkpoint = str(tmp_path / "head.safetensors")
    common = dict(dataset=data, dinotxt=TINY, checkpoint=checkpoint, classes=list(SHAPE_CLASSES), device="cpu",
                  train=TRAIN, head=HEAD, log_every=4, return_state=True)
    first = train_ovss(steps=16, **common)
    assert first.is_completed(), first.message
    result = first.result()
    assert result["steps"] == 16 and result["resumed_from"] == 0 and len(result["loss_curve"]) == 4
    assert result["final_loss"] < 0.8 * result["first_loss"], result["loss_curve"]
    assert {"progress", "table", "markdown"} <= {a["type"] for a in artifacts_of(first)}
    model = load_seg_model(checkpoint, load_dinotxt(TINY, device="cpu"))
    assert model.head.config.hidden == 16

    resumed = train_ovss(steps=20, **common)
    assert resumed.is_completed(), resumed.message
    again = resumed.result()
    assert again["resumed_from"] == 16 and again["steps"] == 20 and len(again["loss_curve"]) == 5
    assert again["loss_curve"][:4] == result["loss_curve"]  # the history travels with the checkpoint

    state = evaluate_ovss(dataset=write_dataset(str(tmp_path / "val"), n=3, seed=1), dinotxt=TINY, head=checkpoint,
                          classes=list(SHAPE_CLASSES), device="cpu", options=OPTIONS, return_state=True)
    assert state.is_completed(), state.message
    evaluation = state.result()
    assert set(evaluation["iou"]) == set(SHAPE_CLASSES) and evaluation["images"] == 3
    assert 0.0 <= evaluation["miou"] <= 1.0 and evaluation["mode"] == "dinov3.seg"
    table = next(a for a in artifacts_of(state) if a["type"] == "table")
    assert "mIoU" in json.dumps(table["data"]) and "red square" in json.dumps(table["data"])


def test_train_and_evaluate_name_what_is_missing(tmp_path):
    state = train_ovss(dataset=str(tmp_path), dinotxt=TINY, checkpoint=str(tmp_path / "h.safetensors"), steps=1,
                       return_state=True)
    assert state.is_failed() and pytest.raises(InputError, state.result).match("folder layout needs classes")
    state = evaluate_ovss(dataset=str(tmp_path), dinotxt=TINY, layout="coco-stuff", return_state=True)
    assert state.is_failed() and pytest.raises(InputError, state.result).match("needs class_table")


def test_the_text_commands(tmp_path, capsys):
    root = str(tmp_path / "bucket")
    write_text_tiles(root, n=2)
    args = ["label-text", "--classes", "grass,red square", "--images", f"{root}/tiles/*.png", "--archive",
            str(tmp_path / "a.zarr"), "--dinotxt", TINY, "--device", "cpu", "--short-side", "64", "--window", "64",
            "--stride", "32", "--templates", "a photo of a {}.", "--background-threshold", "0.3", "--concept-prefix", "text-"]
    assert cli(args) == 0
    assert "labelled 2, skipped 0, failed 0" in capsys.readouterr().err
    archive = MaskArchive.open(str(tmp_path / "a.zarr"), mode="r")
    assert {c for c, _ in archive.list_masks()} == {"text-grass", "text-red_square"}
    assert {archive.mask_record(c, k)["config"]["background_threshold"] for c, k in archive.list_masks()} == {0.3}
    assert cli(args) == 0 and "labelled 0, skipped 2" in capsys.readouterr().err
    bad = args[:2] + ["grass,,road"] + args[3:]
    assert cli(bad) == 2 and "is empty" in capsys.readouterr().err

    data = write_dataset(str(tmp_path / "data"), n=2, seed=2)
    checkpoint = str(tmp_path / "head.safetensors")
    assert cli(["train-ovss", "--dataset", data, "--classes", ",".join(SHAPE_CLASSES), "--dinotxt", TINY,
                "--device", "cpu", "--checkpoint", checkpoint, "--steps", "2", "--batch-size", "2", "--crop", "64",
                "--short-side", "64", "--templates", "a photo of a {}.", "--head-hidden", "16",
                "--head-class-heads", "2", "--head-decoder-channels", "8"]) == 0
    assert "trained 2 steps (resumed from 0)" in capsys.readouterr().err
    out = str(tmp_path / "eval.json")
    assert cli(["eval-ovss", "--dataset", data, "--classes", ",".join(SHAPE_CLASSES), "--dinotxt", TINY,
                "--device", "cpu", "--head", checkpoint, "--short-side", "64", "--window", "64", "--stride", "32",
                "--json", out]) == 0
    captured = capsys.readouterr()
    assert "| **mIoU** |" in captured.out and "RANDOM WEIGHTS" in captured.err
    assert set(json.loads((tmp_path / "eval.json").read_text())["iou"]) == set(SHAPE_CLASSES)


@pytest.mark.slow
def test_label_text_streams_a_geotiff_scene_into_the_archive_with_its_crs(tmp_path, capsys):
    """A 16-bit GeoTIFF through ``dinoseg label-text``: windowed, one mask per class placed by rioxarray on the
    scene's grid; a scene overlap not below the window is refused before any server starts."""
    import rasterio
    import rioxarray  # noqa: F401
    import xarray as xr

    from tests.dinoseg_core.geo_data import band_stack, write_geotiff

    path = write_geotiff(tmp_path / "scene.tif", band_stack(96, 160, count=4))
    archive_url = str(tmp_path / "a.zarr")
    args = ["label-text", "--classes", "grass,red square", "--images", path, "--archive", archive_url, "--dinotxt",
            TINY, "--device", "cpu", "--short-side", "64", "--window", "64", "--stride", "32", "--templates",
            "a photo of a {}.", "--bands", "3,2,1", "--scene-overlap", "16"]
    assert cli(args) == 0
    assert "labelled 1, skipped 0, failed 0" in capsys.readouterr().err
    archive = MaskArchive.open(archive_url, mode="r")
    assert {c for c, _ in archive.list_masks()} == {"grass", "red_square"}
    masks = [archive.load(c, k) for c, k in sorted(archive.list_masks())]
    assert all(m.mask.shape == (96, 160) for m in masks) and not (masks[0].mask & masks[1].mask).any()
    assert masks[0].record["config"]["scene"] == {"window_size": 64, "overlap": 16, "global_context": True,
                                                  "global_weight": 0.5, "context_size": 64, "threshold": 0.5}
    assert masks[0].record["scene_windows"] == 6
    with rasterio.open(path) as src:
        crs, transform = src.crs, src.transform
    dataset = xr.open_zarr(archive_url, group=masks[0].record["group"], consolidated=False)
    mask = dataset["mask"].rio.write_crs(dataset["mask"].rio.crs)
    assert mask.rio.crs == crs and mask.rio.transform().almost_equals(transform)
    assert cli(args) == 0 and "labelled 0, skipped 1" in capsys.readouterr().err

    assert cli(args[:-1] + ["64"]) == 2
    assert "overlap=64 must be smaller than window_size=64" in capsys.readouterr().err


def test_sparkline():
    assert sparkline([3.0, 2.0, 1.0, 1.0]) == "█▅▁▁"
    assert sparkline([1.0]) == "▁" and sparkline([]) == ""
