"""One contract test suite for every storage backend (local path, file://, memory://, s3:// on moto's server)."""

from __future__ import annotations

import os
import stat
import threading
import uuid
from pathlib import Path

import pytest

from dinoseg_core.io import storage
from dinoseg_core.errors import InputError, MissingDependencyError, ObjectNotFoundError, StorageError


@pytest.fixture(
    params=[
        "local",
        "file",
        "memory",
        pytest.param("s3", marks=pytest.mark.integration),
    ]
)
def root(request, tmp_path):
    """(base URL, storage_options) of an empty location on one backend."""
    kind = request.param
    if kind == "local":
        return str(tmp_path / "root"), None
    if kind == "file":
        return f"file://{tmp_path}/root", None
    if kind == "memory":
        return f"memory://dinoseg-tests/{uuid.uuid4().hex}", None
    server = request.getfixturevalue("s3_server")
    return server["make_bucket"]() + "/root", server["storage_options"]


# --- the contract, for every backend ---------------------------------------------------------------------------


def test_write_then_read_round_trip(root):
    base, so = root
    url = storage.join(base, "a", "b", "x.bin")
    payload = bytes(range(256)) * 10
    storage.write_bytes(url, payload, so)
    assert storage.read_bytes(url, so) == payload
    assert storage.exists(url, so)


def test_write_replaces_existing_object(root):
    base, so = root
    url = storage.join(base, "x.bin")
    storage.write_bytes(url, b"old", so)
    storage.write_bytes(url, b"new contents", so)
    assert storage.read_bytes(url, so) == b"new contents"


def test_write_accepts_bytearray_and_memoryview(root):
    base, so = root
    storage.write_bytes(storage.join(base, "ba"), bytearray(b"abc"), so)
    storage.write_bytes(storage.join(base, "mv"), memoryview(b"def"), so)
    assert storage.read_bytes(storage.join(base, "ba"), so) == b"abc"
    assert storage.read_bytes(storage.join(base, "mv"), so) == b"def"


def test_empty_object_round_trip(root):
    base, so = root
    url = storage.join(base, "empty.bin")
    storage.write_bytes(url, b"", so)
    assert storage.exists(url, so)
    assert storage.read_bytes(url, so) == b""


def test_missing_object_is_object_not_found_naming_the_url(root):
    base, so = root
    url = storage.join(base, "nope", "missing.png")
    with pytest.raises(ObjectNotFoundError) as info:
        storage.read_bytes(url, so)
    assert isinstance(info.value, FileNotFoundError)
    assert isinstance(info.value, StorageError)
    assert isinstance(info.value, OSError)
    assert str(info.value).startswith(f"Cannot read {url}")
    assert info.value.url == url
    assert not storage.exists(url, so)


def test_glob_sorted_full_urls_with_protocol(root):
    base, so = root
    names = ["c.png", "a.png", "b.png", "notes.txt"]
    for name in names:
        storage.write_bytes(storage.join(base, "imgs", name), name.encode(), so)
    found = storage.glob(storage.join(base, "imgs", "*.png"), so)
    assert found == [storage.join(base, "imgs", n) for n in ["a.png", "b.png", "c.png"]]
    # every URL glob returns is readable as-is
    assert [storage.read_bytes(u, so) for u in found] == [b"a.png", b"b.png", b"c.png"]
    assert storage.protocol(found[0]) == storage.protocol(base)


def test_glob_double_star_recurses_and_skips_directories(root):
    base, so = root
    for rel in ["top.png", "d1/one.png", "d1/d2/two.png", "d1/d2/skip.txt"]:
        storage.write_bytes(storage.join(base, "tree", rel), b"x", so)
    found = storage.glob(storage.join(base, "tree", "**", "*.png"), so)
    assert found == sorted(storage.join(base, "tree", rel) for rel in ["top.png", "d1/one.png", "d1/d2/two.png"])
    everything = storage.glob(storage.join(base, "tree", "**"), so)
    assert len(everything) == 4  # files only, no directory entries


