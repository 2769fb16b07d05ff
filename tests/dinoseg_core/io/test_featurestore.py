import torch

from dinoseg_core.io.featurestore import FeatureCache, content_key, reference_set_from_bytes, reference_set_to_bytes
from dinoseg_core.prototype import ReferenceSet, ReferenceShot


def test_reference_set_round_trip_through_a_cache(tmp_path):
    shots = (
        ReferenceShot(torch.randn(6, 8), torch.tensor([1, 0, 1, 0, 0, 0], dtype=torch.bool), (2, 3)),
        ReferenceShot(torch.randn(4, 8), torch.tensor([0, 1, 0, 0], dtype=torch.bool), (2, 2)),
    )
    refs = ReferenceSet(shots=shots, prototype=torch.randn(8))
    cache = FeatureCache(str(tmp_path / "cache"))
    key = content_key("abc", ["x", "y"], b"\x00")
    assert cache.get("references", key) is None
    cache.put("references", key, reference_set_to_bytes(refs))
    again = reference_set_from_bytes(cache.get("references", key))
    assert again.num_shots == 2 and torch.equal(again.prototype, refs.prototype)
    for a, b in zip(again.shots, refs.shots):
        assert torch.equal(a.features_debiased, b.features_debiased) and torch.equal(a.mask, b.mask)
        assert a.grid == b.grid


def test_content_keys_are_unambiguous():
    assert content_key("ab", "c") != content_key("a", "bc")
    assert content_key(["a", "b"]) != content_key("a", "b")
