"""Step 7 of INSID3: fine-grained agglomerative clustering of the target's (original, not debiased) features.

Two exact implementations of the same average-linkage cut, chosen with ``backend``:

- ``"scipy"``: SciPy's NN-chain linkage on the CPU (the reference: scikit-learn's estimator gives the same labels).
- ``"torch"``: reciprocal-nearest-neighbour rounds (RAC) on dense (N, N) float64 tensors on the features' device.
  Average linkage is reducible (merging A and B never brings the pair closer to a third cluster than the nearer
  of the two), so merging every reciprocal-nearest-neighbour pair at once builds the same dendrogram as merging
  one closest pair at a time, and stopping when no such pair is closer than 1 - tau gives the same cut.
- ``"auto"``: ``"torch"`` on CUDA, ``"scipy"`` elsewhere (on the CPU SciPy is faster: ``bench/cluster.py``).

Both number the clusters 0..K-1 in order of first appearance, so equal partitions give equal label arrays and
the masks built from them are identical whichever backend ran.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from scipy.cluster.hierarchy import fcluster, linkage

from dinoseg_core.errors import InputError

__all__ = ["CLUSTER_BACKENDS", "ClusterBackend", "agglomerative_clusters", "resolve_cluster_backend",
           "torch_average_linkage"]

ClusterBackend = Literal["scipy", "torch", "auto"]
CLUSTER_BACKENDS: tuple[str, ...] = ("scipy", "torch", "auto")


def resolve_cluster_backend(backend: str, device: torch.device | str) -> str:
    """``"scipy"`` or ``"torch"``: what ``backend`` means for features on ``device``.

    Raises:
        InputError: ``backend`` is not one of :data:`CLUSTER_BACKENDS`.
    """
    if backend not in CLUSTER_BACKENDS:
        raise InputError(f"cluster backend {backend!r} is not known; use one of {', '.join(CLUSTER_BACKENDS)} "
                         "(auto: torch on CUDA, scipy on the CPU).")
    if backend == "auto":
        return "torch" if torch.device(device).type == "cuda" else "scipy"
    return backend


def agglomerative_clusters(features: torch.Tensor, tau: float, backend: ClusterBackend = "auto") -> np.ndarray:
    """Average-linkage clustering on cosine distance 1 - x_i.x_j, cut at distance 1 - tau.

    Same labels as scikit-learn's ``AgglomerativeClustering(metric="precomputed", linkage="average",
    distance_threshold=1 - tau, n_clusters=None)``, which merges while the linkage distance is strictly below
    the threshold. Distances are float64 ``(1 - x @ x.T).clamp(0, 2)`` on either backend.

    Ties: exact ties between candidate merges (the same distance to the last bit) are broken differently by the
    two backends (SciPy's NN-chain prefers the chain's previous element, the torch rounds the lowest index), and a
    linkage distance within rounding (~1e-15) of 1 - tau may fall on either side because the two evaluate the
    Lance-Williams averages in a different order. Either way both results are exact average-linkage cuts; with
    real-valued features neither case occurs in practice (``tests/dinoseg_core/test_cluster.py``).

    Args:
        features: (N, C) unit vectors, on any device.
        tau: similarity threshold in (0, 1].
        backend: ``"scipy"``, ``"torch"`` or ``"auto"`` (torch on CUDA, scipy elsewhere).
    Returns:
        int64 labels (N,) numbered 0..K-1 in order of first appearance (a NumPy array on the host).
    Raises:
        InputError: unknown ``backend``, or features that are not a finite (N, C) tensor.
    """
    resolved = resolve_cluster_backend(backend, features.device)
    if features.ndim != 2 or features.shape[0] == 0:
        raise InputError(f"features to cluster must be a non-empty (N, C) tensor, got shape {tuple(features.shape)}; "
                         "flatten a (C, h, w) grid with dinoseg_core.features.flatten_grid first.")
    if features.shape[0] == 1:
        return np.zeros(1, dtype=np.int64)
    if resolved == "torch":
        return torch_average_linkage(features, tau).cpu().numpy()
    return _scipy_average_linkage(features, tau)


def _scipy_average_linkage(features: torch.Tensor, tau: float) -> np.ndarray:
    count = features.shape[0]
    x = features.detach().to("cpu", torch.float64)
    distances = (1.0 - x @ x.T).clamp_(0.0, 2.0).numpy()
    # the condensed upper triangle; row slices are ~3x faster than scipy's squareform at N = 4096
    condensed = np.concatenate([distances[i, i + 1 :] for i in range(count - 1)])
    del distances
    if not np.isfinite(condensed).all():
        raise InputError("features to cluster contain NaN or infinite values; check the backbone's output "
                         "(e.g. float16 overflow) before clustering.")
    tree = linkage(condensed, method="average")
    # fcluster keeps merges at distance <= t; scikit-learn's cut keeps < threshold: step just below it.
    threshold = np.nextafter(1.0 - tau, -np.inf)
    labels = fcluster(tree, t=threshold, criterion="distance")
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))
    return order[inverse].astype(np.int64)


def torch_average_linkage(features: torch.Tensor, tau: float, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The average-linkage cut by reciprocal-nearest-neighbour rounds, on the features' device.

    Each round: every active cluster's nearest neighbour (row minimum; among equal distances the lowest index),
    then every reciprocal pair closer than 1 - tau merges at once, the lower index surviving, with the
    Lance-Williams update ``d(A+B, K) = (|A| d(A, K) + |B| d(B, K)) / (|A| + |B|)`` (SciPy's). The globally
    closest pair is always reciprocal, so each round merges at least one pair until none is closer than 1 - tau.
    When half the rows are dead the matrix is compacted, so the rounds' cost falls with the cluster count.

    float64 by default: the distances then agree with the SciPy path's to ~1e-16, so the partitions are equal
    whenever no merge is within rounding of the threshold or of a tie. float32 (half the memory and traffic)
    moves distances by ~1e-7, enough to flip a near-threshold merge now and then (``bench/cluster.py`` counts
    the disagreements); data-centre GPUs run float64 at half the float32 rate, and the rounds are memory-bound.
    MPS has no float64: there the work runs on the CPU.

    Memory: one (N, N) matrix of ``dtype`` (134 MB at N = 4096 in float64), plus at most 5/8 of one for a
    round's merged rows and column copy, or 3/4 of one while the matrix is compacted.

    Args:
        features: (N, C) unit vectors.
        tau: similarity threshold in (0, 1].
        dtype: float64 (exact, default) or float32.
    Returns:
        int64 labels (N,) on the features' device (the CPU for MPS), 0..K-1 in order of first appearance.
    Raises:
        InputError: non-finite features.
    """
    device = features.device if features.device.type != "mps" else torch.device("cpu")
    count = features.shape[0]
    x = features.detach().to(device=device, dtype=dtype)
    if not bool(torch.isfinite(x).all()):
        raise InputError("features to cluster contain NaN or infinite values; check the backbone's output "
                         "(e.g. float16 overflow) before clustering.")
    # the same float64 arithmetic as the SciPy path: 1 - g is exactly (-g) + 1
    distances = x @ x.T
    del x
    distances.neg_().add_(1.0).clamp_(0.0, 2.0)
    distances.fill_diagonal_(float("inf"))
    cut = 1.0 - tau
    inf = float("inf")

    ids = torch.arange(count, device=device)  # row -> the point index that names its cluster (its smallest)
    sizes = torch.ones(count, device=device, dtype=dtype)
    parent = torch.arange(count, device=device)  # point index -> point index of the cluster it merged into
    rows = count  # rows of the current matrix, dead ones included
    alive = count
    # Each row's nearest neighbour is cached and only recomputed where a merge touched it, with the same
    # answer as a fresh row minimum (lowest index among equal distances).
    nearest_distance, nearest = distances.min(dim=1)
    while alive > 1:
        index = torch.arange(rows, device=device)
        reciprocal = (nearest[nearest] == index) & (index < nearest) & (nearest_distance < cut)
        left = index[reciprocal]  # ascending
        pairs = left.numel()
        if pairs == 0:
            break
        right = nearest[left]
        n_left, n_right = sizes[left], sizes[right]
        n_total = n_left + n_right
        merged = (distances[left] * n_left[:, None] + distances[right] * n_right[:, None]) / n_total[:, None]
        # merged-merged distances: the second Lance-Williams step, taken from the upper triangle for symmetry
        block = (merged[:, left] * n_left[None, :] + merged[:, right] * n_right[None, :]) / n_total[None, :]
        upper = torch.ones(pairs, pairs, dtype=torch.bool, device=device).triu_(1)
        block = torch.where(upper, block, block.T)
        block.fill_diagonal_(inf)
        merged[:, left] = block
        merged[:, right] = inf
        distances.index_copy_(0, left, merged)
        # columns from a contiguous (rows, chunk) source (a transposed view is ~4x slower on the CPU), a chunk
        # at a time so that the copy stays under an eighth of the matrix
        chunk = max(1, rows // 8)
        for part in range(0, pairs, chunk):
            distances.index_copy_(1, left[part : part + chunk], merged[part : part + chunk].T.contiguous())
        distances.index_fill_(1, right, inf)  # dead rows are never read again: only their columns are cleared
        sizes[left] = n_total
        sizes[right] = 0
        parent[ids[right]] = ids[left]
        alive -= pairs

        # nearest neighbours: rows whose neighbour merged (or that merged) start afresh; for the others only the
        # merged columns changed, so the cached minimum competes with the minimum over those columns
        touched = torch.zeros(rows, dtype=torch.bool, device=device)
        touched[left] = True
        touched[right] = True
        stale = touched[nearest]
        stale[left] = True
        stale &= sizes > 0  # dead rows keep stale values: they must never look close to anything
        column_distance, column = merged.min(dim=0)
        column = left[column]
        better = (column_distance < nearest_distance) | ((column_distance == nearest_distance) & (column < nearest))
        nearest_distance = torch.where(better, column_distance, nearest_distance)
        nearest = torch.where(better, column, nearest)
        del merged, block
        fresh = torch.nonzero(stale).squeeze(1)
        if 4 * fresh.numel() > rows:  # gathering a quarter of the rows costs about as much as reading them all
            every_distance, every_nearest = distances.min(dim=1)
            nearest_distance = torch.where(stale, every_distance, nearest_distance)
            nearest = torch.where(stale, every_nearest, nearest)
        elif fresh.numel():
            fresh_distance, fresh_nearest = distances.index_select(0, fresh).min(dim=1)
            nearest_distance[fresh] = fresh_distance
            nearest[fresh] = fresh_nearest
        nearest_distance.masked_fill_(sizes == 0, inf)

        if alive <= rows // 2 and rows > 64:
            keep = torch.nonzero(sizes > 0).squeeze(1)
            renumber = torch.cumsum(sizes > 0, dim=0) - 1
            distances = distances.index_select(0, keep).index_select(1, keep)
            ids, sizes, rows = ids[keep], sizes[keep], keep.numel()
            nearest_distance, nearest = nearest_distance[keep], renumber[nearest[keep]]

    # a cluster's name is its smallest point index, so the roots in ascending order are the clusters in order
    # of first appearance
    while True:
        grand = parent[parent]
        if torch.equal(grand, parent):
            break
        parent = grand
    roots = torch.unique(parent)
    return torch.searchsorted(roots, parent)
