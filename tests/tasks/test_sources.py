"""Listing a collection: a glob, a folder or prefix, a single file, an explicit list; tiles and scenes."""

import pytest

from dinoseg_core.errors import InputError
from dinoseg_core.io import storage
from tasks.sources import WorkItem, input_prefix, list_images


@pytest.fixture
def bucket(tmp_path):
    root = str(tmp_path / "lake")
    for name in ("tiles/a.png", "tiles/sub/b.jpg", "tiles/notes.txt", "scenes/s1.tif", "scenes/s2.TIFF"):
        storage.write_bytes(f"{root}/{name}", b"x" * 10)
    return root


def test_a_glob_lists_with_stamps_and_kinds(bucket):
    items = list_images.fn(f"{bucket}/**/*.*")
    by_name = {item.url.rsplit("/", 1)[-1]: item for item in items}
    assert by_name["a.png"].kind == "tile" and by_name["s1.tif"].kind == "scene" and by_name["s2.TIFF"].kind == "scene"
    assert all(item.stamp for item in items)


def test_a_folder_lists_every_image_under_it_and_nothing_else(bucket):
    for folder in (f"{bucket}/tiles", f"{bucket}/tiles/"):
        items = list_images.fn(folder)
        assert [item.url.rsplit("/", 1)[-1] for item in items] == ["a.png", "b.jpg"]
        assert all(item.stamp and item.kind == "tile" for item in items)


def test_a_single_file_is_one_item_with_its_stamp(bucket):
    (item,) = list_images.fn(f"{bucket}/scenes/s1.tif")
    assert item.url == f"{bucket}/scenes/s1.tif" and item.kind == "scene" and item.stamp == storage.stat_stamp(item.url)


def test_an_explicit_list_keeps_its_order_without_stamps(bucket):
    urls = [f"{bucket}/tiles/a.png", f"{bucket}/scenes/s1.tif", f"{bucket}/tiles/a.png"]
    assert list_images.fn(urls) == [WorkItem(urls[0], None, "tile"), WorkItem(urls[1], None, "scene")]


@pytest.mark.parametrize("images, message", [
    ("{bucket}/nothing/*.png", "matches no object"),
    ("{bucket}/missing.png", "no such file"),
    ("{bucket}/empty/", "no such file"),
    ("", "empty"),
])
def test_nothing_to_label_is_a_clear_error(bucket, images, message):
    with pytest.raises(InputError, match=message):
        list_images.fn(images.format(bucket=bucket))
    with pytest.raises(InputError, match="empty"):
        list_images.fn([])


def test_image_keys_are_relative_to_the_collection_prefix():
    assert input_prefix("s3://lake/tiles/**/*.png") == "s3://lake/tiles"
    assert input_prefix("s3://lake/tiles/") == "s3://lake/tiles"
    assert input_prefix("s3://lake/tiles", [WorkItem("s3://lake/tiles/a.png")]) == "s3://lake/tiles"
    assert input_prefix("s3://lake/scenes/s1.tif", [WorkItem("s3://lake/scenes/s1.tif")]) == "s3://lake/scenes"
    assert input_prefix(["s3://lake/a.png"]) is None
