"""Labelled-collection readers: folder, manifest, iSAID-5i and COCO-20i layouts, locally and on S3."""

import io

import numpy as np
import pytest
import yaml
from PIL import Image

from dinoseg_core.errors import InputError
from dinoseg_core.io import storage
from dinoseg_core.io.fss_datasets import ISAID_CLASSES, open_collection
from tests.dinoseg_core.fss_data import write_folder, write_isaid


def test_isaid_layout_split_files_and_scanned_label_maps_agree(tmp_path):
    maps = write_isaid(str(tmp_path / "a"), n_images=4, size=64)
    write_isaid(str(tmp_path / "b"), n_images=4, size=64, split_files=False)
    listed, scanned = open_collection(str(tmp_path / "a")), open_collection(str(tmp_path / "b"), "isaid")
    elsewhere = open_collection(str(tmp_path / "b"), splits=str(tmp_path / "a" / "splits" / "val"))
    assert listed.layout == scanned.layout == elsewhere.layout == "isaid"
    assert listed.index == scanned.index == elsewhere.index and listed.index[1] == ("P0000", "P0002", "P0003")
    with pytest.raises(InputError, match=r"fold0.txt.*not found"):
        open_collection(str(tmp_path / "a"), splits=str(tmp_path / "b"))
    assert listed.folds == ((1, 2, 3, 4, 5), (6, 7, 8, 9, 10), (11, 12, 13, 14, 15))
    assert listed.classes[1] == ISAID_CLASSES[0] == "ship"
    sample = listed.load("P0001")
    labels = maps["P0001"]
    assert set(sample.masks) == set(np.unique(labels).tolist()) - {0, 255}
    assert all((sample.masks[c] == (labels == c)).all() for c in sample.masks)
    assert (sample.ignore == (labels == 255)).all() and sample.ignore.any()
    with pytest.raises(InputError, match="has folds 0..2"):
        listed.fold_classes(3)


def test_a_bad_split_line_and_a_missing_layout_are_named(tmp_path):
    write_isaid(str(tmp_path), n_images=2, size=64)
    (tmp_path / "splits" / "val" / "fold1.txt").write_text("P0000__3\nP0000-7\n")
    with pytest.raises(InputError, match=r"fold1.txt line 2: 'P0000-7' is not '<image name>__<class id 1..15>'"):
        open_collection(str(tmp_path), "isaid")
    with pytest.raises(InputError, match="no images in images/.*masks/<concept>/<name>.png"):
        open_collection(str(tmp_path / "nothing"))


def test_coco20i_folds_interleaved_or_contiguous(tmp_path):
    labels = np.zeros((32, 32), np.uint8)
    labels[:8] = 1
    labels[8:16] = 6
    labels[16:18] = 255
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "x.jpg")
    (tmp_path / "val2014").mkdir()
    (tmp_path / "annotations" / "val2014").mkdir(parents=True)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "val2014" / "img1.jpg")
    Image.fromarray(labels, mode="L").save(tmp_path / "annotations" / "val2014" / "img1.png")
    coco = open_collection(str(tmp_path))
    assert coco.layout == "coco20i" and coco.index[1] == coco.index[6] == ("img1",) and coco.index[2] == ()
    assert coco.fold_classes(0)[:3] == (1, 5, 9) and coco.fold_classes(1)[:2] == (2, 6)  # class c in fold (c-1)%4
    assert open_collection(str(tmp_path), coco_split="contiguous").fold_classes(1)[:2] == (21, 22)
    assert coco.classes[1] == "person" and len(coco.classes) == 80
    assert coco.load("img1").ignore.sum() == 64


@pytest.mark.slow
def test_folder_and_manifest_layouts_on_s3(s3_server):
    so = s3_server["storage_options"]
    root = s3_server["make_bucket"]() + "/labelled"
    write_folder(root, n_images=3, size=64, storage_options=so)
    empty = np.zeros((64, 64), bool)
    buffer = io.BytesIO()
    Image.fromarray(empty.astype(np.uint8) * 255).save(buffer, format="PNG")
    storage.write_bytes(f"{root}/masks/roof/s2.png", buffer.getvalue(), so)  # an empty mask: s2 holds no roof
    folder = open_collection(root, storage_options=so)
    assert folder.layout == "folder" and folder.classes == {1: "roof", 2: "water"}
    assert folder.index == {1: ("s0", "s1"), 2: ("s0", "s1", "s2")} and folder.folds == ((1, 2),)
    assert open_collection(root, folds=2, storage_options=so).folds == ((1,), (2,))
    manifest = {"classes": ["water", "roof"], "folds": [["water"], ["roof"]],
                "images": [{"image": "images/s0.png", "masks": {"water": "masks/water/s0.png",
                                                                "roof": "masks/roof/s0.png"}},
                           {"image": "images/s1.png", "masks": {"water": "masks/water/s1.png"}}]}
    storage.write_bytes(f"{root}/collection.yaml", yaml.safe_dump(manifest).encode(), so)
    listed = open_collection(f"{root}/collection.yaml", storage_options=so)
    assert listed.layout == "manifest" and listed.folds == ((1,), (2,)) and listed.index == {1: ("s0", "s1"),
                                                                                           2: ("s0",)}
    sample = listed.load("s0", so)
    assert sample.mask(1).any() and sample.mask(2).shape == (64, 64) and sample.ignore is None
    manifest["images"][1]["masks"] = {"forest": "masks/water/s1.png"}
    storage.write_bytes(f"{root}/bad.yaml", yaml.safe_dump(manifest).encode(), so)
    with pytest.raises(InputError, match=r"concept\(s\) \['forest'\] have masks but are not in classes"):
        open_collection(f"{root}/bad.yaml", storage_options=so)


def test_a_mask_of_another_size_is_named(tmp_path):
    write_folder(str(tmp_path), n_images=1, size=64, concepts=("water",))
    Image.fromarray(np.full((32, 32), 255, np.uint8)).save(tmp_path / "masks" / "water" / "s0.png")
    with pytest.raises(InputError, match="s0.png is 32x32 px but its image .*s0.png is 64x64"):
        open_collection(str(tmp_path)).load("s0")
