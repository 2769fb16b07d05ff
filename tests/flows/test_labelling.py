"""The flows under a real (temporary) Prefect server: states, artifacts, run logs, S3, the CLI."""


import numpy as np
import pytest
import xarray as xr

from dinoseg.cli import main as cli
from dinoseg_core.io import storage
from dinoseg_core.io.archive import MaskArchive
from flows.labelling import label_collection, segment_images
from tests.pipeline_data import (
    TINY,
    artifacts_of,
    assert_failure_named_everywhere,
    write_collection,
)


def run(*, cache=None, **params):
    """label_collection on the tiny backbone; run options (cache, storage_options, ...) are given flat here."""
    options = {k: params.pop(k) for k in ("storage_options", "save_similarity", "force") if k in params}
    return label_collection(backbone=TINY, run={"device": "cpu", "cache": cache, **options}, return_state=True,
                            **params)


def test_label_collection_completes_then_skips(tmp_path):
    root = str(tmp_path / "bucket")
    write_collection(root, tiles=3)
    params = dict(references=f"{root}/refs.yaml", images=f"{root}/tiles/*.png", archive=str(tmp_path / "a.zarr"),
                  cache=str(tmp_path / "cache"))
    first = run(**params)
    assert first.is_completed(), first.message
    assert first.result()["labelled"] == 3 and first.result()["failed"] == 0
    kinds = {a["type"] for a in artifacts_of(first)}
    assert {"progress", "table"} <= kinds
    second = run(**params)
    assert second.is_completed() and second.result()["skipped"] == 3 and second.result()["labelled"] == 0
    archive = MaskArchive.open(params["archive"], mode="r")
    assert len(archive.run_logs()) == 1  # the no-op run wrote nothing, not even a log


