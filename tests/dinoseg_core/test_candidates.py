"""Forward + backward candidate localisation (step 6)."""

import torch
import torch.nn.functional as F

from dinoseg_core.candidates import backward_candidates, forward_candidates, localise_candidates, nearest_neighbours
from dinoseg_core.prototype import ReferenceSet, ReferenceShot, compute_prototype


def unit(*vectors):
    return F.normalize(torch.tensor(vectors, dtype=torch.float32), dim=-1)


def make_refs(shots):
    shots = tuple(ReferenceShot(feats, mask, (1, len(mask))) for feats, mask in shots)
    return ReferenceSet(shots=shots, prototype=compute_prototype(shots))


def test_forward_falls_back_to_the_90th_percentile():
    similarity = -torch.linspace(1, 0.01, 20)
    chosen = forward_candidates(similarity)
    assert chosen.sum() == 2 and chosen[-1] and chosen[-2]
    assert forward_candidates(torch.tensor([0.5, -0.2])).tolist() == [True, False]


def test_backward_check_rejects_a_distractor_that_resembles_the_reference_background():
    # reference: object along e0, background along e1 (plus a component of e0, as real backgrounds share context)
    ref_feats = unit([1.0, 0.0, 0.0], [1.0, 0.0, 0.1], [0.5, 1.0, 0.0], [0.5, 1.0, 0.1])
    ref_mask = torch.tensor([True, True, False, False])
    refs = make_refs([(ref_feats, ref_mask)])
    # target: a true object patch, and a distractor with positive cosine to the prototype that is nearer the background
    target = unit([1.0, 0.05, 0.05], [0.6, 1.0, 0.05])
    similarity = target @ refs.prototype
    assert (similarity > 0).all()  # forward alone accepts both
    assert backward_candidates(target, refs).tolist() == [True, False]
    candidates, sim = localise_candidates(target, refs)
    assert candidates.tolist() == [True, False] and torch.allclose(sim, similarity)


def test_majority_vote_over_shots():
    obj, bg = unit([1.0, 0.0]), unit([0.0, 1.0])
    inside = (torch.cat([obj, bg]), torch.tensor([True, False]))
    outside = (torch.cat([obj, bg]), torch.tensor([False, False]))
    target = unit([1.0, 0.1])
    # the target patch's nearest neighbour is the object patch in every shot; it votes only where that is masked
    assert backward_candidates(target, make_refs([inside, inside, outside])).item()  # 2 of 3 >= ceil(3/2)
    assert not backward_candidates(target, make_refs([inside, outside, outside])).item()  # 1 of 3
    assert backward_candidates(target, make_refs([inside, outside])).item()  # 1 of 2 >= ceil(2/2)


def test_chunked_nearest_neighbours_equal_the_full_argmax():
    g = torch.Generator().manual_seed(0)
    q, k = F.normalize(torch.randn(333, 16, generator=g), dim=1), F.normalize(torch.randn(77, 16, generator=g), dim=1)
    assert torch.equal(nearest_neighbours(q, k, chunk=50), (q @ k.T).argmax(1))


def test_a_scene_threshold_replaces_the_paper_forward_rule():
    similarity = torch.tensor([0.6, 0.3, -0.1, 0.45])
    assert forward_candidates(similarity, threshold=0.4).tolist() == [True, False, False, True]
    # no patch above the scene's threshold: no candidate, and no 90th-percentile fallback
    assert not forward_candidates(similarity, threshold=0.9).any()


def test_a_prior_is_fused_into_the_forward_test_only():
    ref_feats = unit([1.0, 0.0, 0.0], [0.0, 1.0, 0.2])
    refs = make_refs([(ref_feats, torch.tensor([True, False]))])
    target = unit([1.0, 0.2, 0.0], [0.3, 1.0, 0.0], [1.0, 0.0, 0.1])
    local = target @ refs.prototype
    prior = torch.tensor([-1.0, 1.0, 0.0])
    candidates, fused = localise_candidates(target, refs, prior, prior_weight=0.5, threshold=0.2)
    torch.testing.assert_close(fused, 0.5 * local + 0.5 * prior)
    # patch 0 matches locally but the prior pulls it below the threshold; patch 1 passes the forward test on the
    # prior but the backward test (local) still rejects it, as its nearest reference patch is background
    assert fused[1] > 0.2 and candidates.tolist() == [False, False, True]
