"""Step 6 of INSID3: candidate localisation in the debiased space, forward and backward."""

from __future__ import annotations

import math

import torch

from dinoseg_core.prototype import ReferenceSet

#: Percentile used when no target patch has a positive cosine with the prototype.
FALLBACK_PERCENTILE = 0.90
#: Target patches per block of the chunked nearest-neighbour search (bounds memory to CHUNK x M floats).
CHUNK = 1024


def forward_candidates(similarity: torch.Tensor, threshold: float | None = None) -> torch.Tensor:
    """Patches whose similarity with the prototype is > ``threshold``; without a threshold, the paper's rule:
    > 0, or if none, those at or above the 90th percentile.

    Args:
        similarity: (N,) cosine of each debiased target patch with the prototype (or a fused similarity).
        threshold: a threshold set from outside the image (a scene's, :func:`dinoseg_core.geo.scene_threshold`).
    Returns:
        (N,) bool.
    """
    if threshold is not None:
        return similarity > threshold
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


def localise_candidates(
    target_debiased: torch.Tensor,
    references: ReferenceSet,
    prior: torch.Tensor | None = None,
    prior_weight: float = 0.5,
    threshold: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Candidates = forward AND backward.

    The forward test runs on the similarity ``s``: the cosine of each debiased target patch with the prototype,
    or, with a ``prior``, ``s = (1 - prior_weight) * cosine + prior_weight * prior``. The backward test always
    stays local.

    Args:
        target_debiased: (N, C) debiased target features.
        prior: (N,) similarity known from outside the target (e.g. a whole-scene pass), same dtype and device.
        prior_weight: its weight in [0, 1].
        threshold: forward test ``s > threshold``; None: the paper's rule (:func:`forward_candidates`).
    Returns:
        candidates (N,) bool, similarity ``s`` (N,) float.
    """
    similarity = target_debiased @ references.prototype.to(target_debiased.device)
    if prior is not None:
        similarity = (1.0 - prior_weight) * similarity + prior_weight * prior
    candidates = forward_candidates(similarity, threshold) & backward_candidates(target_debiased, references)
    return candidates, similarity
