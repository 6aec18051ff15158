"""NT-Xent checked against an independent numpy implementation, plus its invariances."""

import numpy as np
import pytest
import torch
from sslstudy.methods.simclr import nt_xent


def nt_xent_reference(z1: np.ndarray, z2: np.ndarray, t: float) -> float:
    """Written from the paper's definition: l(i,j) = -log exp(s_ij/t) / sum_{k != i} exp(s_ik/t),
    summed over all 2N ordered positive pairs and divided by 2N; float64, explicit loops."""
    views = [v / np.sqrt((v * v).sum()) for v in np.concatenate([z1, z2]).astype(np.float64)]
    n = len(z1)
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        denom = sum(np.exp(views[i] @ views[k] / t) for k in range(2 * n) if k != i)
        total += -np.log(np.exp(views[i] @ views[j] / t) / denom)
    return total / (2 * n)


@pytest.mark.parametrize("n,d,t", [(4, 3, 0.5), (16, 8, 0.1), (7, 32, 0.2)])
def test_nt_xent_matches_reference(n, d, t):
    rng = np.random.default_rng(n * 100 + d)
    z1, z2 = rng.normal(size=(n, d)).astype(np.float32), rng.normal(size=(n, d)).astype(np.float32)
    got = nt_xent(torch.from_numpy(z1), torch.from_numpy(z2), t).item()
    assert got == pytest.approx(nt_xent_reference(z1, z2, t), rel=1e-5)


def test_nt_xent_hand_value():
    # Two images, orthogonal unit vectors, positives identical: s_pos = 1, negatives 0.
    # Each anchor: -log(e^{1/t} / (e^{1/t} + 2 e^0)); t = 1 -> -log(e / (e + 2)).
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert nt_xent(z1, z1.clone(), 1.0).item() == pytest.approx(-np.log(np.e / (np.e + 2)), rel=1e-6)


def test_nt_xent_invariances():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(10, 6, generator=g), torch.randn(10, 6, generator=g)
    base = nt_xent(z1, z2, 0.2)
    perm = torch.randperm(10, generator=g)
    assert torch.allclose(nt_xent(z1[perm], z2[perm], 0.2), base, atol=1e-6)  # batch order
    assert torch.allclose(nt_xent(z2, z1, 0.2), base, atol=1e-6)  # view order
    assert torch.allclose(nt_xent(3 * z1, 0.5 * z2, 0.2), base, atol=1e-6)  # scale (cosine)
    # aligned views give a lower loss than random ones
    assert nt_xent(z1, z1 + 0.01 * z2, 0.2) < base


def test_nt_xent_decreases_under_optimisation():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 8, generator=g)
    w = torch.nn.Linear(8, 8)
    opt = torch.optim.SGD(w.parameters(), lr=0.5)
    noise = lambda: x + 0.3 * torch.randn(x.shape, generator=g)  # noqa: E731
    first = None
    for _ in range(50):
        loss = nt_xent(w(noise()), w(noise()), 0.2)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.8 * first
