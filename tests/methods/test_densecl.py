"""DenseCL: its losses against loop implementations on fixed inputs, the correspondence on cases
whose answer is known, the momentum/queue mechanics, and the correspondence figure."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sslstudy.cli import main
from sslstudy.eval.dense import near, true_locations
from sslstudy.methods.base import Batch
from sslstudy.methods.densecl import dense_loss, match_locations
from sslstudy.methods.moco import info_nce
from sslstudy.report.matches import correspondence_figure

T = 0.2


def _unit(*shape, dim, seed):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=dim)


def _nll(pos: float, negs: list[float], t: float) -> float:
    """-log softmax of the positive among [pos, *negs] / t, with the max subtracted by hand."""
    logits = [pos / t] + [v / t for v in negs]
    top = max(logits)
    return -(logits[0] - top - math.log(sum(math.exp(v - top) for v in logits)))


def _dot(a, b) -> float:
    return float(sum(x * y for x, y in zip(a, b)))


def test_info_nce_matches_a_loop():
    q, k, queue = _unit(5, 8, dim=1, seed=0), _unit(5, 8, dim=1, seed=1), _unit(8, 12, dim=0, seed=2)
    qs, ks, negs = q.tolist(), k.tolist(), queue.T.tolist()
    want = np.mean([_nll(_dot(qs[i], ks[i]), [_dot(qs[i], n) for n in negs], T) for i in range(5)])
    assert info_nce(q, k, queue, T).item() == pytest.approx(want, rel=1e-10)


def test_dense_loss_matches_loops_over_locations():
    """The whole dense term from raw tensors: correspondence by cosine of backbone maps (not
    normalised beforehand, so a dot product would pick differently), then per-location InfoNCE."""
    n, d, c, h, w, k_len = 3, 6, 5, 3, 4, 10
    g = torch.Generator().manual_seed(3)
    fq = torch.randn(n, c, h, w, generator=g, dtype=torch.float64)
    fk = (
        torch.randn(n, c, h, w, generator=g, dtype=torch.float64)
        * torch.rand(n, 1, h, w, generator=g, dtype=torch.float64)
        * 5
    )
    q_grid, k_grid = _unit(n, d, h * w, dim=1, seed=4), _unit(n, d, h * w, dim=1, seed=5)
    queue = _unit(d, k_len, dim=0, seed=6)

    losses = []
    for b in range(n):
        for i in range(h * w):
            qv = fq[b, :, i // w, i % w].tolist()
            cos = []
            for j in range(h * w):
                kv = fk[b, :, j // w, j % w].tolist()
                cos.append(_dot(qv, kv) / math.sqrt(_dot(qv, qv) * _dot(kv, kv)))
            j = int(np.argmax(cos))
            qg = q_grid[b, :, i].tolist()
            losses.append(
                _nll(_dot(qg, k_grid[b, :, j].tolist()), [_dot(qg, queue[:, m].tolist()) for m in range(k_len)], T)
            )
    got = dense_loss(q_grid, k_grid, match_locations(fq, fk), queue, T)
    assert got.item() == pytest.approx(np.mean(losses), rel=1e-10)
    # the raw dot product would have chosen other key locations for some queries
    dot_match = torch.einsum("ncs,nct->nst", fq.flatten(2), fk.flatten(2)).argmax(2)
    assert not torch.equal(dot_match, match_locations(fq, fk))


def test_correspondence_recovers_a_flipped_shifted_view():
    """View 2's map = view 1's flipped left-right and shifted one row down (rolled), rescaled per
    location: every location's match is where its feature went."""
    n, c, h, w = 2, 32, 5, 6
    f1 = torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(7))
    f2 = torch.roll(torch.flip(f1, dims=[3]), shifts=1, dims=2) * torch.rand(n, 1, h, w) * 10 + 0.0
    r, col = np.divmod(np.arange(h * w), w)
    want = torch.from_numpy((r + 1) % h * w + (w - 1 - col)).expand(n, -1)
    assert torch.equal(match_locations(f1, f2), want)
    assert torch.equal(match_locations(f1, f1), torch.arange(h * w).expand(n, -1))


