"""Training and evaluation task helpers: dataset specs and the loss curve."""

import pytest

from dinoseg_core.errors import InputError
from dinoseg_core.ovseg.train import loss_curve
from tasks.training import DatasetSpec


def test_dataset_specs_say_what_is_missing():
    with pytest.raises(InputError, match="folder layout needs classes"):
        DatasetSpec("memory://data")
    with pytest.raises(InputError, match="coco-stuff layout needs class_table"):
        DatasetSpec("memory://data", layout="coco-stuff")
    with pytest.raises(InputError, match="duplicates"):
        DatasetSpec("memory://data", classes=("road", "Road"))
    assert DatasetSpec("memory://data", classes=(" road ", "water")).classes == ("road", "water")


def test_loss_curve_means_every_n_steps():
    curve = loss_curve([4.0, 2.0, 3.0, 1.0, 0.5], 2)
    assert curve == [{"step": 2, "loss": 3.0, "min": 2.0, "max": 4.0},
                     {"step": 4, "loss": 2.0, "min": 1.0, "max": 3.0},
                     {"step": 5, "loss": 0.5, "min": 0.5, "max": 0.5}]
    assert loss_curve([], 3) == []
    with pytest.raises(InputError):
        loss_curve([1.0], 0)
