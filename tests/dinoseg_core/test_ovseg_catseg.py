"""The CAT-Seg-style dinov3.seg head (SegHeadConfig(kind="catseg")): shapes, class-permutation equivariance and the
shifted-window attention against plain masked attention (its checkpoints: test_ovseg_model.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dinoseg_core.errors import InputError
from dinoseg_core.ovseg.model import CatSegHead, SegHead, _WindowBlock, build_head
from tests.ovseg_factory import TINY_HEAD

CATSEG = TINY_HEAD.replace(kind="catseg", attention_window=4, guidance_dim=8)


def test_catseg_head_shapes_and_class_equivariance():
    torch.manual_seed(0)
    head = build_head(CATSEG).eval()
    assert isinstance(head, CatSegHead) and head.kind == "catseg" and head.upsampling == 4
    cls, patches = torch.randn(2, 64), torch.randn(2, 64, 7, 10)  # 7 x 10 patches: padded and shifted windows
    text = F.normalize(torch.randn(2, 5, 64), dim=-1)
    out = head(cls, patches, text[0], text[1])
    assert out.shape == (2, 5, 28, 40)
    perm = torch.tensor([3, 1, 4, 0, 2])
    torch.testing.assert_close(head(cls, patches, text[0][perm], text[1][perm]), out[:, perm], rtol=1e-4, atol=1e-5)
    assert head(cls, patches, text[0][:1], text[1][:1]).shape == (2, 1, 28, 40)  # any number of classes
    out.sum().backward()  # every parameter takes part
    assert all(p.grad is not None for p in head.parameters())
    with pytest.raises(InputError, match="features of width 64"):
        head(cls, torch.randn(2, 32, 7, 10), text[0], text[1])
    with pytest.raises(InputError, match="kind='small'"):
        SegHead(CATSEG)


@pytest.mark.parametrize("shift", [False, True])
def test_window_attention_is_attention_within_windows_that_never_wrap(shift):
    """Each token attends to exactly the real tokens of its window on the grid, the shifted windows offset by half
    a window and cut at the edges (Swin's regions), checked against attention over the whole grid with that mask."""
    torch.manual_seed(1)
    block = _WindowBlock(dim=8, guide=4, heads=2, window=4, shift=shift)
    h, w = 7, 10
    x, guide = torch.randn(2, 3, h, w, 8), torch.randn(2, h, w, 4)
    rows, cols = torch.arange(h), torch.arange(w)
    offset = 2 if shift else 0
    group = ((rows[:, None] + 4 - offset) // 4 * 100 + (cols[None, :] + 4 - offset) // 4).reshape(-1)
    mask = (group[:, None] == group[None, :])[None, None, None]
    y = block.attn(block.norm1(x).reshape(2, 3, 1, h * w, 8),
                   block.guide_norm(guide).reshape(2, 1, 1, h * w, 4).expand(2, 3, 1, h * w, 4), mask)
    reference = x + y.reshape(2, 3, h, w, 8)
    reference = reference + block.mlp(block.norm2(reference))
    torch.testing.assert_close(block(x, guide), reference, rtol=1e-4, atol=1e-5)
