"""The INSID3 configuration: every default of the paper written once (``../shared/INSID3.md`` section 0).

CLI options, flow parameters and the provenance attributes of the Zarr archive are derived from
:class:`InsidConfig`; nothing else repeats these numbers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field, fields
import typing
from typing import Any, Literal

from dinoseg_core.errors import InputError

#: The backbone of the paper's results (ViT-L/16, LVD-1689M): what every command and flow uses unless told.
DEFAULT_BACKBONE = "dinov3-vitl16"

#: SVD components used by the paper with the ViT-L backbone (C = 1024).
PAPER_SVD_COMPONENTS = 500
PAPER_EMBED_DIM = 1024


@dataclass(frozen=True)
class InsidConfig:
    """Hyper-parameters of INSID3 (Cuttano et al., CVPR 2026). Defaults are the paper's.

    The ``help`` metadata of each field is what the CLI shows.
    """

    image_size: int = field(default=1024, metadata={"help": "square input side in pixels (multiple of the patch size)"})
    svd_components: int | None = field(
        default=None,
        metadata={"help": "positional-basis rank k; default 500 for C=1024, scaled as round(C*500/1024) otherwise"},
    )
    tau: float = field(default=0.6, metadata={"help": "clustering similarity threshold (cut at cosine distance 1-tau)"})
    merge_threshold: float = field(default=0.2, metadata={"help": "alpha: keep clusters with cross*intra*area > alpha"})
    crf: bool = field(default=False, metadata={"help": "refine mask boundaries with a dense CRF"})
    basis_source: Literal["black", "noise"] = field(
        default="black", metadata={"help": "content-free image for the positional basis: black (code) or noise (paper)"}
    )
    resize_mode: Literal["square", "aspect"] = field(
        default="square", metadata={"help": "square resize (paper) or longer side to image-size, aspect kept"}
    )

    def __post_init__(self) -> None:
        if self.image_size < 16:
            raise InputError(f"image_size={self.image_size}: must be at least one patch (16 px)")
        if self.svd_components is not None and self.svd_components < 0:
            raise InputError(f"svd_components={self.svd_components}: must be >= 0")
        if not 0.0 < self.tau <= 1.0:
            raise InputError(f"tau={self.tau}: must be in (0, 1] (a cosine-similarity threshold)")
        if not 0.0 <= self.merge_threshold < 1.0:
            raise InputError(f"merge_threshold={self.merge_threshold}: must be in [0, 1)")
        if self.basis_source not in ("black", "noise"):
            raise InputError(f"basis_source={self.basis_source!r}: must be 'black' or 'noise'")
        if self.resize_mode not in ("square", "aspect"):
            raise InputError(f"resize_mode={self.resize_mode!r}: must be 'square' or 'aspect'")

    def resolved_svd_components(self, embed_dim: int) -> int:
        """k for a backbone of feature dimension ``embed_dim`` (section 0: k < C, scaled when not given)."""
        if self.svd_components is None:
            return round(embed_dim * PAPER_SVD_COMPONENTS / PAPER_EMBED_DIM)
        if self.svd_components >= embed_dim:
            raise InputError(
                f"svd_components={self.svd_components} is not smaller than the backbone's feature dimension "
                f"{embed_dim}: the projection would remove every direction. Use a value below {embed_dim} "
                f"(or leave it unset for round(C*500/1024) = {round(embed_dim * PAPER_SVD_COMPONENTS / PAPER_EMBED_DIM)})."
            )
        return self.svd_components

    def replace(self, **changes: Any) -> "InsidConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "InsidConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"unknown INSID3 config field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**data)

    def digest(self) -> str:
        """Stable sha256 of the config, for cache keys and provenance."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


def _method_options_model():
    """A pydantic model with every :class:`InsidConfig` field optional (None = keep the default), unknown fields
    rejected: the typed form of method options in flow parameters and manifests."""
    from pydantic import ConfigDict, create_model

    hints = typing.get_type_hints(InsidConfig)
    fields_ = {f.name: (hints[f.name] | None, None) for f in fields(InsidConfig)}
    model = create_model("MethodOptions", __config__=ConfigDict(extra="forbid", strict=True), **fields_)
    model.__doc__ = "INSID3 options; each unset field keeps the paper's default (see dinoseg_core.config.InsidConfig)."
    return model


MethodOptions = _method_options_model()


def apply_options(config: InsidConfig, options: Any) -> InsidConfig:
    """``config`` with the fields set in ``options`` (a MethodOptions, a dict, or None) replaced."""
    if options is None:
        return config
    given = options.model_dump(exclude_none=True) if hasattr(options, "model_dump") else dict(options)
    return config.replace(**{k: v for k, v in given.items() if v is not None})
