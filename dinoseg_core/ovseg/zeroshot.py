"""Zero-shot dino.txt segmentation scores: dense patch-text cosine similarity plus an image-level prior.

dino.txt aligns the first half of a text feature with the vision head's CLS token and the second half with its
patch tokens. Per view (window or global view) and class k:

    local_k(x)  = cos(patch(x), t_k^patch) / T
    prior_k     = log_softmax_k(cos(cls, t_k^cls) / T)          # which classes the whole view shows
    logit_k(x)  = local_k(x) + prior_weight * prior_k

so a class the view as a whole does not support is pushed down everywhere in it. ``T`` and ``prior_weight`` are
:class:`~dinoseg_core.ovseg.config.OvsegConfig` fields (0.01 and 1.0, not tuned on real weights).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dinoseg_core.ovseg.dinotxt import ClassEmbeddings

__all__ = ["zero_shot_logits"]


def zero_shot_logits(cls: torch.Tensor, patches: torch.Tensor, classes: ClassEmbeddings, *, temperature: float,
                     prior_weight: float) -> torch.Tensor:
    """Zero-shot logits of one batch of views.

    Args:
        cls: (B, D) vision-head CLS tokens.
        patches: (B, D, h, w) vision-head patch tokens.
        classes: K class embeddings.
        temperature: softmax temperature T.
        prior_weight: weight of the CLS prior (0: patches only).

    Returns:
        float32 (B, K, h, w).
    """
    text_patch = classes.patch.to(patches.device, torch.float32)
    text_cls = classes.cls.to(cls.device, torch.float32)
    local = torch.einsum("bdhw,kd->bkhw", F.normalize(patches.float(), dim=1), text_patch) / temperature
    if prior_weight == 0:
        return local
    prior = torch.log_softmax(F.normalize(cls.float(), dim=1) @ text_cls.T / temperature, dim=1)
    return local + prior_weight * prior[:, :, None, None]