def test_true_locations_of_known_crops():
    """A 32 px image, 4x4 grid. View 1 = left half (w 16), view 2 = the whole image flipped."""
    box1 = torch.tensor([[0, 0, 32, 16]])
    box2 = torch.tensor([[0, 0, 32, 32]])
    t = true_locations(box1, torch.tensor([False]), box2, torch.tensor([True]), (4, 4))
    # view-1 column a in {0.125, .375, .625, .875} -> image x = 2, 6, 10, 14 -> flipped fraction
    # in view 2: 1 - x/32 -> columns 3, 3, 2, 2
    assert t.view(4, 4).tolist() == [[3, 3, 2, 2], [7, 7, 6, 6], [11, 11, 10, 10], [15, 15, 14, 14]]
    # view 2 = right half: view 1's points (left half) fall outside
    t = true_locations(box1, torch.tensor([False]), torch.tensor([[0, 16, 32, 16]]), torch.tensor([False]), (4, 4))
    assert (t == -1).all()
    assert near(torch.tensor([[5, 0]]), torch.tensor([[0, 10]]), 4).tolist() == [[True, False]]


def _spec(tiny_data, tmp_path, **params):
    from tests.helpers import method_spec, natural_subset

    subset = natural_subset(tiny_data, tmp_path / "n64.npy", 64)
    spec = method_spec("densecl", tiny_data / "natural", subset, batch_size=16, epochs=2)
    spec["method"]["params"].update(queue=32, **params)
    return spec


def test_key_encoder_moves_before_the_keys_and_queues_take_them(tiny_data, tmp_path):
    """One step by hand: the key encoder is EMA-updated first; the queues then hold the
    normalised global keys and pooled dense keys of that step, computed by the updated key encoder."""
    from sslstudy.augment import ViewSpec, make_views
    from sslstudy.train import build_model

    spec = _spec(tiny_data, tmp_path, shuffle_groups=1, momentum=0.9)
    model = build_model(spec, 64)
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(0.1)
    old_key = [p.clone() for p in model.key_backbone.parameters()]
    images = torch.randint(0, 256, (16, 32, 32, 3), dtype=torch.uint8)
    gen = torch.Generator().manual_seed(0)
    views = [make_views(images, ViewSpec(**v), gen) for v in spec["views"]]
    model.train()
    model.before_step(0, 1)
    for k0, k1, q in zip(old_key, model.key_backbone.parameters(), model.backbone.parameters()):
        assert torch.allclose(k1, 0.9 * k0 + 0.1 * q)
    loss, logs = model(Batch(views, torch.arange(16), 0, 1, 0, gen))
    assert torch.isfinite(loss) and loss.item() == pytest.approx(
        0.5 * float(logs["loss_global"]) + 0.5 * float(logs["loss_dense"])
    )
    assert int(model.queue.ptr) == 16 and int(model.queue2.ptr) == 16
    with torch.no_grad():
        fmap = model.key_backbone.forward_map(views[1])
        k, dense = model.key_heads(fmap)
    assert torch.allclose(model.queue.keys[:, :16].T, F.normalize(k, dim=1), atol=1e-5)
    assert torch.allclose(model.queue2.keys[:, :16].T, F.normalize(dense.mean(dim=(2, 3)), dim=1), atol=1e-5)


def test_figure_and_cli_on_a_trained_run(tiny_data, tmp_path, capsys):
    from sslstudy.train import train

    spec = _spec(tiny_data, tmp_path)
    train(spec, tmp_path / "run")
    out = tmp_path / "matches.png"
    assert main(["densecl-matches", str(tmp_path / "run"), "--out", str(out), "--images", "3"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "% of matches within one cell" in capsys.readouterr().out
    assert main(["densecl-matches", str(tmp_path / "run"), "--out", str(out), "--epoch", "7"]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
    v = torch.zeros(2, 3, 16, 16)
    png = correspondence_figure(v, v, torch.zeros(2, 4, dtype=torch.long), (2, 2))
    assert png[:4] == b"\x89PNG"