def test_glob_no_match_is_empty(root):
    base, so = root
    assert storage.glob(storage.join(base, "nothing-here", "*.png"), so) == []


def test_exists_false_for_missing(root):
    base, so = root
    assert storage.exists(storage.join(base, "missing"), so) is False


def test_url_to_fs_returns_fs_and_path(root):
    base, so = root
    url = storage.join(base, "k.bin")
    storage.write_bytes(url, b"k", so)
    fs, path = storage.url_to_fs(url, so)
    assert "://" not in path
    assert fs.cat_file(path) == b"k"


# --- backend specifics ---------------------------------------------------------------------------------------------


def test_local_write_is_atomic_and_leaves_no_temp_files(tmp_path):
    target = tmp_path / "out" / "mask.png"
    storage.write_bytes(str(target), b"first")
    stop = threading.Event()
    seen: set[bytes] = set()

    def reader():
        while not stop.is_set():
            seen.add(target.read_bytes())

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(200):
            storage.write_bytes(str(target), (b"A" if i % 2 else b"B") * 100_000)
    finally:
        stop.set()
        thread.join()
    assert seen <= {b"first", b"A" * 100_000, b"B" * 100_000}  # never a partial file
    assert sorted(os.listdir(target.parent)) == ["mask.png"]


def test_local_write_respects_umask_not_0600(tmp_path):
    target = tmp_path / "f.bin"
    storage.write_bytes(target, b"x")  # PathLike accepted
    old = os.umask(0)
    os.umask(old)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~old


def test_local_failed_write_cleans_up_and_names_url(tmp_path):
    (tmp_path / "adir").mkdir()
    with pytest.raises(StorageError, match="adir"):
        storage.write_bytes(str(tmp_path / "adir"), b"x")
    assert os.listdir(tmp_path / "adir") == []
    assert sorted(os.listdir(tmp_path)) == ["adir"]


def test_read_directory_is_storage_error(tmp_path):
    with pytest.raises(StorageError, match=str(tmp_path)):
        storage.read_bytes(str(tmp_path))


def test_relative_local_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    storage.write_bytes("rel/dir/x.bin", b"rel")
    assert (tmp_path / "rel/dir/x.bin").read_bytes() == b"rel"
    assert storage.glob("rel/**/*.bin") == [str(tmp_path / "rel/dir/x.bin")]


@pytest.mark.integration
def test_s3_missing_bucket(s3_server):
    so = s3_server["storage_options"]
    url = f"s3://no-such-bucket-{uuid.uuid4().hex[:8]}/x.bin"
    with pytest.raises(ObjectNotFoundError, match="no-such-bucket"):
        storage.read_bytes(url, so)
    with pytest.raises(FileNotFoundError):
        storage.write_bytes(url, b"x", so)
    assert storage.exists(url, so) is False
    assert storage.glob(url.rsplit("/", 1)[0] + "/*", so) == []


@pytest.mark.integration
def test_s3_sees_objects_written_by_another_client(s3_server):
    so = s3_server["storage_options"]
    bucket = s3_server["make_bucket"]()
    storage.write_bytes(f"{bucket}/d/a.png", b"a", so)
    assert storage.glob(f"{bucket}/d/*.png", so) == [f"{bucket}/d/a.png"]
    assert not storage.exists(f"{bucket}/d/b.png", so)
    # a second process / client writes behind s3fs's listing cache
    s3_server["client"].put_object(Bucket=bucket[len("s3://"):], Key="d/b.png", Body=b"b")
    assert storage.exists(f"{bucket}/d/b.png", so)
    assert storage.glob(f"{bucket}/d/*.png", so) == [f"{bucket}/d/a.png", f"{bucket}/d/b.png"]


