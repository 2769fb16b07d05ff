"""The Zarr v3 mask archive: layout, provenance, incremental decisions, atomic visibility, concurrent writers,
xarray read-back, refusal of foreign stores, and the same on S3 (moto's server)."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import pickle
import warnings

import numpy as np
import pytest
import zarr

from dinoseg_core.io.archive import SCHEMA_VERSION, MaskArchive, config_digest, image_key
from dinoseg_core.config import InsidConfig
from dinoseg_core.errors import InputError, ObjectNotFoundError, StorageError


def _attrs(**changes):
    base = dict(
        source_uri="s3://lake/tiles/a.png", source_sha256="src1", backbone="random:dinov3-vits16",
        backbone_fingerprint="fp1", config=InsidConfig(image_size=512).to_dict(), reference_set_hash="refs1",
    )
    base.update(changes)
    return base


def _mask(shape=(700, 600), seed=0):
    return np.random.default_rng(seed).random(shape) > 0.5


@pytest.fixture
def archive(tmp_path):
    return MaskArchive.open(str(tmp_path / "masks.zarr"))


def _version_dirs(archive, concept, key):
    base = os.path.join(archive.url, "masks", concept, key)
    return sorted(d for d in os.listdir(base) if d.startswith("v"))


# --------------------------------------------------------------------------------------------- image keys
def test_image_key_is_stable_readable_and_collision_free(tmp_path, monkeypatch):
    a = image_key("s3://lake/tiles/2024/tile.png", base="s3://lake/tiles")
    assert a == image_key("s3://lake/tiles/2024/tile.png/", base="s3://lake/tiles/")
    assert a.startswith("2024_tile.png-") and len(a.split("-")[-1]) == 12
    b = image_key("s3://lake/tiles/2025/tile.png", base="s3://lake/tiles")
    assert b.startswith("2025_tile.png-") and a != b
    # same file name in two folders, and paths that sanitise alike, stay distinct
    assert image_key("s3://x/a/tile.png") != image_key("s3://x/b/tile.png")
    assert image_key("s3://x/a_b/c.png") != image_key("s3://x/a/b_c.png")
    # local spellings of one file agree
    monkeypatch.chdir(tmp_path)
    assert image_key("img/a.png") == image_key(str(tmp_path / "img" / "a.png")) == image_key(
        f"file://{tmp_path}/img/a.png")
    odd = image_key("gs://b/" + "weird name (1)/" * 20 + "..ü.tif")
    assert len(odd) <= 80 + 13 and odd[0].isalnum() and all(c.isalnum() or c in "._-" for c in odd)


# ------------------------------------------------------------------------------------- layout and attrs
def test_layout_and_attrs_round_trip(archive):
    key = image_key("s3://lake/tiles/a.png", base="s3://lake")
    mask = _mask()
    sim = np.random.default_rng(1).random((44, 38)).astype(np.float32)
    rec = archive.write_mask("roof", key, mask, _attrs(timings={"segment": 0.5}), similarity=sim)

    assert rec == archive.mask_record("roof", key)
    assert rec["status"] == "complete" and rec["concept"] == "roof" and rec["image_key"] == key
    assert rec["config"] == InsidConfig(image_size=512).to_dict()
    assert rec["config_digest"] == InsidConfig(image_size=512).digest() == config_digest(rec["config"])
    assert rec["shape"] == [700, 600] and rec["similarity_shape"] == [44, 38] and rec["timings"] == {"segment": 0.5}
    assert rec["group"] == f"masks/roof/{key}/{rec['version']}"
    assert {"created", "dinoseg_version", "mask_sha256", "backbone", "source_uri"} <= set(rec)

    root = zarr.open_group(archive.url, mode="r", use_consolidated=False)
    assert root.attrs["dinoseg_schema_version"] == SCHEMA_VERSION
    assert {"created", "dinoseg_version"} <= set(root.attrs)
    assert dict(root[f"masks/roof/{key}"].attrs) == rec  # the record
    version = root[rec["group"]]
    assert dict(version.attrs) == rec
    arr = version["mask"]
    assert arr.dtype == np.uint8 and arr.shape == (700, 600) and arr.chunks == (512, 512) and arr.shards is None
    assert arr.metadata.dimension_names == ("y", "x")
    assert set(np.unique(arr[:])) == {0, 255}
    np.testing.assert_array_equal(arr[:] > 0, mask)
    s = version["similarity"]
    assert s.dtype == np.float16 and s.metadata.dimension_names == ("py", "px")

    np.testing.assert_array_equal(archive.read_mask("roof", key), mask)
    assert archive.read_mask("roof", key).dtype == bool
    np.testing.assert_allclose(archive.load("roof", key, similarity=True).similarity, sim, atol=1e-3)
    loaded = archive.load("roof", key, similarity=True)
    assert loaded.record == rec and loaded.similarity.dtype == np.float32

    archive.write_mask("field", "other-0", np.zeros((3, 5), bool), _attrs())
    assert archive.list_masks() == [("field", "other-0"), ("roof", key)]
    assert archive.list_masks("roof") == [("roof", key)] and archive.list_masks("nothing") == []
    assert archive.list_concepts() == ["field", "roof"]
    assert archive.load("field", "other-0", similarity=True).similarity is None
    assert not archive.read_mask("field", "other-0").any()

    reopened = MaskArchive.open(archive.url, mode="r")
    assert reopened.list_masks() == archive.list_masks()
    assert pickle.loads(pickle.dumps(archive)).mask_record("roof", key) == rec
    with pytest.raises(InputError, match="read-only"):
        reopened.write_mask("roof", key, mask, _attrs())


def test_relabel_replaces_the_version_and_may_change_shape(archive):
    first = archive.write_mask("roof", "k", _mask(seed=1), _attrs())
    second = archive.write_mask("roof", "k", _mask((300, 1100), seed=2), _attrs(source_sha256="src2"))
    assert second["version"] != first["version"]
    assert archive.mask_record("roof", "k") == second
    np.testing.assert_array_equal(archive.read_mask("roof", "k"), _mask((300, 1100), seed=2))
    assert _version_dirs(archive, "roof", "k") == [second["version"]]  # the replaced version is gone


def test_records_of_many_masks_in_one_batched_read(archive):
    rec = archive.write_mask("roof", "k", _mask(), _attrs())
    found = archive.mask_records([("roof", "k"), ("roof", "other"), ("field", "k")])
    assert found == {("roof", "k"): rec, ("roof", "other"): None, ("field", "k"): None}
    assert rec["config_digest"] == InsidConfig(image_size=512).digest()  # what the freshness rule compares
    assert archive.records("roof") == {"k": rec} and archive.records("field") == {}
    with pytest.raises(InputError, match="not a valid archive name"):
        archive.mask_records([("roof", "../k")])


def test_write_mask_rejects_bad_input(archive):
    with pytest.raises(InputError, match=r"lack \['backbone_fingerprint', 'reference_set_hash'\]"):
        archive.write_mask("roof", "k", _mask(), {k: v for k, v in _attrs().items()
                                                  if k not in ("backbone_fingerprint", "reference_set_hash")})
    with pytest.raises(InputError, match="boolean"):
        archive.write_mask("roof", "k", _mask().astype(np.uint8), _attrs())
    with pytest.raises(InputError, match="2-D"):
        archive.write_mask("roof", "k", np.zeros((2, 3, 4), bool), _attrs())
    with pytest.raises(InputError, match="not a valid archive name"):
        archive.write_mask("my roof", "k", _mask(), _attrs())
    with pytest.raises(InputError, match="not a valid archive name"):
        archive.write_mask("roof", "../k", _mask(), _attrs())
    with pytest.raises(InputError, match="JSON-serialisable"):
        archive.write_mask("roof", "k", _mask(), _attrs(extra=object()))
    assert archive.list_masks() == []
    with pytest.raises(ObjectNotFoundError, match="No complete mask"):
        archive.read_mask("roof", "k")


# ------------------------------------------------------------------------------------ atomic visibility
def test_half_written_mask_is_invisible_and_a_later_write_completes_it(archive, monkeypatch):
    def crash(*args, **kwargs):
        raise RuntimeError("killed before publishing")

    monkeypatch.setattr(MaskArchive, "_publish", crash)
    with pytest.raises(RuntimeError, match="killed"):
        archive.write_mask("roof", "k", _mask(), _attrs())
    assert len(_version_dirs(archive, "roof", "k")) == 1  # chunks and metadata of the version are on disk ...
    assert archive.list_masks() == [] and archive.mask_record("roof", "k") is None  # ... but nobody sees them
    with pytest.raises(ObjectNotFoundError):
        archive.read_mask("roof", "k")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr warns about the unpublished folder, and opens cleanly
        zarr.open_group(archive.url, mode="r", use_consolidated=False).members(max_depth=None)
    monkeypatch.undo()

    rec = archive.write_mask("roof", "k", _mask(seed=5), _attrs())
    assert archive.list_masks() == [("roof", "k")]
    np.testing.assert_array_equal(archive.read_mask("roof", "k"), _mask(seed=5))
    assert archive.vacuum() == 0  # the orphan is fresh: it could be another process's write in progress
    assert archive.vacuum(older_than_s=0) == 1
    assert _version_dirs(archive, "roof", "k") == [rec["version"]]

    monkeypatch.setattr(MaskArchive, "_publish", crash)  # a first write that never publishes ...
    with pytest.raises(RuntimeError):
        archive.write_mask("roof", "never", _mask(), _attrs())
    monkeypatch.undo()
    assert archive.vacuum(older_than_s=0) == 1  # ... leaves nothing behind after a vacuum
    assert sorted(os.listdir(os.path.join(archive.url, "masks", "roof"))) == ["k", "zarr.json"]


def test_crashed_relabel_keeps_the_old_mask(archive, monkeypatch):
    old = archive.write_mask("roof", "k", _mask(seed=1), _attrs())
    monkeypatch.setattr(MaskArchive, "_publish", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("crash")))
    with pytest.raises(RuntimeError):
        archive.write_mask("roof", "k", _mask(seed=2), _attrs(source_sha256="src2"))
    assert archive.mask_record("roof", "k") == old
    np.testing.assert_array_equal(archive.read_mask("roof", "k"), _mask(seed=1))


def test_last_publish_wins_between_two_writers_of_one_image(tmp_path):
    url = str(tmp_path / "masks.zarr")
    a, b = MaskArchive.open(url), MaskArchive.open(url)
    held = []
    a._publish = lambda *args: held.append(args)  # writer A stalls right before publishing
    a.write_mask("roof", "k", _mask(seed=1), _attrs(writer="a"))
    b.write_mask("roof", "k", _mask((400, 400), seed=2), _attrs(writer="b"))
    assert b.mask_record("roof", "k")["writer"] == "b"
    MaskArchive._publish(a, *held[0])  # A resumes
    rec = b.mask_record("roof", "k")
    assert rec["writer"] == "a"
    np.testing.assert_array_equal(b.read_mask("roof", "k"), _mask(seed=1))
    assert _version_dirs(a, "roof", "k") == [rec["version"]]


def test_load_retries_when_a_relabel_removes_the_version_it_read(archive, monkeypatch):
    stale = archive.write_mask("roof", "k", _mask(seed=1), _attrs())
    archive.write_mask("roof", "k", _mask(seed=2), _attrs())
    real = MaskArchive.mask_record
    calls = []

    def first_stale(self, concept, key):
        calls.append(1)
        return dict(stale) if len(calls) == 1 else real(self, concept, key)

    monkeypatch.setattr(MaskArchive, "mask_record", first_stale)
    loaded = archive.load("roof", "k")
    assert len(calls) == 2 and loaded.record["version"] != stale["version"]
    np.testing.assert_array_equal(loaded.mask, _mask(seed=2))


def test_load_detects_corrupt_chunks(archive):
    rec = archive.write_mask("roof", "k", np.ones((20, 20), bool), _attrs())
    chunk = os.path.join(archive.url, rec["group"], "mask", "c", "0", "0")
    os.remove(chunk)  # the chunk now reads as fill value 0
    with pytest.raises(StorageError, match="does not match its mask_sha256"):
        archive.load("roof", "k", attempts=2)


# ------------------------------------------------------------------------------------ concurrent writers
N_KEYS, ROUNDS, CONCEPTS = 10, 3, ("roof", "field")
# Both writers start with the shared keys 3..6, in the same order, so they race on the same images.
WRITER_KEYS = {0: (3, 4, 5, 6, 0, 1, 2), 1: (3, 4, 5, 6, 7, 8, 9)}
WRITER_SHAPES = {0: (1100, 1000), 1: (1030, 1200)}  # several chunks each, different grids


def _pattern(writer: int, key: int, rnd: int) -> np.ndarray:
    return np.random.default_rng([writer, key, rnd]).random(WRITER_SHAPES[writer]) > 0.5


def _writer(url: str, writer: int, barrier, lockstep) -> None:
    archive = MaskArchive.open(url, mode="r+")
    barrier.wait(timeout=30)
    for rnd in range(ROUNDS):
        lockstep.wait(timeout=30)  # both writers start each round on the same shared image
        for key in WRITER_KEYS[writer]:
            for concept in CONCEPTS:
                archive.write_mask(concept, f"k{key}", _pattern(writer, key, rnd),
                                   _attrs(writer=writer, round=rnd, key=key))


def _reader(url: str, barrier, stop, results) -> None:
    """Reads every listed mask until told to stop; reports (checks made, problems seen)."""
    archive = MaskArchive.open(url, mode="r")
    barrier.wait(timeout=30)
    checked, bad = 0, []
    try:
        while not stop.is_set() or checked == 0:
            for concept, key in archive.list_masks():
                got = archive.load(concept, key)  # checksummed and retried: must always be consistent
                rec = got.record
                if not np.array_equal(got.mask, _pattern(rec["writer"], rec["key"], rec["round"])):
                    bad.append(("load", concept, key, rec["version"]))
                # Raw zarr read, no checksum: what a record points at while it stays current must be complete.
                before = archive.mask_record(concept, key)
                try:
                    raw = zarr.open_group(url, mode="r", use_consolidated=False)[before["group"]]["mask"][...]
                except (FileNotFoundError, KeyError):
                    continue  # replaced and deleted meanwhile
                if archive.mask_record(concept, key) == before and not np.array_equal(
                        raw > 0, _pattern(before["writer"], before["key"], before["round"])):
                    bad.append(("raw", concept, key, before["version"]))
                checked += 1
    except Exception as exc:  # report instead of dying silently
        bad.append(("error", repr(exc)))
    results.put((checked, bad))


def test_concurrent_writers_and_a_reader_never_corrupt_the_archive(tmp_path):
    url = str(tmp_path / "masks.zarr")
    MaskArchive.open(url)
    ctx = mp.get_context("spawn")  # zarr runs an event-loop thread: never fork it
    barrier, lockstep, stop, results = ctx.Barrier(3), ctx.Barrier(2), ctx.Event(), ctx.Queue()
    writers = [ctx.Process(target=_writer, args=(url, w, barrier, lockstep)) for w in (0, 1)]
    reader = ctx.Process(target=_reader, args=(url, barrier, stop, results))
    for proc in (*writers, reader):
        proc.start()
    for proc in writers:
        proc.join(60)
    stop.set()
    checked, bad = results.get(timeout=60)
    reader.join(60)
    for proc in (*writers, reader):
        if proc.is_alive():
            proc.terminate()
    assert [p.exitcode for p in (*writers, reader)] == [0, 0, 0]
    assert bad == [] and checked > 0  # a reader during the run only ever saw complete, consistent masks

    archive = MaskArchive.open(url, mode="r+")
    assert archive.list_masks() == sorted((c, f"k{k}") for c in CONCEPTS for k in range(N_KEYS))
    for concept in CONCEPTS:
        for key in range(N_KEYS):
            rec = archive.mask_record(concept, f"k{key}")
            assert rec["round"] == ROUNDS - 1 and key in WRITER_KEYS[rec["writer"]]
            np.testing.assert_array_equal(archive.read_mask(concept, f"k{key}"),
                                          _pattern(rec["writer"], key, ROUNDS - 1))
    archive.vacuum(older_than_s=0)  # orphans of lost same-image races, if any
    for concept, key in archive.list_masks():
        assert _version_dirs(archive, concept, key) == [archive.mask_record(concept, key)["version"]]
    root = zarr.open_group(url, mode="r", use_consolidated=False)
    assert len([m for m in root.members(max_depth=None) if isinstance(m[1], zarr.Array)]) == 2 * N_KEYS


# --------------------------------------------------------------------------------------------- readers
def test_xarray_reads_a_mask_version_group(archive):
    import xarray as xr
    mask, sim = _mask((130, 170)), np.linspace(0, 1, 8 * 11, dtype=np.float32).reshape(8, 11)
    rec = archive.write_mask("roof", "k", mask, _attrs(), similarity=sim)
    ds = xr.open_zarr(archive.url, group=rec["group"], consolidated=False)
    assert ds["mask"].dims == ("y", "x") and ds["mask"].dtype == np.uint8
    assert ds["similarity"].dims == ("py", "px")
    np.testing.assert_array_equal(ds["mask"].values > 0, mask)
    np.testing.assert_allclose(ds["similarity"].values, sim, atol=1e-3)
    assert ds.attrs["source_uri"] == rec["source_uri"] and ds.attrs["status"] == "complete"


def test_consolidate_is_optional_and_never_read_by_the_archive(archive):
    archive.write_mask("roof", "a", _mask((10, 10)), _attrs())
    archive.consolidate()
    snapshot = zarr.open_consolidated(archive.url)
    assert "masks/roof/a" in [path for path, _ in snapshot.members(max_depth=None)]
    archive.write_mask("roof", "b", _mask((10, 10)), _attrs())
    assert archive.list_masks() == [("roof", "a"), ("roof", "b")]
    assert MaskArchive.open(archive.url, mode="r").mask_record("roof", "b") is not None


# ------------------------------------------------------------------------------------------ run logs
def test_run_logs(archive):
    assert archive.run_logs() == [] and archive.run_log("r1") is None
    archive.write_run_log("r2", {"start": "2026-01-02T00:00:00+00:00", "parameters": {"tau": 0.6}})
    archive.write_run_log("r1", {"start": "2026-01-01T00:00:00+00:00"})
    archive.write_run_log("r2", {
        "start": "2026-01-02T00:00:00+00:00", "end": "2026-01-02T01:00:00+00:00",
        "counts": {"labelled": 3, "skipped": np.int64(5), "failed": 1},
        "failures": [{"uri": "s3://lake/bad.png", "reason": "ImageDecodeError: truncated"}],
    })
    logs = archive.run_logs()
    assert [log["run_id"] for log in logs] == ["r1", "r2"]
    assert logs[1]["counts"] == {"labelled": 3, "skipped": 5, "failed": 1} and "parameters" not in logs[1]
    assert archive.run_log("r2")["failures"][0]["uri"] == "s3://lake/bad.png"
    with pytest.raises(InputError):
        archive.write_run_log("bad/id", {})


# --------------------------------------------------------------------------------- what open() refuses
def test_open_modes(tmp_path):
    url = str(tmp_path / "new.zarr")
    with pytest.raises(ObjectNotFoundError, match="mode='a'"):
        MaskArchive.open(url, mode="r")
    MaskArchive.open(url, mode="w-")
    with pytest.raises(InputError, match="already exists"):
        MaskArchive.open(url, mode="w-")
    assert MaskArchive.open(url + "/", mode="r+").url == url
    with pytest.raises(InputError, match="mode="):
        MaskArchive.open(url, mode="w")


def test_open_refuses_what_is_not_a_dinoseg_archive(tmp_path):
    plain = tmp_path / "plain.zarr"
    zarr.open_group(str(plain), mode="w", attributes={"owner": "someone else"})
    with pytest.raises(InputError, match="not a dinoseg mask archive"):
        MaskArchive.open(str(plain))

    newer = tmp_path / "newer.zarr"
    MaskArchive.open(str(newer))
    meta = json.loads((newer / "zarr.json").read_text())
    meta["attributes"]["dinoseg_schema_version"] = SCHEMA_VERSION + 1
    (newer / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="schema version 2.*Upgrade dinoseg"):
        MaskArchive.open(str(newer), mode="r")

    array = tmp_path / "array.zarr"
    zarr.create_array(str(array), shape=(2,), dtype="uint8")
    with pytest.raises(InputError, match="not a v3 group"):
        MaskArchive.open(str(array))

    v2 = tmp_path / "v2.zarr"
    zarr.open_group(str(v2), mode="w", zarr_format=2)
    with pytest.raises(InputError, match="zarr v2"):
        MaskArchive.open(str(v2))

    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"x")
    with pytest.raises(InputError, match="refusing to write"):
        MaskArchive.open(str(folder))
    with pytest.raises(InputError, match="is a file"):
        MaskArchive.open(str(folder / "a.png"))

    garbage = tmp_path / "garbage.zarr"
    garbage.mkdir()
    (garbage / "zarr.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        MaskArchive.open(str(garbage))
    assert sorted(os.listdir(folder)) == ["a.png"]  # nothing was written into what was refused


# ---------------------------------------------------------------------------------------------------- S3
@pytest.mark.integration
def test_archive_on_s3(s3_server):
    import xarray as xr
    so = s3_server["storage_options"]
    url = s3_server["make_bucket"]() + "/lake/masks.zarr"
    archive = MaskArchive.open(url, storage_options=so)
    key = image_key("s3://lake/tiles/a.png")
    old = archive.write_mask("roof", key, _mask(seed=1), _attrs(), similarity=np.ones((4, 5)))
    rec = archive.write_mask("roof", key, _mask((520, 515), seed=2), _attrs(source_sha256="src2"))
    archive.write_mask("field", key, _mask((8, 8), seed=3), _attrs())
    archive.write_run_log("run-1", {"start": "2026-01-01T00:00:00+00:00", "counts": {"labelled": 3}})

    reader = MaskArchive.open(url, storage_options=so, mode="r")
    assert reader.list_masks() == [("field", key), ("roof", key)]
    assert reader.mask_record("roof", key) == rec
    np.testing.assert_array_equal(reader.read_mask("roof", key), _mask((520, 515), seed=2))
    assert reader.load("roof", key, similarity=True).similarity is None
    assert reader.mask_records([("roof", key)]) == {("roof", key): rec}
    assert [log["run_id"] for log in reader.run_logs()] == ["run-1"]

    import s3fs

    fs = s3fs.S3FileSystem(**so)
    versions = fs.ls(url.removeprefix("s3://") + f"/masks/roof/{key}")
    assert sorted(p.rsplit("/", 1)[-1] for p in versions) == [rec["version"], "zarr.json"]
    assert old["version"] != rec["version"]

    ds = xr.open_zarr(url, group=rec["group"], storage_options=so, consolidated=False)
    np.testing.assert_array_equal(ds["mask"].values > 0, _mask((520, 515), seed=2))


@pytest.mark.integration
def test_s3_half_written_mask_invisible_and_foreign_store_refused(s3_server, monkeypatch):
    so = s3_server["storage_options"]
    bucket = s3_server["make_bucket"]()
    archive = MaskArchive.open(bucket + "/masks.zarr", storage_options=so)
    monkeypatch.setattr(MaskArchive, "_publish", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("crash")))
    with pytest.raises(RuntimeError):
        archive.write_mask("roof", "k", _mask(), _attrs())
    monkeypatch.undo()
    assert archive.list_masks() == [] and archive.mask_record("roof", "k") is None
    archive.write_mask("roof", "k", _mask(), _attrs())
    assert archive.list_masks() == [("roof", "k")]
    assert archive.vacuum(older_than_s=0) == 1

    zarr.open_group(bucket + "/plain.zarr", mode="w", storage_options=so, attributes={"x": 1})
    with pytest.raises(InputError, match="not a dinoseg mask archive"):
        MaskArchive.open(bucket + "/plain.zarr", storage_options=so)
    with pytest.raises(ObjectNotFoundError):
        MaskArchive.open(bucket + "/absent.zarr", storage_options=so, mode="r")


def test_archive_on_memory_fs():
    """Non-local code path (FsspecStore, fsspec listings) without a server."""
    url = f"memory://archive-{hashlib.sha256(os.urandom(8)).hexdigest()[:8]}/masks.zarr"
    archive = MaskArchive.open(url)
    archive.write_mask("roof", "k", _mask((33, 44)), _attrs(), similarity=np.ones((2, 3)))
    archive.write_mask("roof", "k", _mask((33, 44), seed=9), _attrs())
    assert archive.list_masks() == [("roof", "k")]
    np.testing.assert_array_equal(archive.read_mask("roof", "k"), _mask((33, 44), seed=9))
    assert MaskArchive.open(url, mode="r").mask_record("roof", "k")["shape"] == [33, 44]
