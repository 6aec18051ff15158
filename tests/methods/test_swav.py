"""SwAV: Sinkhorn-Knopp and the swapped-prediction loss against independent float64 versions, the
prototype and queue mechanics, distributed Sinkhorn on 2 gloo processes, resume with the queue on."""

import numpy as np
import pytest
import torch
from sslstudy.errors import UserError
from sslstudy.methods.swav import sinkhorn, swav_loss
from sslstudy.train import Stopped, train

from tests.helpers import (
    ROOT,
    final_weights,
    method_spec,
    read_metrics,
    run_ranks,
    swav_batch,
    swav_local_steps,
    swav_model,
)


def sinkhorn_reference(scores: np.ndarray, eps: float, iters: int) -> np.ndarray:
    """The older official form (facebookresearch/swav before the rewrite): target marginals r (per
    prototype) and c (per sample), scaling vectors u and the column sums, float64, no max shift."""
    Q = np.exp(scores.astype(np.float64) / eps).T  # K x B
    Q = Q / Q.sum()
    K, B = Q.shape
    r, c = np.full(K, 1.0 / K), np.full(B, 1.0 / B)
    for _ in range(iters):
        u = Q.sum(axis=1)
        Q = Q * (r / u)[:, None]
        Q = Q * (c / Q.sum(axis=0))[None, :]
    return (Q / Q.sum(axis=0, keepdims=True)).T


def cosine_scores(rng, n, k, d=16) -> np.ndarray:
    z = rng.normal(size=(n, d))
    w = rng.normal(size=(k, d))
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    w /= np.linalg.norm(w, axis=1, keepdims=True)
    return (z @ w.T).astype(np.float32)


@pytest.mark.parametrize(
    "n,k,eps,iters", [(32, 8, 0.05, 3), (8, 30, 0.05, 3), (64, 64, 0.03, 3), (16, 5, 0.5, 1), (40, 12, 0.1, 10)]
)
def test_sinkhorn_matches_reference(n, k, eps, iters):
    s = cosine_scores(np.random.default_rng(n + k), n, k)
    got = sinkhorn(torch.from_numpy(s), eps, iters).numpy()
    np.testing.assert_allclose(got, sinkhorn_reference(s, eps, iters), rtol=2e-5, atol=1e-7)


def test_sinkhorn_marginals():
    s = torch.from_numpy(cosine_scores(np.random.default_rng(0), 96, 12))
    q = sinkhorn(s, 0.05, 3)
    assert q.dtype == torch.float32 and q.shape == (96, 12)
    np.testing.assert_allclose(q.sum(1).numpy(), 1.0, rtol=1e-6)  # every sample's code is a distribution
    # prototype marginals: 3 iterations move them closer to uniform (n/K each) than softmax ...
    raw = torch.softmax(s / 0.05, dim=1).sum(0)
    assert (q.sum(0) - 8).abs().max() < 0.5 * (raw - 8).abs().max()
    # ... and many iterations make them uniform
    np.testing.assert_allclose(sinkhorn(s, 0.05, 300).sum(0).numpy(), 8.0, rtol=1e-4)


