"""Step 8 of INSID3: seed-cluster selection and aggregation of the clusters that belong to the concept."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class ClusterScores:
    """Per-cluster terms of the merge score (K,) each; ``seed`` is -1 when no cluster was matched."""

    cross: torch.Tensor
    intra: torch.Tensor
    area: torch.Tensor
    seed: int

    @property
    def score(self) -> torch.Tensor:
        return self.cross * self.intra * self.area


def _cluster_means(values: torch.Tensor, labels: torch.Tensor, num_clusters: int) -> torch.Tensor:
    """Mean of ``values`` (N, D) per cluster -> (K, D)."""
    sums = torch.zeros(num_clusters, values.shape[1], dtype=values.dtype, device=values.device)
    sums.index_add_(0, labels, values)
    counts = torch.bincount(labels, minlength=num_clusters).clamp_min(1).to(values.dtype)
    return sums / counts[:, None]


def score_clusters(
    labels: np.ndarray | torch.Tensor,
    candidates: torch.Tensor,
    features: torch.Tensor,
    features_debiased: torch.Tensor,
    prototype: torch.Tensor,
    similarity: torch.Tensor | None = None,
) -> ClusterScores:
    """Seed selection and the cross / intra / area terms for every cluster.

    Args:
        labels: (N,) cluster index of each target patch, 0..K-1.
        candidates: (N,) bool candidate patches.
        features: (N, C) original unit features (intra-image similarity keeps position).
        features_debiased: (N, C) debiased unit features.
        prototype: (C,) unit prototype.
        similarity: (N,) the similarity whose mean over a cluster is its cross term; default the paper's,
            ``features_debiased @ prototype`` (a fused similarity from step 6 with a scene prior otherwise).
    """
    labels = torch.as_tensor(labels, device=features.device).long()
    num_clusters = int(labels.max()) + 1
    sizes = torch.bincount(labels, minlength=num_clusters).float()
    hits = torch.bincount(labels[candidates], minlength=num_clusters).float()
    matched = hits > 0
    if similarity is None:
        similarity = features_debiased @ prototype
    cross = _cluster_means(similarity[:, None], labels, num_clusters)[:, 0]
    if not matched.any():
        zeros = torch.zeros(num_clusters, device=features.device)
        return ClusterScores(cross=cross, intra=zeros, area=zeros, seed=-1)
    debiased_means = F.normalize(_cluster_means(features_debiased, labels, num_clusters), dim=1)
    seed_affinity = (debiased_means @ prototype).masked_fill(~matched, -float("inf"))
    seed = int(seed_affinity.argmax())
    original_means = F.normalize(_cluster_means(features, labels, num_clusters), dim=1)
    intra = original_means @ original_means[seed]
    area = hits / sizes
    area[seed] = 1.0
    return ClusterScores(cross=cross, intra=intra, area=area, seed=seed)


def aggregate(
    labels: np.ndarray | torch.Tensor,
    scores: ClusterScores,
    merge_threshold: float,
    min_cross: float | None = None,
) -> torch.Tensor:
    """The keep rule: the union of the clusters with ``cross * intra * area > merge_threshold`` (alpha) and,
    when ``min_cross`` is given, ``cross > min_cross`` too.

    ``min_cross`` is a scene's similarity threshold: a cluster whose mean similarity falls on the background side
    of the scene's split is background, however well it matches within its window (the seed always has
    ``intra = area = 1``, so in a window without the concept its best-matching background cluster would
    otherwise survive on ``cross > alpha`` alone).

    Returns:
        (N,) bool, all False without a seed.
    """
    labels = torch.as_tensor(labels, device=scores.cross.device).long()
    if scores.seed < 0:
        return torch.zeros(labels.shape[0], dtype=torch.bool, device=labels.device)
    keep = scores.score > merge_threshold
    if min_cross is not None:
        keep &= scores.cross > min_cross
    return keep[labels]
