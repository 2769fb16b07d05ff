"""A labelling run on S3 (moto) from a STAC catalog, with its outputs beside the archive: scenes chosen by band
names, each mask also a COG (``run.cog_output``), and one overlay image artifact per concept whose signed URL a
browser can open."""

import datetime as dt
import io
import json
import re
import sys

import httpx
import numpy as np
import pystac
import pytest
from rasterio.io import MemoryFile

from dinoseg_core.geo.synthetic import write_synthetic_geotiff
from dinoseg_core.io import storage
from dinoseg_core.io.archive import MaskArchive
from flows.labelling import label_collection
from tasks.options import RunOptions
from tasks.outputs import cog_folder
from tests.pipeline_data import TINY, artifacts_of, write_collection

EO_BANDS = [{"name": n, "common_name": c} for n, c in (("B02", "blue"), ("B03", "green"), ("B04", "red"),
                                                       ("B08", "nir"))]


def _stac_on_s3(bucket: str, tmp_path, so) -> str:
    """bucket/stac/items.json: an ItemCollection of two 4-band scenes (blue, green, red, NIR) on S3."""
    features = []
    for i in range(2):
        write_synthetic_geotiff(tmp_path / f"s{i}.tif", (128, 160), tile=128, seed=i)
        storage.write_bytes(f"{bucket}/scenes/s{i}.tif", (tmp_path / f"s{i}.tif").read_bytes(), so)
        item = pystac.Item(id=f"s{i}", geometry={"type": "Point", "coordinates": [15, 45]}, bbox=[15, 45, 15, 45],
                           datetime=dt.datetime(2024, 6, 1, tzinfo=dt.timezone.utc), properties={})
        item.add_asset("analytic", pystac.Asset(f"../scenes/s{i}.tif", media_type=pystac.MediaType.COG,
                                                roles=["data"], extra_fields={"eo:bands": EO_BANDS}))
        features.append(item.to_dict(include_self_link=False))
    url = f"{bucket}/stac/items.json"
    storage.write_bytes(url, json.dumps({"type": "FeatureCollection", "features": features}).encode(), so)
    return url


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.slow
def test_a_stac_catalog_on_s3_is_labelled_with_cogs_and_an_overlay_artifact(s3_server, tmp_path, monkeypatch):
    so = s3_server["storage_options"]
    bucket = s3_server["make_bucket"]()
    write_collection(bucket, tiles=0, storage_options=so, concepts=("roof",))
    catalog = _stac_on_s3(bucket, tmp_path, so)
    archive_url = f"{bucket}/masks.zarr"
    run = {"device": "cpu", "cache": str(tmp_path / "cache"), "storage_options": so,
           "stac_asset": "red,green,blue", "cog_output": True}

    terminal = Terminal()
    with monkeypatch.context() as patch:  # on a terminal, the run draws a progress bar
        patch.setattr(sys, "stderr", terminal)
        state = label_collection(references=f"{bucket}/refs.yaml", images=catalog, archive=archive_url,
                                 backbone=TINY, scene={"overlap": 32}, run=run, return_state=True)
    assert state.is_completed(), state.message
    bar = terminal.getvalue().rsplit("\r", 1)[-1]
    assert "label-collection" in bar and "2/2" in bar and "failed=0" in bar, bar
    assert re.search(r"\d(image/s|s/image)", bar), bar  # the rate (tqdm flips it below one image a second)
    assert state.result()["labelled"] == 2
    archive = MaskArchive.open(archive_url, so, mode="r")
    keys = [key for _, key in archive.list_masks("roof")]
    assert len(keys) == 2
    for key in keys:
        record = archive.mask_record("roof", key)
        assert record["config"]["bands"] == [3, 2, 1] and record["source_uri"].startswith(f"{bucket}/scenes/")
        cog = f"{cog_folder(archive_url)}/roof/{key}.tif"
        with MemoryFile(storage.read_bytes(cog, so)) as memory, memory.open() as dataset:
            assert dataset.crs.to_epsg() == 32633
            assert list(dataset.transform)[:6] == record["spatial:transform"]
            np.testing.assert_array_equal(dataset.read(1), archive.read_mask("roof", key).astype(np.uint8) * 255)

    (overlay,) = [a for a in artifacts_of(state) if a["key"] == "dinoseg-label-collection-overlay-roof"]
    assert overlay["type"] == "image"
    response = httpx.get(overlay["data"])  # a signed URL: no credentials needed
    assert response.status_code == 200 and response.content.startswith(b"\x89PNG")

    # a COG that went missing is written again although its mask is up to date
    fs, path = storage.url_to_fs(f"{cog_folder(archive_url)}/roof/{keys[0]}.tif", so)
    fs.rm(path)
    again = label_collection(references=f"{bucket}/refs.yaml", images=catalog, archive=archive_url, backbone=TINY,
                             scene={"overlap": 32}, run=run, return_state=True)
    assert again.result()["skipped"] == 2
    assert storage.exists(f"{cog_folder(archive_url)}/roof/{keys[0]}.tif", so)


def test_a_local_archive_gets_a_markdown_overlay_artifact_naming_the_file(tmp_path):
    """The Prefect UI cannot open a file of the flow's machine: the artifact names the PNG instead of showing it."""
    from prefect.client.orchestration import get_client

    from dinoseg_core.io import imageio
    from dinoseg_core.synthetic import generate_scene
    from tasks.outputs import browser_url, overlay_artifacts, overlay_folder

    scene = generate_scene(5, size=64)
    imageio.write_image_png(str(tmp_path / "t.png"), scene.image)
    archive = MaskArchive.open(str(tmp_path / "a.zarr"), mode="a")
    archive.write_mask("roof", "t", scene.labels["roof"], {
        "source_uri": str(tmp_path / "t.png"), "source_sha256": "0" * 64, "backbone": TINY,
        "backbone_fingerprint": "f", "config": {}, "reference_set_hash": "r"})
    key = "dinoseg-test-overlay-roof"
    sheets = overlay_artifacts(str(tmp_path / "a.zarr"), {"roof": ["t"]}, "0123456789", "dinoseg-test-overlay",
                               RunOptions())
    assert sheets == {"roof": f"{overlay_folder(str(tmp_path / 'a.zarr'))}/roof-01234567.png"}
    assert storage.read_bytes(sheets["roof"]).startswith(b"\x89PNG")
    with get_client(sync_client=True) as client:
        (artifact,) = [a for a in client.read_latest_artifacts(limit=50, offset=0, sort="CREATED_DESC")
                       if a.key == key]
    assert artifact.type == "markdown" and sheets["roof"] in artifact.data
    assert browser_url("https://example.org/x.png", None) == "https://example.org/x.png"
    assert browser_url(sheets["roof"], None) is None