@pytest.mark.integration
def test_s3_errors_never_show_credentials(s3_server):
    so = dict(s3_server["storage_options"], key="AKIDSECRETKEY123", secret="supersecretvalue456")
    with pytest.raises(StorageError) as info:
        storage.read_bytes(f"s3://bucket-{uuid.uuid4().hex[:8]}/x", so)
    text = str(info.value) + repr(info.value)
    assert "supersecretvalue456" not in text and "AKIDSECRETKEY123" not in text


def test_url_credentials_masked_in_messages():
    assert storage.display_url("https://user:pw@host/x.png") == "https://***@host/x.png"
    assert storage.display_url("s3://bucket/x") == "s3://bucket/x"


# --- errors for bad input and missing backends -----------------------------------------------------------------------


def test_missing_optional_backend_names_pip_line(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "gcsfs", None)  # as on a machine without gcsfs, whatever this one has
    with pytest.raises(MissingDependencyError, match="pip install gcsfs") as info:
        storage.read_bytes("gs://bucket/x.png")
    assert isinstance(info.value, ImportError)


def test_missing_s3fs_names_pip_line(monkeypatch):
    import fsspec

    def boom(protocol, *a, **k):
        raise ImportError("Install s3fs to access S3", name="s3fs")

    monkeypatch.setattr(fsspec.core, "get_filesystem_class", boom, raising=True)
    monkeypatch.setattr(fsspec.core, "filesystem", lambda protocol, **k: boom(protocol))
    with pytest.raises(MissingDependencyError, match="pip install s3fs"):
        storage.url_to_fs("s3://bucket/x")


def test_unknown_protocol_is_storage_error():
    with pytest.raises(StorageError, match="nosuchproto"):
        storage.read_bytes("nosuchproto://a/b")


@pytest.mark.parametrize("bad", ["", "   ", None, 3])
def test_bad_url_is_input_error(bad):
    with pytest.raises(InputError):
        storage.url_to_fs(bad)


def test_write_rejects_non_bytes(tmp_path):
    with pytest.raises(InputError, match="bytes"):
        storage.write_bytes(str(tmp_path / "x"), "text")  # type: ignore[arg-type]
    assert not (tmp_path / "x").exists()


def test_glob_rejects_chained_urls():
    with pytest.raises(InputError):
        storage.glob("simplecache::s3://b/*.png")


# --- pure URL helpers ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, expected",
    [
        ("/data/x.png", "file"),
        ("rel/x.png", "file"),
        ("file:///data/x.png", "file"),
        ("s3://b/k", "s3"),
        ("S3://b/k", "s3"),
        ("gs://b/k", "gs"),
        ("memory://x", "memory"),
        ("simplecache::s3://b/k", "s3"),
        (Path("/data/x.png"), "file"),
    ],
)
def test_protocol(url, expected):
    assert storage.protocol(url) == expected


@pytest.mark.parametrize(
    "base, parts, expected",
    [
        ("s3://b/root", ("x", "y.png"), "s3://b/root/x/y.png"),
        ("s3://b/root/", ("/x/", "y.png"), "s3://b/root/x/y.png"),
        ("s3://b", ("y.png",), "s3://b/y.png"),
        ("memory://", ("a", "b"), "memory://a/b"),
        ("/data", ("a", "", "b.png"), "/data/a/b.png"),
        ("/", ("a",), "/a"),
        ("file:///tmp/r", ("a",), "file:///tmp/r/a"),
        ("rel", ("a",), "rel/a"),
        ("s3://b/root", (), "s3://b/root"),
    ],
)
def test_join(base, parts, expected):
    assert storage.join(base, *parts) == expected


@pytest.mark.parametrize(
    "url, expected",
    [
        ("s3://b/tiles/t_001.png", "t_001"),
        ("/x/a.tar.gz", "a.tar"),
        ("/x/noext", "noext"),
        ("/x/.hidden", ".hidden"),
        ("https://h/p/img.jpg?sig=abc", "img"),
        ("memory://d/ref_000_mask.png", "ref_000_mask"),
        (Path("/x/y.tif"), "y"),
    ],
)
def test_stem(url, expected):
    assert storage.stem(url) == expected