def test_a_corrupt_object_fails_the_run_and_is_named_everywhere(tmp_path):
    root = str(tmp_path / "bucket")
    write_collection(root, tiles=2)
    storage.write_bytes(f"{root}/tiles/tile_zz_truncated.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    state = run(references=f"{root}/refs.yaml", images=f"{root}/tiles/*.png", archive=str(tmp_path / "a.zarr"),
                cache=str(tmp_path / "cache"))
    assert_failure_named_everywhere(state, str(tmp_path / "a.zarr"), "tile_zz_truncated.png", labelled=2)


def test_bad_parameters_and_manifests_are_named(tmp_path):
    root = str(tmp_path / "bucket")
    write_collection(root, tiles=1)
    bad = run(references=f"{root}/refs.yaml", images=f"{root}/tiles/*.png", archive=str(tmp_path / "a.zarr"),
              method={"tua": 0.5})
    assert bad.is_failed() and "tua" in str(bad.result(raise_on_failure=False))
    storage.write_bytes(f"{root}/broken.yaml", b"concepts:\n  roof:\n    references:\n      - {image: a.png}\n")
    bad = run(references=f"{root}/broken.yaml", images=f"{root}/tiles/*.png", archive=str(tmp_path / "b.zarr"))
    assert bad.is_failed() and "concepts.roof.references[0].mask" in str(bad.result(raise_on_failure=False))
    empty = run(references=f"{root}/refs.yaml", images=f"{root}/nothing/*.png", archive=str(tmp_path / "c.zarr"))
    assert empty.is_failed() and "matches no object" in str(empty.result(raise_on_failure=False))
    # validated first, created later: the invalid runs left no empty archive behind
    assert not any((tmp_path / name).exists() for name in ("a.zarr", "b.zarr", "c.zarr"))


def test_segment_images_takes_an_explicit_list(tmp_path):
    root = str(tmp_path / "bucket")
    urls = write_collection(root, tiles=3)
    state = segment_images(references=f"{root}/refs.yaml", images=urls[:2], archive=str(tmp_path / "a.zarr"),
                           backbone=TINY, run={"device": "cpu"}, return_state=True)
    assert state.is_completed() and state.result()["labelled"] == 2


@pytest.mark.integration
def test_label_collection_on_s3_and_read_back_with_xarray(s3_server, tmp_path):
    bucket = s3_server["make_bucket"]()
    so = s3_server["storage_options"]
    write_collection(f"{bucket}/lake", tiles=2, storage_options=so)
    state = run(references=f"{bucket}/lake/refs.yaml", images=f"{bucket}/lake/tiles/*.png",
                archive=f"{bucket}/masks.zarr", storage_options=so, cache=f"{bucket}/cache", save_similarity=True)
    assert state.is_completed(), state.message
    archive = MaskArchive.open(f"{bucket}/masks.zarr", so, mode="r")
    concept, key = archive.list_masks("roof")[0]
    record = archive.mask_record(concept, key)
    dataset = xr.open_zarr(f"{bucket}/masks.zarr", group=record["group"], consolidated=False, storage_options=so)
    assert dataset["mask"].dims == ("y", "x") and dataset["mask"].shape == (128, 128)
    assert np.array_equal(dataset["mask"].values > 0, archive.read_mask(concept, key))
    assert dataset["similarity"].dims == ("py", "px")
    assert dataset.attrs["source_uri"].startswith(f"{bucket}/lake/tiles/")
    assert storage.glob(f"{bucket}/cache/references/*.safetensors", so)


def test_the_label_and_preview_commands(tmp_path, capsys):
    root = str(tmp_path / "bucket")
    write_collection(root, tiles=2)
    args = ["label", "--references", f"{root}/refs.yaml", "--images", f"{root}/tiles/*.png",
            "--archive", str(tmp_path / "a.zarr"), "--backbone", TINY, "--device", "cpu", "--tau", "0.8",
            "--cache", str(tmp_path / "cache")]
    assert cli(args) == 0
    assert "labelled 2, skipped 0, failed 0" in capsys.readouterr().err
    archive = MaskArchive.open(str(tmp_path / "a.zarr"), mode="r")
    assert {archive.mask_record(c, k)["config"]["tau"] for c, k in archive.list_masks()} == {0.8}
    assert cli(["preview", "--archive", str(tmp_path / "a.zarr"), "--concept", "water", "--out", str(tmp_path / "pv")]) == 0
    assert len(list((tmp_path / "pv").iterdir())) == 2


@pytest.mark.slow
def test_one_run_labels_tiles_and_a_scene_from_a_folder(tmp_path):
    """A folder holding PNG tiles and a GeoTIFF: the tiles go through the batched tile path, the scene through
    the windowed path (a streamed, georeferenced mask), in one run; a single file is a collection too."""
    from dinoseg_core.geo.synthetic import write_synthetic_geotiff

    root = str(tmp_path / "bucket")
    write_collection(root, tiles=2)
    write_synthetic_geotiff(tmp_path / "bucket" / "tiles" / "scene.tif", (300, 200), tile=128, seed=3)
    params = dict(references=f"{root}/refs.yaml", archive=str(tmp_path / "a.zarr"),
                  scene={"window_size": 128, "overlap": 32}, cache=str(tmp_path / "cache"))
    state = run(images=f"{root}/tiles", **params)
    assert state.is_completed(), state.message
    assert state.result()["labelled"] == 3
    archive = MaskArchive.open(params["archive"], mode="r")
    records = {key: archive.mask_record("roof", key) for _, key in archive.list_masks("roof")}
    scene_key = next(key for key in records if key.startswith("scene.tif"))
    assert records[scene_key]["proj:code"] == "EPSG:32633" and records[scene_key]["shape"] == [300, 200]
    assert records[scene_key]["config"]["scene"]["window_size"] == 128 and "scene_windows" in records[scene_key]
    assert all("scene" not in r["config"] for k, r in records.items() if k != scene_key)
    again = run(images=f"{root}/tiles/scene.tif", **params)  # one file: the same key, up to date
    assert again.is_completed() and again.result()["skipped"] == 1
