"""Step 7 of INSID3: fine-grained agglomerative clustering of the target's (original, not debiased) features."""

from __future__ import annotations

import numpy as np
import torch
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform


def agglomerative_clusters(features: torch.Tensor, tau: float) -> np.ndarray:
    """Average-linkage clustering on cosine distance 1 - x_i.x_j, cut at distance 1 - tau.

    Same labels as scikit-learn's ``AgglomerativeClustering(metric="precomputed", linkage="average",
    distance_threshold=1 - tau, n_clusters=None)``, which merges while the linkage distance is strictly below
    the threshold; we call SciPy's linkage directly on the condensed matrix and skip the estimator's overhead
    (see ``bench/cluster.py``).

    Args:
        features: (N, C) unit vectors.
        tau: similarity threshold in (0, 1].
    Returns:
        int64 labels (N,) numbered 0..K-1 in order of first appearance.
    """
    count = features.shape[0]
    if count == 1:
        return np.zeros(1, dtype=np.int64)
    x = features.detach().to("cpu", torch.float64)
    distances = (1.0 - x @ x.T).clamp_(0.0, 2.0).numpy()
    np.fill_diagonal(distances, 0.0)
    condensed = squareform(distances, checks=False)
    del distances
    tree = linkage(condensed, method="average")
    # fcluster keeps merges at distance <= t; scikit-learn's cut keeps < threshold: step just below it.
    threshold = np.nextafter(1.0 - tau, -np.inf)
    labels = fcluster(tree, t=threshold, criterion="distance")
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))
    return order[inverse].astype(np.int64)
