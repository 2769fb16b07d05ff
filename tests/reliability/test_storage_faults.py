"""A store that fails, end to end through `dinoseg label` (issue 10, items 1 and 7): real moto S3 behind the
fault-injecting proxy. Each bad object fails alone, named with its own reason; passing failures (throttling,
a dropped connection, a slow answer, an outage) are ridden out; every other image is labelled with the mask an
undisturbed run writes; every record is sound."""

from __future__ import annotations

import json

import pytest

from dinoseg.cli import main
from dinoseg_core.io import storage
from tasks import retry
from tests.reliability.conftest import TILES, label_args
from tests.reliability.helpers import verify_archive
from tests.reliability.proxy import StoreProxy

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def bucket(s3_server, lake):
    """The lake's tiles and references in a bucket of their own."""
    url = s3_server["make_bucket"]()
    direct = {"endpoint_url": s3_server["endpoint_url"]}
    for path in sorted(lake.rglob("*")):
        if path.is_file() and "cache" not in path.parts:
            storage.write_bytes(f"{url}/{path.relative_to(lake)}", path.read_bytes(), direct)
    return url



@pytest.fixture
def proxy(s3_server, monkeypatch):
    monkeypatch.setattr(retry, "ITEM_RETRY_DELAYS", (0.1, 0.3, 1.0, 2.0))  # production: 1, 4, 16, 40 s
    with StoreProxy(s3_server["endpoint_url"]) as proxy:
        yield proxy


def run(bucket: str, archive: str, proxy: StoreProxy, capsys) -> tuple[int, str]:
    options = json.dumps({"endpoint_url": proxy.url, "config_kwargs": {"retries": {"total_max_attempts": 2}}})
    args = label_args(bucket, archive, "--storage-options", options)
    code = main(args)
    return code, capsys.readouterr().err


def test_each_bad_object_fails_alone_with_its_reason_and_passing_faults_are_ridden_out(
        api_url, bucket, clean, proxy, tmp_path, capsys):
    proxy.fail("tiles/tile_000.png", 403)
    proxy.fail("tiles/tile_001.png", 404)
    proxy.fail("tiles/tile_002.png", 500)  # lasting
    proxy.fail("tiles/tile_003.png", 503, times=2)  # throttled twice
    proxy.fail("tiles/tile_004.png", "drop", times=2)  # the connection dropped twice
    proxy.slow("tiles/tile_005.png", 0.8)
    archive = str(tmp_path / "a.zarr")
    code, err = run(bucket, archive, proxy, capsys)
    assert code == 1, err
    failed = {line.split(": ", 2)[1].rsplit("/", 1)[-1]: line for line in err.splitlines()
              if line.strip().startswith("failed: ")}
    assert sorted(failed) == ["tile_000.png", "tile_001.png", "tile_002.png"], err
    assert "denied" in failed["tile_000.png"].lower() and "tile_001.png" not in failed["tile_000.png"].split(": ", 2)[2]
    assert "no such" in failed["tile_001.png"].lower() or "not found" in failed["tile_001.png"].lower()
    assert "500" in failed["tile_002.png"] or "internal" in failed["tile_002.png"].lower()
    assert f"labelled {TILES - 3}, skipped 0, failed 3" in err
    got = verify_archive(archive)
    assert got == {name: sha for name, sha in clean.items() if name.rsplit("/", 1)[-1] not in failed}
    assert proxy.hits["tiles/tile_003.png"] == 2 and proxy.hits["tiles/tile_004.png"] == 2  # the faults happened


def test_an_outage_mid_run_is_ridden_out(api_url, bucket, clean, proxy, tmp_path, capsys):
    proxy.outage(2.0, starting_at="tiles/tile_002.png")
    archive = str(tmp_path / "a.zarr")
    code, err = run(bucket, archive, proxy, capsys)
    assert code == 0, err
    assert proxy.outage_hits > 0, "the outage refused nothing: the test tested nothing"
    assert verify_archive(archive) == clean
