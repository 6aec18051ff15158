"""DeepCluster: PCA-whitening against faiss' PCAMatrix, the cluster-uniform sampler, the per-epoch
classifier re-initialisation and its optimiser group, the loss, clustering grey images, and the
error for a too-large k."""

import math

import faiss
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sslstudy.augment import MEAN, STD, gray_normalized
from sslstudy.errors import UserError
from sslstudy.methods.base import Batch
from sslstudy.methods.deepcluster import NO_NMI, DeepCluster, pca_whiten, uniform_over_clusters
from sslstudy.models import build_backbone
from sslstudy.optim import build_optimizer

from tests.helpers import FakeCtx

CFG = dict(k=5, pca_dim=8, proj_hidden=16, balance="sampler", cluster_gray=False)


def test_pca_whiten_matches_faiss_pca_matrix():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((500, 12)) @ rng.standard_normal((12, 12)) * [3] + 1).astype(np.float32)
    pca = faiss.PCAMatrix(12, 6, -0.5)  # what deepcluster's preprocess_features uses
    pca.train(x)
    want = pca.apply(x)
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    got = pca_whiten(torch.from_numpy(x), 6).numpy()
    # eigenvector signs are arbitrary: compare the (sign-free) Gram matrices
    np.testing.assert_allclose(got @ got.T, want @ want.T, atol=2e-4)
    # before the normalisation the features are white
    xc = x - x.mean(0)
    w = torch.from_numpy(xc).double()
    evals, evecs = torch.linalg.eigh(w.T @ w / len(x))
    y = w @ evecs[:, -6:] / evals[-6:].sqrt()
    np.testing.assert_allclose((y.T @ y / len(x)).numpy(), np.eye(6), atol=1e-8)


def test_sampler_is_uniform_over_clusters_and_seeded():
    sizes = [700, 200, 60, 30, 9, 1]  # label 6 is an empty cluster
    labels = np.repeat(np.array([0, 1, 2, 3, 4, 5]), sizes)
    labels = labels[np.random.default_rng(0).permutation(len(labels))]
    order = uniform_over_clusters(labels, torch.Generator().manual_seed(3))
    assert len(order) == len(labels) == 1000 and order.min() >= 0 and order.max() < 1000
    counts = np.bincount(labels[order], minlength=7)
    # int(1000 / 6) + 1 = 167 draws per cluster, shuffled, cut to 1000: 2 draws dropped in all
    assert counts[6] == 0 and counts[:6].sum() == 1000 and (counts[:6] >= 165).all() and (counts[:6] <= 167).all()
    big = order[labels[order] == 0]
    assert len(np.unique(big)) == len(big)  # large clusters: without replacement
    assert set(order[labels[order] == 5]) == {int(np.flatnonzero(labels == 5)[0])}  # a singleton: repeated
    assert np.array_equal(order, uniform_over_clusters(labels, torch.Generator().manual_seed(3)))
    assert not np.array_equal(order, uniform_over_clusters(labels, torch.Generator().manual_seed(4)))


def _model(n_train=60, **over):
    torch.manual_seed(0)
    return DeepCluster(build_backbone("cnn4", width=4), dict(CFG, **over), [], n_train, 16)


@pytest.fixture
def ctx():
    return FakeCtx(torch.rand(60, 3, 16, 16, generator=torch.Generator().manual_seed(0)))


def test_k_larger_than_the_training_set_is_a_clear_error():
    with pytest.raises(
        UserError,
        match=r"^methods\.deepcluster\.k = 61 clusters but the training subset has only 60 images; "
        r"lower methods\.deepcluster\.k in params to at most 60$",
    ):
        _model(k=61)
    with pytest.raises(UserError, match=r"^methods\.deepcluster\.pca_dim = 17 exceeds"):
        _model(pca_dim=17)


def test_before_epoch_clusters_and_reinitialises_the_classifier(ctx):
    m = _model()
    m.before_epoch(0, ctx)
    labels0, w0 = m.labels.clone(), m.top.weight.detach().clone()
    assert labels0.min() >= 0 and labels0.max() < 5 and len(labels0.unique()) >= 4
    assert float(m.nmi) == NO_NMI and math.isnan(m.nmi_prev)  # nothing to compare with yet
    assert (m.top.bias == 0).all() and 0.007 < w0.std() < 0.013 and abs(float(w0.mean())) < 0.004
    with torch.no_grad():
        m.top.weight.add_(1.0)
        m.top.bias.add_(1.0)
    m.before_epoch(1, ctx)
    assert (m.top.bias == 0).all() and m.top.weight.std() < 0.013 and not torch.equal(m.top.weight, w0)
    assert 0 < float(m.nmi) <= 1  # the same features: consecutive clusterings agree more than by chance
    # a model with the same seed makes the same choices
    m2 = _model()
    m2.before_epoch(0, ctx)
    assert torch.equal(m2.labels, labels0) and torch.equal(m2.top.weight, w0)


