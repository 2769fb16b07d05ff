"""Training dynamics on synthetic data, datasets on storage (folder and COCO-Stuff layouts), and mIoU."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from dinoseg_core.errors import InputError
from dinoseg_core.io.imageio import encode_png_rgb
from dinoseg_core.ovseg import (
    OvsegConfig,
    SegDataset,
    SegHeadConfig,
    SegModel,
    TextSegmenter,
    TrainConfig,
    evaluate,
    load_dinotxt,
    read_class_table,
    train,
)
from dinoseg_core.ovseg.evaluate import confusion_matrix, iou_per_class
from tests.ovseg_factory import SHAPE_CLASSES, shapes_dataset, shapes_image

TEMPLATES = ("a photo of a {}.",)


def test_confusion_and_iou():
    target = np.array([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = np.array([[0, 1, 1, 1], [2, -1, 0, 0]])  # -1: background (a miss)
    conf = confusion_matrix(pred, target, 4)
    assert conf.shape == (4, 5) and conf.sum() == 7
    iou = iou_per_class(conf)
    # class 0: tp 1, fn 1, fp 1 (the last pixel; the ignored one does not count) -> 1/3; class 1: tp 2, fp 1,
    # fn 1 -> 2/4; class 2: tp 1, fn 1 (predicted background) -> 1/2; class 3: absent everywhere -> NaN
    np.testing.assert_allclose(iou[:3], [1 / 3, 0.5, 0.5])
    assert np.isnan(iou[3])
    with pytest.raises(InputError, match="not classes"):
        confusion_matrix(pred, np.full_like(target, 7), 4)


def _png_label(label: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(label.astype(np.uint8), mode="L").save(buf, format="PNG")
    return buf.getvalue()


def test_folder_and_coco_stuff_layouts(tmp_path):
    image, label = shapes_image(0, 64)
    (tmp_path / "images").mkdir()
    (tmp_path / "annotations").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(encode_png_rgb(image))
    (tmp_path / "annotations" / "a.png").write_bytes(_png_label(label))
    data = SegDataset.from_folder(str(tmp_path), list(SHAPE_CLASSES))
    img, lab = data[0]
    assert img.shape == (64, 64, 3) and lab.dtype == np.int64 and np.array_equal(lab, label)

    coco = tmp_path / "coco"
    (coco / "images" / "val2017").mkdir(parents=True)
    (coco / "annotations" / "val2017").mkdir(parents=True)
    raw = np.where(label == 0, 123, label + 40)  # raw ids 123 (grass), 41, 42, 43
    raw[:4, :4] = 255  # unlabelled
    raw[4:8, :4] = 7  # an id outside the table -> ignored
    (coco / "images" / "val2017" / "000000000001.jpg").write_bytes(encode_png_rgb(image))
    (coco / "annotations" / "val2017" / "000000000001.png").write_bytes(_png_label(raw))
    (coco / "classes.txt").write_text("# id name\n41 red square\n42: blue disk\n43,yellow bar\n123\tgrass\n")
    table = read_class_table(str(coco / "classes.txt"))
    assert table == {41: "red square", 42: "blue disk", 43: "yellow bar", 123: "grass"}
    data = SegDataset.coco_stuff(str(coco), str(coco / "classes.txt"))
    assert data.class_names == ("red square", "blue disk", "yellow bar", "grass")
    _, lab = data[0]
    expected = np.where(label == 0, 3, label - 1)
    expected[:8, :4] = 255
    np.testing.assert_array_equal(lab, expected)

    (tmp_path / "images" / "b.png").write_bytes(encode_png_rgb(image))
    with pytest.raises(InputError, match="no label map"):
        SegDataset.from_folder(str(tmp_path), list(SHAPE_CLASSES))
    (tmp_path / "annotations" / "b.png").write_bytes(_png_label(label[:32]))
    with pytest.raises(InputError, match="does not match|is 64x32"):
        SegDataset.from_folder(str(tmp_path), list(SHAPE_CLASSES))[1]
    (tmp_path / "annotations" / "b.png").write_bytes(_png_label(label + 10))
    with pytest.raises(InputError, match="not class indices"):
        SegDataset.from_folder(str(tmp_path), list(SHAPE_CLASSES))[1]


@pytest.mark.slow
def test_training_lowers_the_loss_and_beats_the_untrained_model():
    dinotxt = load_dinotxt("random:tiny@0", device="cpu")
    train_set = shapes_dataset(16, size=128, seed=0)
    val_set = shapes_dataset(6, size=128, seed=1)
    torch.manual_seed(0)
    model = SegModel(dinotxt, config=SegHeadConfig(feature_dim=64, hidden=32, early_blocks=1, spatial_blocks=1,
                                                   class_blocks=1, class_heads=4, decoder_channels=(16, 16)))
    segmenter = TextSegmenter(model, OvsegConfig(short_side=128, window=128, stride=64, templates=TEMPLATES))
    before = evaluate(segmenter, val_set)
    result = train(model, train_set, 60, config=TrainConfig(batch_size=4, lr=3e-3, short_side=128, crop=128,
                                                            templates=TEMPLATES, schedule="constant"))
    after = evaluate(segmenter, val_set)
    first, last = np.mean(result.losses[:5]), np.mean(result.losses[-5:])
    print(f"loss {first:.3f} -> {last:.3f}; mIoU {before.miou:.3f} -> {after.miou:.3f}\n{after.markdown()}")
    assert last < 0.6 * first
    assert after.miou > before.miou + 0.2
    assert after.miou > 0.5
