"""The one freshness rule: every reason, the stamp before the read, the sha256 after it."""

import pytest

from dinoseg_core.config import InsidConfig
from tasks.freshness import MethodStamp, relabel_reason

METHOD = MethodStamp("dinov3-vitl16", "fp1", False, InsidConfig().to_dict(), "refs1")


def record(**changes):
    base = {"source_sha256": "sha1", "source_stamp": "mtime:1:10", "backbone_fingerprint": "fp1",
            "config_digest": InsidConfig().digest(), "reference_set_hash": "refs1"}
    return {**base, **changes}


def test_an_up_to_date_record_needs_nothing_by_sha_or_by_stamp():
    assert relabel_reason(record(), METHOD, sha256="sha1") is None
    assert relabel_reason(record(), METHOD, stamp="mtime:1:10") is None
    assert METHOD.config_digest == InsidConfig().digest()  # the digest the archive records


@pytest.mark.parametrize("changes, reason", [
    ({"source_sha256": "sha2"}, "source changed"),
    ({"backbone_fingerprint": "fp2"}, "backbone changed"),
    ({"config_digest": InsidConfig(tau=0.7).digest()}, "config changed"),
    ({"reference_set_hash": "refs2"}, "reference set changed"),
])
def test_each_input_that_changed_is_named(changes, reason):
    assert relabel_reason(record(**changes), METHOD, sha256="sha1") == reason


def test_no_mask_force_and_a_new_stamp():
    assert relabel_reason(None, METHOD, sha256="sha1") == "no mask"
    assert relabel_reason(record(), METHOD, sha256="sha1", force=True) == "forced"
    # a touched file: the stamp says "read it"; the unchanged sha256 then says "up to date"
    assert relabel_reason(record(), METHOD, stamp="mtime:2:10") == "source stamp changed"
    assert relabel_reason(record(), METHOD, sha256="sha1") is None


def test_provenance_attrs_carry_what_is_compared():
    attrs = MethodStamp("b", "fp", True, {"tau": 0.9}, "h", {"class": "road"}).attrs()
    assert attrs == {"backbone": "b", "backbone_fingerprint": "fp", "backbone_random": True, "config": {"tau": 0.9},
                     "reference_set_hash": "h", "class": "road"}
