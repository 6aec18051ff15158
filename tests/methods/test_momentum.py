"""MomentumMethod (methods/base.py), the base of MoCo, DenseCL, PCL and BYOL: the EMA of the copies
and its schedule, no gradients into the copies, shuffle-BN keys, checkpoint names; and the
float32 policy of the similarity and loss functions."""

import pytest
import torch
from sslstudy.methods.base import Batch, float32_without_autocast
from sslstudy.methods.byol import BYOL
from sslstudy.methods.densecl import DenseCL
from sslstudy.methods.moco import MoCo, info_nce
from sslstudy.methods.pcl import PCL
from sslstudy.models import build_backbone

MOCO = dict(temperature=0.2, proj_hidden=16, proj_dim=8, proj_bn=False, queue=64, momentum=0.9, shuffle_groups=2)
CFGS = {
    MoCo: MOCO,
    DenseCL: dict(MOCO, loss_lambda=0.5),
    PCL: dict(MOCO, num_clusters=[4, 6], proto_negatives=2, proto_warmup_epochs=1),
    BYOL: dict(proj_hidden=16, proj_dim=8, pred_hidden=16, momentum=0.96),
}


def _model(cls, **over):
    torch.manual_seed(0)
    return cls(build_backbone("cnn4", width=4), dict(CFGS[cls], **over), [], 16, 8)


def _batch(step=0, total=10):
    g = torch.Generator().manual_seed(step)
    views = [torch.randn(8, 3, 16, 16, generator=g) for _ in range(2)]
    return Batch(views, torch.arange(8), step, total, 0, g)


def _copies(model):
    return [(getattr(model, online), getattr(model, target)) for online, target in model.pairs]


def _perturb(model):
    with torch.no_grad():
        for online, _ in _copies(model):
            for p in online.parameters():
                p.add_(torch.randn_like(p))


@pytest.mark.parametrize("cls", [MoCo, DenseCL, PCL])
def test_key_encoder_moves_by_the_constant_momentum_before_the_step(cls):
    m = _model(cls)
    assert [t for _, t in m.pairs] == ["key_backbone", "key_heads" if cls is DenseCL else "key_head"]
    _perturb(m)
    old = [[t.detach().clone() for t in target.state_dict().values()] for _, target in _copies(m)]
    m.after_step(0, 10)  # nothing moves after the step
    assert all(
        torch.equal(a, b) for (_, target), o in zip(_copies(m), old) for a, b in zip(target.state_dict().values(), o)
    )
    m.before_step(3, 10)
    for (online, target), o in zip(_copies(m), old):
        want = dict(zip(target.state_dict(), o))
        online_params = dict(online.named_parameters())
        for name, t in target.state_dict().items():
            if name in online_params:  # target = m * target + (1 - m) * online
                torch.testing.assert_close(t, 0.9 * want[name] + 0.1 * online_params[name], rtol=0, atol=1e-6)
            else:  # BN running statistics stay the copy's own
                assert torch.equal(t, want[name])


def test_byol_target_moves_after_the_step_with_the_cosine_schedule():
    m = _model(BYOL)
    assert [t for _, t in m.pairs] == ["target_backbone", "target_projector"]  # no copy of the predictor
    assert m.momentum(0, 100) == pytest.approx(0.96)
    assert m.momentum(50, 100) == pytest.approx(0.98)
    assert m.momentum(100, 100) == pytest.approx(1.0)
    assert _model(MoCo).momentum(0, 100) == _model(MoCo).momentum(100, 100) == 0.9
    _perturb(m)
    old = [p.clone() for _, target in _copies(m) for p in target.parameters()]
    m.before_step(5, 20)
    assert all(torch.equal(a, b) for a, b in zip(old, (p for _, t in _copies(m) for p in t.parameters())))
    m.after_step(5, 20)
    tau = m.momentum(5, 20)
    online = [p for o, _ in _copies(m) for p in o.parameters()]
    new = [p for _, t in _copies(m) for p in t.parameters()]
    for a, o, n in zip(old, online, new):
        torch.testing.assert_close(n, tau * a + (1 - tau) * o, rtol=0, atol=1e-6)