def test_sinkhorn_invariances_and_numerics():
    s = torch.from_numpy(cosine_scores(np.random.default_rng(1), 20, 6))
    q = sinkhorn(s, 0.05, 3)
    shift = torch.linspace(-0.5, 0.5, 6)  # a per-prototype offset is removed by the first row scaling
    assert torch.allclose(sinkhorn(s + shift, 0.05, 3), q, atol=1e-6)
    perm = torch.randperm(20, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(sinkhorn(s[perm], 0.05, 3), q[perm], atol=1e-6)
    # exp(1 / 0.01) = e^100 overflows float32: the max shift keeps it finite and exact
    small = sinkhorn(s, 0.01, 3)
    assert torch.isfinite(small).all()
    np.testing.assert_allclose(small.numpy(), sinkhorn_reference(s.numpy(), 0.01, 3), rtol=1e-4, atol=1e-6)
    # float32 even under bf16 autocast, with the float32 result
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = sinkhorn(s, 0.05, 3)
    assert auto.dtype == torch.float32 and torch.equal(auto, q)


def swav_loss_reference(scores, codes, assign, t) -> float:
    """Cross-entropy table H[a, v] = mean_i -sum_k q_a[i,k] log p_v[i,k] for every (assigned crop,
    crop) pair, weighted 1/(V-1) off the diagonal and averaged over the assigned crops; float64."""
    V = len(scores)
    logp = []
    for s in scores:
        x = s.astype(np.float64) / t
        m = x.max(axis=1, keepdims=True)
        logp.append(x - m - np.log(np.exp(x - m).sum(axis=1, keepdims=True)))
    H = np.array(
        [[-(codes[j].astype(np.float64) * logp[v]).sum(1).mean() for v in range(V)] for j in range(len(assign))]
    )
    weights = np.ones_like(H) / (V - 1)
    for j, a in enumerate(assign):
        weights[j, a] = 0.0
    return float((H * weights).sum() / len(assign))


@pytest.mark.parametrize("n,k,crops,t", [(8, 5, 2, 0.1), (16, 12, 6, 0.1), (4, 30, 4, 0.5)])
def test_swav_loss_matches_reference(n, k, crops, t):
    rng = np.random.default_rng(n * k + crops)
    scores = [cosine_scores(rng, n, k) for _ in range(crops)]
    codes = [rng.dirichlet(np.ones(k), size=n).astype(np.float32) for _ in range(2)]
    got = swav_loss([torch.from_numpy(s) for s in scores], [torch.from_numpy(q) for q in codes], [0, 1], t).item()
    assert got == pytest.approx(swav_loss_reference(scores, codes, [0, 1], t), rel=1e-5)


def test_swav_loss_hand_value_and_swap():
    # two crops, one-hot codes: loss = mean over the two directions of -log softmax(other crop / t)[code]
    s1, s2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    q1, q2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    swapped_wrong = -np.log(np.exp(0) / (np.exp(0) + np.exp(1)))  # crop 2 scores prototype 0 low
    assert swav_loss([s1, s2], [q1, q2], [0, 1], 1.0).item() == pytest.approx(swapped_wrong, rel=1e-6)
    # codes are predicted from the OTHER crop: crops that agree give the lower loss
    assert swav_loss([s1, s1], [q1, q1], [0, 1], 1.0) < swav_loss([s1, s2], [q1, q1], [0, 1], 1.0)


def test_prototypes_normalised_and_frozen():
    m = swav_model(freeze=2)  # 64 images / 8 per step: frozen for 16 steps
    m.before_step(0, 100)
    assert torch.allclose(m.prototypes.weight.norm(dim=1), torch.ones(6), atol=1e-6)
    loss, _ = m(swav_batch(m, 0))
    loss.backward()
    assert m.prototypes.weight.grad is not None
    m.before_optimizer_step(15)
    assert m.prototypes.weight.grad is None and m.projector[0].weight.grad is not None
    loss, _ = m(swav_batch(m, 0))
    loss.backward()
    m.before_optimizer_step(16)
    assert m.prototypes.weight.grad is not None


def test_multicrop_loss_uses_small_crops():
    m = swav_model(views=4)
    m.before_step(0, 1)
    b = swav_batch(m, 0)
    loss, _ = m(b)
    loss.backward()
    assert loss.item() > 0 and m.backbone.features[0].weight.grad is not None
    # the model's loss is swav_loss on its own scores with Sinkhorn codes of crops 0 and 1
    with torch.no_grad():
        z = m.embed(b.views)
        scores = list(m.prototypes(z).chunk(4))
        codes = [sinkhorn(scores[a], 0.05, 3) for a in (0, 1)]
    again, _ = m(b)
    assert again.item() == pytest.approx(swav_loss(scores, codes, [0, 1], 0.1).item(), rel=1e-5)


def test_queue_fills_from_its_epoch_and_is_used_once_full():
    m = swav_model(queue_length=16, queue_start_epoch=1)  # 2 batches of 8 fill it
    m.before_step(0, 1)
    init = m.queues[0].keys.clone()
    _, logs = m(swav_batch(m, epoch=0))
    assert torch.equal(m.queues[0].keys, init) and int(m.queue_filled) == 0 and logs["queue_used"] == 0.0
    b1, b2, b3 = (swav_batch(m, epoch=1, seed=s) for s in (1, 2, 3))
    for b in (b1, b2):
        _, logs = m(b)
        assert logs["queue_used"] == 0.0
    assert int(m.queue_filled) == 16
    with torch.no_grad():
        zs = [m.embed(b.views) for b in (b1, b2, b3)]
    # the queue holds the embeddings of both large crops of the last two batches
    for i, a in enumerate((0, 1)):
        held = m.queues[i].keys.T
        want = torch.cat([z[a * 8 : (a + 1) * 8] for z in zs[:2]])
        assert torch.allclose(held.sort(0).values, want.sort(0).values, atol=1e-6)
    # now full: codes come from Sinkhorn over [queue scored with current prototypes; batch]
    w = m.prototypes.weight
    with torch.no_grad():
        codes = [
            sinkhorn(torch.cat([m.queues[i].keys.T @ w.T, zs[2][a * 8 : (a + 1) * 8] @ w.T]), 0.05, 3)[-8:]
            for i, a in enumerate((0, 1))
        ]
        scores = list(m.prototypes(zs[2]).chunk(2))
        without = [sinkhorn(scores[a], 0.05, 3) for a in (0, 1)]
    loss, logs = m(b3)
    assert logs["queue_used"] == 1.0
    assert loss.item() == pytest.approx(swav_loss(scores, codes, [0, 1], 0.1).item(), rel=1e-5)
    assert abs(loss.item() - swav_loss(scores, without, [0, 1], 0.1).item()) > 1e-4  # the queue mattered
    # and it moved on: the oldest batch was replaced by the newest
    want = torch.cat([z[:8] for z in zs[1:]])
    assert torch.allclose(m.queues[0].keys.T.sort(0).values, want.sort(0).values, atol=1e-6)


def test_queue_length_must_fit_global_batch():
    with pytest.raises(UserError, match="methods.swav.queue_length.*multiple of the global batch 8"):
        swav_model(queue_length=20)


def test_swav_loss_decreases_under_optimisation():
    g = torch.Generator().manual_seed(1)
    centres = torch.randn(4, 8, generator=g)
    x = centres[torch.arange(64) % 4]
    head, protos = torch.nn.Linear(8, 8), torch.nn.Linear(8, 4, bias=False)
    opt = torch.optim.SGD([*head.parameters(), *protos.parameters()], lr=0.5)
    first = None
    for _ in range(60):
        with torch.no_grad():
            protos.weight.copy_(torch.nn.functional.normalize(protos.weight, dim=1))
        scores = [
            protos(torch.nn.functional.normalize(head(x + 0.3 * torch.randn(x.shape, generator=g)), dim=1))
            for _ in range(2)
        ]
        codes = [sinkhorn(s.detach(), 0.05, 3) for s in scores]
        loss = swav_loss(scores, codes, [0, 1], 0.1)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.7 * first


SWAV_DDP = """
import sys, numpy as np, torch
sys.path.insert(0, sys.argv[3])
from sslstudy import distributed as dist
from sslstudy.methods.swav import sinkhorn
from tests.helpers import swav_local_steps
dist.init_from_env(cuda=False)  # gloo on the CPU, on a GPU machine too
s = torch.from_numpy(np.load(sys.argv[1]))
np.save(sys.argv[2] + f"codes{dist.rank()}.npy", sinkhorn(s[dist.local_slice(s.shape[0])], 0.05, 3).numpy())
losses, queue = swav_local_steps()
np.save(sys.argv[2] + f"loss{dist.rank()}.npy", losses)
np.save(sys.argv[2] + f"queue{dist.rank()}.npy", queue)
"""


def test_two_processes_give_the_codes_queue_and_loss_of_one(tmp_path):
    s = cosine_scores(np.random.default_rng(5), 24, 7)
    np.save(tmp_path / "s.npy", s)
    run_ranks(SWAV_DDP, lambda r: [str(tmp_path / "s.npy"), str(tmp_path / "r"), str(ROOT)], timeout=300)
    codes = np.concatenate([np.load(tmp_path / f"rcodes{r}.npy") for r in range(2)])
    np.testing.assert_allclose(codes, sinkhorn(torch.from_numpy(s), 0.05, 3).numpy(), rtol=1e-5, atol=1e-8)
    losses, queue = swav_local_steps()  # one process, the whole batch
    np.testing.assert_allclose(
        np.mean([np.load(tmp_path / f"rloss{r}.npy") for r in range(2)], axis=0), losses, rtol=1e-5
    )
    for r in range(2):  # both ranks hold the whole queue (the keys of all ranks), as one process does
        np.testing.assert_allclose(np.load(tmp_path / f"rqueue{r}.npy"), queue, atol=1e-6)


def test_mid_epoch_resume_with_the_queue_is_exact(tiny_data, subset128, tmp_path):
    """4 steps/epoch; the queue (2 batches) fills in epoch 1 and is used from its 3rd step, where the
    run is interrupted; prototypes are frozen for the first epoch."""
    spec = method_spec("swav", tiny_data / "natural", subset128)
    spec["method"]["params"].update(queue_length=64, queue_start_epoch=1)
    train(spec, tmp_path / "full")
    with pytest.raises(Stopped):
        train(spec, tmp_path / "part", stop_after=6)
    train(spec, tmp_path / "part")
    a, b = final_weights(tmp_path / "full"), final_weights(tmp_path / "part")
    assert int(a["queue_filled"]) == 64
    assert not [k for k in a if not torch.equal(a[k], b[k])]
    metrics = read_metrics(tmp_path / "full")
    assert [r["queue_used"] for r in metrics] == [0.0, 0.5, 1.0]