def test_classifier_group_keeps_no_optimiser_state(ctx):
    m = _model()
    opt = build_optimizer(m, dict(name="sgd", momentum=0.9, weight_decay=1e-5), lr=0.1)
    top = {id(p) for p in m.top.parameters()}
    groups = [[id(p) for p in g["params"]] for g in opt.param_groups]
    assert sorted(sum(groups, [])) == sorted(id(p) for p in m.parameters())  # every parameter once
    (g_top,) = [g for g in opt.param_groups if {id(p) for p in g["params"]} == top]
    assert g_top["momentum"] == 0.0 and all(g["momentum"] == 0.9 for g in opt.param_groups if g is not g_top)
    m.before_epoch(0, ctx)
    views = [torch.rand(16, 3, 16, 16, generator=torch.Generator().manual_seed(1))]
    batch = Batch(views, torch.arange(16), 0, 10, 0, torch.Generator())
    for _ in range(2):
        loss, _ = m(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(opt.state[p].get("momentum_buffer") is None for p in m.top.parameters())
    assert opt.state[m.backbone.features[0].weight]["momentum_buffer"] is not None


def test_loss_is_cross_entropy_on_pseudo_labels(ctx):
    m = _model()
    m.before_epoch(0, ctx)
    views = [torch.rand(16, 3, 16, 16, generator=torch.Generator().manual_seed(1)) for _ in range(2)]
    index = torch.arange(20, 36)
    batch = Batch(views, index, 0, 10, 0, torch.Generator())
    loss, _ = m(batch)
    with torch.no_grad():
        logits = torch.cat([m.top(F.relu(m.body(m.backbone(v)))) for v in views]).double()
    y = m.labels[index].repeat(2)
    want = np.mean([float(torch.logsumexp(logits[i], 0) - logits[i, y[i]]) for i in range(32)])
    assert loss.item() == pytest.approx(want, rel=1e-5)
    # inverse-size weighting: a weighted mean with weights n / (clusters * size)
    m.cfg = dict(m.cfg, balance="loss")
    loss_w, _ = m(batch)
    sizes = np.bincount(m.labels.numpy(), minlength=5)
    w = np.array([60 / ((sizes > 0).sum() * sizes[c]) for c in y.tolist()])
    per = np.array([float(torch.logsumexp(logits[i], 0) - logits[i, y[i]]) for i in range(32)])
    assert loss_w.item() == pytest.approx((w * per).sum() / w.sum(), rel=1e-5)


def test_cluster_gray_clusters_the_grey_images(ctx):
    """cluster_gray: the k-means sees the features of the images in grey, so the same model on a
    context holding those grey images already, without the switch, draws the same pseudo-labels."""
    m = _model(cluster_gray=True)
    m.before_epoch(0, ctx)
    plain = _model()
    plain.before_epoch(0, FakeCtx(gray_normalized(ctx.x)))
    colour = _model()
    colour.before_epoch(0, ctx)
    assert torch.equal(m.labels, plain.labels) and not torch.equal(m.labels, colour.labels)


def test_gray_normalized_is_the_luma_of_every_channel():
    x01 = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    g01 = gray_normalized((x01 - mean) / std) * std + mean
    luma = 0.299 * x01[:, 0] + 0.587 * x01[:, 1] + 0.114 * x01[:, 2]
    for c in range(3):
        torch.testing.assert_close(g01[:, c], luma, rtol=0, atol=1e-5)
    grey = luma.unsqueeze(1).expand(-1, 3, -1, -1)  # already grey: unchanged
    torch.testing.assert_close(gray_normalized((grey - mean) / std) * std + mean, grey, rtol=0, atol=1e-5)


def _whiten_direct(x: torch.Tensor, dim: int) -> torch.Tensor:
    """The whitening on all rows at once in float64 (what pca_whiten computed before it was sharded)."""
    x = x.double()
    xc = x - x.mean(0)
    evals, evecs = torch.linalg.eigh(xc.T @ xc / x.shape[0])
    evals, evecs = evals.flip(0)[:dim], evecs.flip(1)[:, :dim]
    evals = evals.clamp_min(1e-8 * float(evals[0]))
    return F.normalize(xc @ (evecs * evals.rsqrt()), dim=1).float()


def test_pca_whiten_in_chunks_equals_all_rows_at_once(monkeypatch):
    from sslstudy.methods import deepcluster

    x = torch.randn(301, 24, generator=torch.Generator().manual_seed(0)) @ torch.randn(24, 24) + 3
    want = _whiten_direct(x, 10)
    monkeypatch.setattr(deepcluster, "CHUNK_BYTES", 8 * 24 * 7)  # 7 rows at a time
    got = pca_whiten(x, 10)
    torch.testing.assert_close(got @ got.T, want @ want.T, atol=1e-5, rtol=0)


WHITEN_SCRIPT = """
import sys, numpy as np, torch
from sslstudy import distributed as dist
from sslstudy.methods.deepcluster import pca_whiten
dist.init_from_env(cuda=False)
x = torch.from_numpy(np.load(sys.argv[1]))
per = -(-len(x) // dist.world())
mine = x[np.minimum(np.arange(dist.rank() * per, (dist.rank() + 1) * per), len(x) - 1)]  # the last share padded
out = pca_whiten(mine, 10, len(x))
if dist.rank() == 0:
    np.save(sys.argv[2], out.numpy())
"""


def test_pca_whiten_over_two_ranks_equals_one_process(tmp_path):
    """Two gloo processes, each with half the rows (61: the second share padded), sum the mean and
    covariance and gather only the whitened rows: the same features as one process on all of them."""
    from tests.helpers import run_ranks

    x = (torch.randn(61, 24, generator=torch.Generator().manual_seed(1)) @ torch.randn(24, 24) + 3).numpy()
    np.save(tmp_path / "x.npy", x)
    run_ranks(WHITEN_SCRIPT, lambda r: [str(tmp_path / "x.npy"), str(tmp_path / "out.npy")], timeout=300)
    got = torch.from_numpy(np.load(tmp_path / "out.npy"))
    want = pca_whiten(torch.from_numpy(x), 10)
    assert got.shape == (61, 10)
    torch.testing.assert_close(got @ got.T, want @ want.T, atol=1e-5, rtol=0)
