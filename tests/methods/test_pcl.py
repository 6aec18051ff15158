"""PCL: the concentration and ProtoNCE against loop implementations written here, the E-step's
state, the negative sampling and the errors for bad K / r (InfoNCE: moco.info_nce, tests/test_losses.py)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sslstudy.errors import UserError
from sslstudy.methods.pcl import PCL, concentration, proto_nce, sample_negatives
from sslstudy.models import build_backbone

from tests.helpers import FakeCtx

CFG = dict(
    temperature=0.2,
    proj_hidden=16,
    proj_dim=8,
    proj_bn=False,
    queue=64,
    momentum=0.99,
    shuffle_groups=2,
    num_clusters=[6, 12],
    proto_negatives=3,
    proto_warmup_epochs=1,
)


def _percentile(values, q):
    """Linear interpolation between closest ranks (numpy's default), by hand."""
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def concentration_loops(sq_dist, assign, k, temperature, alpha=10.0):
    members = [[] for _ in range(k)]
    for d, c in zip(sq_dist, assign):
        members[c].append(math.sqrt(d))
    phi = [sum(m) / len(m) / math.log(len(m) + alpha) if len(m) > 1 else None for m in members]
    top = max(p for p in phi if p is not None)
    phi = [top if p is None else p for p in phi]
    lo, hi = _percentile(phi, 10), _percentile(phi, 90)
    phi = [min(max(p, lo), hi) for p in phi]
    mean = sum(phi) / k
    return [temperature * p / mean for p in phi]


def test_concentration_matches_loops():
    rng = np.random.default_rng(0)
    k = 20
    assign = rng.integers(0, 14, size=300)  # clusters 14..19 empty
    assign[:3] = [14, 15, 16]  # three singletons
    assign[3:] = np.where(assign[3:] >= 14, 0, assign[3:])
    sq = rng.gamma(2.0, 0.3, size=300) * (1 + assign % 5)  # cluster-dependent spread
    got = concentration(sq.astype(np.float32), assign, k, 0.2)
    want = concentration_loops(sq.astype(np.float32).tolist(), assign.tolist(), k, 0.2)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert got.mean() == pytest.approx(0.2)
    assert len(set(np.round(got, 9))) > 3  # not degenerate: the clipping left several distinct values
    assert got[14] == got[17] == got.max()  # singleton and empty clusters: the (clipped) max


def test_concentration_all_singletons_is_temperature():
    np.testing.assert_array_equal(concentration(np.ones(5, np.float32), np.arange(5), 5, 0.3), np.full(5, 0.3))


def _normed(*shape, seed):
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), dim=-1)


def test_proto_nce_matches_loops():
    q, protos = _normed(4, 8, seed=4), _normed(10, 8, seed=5)
    phi = torch.linspace(0.1, 0.3, 10, dtype=torch.float64)
    pos, neg = torch.tensor([2, 7, 2, 0]), torch.tensor([5, 9, 3])
    ids = pos.tolist() + neg.tolist()
    want = 0.0
    for i in range(4):
        logits = [float(q[i] @ protos[c]) / float(phi[c]) for c in ids]
        m = max(logits)
        want += m + math.log(sum(math.exp(v - m) for v in logits)) - logits[i]
    assert float(proto_nce(q, protos, phi, pos, neg)) == pytest.approx(want / 4, rel=1e-10)


def test_proto_nce_decreases_as_queries_move_to_their_prototypes():
    protos, phi = _normed(10, 8, seed=6).float(), torch.full((10,), 0.2)
    pos = torch.tensor([1, 4, 6, 8])
    w = torch.randn(4, 8, generator=torch.Generator().manual_seed(7), requires_grad=True)
    opt = torch.optim.SGD([w], lr=0.5)
    losses = []
    for _ in range(30):
        loss = proto_nce(F.normalize(w, dim=1), protos, phi, pos, torch.tensor([0, 2, 3]))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.1 * losses[0]
    ids = torch.cat([pos, torch.tensor([0, 2, 3])])
    assert (F.normalize(w, dim=1) @ protos[ids].T).argmax(1).tolist() == [0, 1, 2, 3]  # own prototype nearest


def test_sample_negatives_avoids_the_batch_clusters_and_is_seeded():
    pos = torch.tensor([0, 3, 3, 7])
    a = sample_negatives(pos, 12, 5, torch.Generator().manual_seed(0))
    b = sample_negatives(pos, 12, 5, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and len(set(a.tolist())) == 5 and not set(a.tolist()) & {0, 3, 7}
    # only 5 free clusters for r = 5: all of them; a smaller k leaves fewer
    assert sorted(sample_negatives(pos[:3], 5, 5, torch.Generator()).tolist()) == [1, 2, 4]
    assert sorted(sample_negatives(pos, 8, 5, torch.Generator()).tolist()) == [1, 2, 4, 5, 6]


def _model(n_train=40, **over):
    torch.manual_seed(0)
    return PCL(build_backbone("cnn4", width=4), dict(CFG, **over), [], n_train, 8)


def test_k_and_r_errors_name_the_params_key():
    with pytest.raises(
        UserError, match=r"^methods\.pcl\.num_clusters = 50 clusters but the training subset has only 40 images"
    ):
        _model(num_clusters=[10, 50])
    with pytest.raises(
        UserError,
        match=(
            r"^methods\.pcl\.proto_negatives = 6 must be smaller than the smallest of "
            r"methods\.pcl\.num_clusters \(6\)"
        ),
    ):
        _model(proto_negatives=6)


def test_e_step_fills_prototypes_and_concentrations():
    m = _model()
    ctx = FakeCtx(torch.rand(40, 3, 16, 16, generator=torch.Generator().manual_seed(0)))
    m.before_epoch(0, ctx)  # still warming up: nothing clustered
    assert not m.assign1.any() and (m.phi1 == 1).all()
    m.before_epoch(1, ctx)
    x = F.normalize(ctx.features(torch.nn.Sequential(m.key_backbone, m.key_head)), dim=1)
    for i, k in enumerate(CFG["num_clusters"]):
        assign, protos, phi = m.clustering(i)
        assert protos.norm(dim=1).sub(1).abs().max() < 1e-5
        assert phi.mean().item() == pytest.approx(CFG["temperature"], rel=1e-5)
        # k-means converged on these 40 points: each prototype is the direction of its members' mean
        assert assign.max() < k and len(assign) == 40
        for c in assign.unique():
            torch.testing.assert_close(F.normalize(x[assign == c].mean(0), dim=0), protos[c], atol=1e-5, rtol=0)
    # the E-step of the same epoch is reproducible
    state = {k: v.clone() for k, v in m.state_dict().items() if k.startswith(("assign", "prototypes", "phi"))}
    m.before_epoch(1, ctx)
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in state.items())
