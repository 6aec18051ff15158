"""sslstudy.health: RankMe against an independent numpy version, normalised std at its two ends, the
trivial losses against the project's own loss functions, and the collapse decision on histories."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sslstudy.health import collapse_check, effective_rank, embedding_health, normalized_std, trivial_loss
from sslstudy.methods.barlow import barlow_twins_loss
from sslstudy.methods.byol import byol_loss
from sslstudy.methods.moco import info_nce
from sslstudy.methods.simclr import nt_xent
from sslstudy.methods.swav import sinkhorn, swav_loss


def rankme_numpy(z: np.ndarray) -> float:
    s = np.linalg.svd(z.astype(np.float64), compute_uv=False)
    p = s / s.sum() + 1e-7
    return float(np.exp(-(p * np.log(p)).sum()))


def test_effective_rank():
    d = 32
    g = torch.Generator().manual_seed(0)
    iso = torch.cat([torch.eye(d), -torch.eye(d)])  # all singular values equal
    assert effective_rank(iso) == pytest.approx(d, rel=1e-4)
    assert effective_rank(iso) == pytest.approx(rankme_numpy(iso.numpy()), rel=1e-12)
    rank1 = torch.outer(torch.randn(200, generator=g), torch.randn(d, generator=g))
    assert effective_rank(rank1) == pytest.approx(1.0, abs=1e-3)
    assert effective_rank(torch.ones(100, d)) == pytest.approx(1.0, abs=1e-3)  # constant embeddings
    for r in (1, 3, 10):
        z = torch.randn(256, r, generator=g) @ torch.randn(r, d, generator=g)
        assert effective_rank(z) == pytest.approx(rankme_numpy(z.numpy()), rel=1e-6)
    assert 0.9 * d < effective_rank(torch.randn(4096, d, generator=g)) < d
    assert effective_rank(torch.zeros(10, d)) == 0.0


def test_normalized_std():
    d = 64
    assert normalized_std(torch.ones(50, d) * 3.0) == 0.0
    z = torch.randn(20000, d, generator=torch.Generator().manual_seed(0))
    assert normalized_std(z) == pytest.approx(1 / math.sqrt(d), rel=0.02)
    assert embedding_health(z)["dim"] == d
    # ReLU-like features sharing one large mean direction are as healthy as centred ones: only their
    # spread around the mean counts (uncentred, their normalised std would be about 1/10 of this)
    assert normalized_std(z.abs() + 5.0) == pytest.approx(normalized_std(z.abs()), rel=1e-6)
    assert normalized_std(z.abs() + 5.0) > 0.5 / math.sqrt(d)


def test_trivial_swav_is_the_swav_loss_at_collapse():
    n, dim, k, temp = 64, 16, 48, 0.1
    assign = [0, 1]
    uniform = [torch.zeros(n, k)] * 2  # scores equal over the prototypes
    codes = [sinkhorn(s, 0.05, 3) for s in uniform]
    assert float(swav_loss(uniform, codes, assign, temp)) == pytest.approx(trivial_loss("swav", prototypes=k), rel=1e-6)
    # equal embeddings, random prototypes: uniform codes, loss ln K + KL(uniform || softmax)
    g = torch.Generator().manual_seed(0)
    z = F.normalize(torch.randn(1, dim, generator=g), dim=1).expand(n, dim)
    w = F.normalize(torch.randn(k, dim, generator=g), dim=1)
    scores = [z @ w.T] * 2
    codes = [sinkhorn(s, 0.05, 3) for s in scores]
    assert torch.allclose(codes[0], torch.full((n, k), 1 / k))
    p = torch.softmax(scores[0][0].double() / temp, dim=0)
    kl = float((torch.log(torch.tensor(1 / k, dtype=torch.float64)) - p.log()).mean())
    assert float(swav_loss(scores, codes, assign, temp)) == pytest.approx(math.log(k) + kl, rel=1e-5)
    assert kl > 0


@pytest.mark.parametrize("temperature", [0.07, 0.5, 1.0])
def test_trivial_contrastive_losses(temperature):
    n, dim = 32, 8
    z = torch.randn(1, dim).expand(n, dim)
    assert float(nt_xent(z, z, temperature)) == pytest.approx(trivial_loss("simclr", batch=n), rel=1e-6)
    assert trivial_loss("simclr", batch=n) == pytest.approx(math.log(2 * n - 1))
    q = F.normalize(z, dim=1)
    queue = q[:1].T.expand(dim, 100)  # the queue full of collapsed keys
    assert float(info_nce(q, q, queue, temperature)) == pytest.approx(trivial_loss("moco", queue=100), rel=1e-6)


def test_trivial_byol_barlow_and_none():
    c = torch.randn(1, 8).expand(16, 8)
    assert trivial_loss("byol") == 0.0 and float(byol_loss(c, c, 2 * c, c)) == pytest.approx(0.0, abs=1e-6)
    assert float(barlow_twins_loss(c, c, 0.005)) == pytest.approx(trivial_loss("barlow", proj_dim=8), rel=1e-6)
    assert float(barlow_twins_loss(c, c, 0.5)) == pytest.approx(8.0, rel=1e-6)  # whatever lambd
    # deepcluster: the best constant classifier against balanced pseudo-labels predicts uniformly
    labels = torch.arange(10).repeat(7)
    assert float(F.cross_entropy(torch.zeros(70, 10), labels)) == pytest.approx(trivial_loss("deepcluster", k=10))
    assert trivial_loss("pcl") is None
    with pytest.raises(TypeError, match="prototypes="):
        trivial_loss("swav")


def _history(losses, ranks, dim=64):
    return [
        dict(epoch=i + 1, loss=loss, **({} if r is None else dict(effective_rank=r, dim=dim)))
        for i, (loss, r) in enumerate(zip(losses, ranks))
    ]


def test_collapse_check():
    ln48, name = math.log(48), "swav/digits_frac1_clean/seed0"
    collapsed = _history([4.2, 4.0, ln48 * (1 + 1e-5), ln48, ln48, ln48], [20.0, 8.0, 1.1, 1.05, 1.0, 1.0])
    flag, why = collapse_check(collapsed, "swav", name, prototypes=48)
    assert flag and why == f"{name}: collapsed at epoch 3 (effective rank 1.1 of 64; loss 3.871 = ln 48)"
    healthy = _history([4.2, 3.6, 3.1, 2.8, 2.6, 2.5], [20.0, 25.0, 28.0, 30.0, 31.0, 31.5])
    flag, why = collapse_check(healthy, "swav", name, prototypes=48)
    assert (
        not flag and why == f"{name}: no collapse (epoch 6: effective rank 31.5 of 64; loss 2.500, ln 48 at collapse)"
    )
    # a plateau that breaks, and one shorter than `patience`, with no embedding checks at all
    assert not collapse_check(_history([ln48] * 4 + [3.5, 3.0], [None] * 6), "swav", prototypes=48)[0]
    assert not collapse_check(_history([4.0, 3.9, 3.8, 3.7, ln48, ln48], [None] * 6), "swav", prototypes=48)[0]
    assert collapse_check(_history([4.0, 3.9, ln48, ln48, ln48], [None] * 5), "swav", prototypes=48)[0]
    # byol: a loss at 0 alone is not collapse, a rank of 1 is; normalised std from real embeddings
    assert not collapse_check(_history([0.3, 0.01, 0.0], [30.0, 30.0, 30.0]), "byol")[0]
    rec = dict(epoch=1, loss=0.0, **embedding_health(torch.randn(1, 64).expand(256, 64) + 1e-9 * torch.randn(256, 64)))
    flag, why = collapse_check([rec], "byol", "byol/x")
    assert flag and why.startswith("byol/x: collapsed at epoch 1 (effective rank 1.0 of 64")
    # barlow at its trivial value d
    assert collapse_check(_history([200.0, 128.0, 128.0, 128.0], [None] * 4), "barlow", proj_dim=128)[0]
