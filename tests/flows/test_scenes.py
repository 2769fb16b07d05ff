"""Remote-sensing scenes through the pipeline: GeoTIFF in, windowed and stitched, georeferenced masks out."""

import json

import numpy as np
import pytest
import rasterio

from dinoseg.cli import main as cli
from dinoseg_core.geo.synthetic import write_synthetic_geotiff
from dinoseg_core.io.archive import MaskArchive
from tests.pipeline_data import write_collection

# a random ViT-S: colour regions separate well enough to score roofs against the exact ground truth
BACKBONE = "random:dinov3-vits16@0"


@pytest.fixture
def lake(tmp_path):
    root = tmp_path / "lake"
    write_collection(str(root), tiles=0, size=256, concepts=("roof",))  # refs.yaml + a PNG reference
    (root / "scenes").mkdir()
    scene = write_synthetic_geotiff(root / "scenes" / "scene_a.tif", (700, 900), tile=256, seed=3,
                                    labels_path=tmp_path / "truth.tif", nodata_regions=[(0, 0, 120, 200)])
    return root, scene, tmp_path / "truth.tif"


def label(root, archive, *extra):
    return cli(["label", "--references", f"{root}/refs.yaml", "--images", f"{root}/scenes/*.tif",
                "--archive", str(archive), "--backbone", BACKBONE, "--device", "cpu", "--tau", "0.9",
                "--image-size", "256", "--bands", "3,2,1", "--scene-overlap", "64", *extra])


@pytest.mark.slow
def test_a_scene_is_labelled_georeferenced_incrementally_and_exported(lake, tmp_path, capsys):
    root, scene, truth_path = lake  # bands: blue, green, red, NIR (Sentinel-2 2, 3, 4, 8)
    archive_url = tmp_path / "masks.zarr"
    assert label(root, archive_url) == 0
    assert "labelled 1" in capsys.readouterr().err
    archive = MaskArchive.open(str(archive_url), mode="r")
    (concept, key), = archive.list_masks()
    stored = archive.load(concept, key)  # the streamed mask matches the sha256 its record holds
    assert stored.mask.shape == (700, 900)
    assert stored.record["proj:code"] == "EPSG:32633" and stored.record["config"]["bands"] == [3, 2, 1]
    with rasterio.open(truth_path) as src:
        truth = src.read(1) == 1
    assert not stored.mask[:120, :200].any()  # nodata is never foreground
    iou = (stored.mask & truth).sum() / (stored.mask | truth).sum()
    assert iou > 0.4, iou

    # rioxarray places the mask on the scene's grid
    import rioxarray  # noqa: F401
    import xarray as xr

    dataset = xr.open_zarr(str(archive_url), group=stored.record["group"], consolidated=False)
    mask = dataset["mask"].rio.write_crs(dataset["mask"].rio.crs)
    assert mask.rio.crs.to_epsg() == 32633
    assert mask.rio.transform().almost_equals(rasterio.Affine(*scene["transform"][:6]))

    assert label(root, archive_url) == 0  # unchanged inputs: nothing relabelled
    assert "labelled 0, skipped 1" in capsys.readouterr().err

    out = tmp_path / "roofs.geojson"
    assert cli(["export", "--archive", str(archive_url), "--concept", "roof", "--out", str(out),
                "--to-crs", "EPSG:4326"]) == 0
    features = json.loads(out.read_text())["features"]
    assert features and features[0]["properties"]["source_uri"].endswith("scene_a.tif")
    lon, lat = np.array(features[0]["geometry"]["coordinates"][0][0])
    assert 14.9 < lon < 15.1 and 45.0 < lat < 45.2  # UTM 33N, 500 km E / 5000 km N


def test_a_band_out_of_range_fails_the_scene_with_a_clear_reason(lake, tmp_path, capsys):
    root, _, _ = lake
    code = cli(["label", "--references", f"{root}/refs.yaml", "--images", f"{root}/scenes/*.tif",
                "--archive", str(tmp_path / "m.zarr"), "--backbone", "random:tiny@0", "--device", "cpu",
                "--image-size", "128", "--bands", "4,3,9"])
    assert code == 1
    assert "9" in capsys.readouterr().err


@pytest.mark.slow
def test_geotiff_references_in_the_manifest(tmp_path, capsys):
    import yaml

    root = tmp_path / "lake"
    (root / "refs").mkdir(parents=True)
    (root / "scenes").mkdir()
    write_synthetic_geotiff(root / "refs" / "ref.tif", (256, 256), tile=256, seed=1,
                            labels_path=root / "refs" / "ref_roof.tif")
    write_synthetic_geotiff(root / "scenes" / "b.tif", (384, 384), tile=256, seed=5,
                            labels_path=tmp_path / "truth.tif")
    manifest = {"config": {"image_size": 256, "tau": 0.9},
                "concepts": {"roof": {"references": [{"image": "refs/ref.tif", "mask": "refs/ref_roof.tif"}]}}}
    (root / "refs.yaml").write_text(yaml.safe_dump(manifest))
    assert cli(["label", "--references", f"{root}/refs.yaml", "--images", f"{root}/scenes/*.tif", "--archive",
                str(tmp_path / "m.zarr"), "--backbone", BACKBONE, "--device", "cpu", "--bands", "3,2,1",
                "--scene-overlap", "64"]) == 0
    archive = MaskArchive.open(str(tmp_path / "m.zarr"), mode="r")
    (concept, key), = archive.list_masks()
    mask = archive.load(concept, key).mask
    with rasterio.open(tmp_path / "truth.tif") as src:
        truth = src.read(1) == 1
    assert (mask & truth).sum() / (mask | truth).sum() > 0.4
