"""Label ids checked before training (issue 14, item 7): every annotation is read (in parallel), each file with
ids that are not classes is named with its ids, and the hint (a class table) works for the folder layout too."""

from __future__ import annotations

import numpy as np
import pytest

from dinoseg_core.errors import InputError
from dinoseg_core.ovseg import SegDataset
from tests.ovseg_factory import SHAPE_CLASSES, shapes_image, write_shapes_folder


def write_folder(root: str, n: int = 4, bad: dict[int, list[int]] | None = None) -> str:
    return write_shapes_folder(root, n, size=32, bad=bad)


def test_a_clean_dataset_passes(tmp_path):
    SegDataset.from_folder(write_folder(str(tmp_path)), list(SHAPE_CLASSES)).check_labels(progress=False)


def test_bad_annotations_are_named_with_their_ids(tmp_path):
    root = write_folder(str(tmp_path), bad={1: [7, 9], 3: [200]})
    with pytest.raises(InputError) as caught:
        SegDataset.from_folder(root, list(SHAPE_CLASSES)).check_labels(workers=4, progress=False)
    message = str(caught.value)
    assert message.startswith("2 of 4 annotation(s) hold label ids that are not class indices 0..3")
    assert "annotations/001.png: [7, 9]" in message and "annotations/003.png: [200]" in message
    assert "000.png" not in message and "Unexpected ids: [7, 9, 200]" in message
    assert "--class-table" in message and "folder one included" in message


def test_the_folder_layout_takes_a_class_table(tmp_path):
    root = write_folder(str(tmp_path), n=2)
    table = tmp_path / "table.txt"
    table.write_text("0 grass\n2 blue disk\n")  # raw ids 1 and 3 are not in the table: ignored
    dataset = SegDataset.from_folder(root, class_table=str(table))
    dataset.check_labels(progress=False)
    assert dataset.class_names == ("grass", "blue disk")
    _, raw = shapes_image(0, 32)
    _, label = dataset[0]
    assert set(np.unique(label[raw == 0])) == {0} and set(np.unique(label[raw == 2])) <= {1}
    assert set(np.unique(label[(raw == 1) | (raw == 3)])) <= {255}
    with pytest.raises(InputError, match="either class names .* or a class table"):
        SegDataset.from_folder(root, list(SHAPE_CLASSES), class_table=str(table))