@pytest.mark.parametrize("cls", [MoCo, DenseCL, BYOL])
def test_copies_get_no_gradients_and_no_optimiser(cls):
    m = _model(cls).train()
    loss, _ = m(_batch())
    loss.backward()
    copies = [p for _, target in _copies(m) for p in target.parameters()]
    assert copies and all(not p.requires_grad and p.grad is None for p in copies)
    assert all(p.grad is not None for online, _ in _copies(m) for p in online.parameters())
    in_optimiser = {id(p) for g in m.optim_groups(1e-4) for p in g["params"]}
    assert not in_optimiser & {id(p) for p in copies}
    assert in_optimiser == {id(p) for p in m.parameters() if p.requires_grad}


@pytest.mark.parametrize("cls", [MoCo, DenseCL, PCL])
def test_proj_bn_standardises_every_head_output_and_its_copy_follows(cls):
    """proj_bn: true ends each head (and its momentum copy) with an affine-free batch norm, so in
    training mode every output dimension has mean 0 and variance 1 over the batch, and the loss
    reaches every parameter of the online networks."""
    m = _model(cls, proj_bn=True).train()
    x = _batch().views[0]
    for outs in (m.online(x), m.momentum_forward(x, torch.Generator().manual_seed(1))):
        outs = (outs,) if cls is not DenseCL else outs[:2]
        for o in outs:
            o = o.float().transpose(0, 1).flatten(1)  # (dim, batch x positions)
            torch.testing.assert_close(o.mean(1), torch.zeros(len(o)), rtol=0, atol=1e-5)
            torch.testing.assert_close(o.var(1, unbiased=False), torch.ones(len(o)), rtol=0, atol=1e-3)
    plain = _model(cls, proj_bn=False)
    assert sum(isinstance(mod, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)) for mod in m.modules()) > sum(
        isinstance(mod, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)) for mod in plain.modules()
    )
    loss, _ = m(_batch())
    loss.backward()
    assert torch.isfinite(loss) and all(
        p.grad is not None for online, _ in m.pairs for p in getattr(m, online).parameters()
    )


@pytest.mark.parametrize("cls", [MoCo, DenseCL])
@pytest.mark.parametrize("groups", [1, 2])
def test_shuffled_keys_equal_a_plain_forward_with_bn_in_eval_mode(cls, groups):
    """In eval mode BN uses running statistics, so shuffling and chunking change nothing: the keys come
    back in input order (DenseCL's three outputs too)."""
    m = _model(cls, shuffle_groups=groups).eval()
    x = _batch().views[1]
    shuffled = m.momentum_forward(x, torch.Generator().manual_seed(1))
    plain = m.momentum_forward(x)
    for a, b in zip(*((s,) if cls is MoCo else s for s in (shuffled, plain))):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
        assert not a.requires_grad


@pytest.mark.parametrize(
    "cls, names",
    [
        (MoCo, ["backbone", "head", "key_backbone", "key_head", "queue"]),
        (DenseCL, ["backbone", "heads", "key_backbone", "key_heads", "queue", "queue2"]),
        (
            PCL,
            [
                "assign0",
                "prototypes0",
                "phi0",
                "assign1",
                "prototypes1",
                "phi1",
                "backbone",
                "head",
                "key_backbone",
                "key_head",
                "queue",
            ],
        ),
        (BYOL, ["backbone", "projector", "predictor", "target_backbone", "target_projector"]),
    ],
)
def test_checkpoint_names(cls, names):
    """Checkpoints keep these top-level names (train.load_backbone reads `backbone.*`)."""
    keys = _model(cls).state_dict()
    assert list(dict.fromkeys(k.split(".")[0] for k in keys)) == names


def test_float32_policy_under_autocast():
    """Half-precision arguments are cast up and the function runs with autocast off: the same result
    as float32 without autocast; float64 stays float64."""
    g = torch.Generator().manual_seed(0)
    q, k = (torch.nn.functional.normalize(torch.randn(6, 8, generator=g), dim=1).bfloat16() for _ in range(2))
    queue = torch.nn.functional.normalize(torch.randn(8, 32, generator=g), dim=0)
    want = info_nce(q.float(), k.float(), queue, 0.2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = info_nce(q, k, queue, 0.2)
        dtypes = float32_without_autocast(lambda a, b: (a @ b).dtype)(q, queue)
    assert got.dtype == torch.float32 and torch.equal(got, want) and dtypes == torch.float32
    assert info_nce(q.double(), k.double(), queue.double(), 0.2).dtype == torch.float64
