"""``dinoseg segment`` on large targets: a pixel bomb fails alone from its header, a large JPEG is decoded reduced
and its mask written at its own size."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dinoseg.cli import main
from dinoseg_core.io import imageio
from dinoseg_core.synthetic import write_demo_dataset
from tests.tasks.test_pixel_bombs import zero_png


@pytest.mark.slow
def test_segment_bounds_memory_by_the_model_input(tmp_path, capsys):
    data = write_demo_dataset(str(tmp_path / "data"), n_references=1, n_targets=1, size=64, seed=3)
    (tmp_path / "bomb.png").write_bytes(zero_png(30000, 30000))
    big = np.asarray(Image.open(data["targets"][0]["image"]).convert("RGB").resize((640, 480)))
    Image.fromarray(big).save(tmp_path / "large.jpg", quality=90)
    reference = data["references"][0]
    out = tmp_path / "masks"
    code = main(["segment", "--out", str(out), "--backbone", "random:tiny@0", "--image-size", "64", "--device",
                 "cpu", "--reference", reference["image"], reference["mask"], "--target",
                 str(tmp_path / "large.jpg"), "--target", str(tmp_path / "bomb.png")])
    err = capsys.readouterr().err
    assert code == 1 and "wrote 1 mask(s)" in err
    assert "bomb.png: 30000x30000 = 900,000,000 pixels" in err and "--max-image-pixels" in err
    assert imageio.read_mask(str(out / "large.png")).shape == (480, 640)
    assert not (out / "bomb.png").exists()
