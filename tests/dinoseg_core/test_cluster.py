"""Average-linkage clustering (step 7) recovers planted clusters and agrees with scikit-learn."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.cluster import AgglomerativeClustering

from dinoseg_core.cluster import agglomerative_clusters


def same_partition(a, b):
    pairs = {(x, y) for x, y in zip(a, b)}
    return len(pairs) == len(set(a)) == len(set(b))


def test_planted_clusters_are_recovered():
    g = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(5, 32, generator=g), dim=1)
    truth = torch.randint(0, 5, (400,), generator=g)
    feats = F.normalize(centres[truth] + 0.05 * torch.randn(400, 32, generator=g), dim=1)
    labels = agglomerative_clusters(feats, tau=0.6)
    assert same_partition(labels.tolist(), truth.tolist())
    assert labels.min() == 0 and labels[0] == 0  # numbered in order of first appearance


@pytest.mark.parametrize("tau", [0.3, 0.6, 0.8])
def test_labels_agree_with_scikit_learn(tau):
    g = torch.Generator().manual_seed(1)
    feats = F.normalize(torch.randn(300, 16, generator=g) + torch.randn(1, 16, generator=g), dim=1)
    ours = agglomerative_clusters(feats, tau)
    distances = np.clip(1.0 - (feats.double() @ feats.double().T).numpy(), 0, 2)
    sk = AgglomerativeClustering(
        n_clusters=None, metric="precomputed", linkage="average", distance_threshold=1 - tau
    ).fit_predict(distances)
    assert same_partition(ours.tolist(), sk.tolist())


def test_single_patch():
    assert agglomerative_clusters(torch.ones(1, 4) / 2, 0.6).tolist() == [0]
