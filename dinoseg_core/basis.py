"""Step 3 of INSID3: the positional basis, an SVD of the patch features of a content-free image.

The basis depends on the backbone and the input size only; compute it once and reuse it (see
:class:`BasisCache`), or persist it with :meth:`PositionalBasis.to_bytes`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from dinoseg_core.errors import InputError
from dinoseg_core.features import patch_features

#: Seed of the Gaussian content-free image, fixed so that the basis is reproducible.
NOISE_SEED = 0


@dataclass(frozen=True)
class BasisKey:
    """What a positional basis depends on."""

    backbone_fingerprint: str
    height: int
    width: int
    source: str
    k: int


@dataclass(frozen=True)
class PositionalBasis:
    """U_k (C, k): the first k left singular vectors of the centred content-free features."""

    key: BasisKey
    vectors: torch.Tensor

    def to_bytes(self) -> bytes:
        """Serialise as safetensors (no pickle), with the key in the metadata."""
        metadata = {"dinoseg_basis_key": json.dumps(self.key.__dict__)}
        return st_save({"vectors": self.vectors.detach().cpu().contiguous()}, metadata=metadata)

    @classmethod
    def from_bytes(cls, data: bytes, name: str = "basis") -> "PositionalBasis":
        try:
            tensors = st_load(data)
            metadata = _safetensors_metadata(data)
            key = BasisKey(**json.loads(metadata["dinoseg_basis_key"]))
        except Exception as exc:  # any parse failure means: not a basis file
            raise InputError(f"{name!r} is not a dinoseg positional-basis file (safetensors with a basis key): {exc}")
        return cls(key=key, vectors=tensors["vectors"])


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    header_len = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + header_len]).get("__metadata__", {})


def content_free_image(source: str, size_hw: tuple[int, int], mean, std) -> torch.Tensor:
    """A normalised content-free image (1, 3, H, W).

    ``black``: zeros in [0, 1] before normalisation, as the released code does. ``noise``: standard Gaussian
    noise in the normalised space, as the paper describes, with a fixed seed.
    """
    if source == "black":
        mean_t = torch.tensor(mean).view(1, 3, 1, 1)
        std_t = torch.tensor(std).view(1, 3, 1, 1)
        return ((torch.zeros(1, 3, *size_hw) - mean_t) / std_t).float()
    if source == "noise":
        generator = torch.Generator().manual_seed(NOISE_SEED)
        return torch.randn(1, 3, *size_hw, generator=generator)
    raise InputError(f"basis source {source!r}: expected 'black' or 'noise'")


def basis_from_features(features: torch.Tensor, k: int) -> torch.Tensor:
    """U_k from L2-normalised patch features (C, h, w): centre each channel over the patches, SVD.

    Returns:
        float32 tensor (C, k) with orthonormal columns.
    """
    embed_dim = features.shape[0]
    if not 0 <= k < embed_dim:
        raise InputError(f"svd_components k={k} must be in [0, C={embed_dim})")
    matrix = features.flatten(1).double()  # E: (C, N)
    matrix = matrix - matrix.mean(dim=1, keepdim=True)
    left, _, _ = torch.linalg.svd(matrix, full_matrices=False)
    return left[:, :k].float().contiguous()


def compute_basis(backbone, size_hw: tuple[int, int], source: str, k: int) -> PositionalBasis:
    """Run the content-free image through ``backbone`` and return its positional basis."""
    norm = backbone.normalization
    pixels = content_free_image(source, size_hw, norm.mean, norm.std).to(backbone.device)
    # in the weights' precision even under bf16 autocast: the positional signal of a content-free image is a
    # small variation around one token that bf16 rounding drowns (the basis would change with the dtype)
    features = patch_features(backbone, pixels, full_precision=True)[0]
    key = BasisKey(backbone.fingerprint, size_hw[0], size_hw[1], source, k)
    return PositionalBasis(key=key, vectors=basis_from_features(features, k).to(backbone.device))


class BasisCache:
    """In-memory cache of positional bases keyed by :class:`BasisKey`; optionally seeded from saved files."""

    def __init__(self) -> None:
        self._bases: dict[BasisKey, PositionalBasis] = {}

    def add(self, basis: PositionalBasis) -> None:
        self._bases[basis.key] = basis

    def get(self, backbone, size_hw: tuple[int, int], source: str, k: int) -> PositionalBasis:
        key = BasisKey(backbone.fingerprint, size_hw[0], size_hw[1], source, k)
        if key not in self._bases:
            self._bases[key] = compute_basis(backbone, size_hw, source, k)
        basis = self._bases[key]
        if basis.vectors.device != backbone.device:
            basis = PositionalBasis(key, basis.vectors.to(backbone.device))
            self._bases[key] = basis
        return basis

    def __len__(self) -> int:
        return len(self._bases)

