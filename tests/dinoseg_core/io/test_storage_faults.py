"""What kind of failure a store's answer is (docs/reliability.md), from real answers: moto's S3 behind a
fault-injecting proxy (s3fs/botocore for objects, GDAL/curl for rasters), a full device (/dev/full)."""

from __future__ import annotations

import errno
import os

import pytest

from dinoseg_core.errors import (
    AccessDeniedError,
    ImageDecodeError,
    ObjectNotFoundError,
    OutOfSpaceError,
    PermanentStorageError,
    StorageError,
    TransientStorageError,
)
from dinoseg_core.io import storage
from tests.fault_proxy import FaultProxy


@pytest.fixture
def proxied(s3_server):
    """(bucket URL, storage options through a fault proxy, the proxy); the store's own retries off."""
    bucket = s3_server["make_bucket"]()
    with FaultProxy(s3_server["endpoint_url"]) as proxy:
        so = {**s3_server["storage_options"], "endpoint_url": proxy.url,
              "config_kwargs": {"retries": {"total_max_attempts": 1}}}
        yield bucket, so, proxy


@pytest.mark.integration
@pytest.mark.parametrize("status, kind, cls, builtin", [
    (403, "permanent", AccessDeniedError, PermissionError),
    (500, "transient", TransientStorageError, OSError),
    (503, "transient", TransientStorageError, OSError),
])
def test_the_store_answer_decides_the_kind(proxied, status, kind, cls, builtin):
    bucket, so, proxy = proxied
    storage.write_bytes(f"{bucket}/x.bin", b"payload", so)
    proxy.fail("/x.bin", status, methods=("GET", "HEAD", "PUT"))
    with pytest.raises(cls) as info:
        storage.read_bytes(f"{bucket}/x.bin", so)
    assert isinstance(info.value, builtin) and storage.failure_kind(info.value) == kind
    assert f"{bucket}/x.bin" in str(info.value) and "testing" not in str(info.value)  # the URL, never secrets
    if status in (403, 500):  # (s3fs itself retries throttling and dropped connections for a few seconds)
        with pytest.raises(cls):
            storage.write_bytes(f"{bucket}/x.bin", b"new", so)
    proxy.clear()
    assert storage.read_bytes(f"{bucket}/x.bin", so) == b"payload"  # the object itself was never touched


@pytest.mark.integration
def test_a_missing_object_is_permanent(proxied):
    bucket, so, _ = proxied
    with pytest.raises(ObjectNotFoundError) as info:
        storage.read_bytes(f"{bucket}/nothing.bin", so)
    assert storage.failure_kind(info.value) == "permanent"


def test_a_full_device_is_fatal():
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    with pytest.raises(OSError) as info:
        with open("/dev/full", "wb") as handle:
            handle.write(b"x" * 4096)
            handle.flush()
    assert info.value.errno == errno.ENOSPC
    assert storage.failure_kind(info.value) == "fatal"
    error = storage.storage_error("write", "/data/masks.zarr/x", info.value)
    assert isinstance(error, OutOfSpaceError) and error.errno == errno.ENOSPC
    assert "/data/masks.zarr/x" in str(error) and "full" in str(error)
    # wrapped as a plain StorageError by a layer above (the archive), the cause still decides
    wrapped = StorageError("Cannot write mask arrays to /data/masks.zarr/v1")
    wrapped.__cause__ = info.value
    assert storage.failure_kind(wrapped) == "fatal"
    assert isinstance(storage.storage_error("write", "/data/masks.zarr/v1", wrapped), OutOfSpaceError)


def test_a_permission_error_and_a_directory_are_permanent(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "x.bin").write_bytes(b"x")
    locked.chmod(0)
    try:
        if os.access(locked / "x.bin", os.R_OK):
            pytest.skip("running as root: permissions are not enforced")
        with pytest.raises(AccessDeniedError) as info:
            storage.read_bytes(str(locked / "x.bin"))
        assert isinstance(info.value, PermissionError) and storage.failure_kind(info.value) == "permanent"
    finally:
        locked.chmod(0o755)
    with pytest.raises(PermanentStorageError, match="is a directory"):
        storage.read_bytes(str(tmp_path))


