"""A planted positional signal is removed by the basis of a content-free input (steps 3-4)."""

import torch
import torch.nn.functional as F

from dinoseg_core.basis import BasisKey, PositionalBasis, basis_from_features
from dinoseg_core.debias import debias


def planted(seed=0, channels=64, grid=(12, 12), rank=6):
    g = torch.Generator().manual_seed(seed)
    directions = torch.linalg.qr(torch.randn(channels, rank, generator=g))[0]  # positional subspace (C, r)
    # a smooth code of the patch position (low-frequency sinusoids of row and column), as a ViT's RoPE leaves
    rows, cols = torch.meshgrid(torch.arange(grid[0]), torch.arange(grid[1]), indexing="ij")
    rows, cols = rows.flatten().float() / grid[0], cols.flatten().float() / grid[1]
    waves = [torch.sin(3 * rows), torch.cos(3 * rows), torch.sin(3 * cols), torch.cos(3 * cols), rows * cols, rows - cols]
    coefficients = 3.0 * torch.stack(waves[:rank])
    positional = directions @ coefficients  # (C, N)
    content = 0.03 * torch.randn(channels, 2, generator=g)  # two semantic classes, weaker than position
    return directions, positional, content


def test_basis_spans_the_planted_positional_subspace():
    directions, positional, _ = planted()
    content_free = F.normalize(positional, dim=0).view(64, 12, 12)
    basis = basis_from_features(content_free, k=6)
    assert basis.shape == (64, 6)
    assert torch.allclose(basis.T @ basis, torch.eye(6), atol=1e-5)
    # every planted direction lies in the span of the basis
    residual = directions - basis @ (basis.T @ directions)
    assert residual.norm() < 1e-3


def test_debiasing_makes_same_content_match_across_positions():
    _, positional, content = planted()
    basis = basis_from_features(F.normalize(positional, dim=0).view(64, 12, 12), k=6)
    # a checkerboard of two classes: every spatial neighbour shows the other class
    rows, cols = torch.meshgrid(torch.arange(12), torch.arange(12), indexing="ij")
    labels = ((rows + cols) % 2).flatten()
    raw = F.normalize((content[:, labels] + positional).T, dim=1)  # (N, C)
    clean = debias(raw, basis)

    def same_class_nn_rate(x):
        sim = x @ x.T
        sim.fill_diagonal_(-2)
        return (labels[sim.argmax(1)] == labels).float().mean().item()

    assert same_class_nn_rate(raw) < 0.5  # position dominates before debiasing
    assert same_class_nn_rate(clean) == 1.0
    assert torch.allclose(clean.norm(dim=1), torch.ones(144), atol=1e-5)


def test_basis_round_trips_through_safetensors_bytes():
    basis = PositionalBasis(BasisKey("abc", 32, 32, "black", 4), torch.randn(16, 4))
    again = PositionalBasis.from_bytes(basis.to_bytes())
    assert again.key == basis.key and torch.equal(again.vectors, basis.vectors)


def test_loading_a_non_basis_file_names_it():
    import pytest

    from dinoseg_core.errors import InputError

    with pytest.raises(InputError, match="notes.txt"):
        PositionalBasis.from_bytes(b"hello world, not safetensors", name="notes.txt")
