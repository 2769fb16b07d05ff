"""Step 6 of INSID3: candidate localisation in the debiased space, forward and backward."""

from __future__ import annotations

import math

import torch

from dinoseg_core.prototype import ReferenceSet

#: Percentile used when no target patch has a positive cosine with the prototype.
FALLBACK_PERCENTILE = 0.90
#: Target patches per block of the chunked nearest-neighbour search (bounds memory to CHUNK x M floats).
CHUNK = 1024


def forward_candidates(similarity: torch.Tensor) -> torch.Tensor:
    """Patches whose cosine with the prototype is > 0; if none, those at or above the 90th percentile.

    Args:
        similarity: (N,) cosine of each debiased target patch with the prototype.
    Returns:
        (N,) bool.
    """
    positive = similarity > 0
    if positive.any():
        return positive
    return similarity >= torch.quantile(similarity.float(), FALLBACK_PERCENTILE)


def nearest_neighbours(queries: torch.Tensor, keys: torch.Tensor, chunk: int = CHUNK) -> torch.Tensor:
    """Index of the most similar key (N,) for each query, computed in blocks so that the full (N, M)
    similarity matrix is never held at once. Queries (N, C), keys (M, C), both unit vectors."""
    out = torch.empty(queries.shape[0], dtype=torch.long, device=queries.device)
    for start in range(0, queries.shape[0], chunk):
        out[start : start + chunk] = (queries[start : start + chunk] @ keys.T).argmax(dim=1)
    return out


def backward_candidates(target_debiased: torch.Tensor, references: ReferenceSet) -> torch.Tensor:
    """Reverse correspondence: a target patch gets a vote from a shot when its nearest neighbour among all of
    that shot's patches lies inside the shot's mask; it needs ceil(S/2) votes.

    Args:
        target_debiased: (N, C) debiased target features.
    Returns:
        (N,) bool.
    """
    votes = torch.zeros(target_debiased.shape[0], dtype=torch.int32, device=target_debiased.device)
    for shot in references.shots:
        nearest = nearest_neighbours(target_debiased, shot.features_debiased.to(target_debiased.device))
        votes += shot.mask.to(target_debiased.device)[nearest].int()
    return votes >= math.ceil(references.num_shots / 2)


def localise_candidates(target_debiased: torch.Tensor, references: ReferenceSet) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidates = forward AND backward.

    Returns:
        candidates (N,) bool, similarity (N,) float (cosine with the prototype).
    """
    similarity = target_debiased @ references.prototype.to(target_debiased.device)
    candidates = forward_candidates(similarity) & backward_candidates(target_debiased, references)
    return candidates, similarity
