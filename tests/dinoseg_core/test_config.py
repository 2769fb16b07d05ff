import pytest

from dinoseg_core.config import InsidConfig
from dinoseg_core.errors import InputError


def test_paper_defaults():
    config = InsidConfig()
    assert (config.image_size, config.tau, config.merge_threshold, config.crf) == (1024, 0.6, 0.2, False)
    assert config.resolved_svd_components(1024) == 500


def test_k_scales_with_feature_dimension_when_unset():
    assert InsidConfig().resolved_svd_components(384) == round(384 * 500 / 1024) == 188


@pytest.mark.parametrize("k", [384, 500])
def test_k_not_below_feature_dimension_is_a_user_error(k):
    with pytest.raises(InputError, match=r"svd_components=\d+ is not smaller than .* 384"):
        InsidConfig(svd_components=k).resolved_svd_components(384)


@pytest.mark.parametrize(
    "field, value", [("tau", 0.0), ("tau", 1.5), ("merge_threshold", -0.1), ("image_size", 8), ("basis_source", "x")]
)
def test_invalid_values_name_the_field(field, value):
    with pytest.raises(InputError, match=field):
        InsidConfig(**{field: value})


def test_round_trip_and_digest():
    config = InsidConfig(tau=0.55, crf=True)
    assert InsidConfig.from_dict(config.to_dict()) == config
    assert config.digest() != InsidConfig().digest()
    with pytest.raises(InputError, match="unknown"):
        InsidConfig.from_dict({"tua": 0.5})
