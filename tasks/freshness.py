"""The one rule that decides whether a stored mask is up to date, for every labeller and every kind of item.

A mask depends on its source (the bytes: sha256; before the bytes are read, the listing stamp stands in for them)
and on its method: the model fingerprint, the config digest and the reference-set (or class-list) hash. Any of
them changed, or no mask yet, or ``force``: relabel, with the reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dinoseg_core.io.archive import config_digest


@dataclass(frozen=True)
class MethodStamp:
    """What one concept's masks depend on besides their source; also their provenance attributes.

    Attributes:
        backbone: the model spec as given (``dinov3-vitl16``, a URL, ``random:...``).
        fingerprint: the loaded weights' fingerprint (the same whichever format the weights came in).
        random: the weights are a random initialisation.
        config: everything about the method that shapes the mask (a JSON-able dict); its digest is compared.
        reference_set_hash: the content hash of the references (INSID3) or the class list (text).
        extra: other provenance attributes, written but not compared (e.g. the class of a text concept).
    """

    backbone: str
    fingerprint: str
    random: bool
    config: Mapping[str, Any] = field(hash=False)
    reference_set_hash: str
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False)

    @property
    def config_digest(self) -> str:
        return config_digest(self.config)

    def attrs(self) -> dict[str, Any]:
        """The provenance attributes of a mask made with this method (the archive adds ``config_digest``)."""
        return {"backbone": self.backbone, "backbone_fingerprint": self.fingerprint, "backbone_random": self.random,
                "config": dict(self.config), "reference_set_hash": self.reference_set_hash, **self.extra}


def relabel_reason(record: Mapping[str, Any] | None, method: MethodStamp, *, sha256: str | None = None,
                   stamp: str | None = None, force: bool = False) -> str | None:
    """Why a mask must be (re)written, or None when ``record`` (its current archive record) is up to date.

    The source is compared by ``sha256`` when given, else by the listing ``stamp`` (an unchanged stamp means
    unchanged bytes; a changed one only means "read it and compare the sha256"). Reasons: ``forced``, ``no mask``,
    ``source changed``, ``source stamp changed``, ``backbone changed``, ``config changed``, ``reference set
    changed``.
    """
    if force:
        return "forced"
    if record is None:
        return "no mask"
    if sha256 is not None:
        checks = [("source_sha256", sha256, "source changed")]
    else:
        checks = [("source_stamp", stamp, "source stamp changed")]
    checks += [
        ("backbone_fingerprint", method.fingerprint, "backbone changed"),
        ("config_digest", method.config_digest, "config changed"),
        ("reference_set_hash", method.reference_set_hash, "reference set changed"),
    ]
    for name, wanted, reason in checks:
        if wanted is None or record.get(name) != wanted:
            return reason
    return None
