"""MoCo, BYOL and Barlow Twins losses against independent float64 numpy versions on fixed inputs,
plus a property each (invariance or the loss falling under optimisation)."""

import numpy as np
import pytest
import torch
from sslstudy.errors import UserError
from sslstudy.methods.barlow import barlow_twins_loss
from sslstudy.methods.base import Queue, cosine_momentum, ema_update, shuffled_forward
from sslstudy.methods.byol import byol_loss
from sslstudy.methods.moco import info_nce


def unit(a):
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


@pytest.fixture()
def rng():
    return np.random.default_rng(0)


def test_info_nce_matches_numpy(rng):
    n, d, k, t = 6, 5, 7, 0.2
    q, key, queue = unit(rng.normal(size=(n, d))), unit(rng.normal(size=(n, d))), unit(rng.normal(size=(k, d)))
    expected = 0.0
    for i in range(n):  # -log softmax of the positive among [positive, negatives], one query at a time
        scores = np.array([q[i] @ key[i]] + [q[i] @ queue[j] for j in range(k)]) / t
        expected += np.log(np.exp(scores).sum()) - scores[0]
    got = info_nce(*(torch.tensor(a, dtype=torch.float32) for a in (q, key, queue.T)), t)
    assert got.item() == pytest.approx(expected / n, rel=1e-5)


def test_byol_loss_matches_numpy(rng):
    p1, p2, z1, z2 = (rng.normal(size=(5, 4)) for _ in range(4))
    expected = np.mean(np.sum((unit(p1) - unit(z2)) ** 2, 1) + np.sum((unit(p2) - unit(z1)) ** 2, 1))
    got = byol_loss(*(torch.tensor(a, dtype=torch.float32) for a in (p1, p2, z1, z2)))
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_byol_gradient_stops_at_the_targets(rng):
    p1, p2, z1, z2 = (torch.tensor(rng.normal(size=(5, 4)), requires_grad=True) for _ in range(4))
    byol_loss(p1, p2, z1, z2).backward()
    assert z1.grad is None and z2.grad is None and p1.grad.abs().sum() > 0


def test_barlow_twins_matches_numpy(rng):
    n, d, lam = 16, 6, 0.0051
    z1, z2 = rng.normal(size=(n, d)) * 3 + 1, rng.normal(size=(n, d))
    s1 = (z1 - z1.mean(0)) / np.sqrt(z1.var(0) + 1e-5)
    s2 = (z2 - z2.mean(0)) / np.sqrt(z2.var(0) + 1e-5)
    c = np.einsum("ni,nj->ij", s1, s2) / n
    expected = sum((1 - c[i, i]) ** 2 for i in range(d)) + lam * sum(
        c[i, j] ** 2 for i in range(d) for j in range(d) if i != j
    )
    got = barlow_twins_loss(torch.tensor(z1, dtype=torch.float32), torch.tensor(z2, dtype=torch.float32), lam)
    assert got.item() == pytest.approx(expected, rel=1e-4)


def test_barlow_twins_ignores_batch_order_and_scale(rng):
    z1, z2 = torch.tensor(rng.normal(size=(32, 8))), torch.tensor(rng.normal(size=(32, 8)))
    perm = torch.randperm(32, generator=torch.Generator().manual_seed(0))
    a = barlow_twins_loss(z1, z2, 0.01)
    assert barlow_twins_loss(z1[perm], z2[perm], 0.01).item() == pytest.approx(a.item(), rel=1e-6)
    assert barlow_twins_loss(5 * z1 + 2, z2, 0.01).item() == pytest.approx(a.item(), rel=1e-4)


def test_queue_is_a_ring_buffer_and_checks_its_length():
    q = Queue(dim=3, length=8, global_batch=4, what="methods.moco.queue")
    assert torch.allclose(q.keys.norm(dim=0), torch.ones(8))
    for i in range(3):
        q.push(torch.full((4, 3), float(i)))
    assert torch.equal(q.keys[:, :4], torch.full((3, 4), 2.0)) and torch.equal(q.keys[:, 4:], torch.full((3, 4), 1.0))
    assert int(q.ptr) == 4
    with pytest.raises(
        UserError, match="methods.moco.queue: queue length 10 is not a multiple of the global batch 4; set it to 8"
    ):
        Queue(dim=3, length=10, global_batch=4, what="methods.moco.queue")


def test_ema_and_cosine_momentum():
    online, target = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    before = target.weight.detach().clone()
    ema_update(target, online, 0.9)
    assert torch.allclose(target.weight, 0.9 * before + 0.1 * online.weight)
    assert cosine_momentum(0.99, 0, 100) == pytest.approx(0.99)
    assert cosine_momentum(0.99, 50, 100) == pytest.approx(0.995)
    assert cosine_momentum(0.99, 100, 100) == pytest.approx(1.0)


def test_shuffled_forward_returns_rows_in_input_order_with_bn_over_groups():
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm1d(3).train()
    x = torch.randn(8, 3)
    g = torch.Generator().manual_seed(1)
    out = shuffled_forward(lambda t: t * 2, x, groups=2, gen=g)
    assert torch.equal(out, x * 2)  # without BN: same rows, same order
    out = shuffled_forward(bn, x, groups=2, gen=torch.Generator().manual_seed(1))
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(1))
    by_hand = torch.empty_like(x)
    for chunk in perm.chunk(2):  # each half of the shuffled batch is normalised on its own
        xc = x[chunk]
        by_hand[chunk] = (xc - xc.mean(0)) / torch.sqrt(xc.var(0, unbiased=False) + 1e-5)
    assert torch.allclose(out, by_hand, atol=1e-5)