def test_gdal_messages_and_connection_errors_map_to_the_same_kinds():
    """The messages GDAL/curl give for the store's answers (no status or errno travels with them), and the
    exceptions of a dropped connection (a dropped connection through the proxy: tests/tasks/test_labelling_faults)."""
    cases = {
        "AWS error: Please reduce your request rate.": "transient",
        "HTTP response code: 503": "transient",
        "HTTP response code: 500 - Internal Server Error": "transient",
        "CURL error: Operation timed out after 30000 milliseconds with 0 bytes received": "transient",
        "CURL error: Connection reset by peer": "transient",
        "HTTP response code: 403": "permanent",
        "HTTP response code: 404": "permanent",
        "Access Denied": "permanent",
        "No space left on device": "fatal",
    }
    for message, kind in cases.items():
        error = storage.gdal_storage_error("open", "s3://lake/a.tif", RuntimeError(message))
        assert error is not None and storage.failure_kind(error) == kind, message
    # connections that drop or never open, as the HTTP clients under fsspec raise them
    from aiohttp import ServerDisconnectedError
    from botocore.exceptions import EndpointConnectionError, ReadTimeoutError

    for error in (ConnectionResetError(errno.ECONNRESET, "reset"), ServerDisconnectedError(),
                  EndpointConnectionError(endpoint_url="http://127.0.0.1:9"), ReadTimeoutError(endpoint_url="x")):
        assert storage.failure_kind(error) == "transient", repr(error)
        assert isinstance(storage.storage_error("read", "s3://lake/a.png", error), TransientStorageError)
    # GDAL complaining of the bytes themselves is not the store's answer
    assert storage.gdal_storage_error("open", "s3://lake/a.tif",
                                      RuntimeError("TIFFReadDirectory: Failed to read directory")) is None


@pytest.mark.integration
def test_a_raster_read_through_gdal_classifies_the_store_answer(s3_server, proxied, tmp_path):
    """A GeoTIFF read over HTTP by GDAL (curl): a throttled store is not a corrupt file, nor is a refusal."""
    from dinoseg_core.geo.synthetic import write_synthetic_geotiff
    from dinoseg_core.io.raster import open_raster

    bucket, so, proxy = proxied
    write_synthetic_geotiff(tmp_path / "s.tif", (64, 64), tile=64, seed=1)
    keys = {"s.tif": None, "throttled.tif": 503, "refused.tif": 403}
    for key in keys:
        storage.write_bytes(f"{bucket}/{key}", (tmp_path / "s.tif").read_bytes(), so)
    storage.write_bytes(f"{bucket}/bad.tif", b"II*\x00" + b"\x00" * 60, so)
    for key in (*keys, "bad.tif"):  # readable without credentials, by GDAL's plain HTTP reader
        s3_server["client"].put_object_acl(Bucket=bucket.removeprefix("s3://"), Key=key, ACL="public-read")
    base = f"{proxy.url}/{bucket.removeprefix('s3://')}"  # public GETs on moto: GDAL's own HTTP reader (curl)
    assert open_raster(f"{base}/s.tif").shape == (64, 64)
    proxy.fail("/throttled.tif", 503)  # the same file, but the store answers with an error
    proxy.fail("/refused.tif", 403)
    with pytest.raises(TransientStorageError, match="throttled.tif"):
        open_raster(f"{base}/throttled.tif")
    with pytest.raises(AccessDeniedError, match="refused.tif"):
        open_raster(f"{base}/refused.tif")
    # a corrupt file stays a decode error, named
    with pytest.raises(ImageDecodeError, match="bad.tif"):
        open_raster(f"{base}/bad.tif")
