"""Step 4 of INSID3: positional debiasing, used for cross-image matching only."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def debias(features: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """x_deb = normalise((I - U U^T) x) for every patch vector.

    Args:
        features: L2-normalised patch features (N, C).
        basis: U_k (C, k) with orthonormal columns.
    Returns:
        (N, C) unit vectors with the positional subspace projected out.
    """
    basis = basis.to(device=features.device, dtype=features.dtype)
    projected = features - (features @ basis) @ basis.T
    return F.normalize(projected, dim=-1)
