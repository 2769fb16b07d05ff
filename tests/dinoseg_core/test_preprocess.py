import numpy as np
import pytest

from dinoseg_core.errors import InputError
from dinoseg_core.preprocess import input_size, prepare_image, prepare_mask, resize_mask, validate_image
from dinoseg_core.prototype import mask_to_patches

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def test_square_and_aspect_input_sizes():
    assert input_size(300, 500, 1024, "square", 16) == (1024, 1024)
    assert input_size(300, 500, 512, "aspect", 16) == (304, 512)
    assert input_size(10, 4000, 512, "aspect", 16) == (16, 512)  # at least one patch


def test_prepare_image_normalises_with_the_weights_constants():
    image = np.zeros((40, 60, 3), np.float32)
    pixels = prepare_image(image, (32, 48), *IMAGENET)
    assert pixels.shape == (3, 32, 48)
    assert np.allclose(pixels[:, 0, 0].numpy(), [-2.1179, -2.0357, -1.8044], atol=1e-3)


@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros((32, 32), np.float32), r"shape \(H, W, 3\)"),
        (np.zeros((32, 32, 4), np.float32), r"shape \(H, W, 3\)"),
        (np.zeros((32, 32, 3), np.uint16), "dtype uint16"),
        (np.zeros((8, 64, 3), np.float32), "smaller than one 16-px patch"),
    ],
)
def test_bad_images_get_clear_errors(image, message):
    with pytest.raises(InputError, match=message):
        validate_image(image, "tile.png")


def test_mask_errors_name_the_mask():
    with pytest.raises(InputError, match="ref_mask.png.*20x10 px but its image is 30x10"):
        prepare_mask(np.ones((10, 20)), (10, 30), (32, 32), "ref_mask.png")
    with pytest.raises(InputError, match="ref_mask.png.*empty"):
        prepare_mask(np.zeros((10, 30)), (10, 30), (32, 32), "ref_mask.png")


def test_thin_mask_survives_resizing_and_downsampling():
    mask = np.zeros((1000, 1000), bool)
    mask[500, 500] = True  # one pixel: nearest resize to 64 px loses it; the centroid rule keeps it
    resized = prepare_mask(mask, (1000, 1000), (64, 64), "dot")
    assert resized.sum() == 1 and resized[32, 32]
    patches = mask_to_patches(resized, (4, 4))
    assert patches.sum() == 1 and patches[2, 2]


def test_mask_to_patches_reads_patch_centres():
    import torch

    mask = torch.zeros(64, 64, dtype=torch.bool)
    mask[:, :32] = True
    assert mask_to_patches(mask, (4, 4)).int().sum(0).tolist() == [4, 4, 0, 0]


def test_resize_mask_back_to_original():
    out = resize_mask(np.eye(4, dtype=bool), (8, 8))
    assert out.shape == (8, 8) and out.dtype == bool and out[0, 0] and not out[0, 7]
