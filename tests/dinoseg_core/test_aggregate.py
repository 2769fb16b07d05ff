"""Seed selection and aggregation (step 8) on constructed clusters."""

import numpy as np
import torch
import torch.nn.functional as F

from dinoseg_core.aggregate import aggregate, score_clusters


def unit(rows):
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=1)


def test_seed_is_the_matched_cluster_nearest_the_prototype_and_parts_are_merged():
    prototype = unit([[1.0, 0.0, 0.0]])[0]
    # clusters: 0 = the object (close to p); 1 = another part of the object (less close, partly candidate);
    # 2 = background (candidate-free); 3 = a cluster with one stray candidate but unlike the seed
    labels = np.array([0, 0, 1, 1, 1, 1, 2, 2, 3, 3])
    features = unit([[1, 0, 0], [1, 0, 0], [1, .3, 0], [1, .3, 0], [1, .3, 0], [1, .3, 0], [0, 1, 0], [0, 1, 0],
                     [.2, 0, 1], [.2, 0, 1]])
    debiased = features.clone()
    candidates = torch.tensor([True, True, True, True, False, False, False, False, True, False])
    scores = score_clusters(labels, candidates, features, debiased, prototype)
    assert scores.seed == 0
    assert scores.area.tolist() == [1.0, 0.5, 0.0, 0.5]
    mask = aggregate(labels, scores, merge_threshold=0.2)
    assert mask.tolist() == [True] * 6 + [False] * 4
    # a stricter alpha keeps only the seed
    assert aggregate(labels, scores, merge_threshold=0.6).tolist() == [True] * 2 + [False] * 8


def test_no_candidate_means_an_empty_prediction():
    labels = np.array([0, 1])
    feats = unit([[1, 0], [0, 1]])
    scores = score_clusters(labels, torch.tensor([False, False]), feats, feats, feats[0])
    assert scores.seed == -1
    assert not aggregate(labels, scores, 0.2).any()


def test_cross_term_is_the_cluster_mean_of_the_given_similarity():
    labels = np.array([0, 0, 1, 2, 2, 2])
    feats = unit([[1, 0], [1, .1], [0, 1], [1, 1], [1, .9], [.9, 1]])
    similarity = torch.tensor([0.9, 0.5, -0.3, 0.2, 0.4, 0.0])
    candidates = torch.tensor([True, False, False, False, False, False])
    scores = score_clusters(labels, candidates, feats, feats, feats[0], similarity)
    torch.testing.assert_close(scores.cross, torch.tensor([0.7, -0.3, 0.2]))
    # by default, the paper's: the cosine of the debiased features with the prototype
    default = score_clusters(labels, candidates, feats, feats, feats[0])
    expected = [float((feats[labels == k] @ feats[0]).mean()) for k in range(3)]
    torch.testing.assert_close(default.cross, torch.tensor(expected))


def test_min_cross_drops_clusters_on_the_background_side_of_a_scene_threshold():
    prototype = unit([[1.0, 0.0, 0.0]])[0]
    labels = np.array([0, 0, 1, 1, 1, 1, 2, 2, 3, 3])
    features = unit([[1, 0, 0], [1, 0, 0], [1, .3, 0], [1, .3, 0], [1, .3, 0], [1, .3, 0], [0, 1, 0], [0, 1, 0],
                     [.2, 0, 1], [.2, 0, 1]])
    candidates = torch.tensor([True, True, True, True, False, False, False, False, True, False])
    scores = score_clusters(labels, candidates, features, features.clone(), prototype)
    paper = aggregate(labels, scores, merge_threshold=0.2)
    assert aggregate(labels, scores, 0.2, min_cross=None).equal(paper)
    assert aggregate(labels, scores, 0.2, min_cross=-1.0).equal(paper)  # below every cross term: no change
    # cluster 1's cross term (cos 0.958) falls below the threshold, the seed's (1.0) does not
    assert aggregate(labels, scores, 0.2, min_cross=0.99).tolist() == [True] * 2 + [False] * 8
    # a window without the concept: even the seed is on the background side, so nothing is kept
    assert not aggregate(labels, scores, 0.2, min_cross=1.0).any()
