"""The NaN guard (sslstudy.divergence): a non-finite value never reaches a checkpoint, the error names
the tensor and the epoch, and the rerun with a lower lr resumes from the last finite checkpoint."""

import json

import pytest
import torch
from sslstudy.data.packed import load_dataset
from sslstudy.data.subsets import nested_subsets, save_indices
from sslstudy.methods.simclr import SimCLR
from sslstudy.train import Diverged, build_model, train

from tests.helpers import tiny_spec


@pytest.fixture()
def subset(tiny_data, tmp_path):
    path = tmp_path / "subset.npy"
    save_indices(path, nested_subsets(load_dataset(tiny_data / "natural").labels, [128], seed=0)[128])
    return path


def first_batch_norm(model: torch.nn.Module) -> str:
    return next(n for n, m in model.backbone.named_modules() if isinstance(m, torch.nn.BatchNorm2d))


def poison_running_var_at(epoch_index: int):
    """Method.before_epoch that sets the backbone's first batch norm's running variance to inf at the
    start of epoch_index (0-based): the training-mode loss stays finite, the checkpoint would not."""
    original = SimCLR.before_epoch

    def before_epoch(self, epoch, ctx):
        original(self, epoch, ctx)
        if epoch == epoch_index:
            dict(self.backbone.named_modules())[first_batch_norm(self)].running_var.fill_(float("inf"))

    return before_epoch


def checkpoint_tensors(path) -> list[torch.Tensor]:
    state = torch.load(path, weights_only=False)
    found = list(state["model"].values())
    for s in state.get("optimizer", {}).get("state", {}).values():
        found += [v for v in s.values() if torch.is_tensor(v)]
    return [t for t in found if t.is_floating_point()]


def test_a_nonfinite_buffer_is_never_checkpointed_and_a_lower_lr_resumes(tiny_data, subset, tmp_path, monkeypatch):
    spec = tiny_spec(tiny_data / "natural", subset, epochs=4)
    run = tmp_path / "run"
    monkeypatch.setattr(SimCLR, "before_epoch", poison_running_var_at(2))
    with pytest.raises(Diverged) as e:
        train(spec, run)
    monkeypatch.undo()
    bn = first_batch_norm(build_model(spec))
    assert str(e.value) == (
        f"{run}: backbone.{bn}.running_var is not finite after epoch 3, not checkpointed; lower pretrain.optim.lr "
        "(or methods.simclr.optim.lr where set; now 1.0) in params and rerun: it resumes from checkpoints/last.pt, "
        "the last finite state"
    )
    ckpts = run / "checkpoints"
    assert sorted(p.name for p in ckpts.glob("*.pt")) == ["ep000.pt", "ep001.pt", "ep002.pt", "last.pt"]
    for p in ckpts.glob("*.pt"):
        assert all(torch.isfinite(t).all() for t in checkpoint_tensors(p)), p.name
    assert torch.load(ckpts / "last.pt", weights_only=False)["epoch"] == 2
    assert json.loads((ckpts / "diverged.json").read_text())["lr"] == 1.0

    lower = dict(spec, optim=dict(spec["optim"], lr=0.5))
    train(lower, run)
    log = (run / "train.log").read_text()
    assert "the run diverged with lr 1; resuming from its last finite checkpoint with lr 0.5" in log
    assert "resumed from last.pt (epoch 2 of 4, step 0 of 4)" in log and "starting over" not in log
    final = torch.load(run / "final.pt", weights_only=False)
    assert final["config"] == lower and final["epoch"] == 4
    assert all(torch.isfinite(t).all() for t in checkpoint_tensors(run / "final.pt"))
    assert [json.loads(ln)["epoch"] for ln in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    assert not (ckpts / "diverged.json").exists()  # finished: a later lr change starts over, as any change does


def test_the_check_names_a_bad_optimiser_state_and_passes_a_finite_one():
    from sslstudy.divergence import first_nonfinite
    from sslstudy.optim import LARS  # torch.optim's SGD would import torch._dynamo on its first step: seconds

    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    opt = LARS(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    assert first_nonfinite(model, opt) is None
    opt.state[model[0].bias]["momentum_buffer"][0] = float("nan")
    assert first_nonfinite(model, opt) == "the optimiser's momentum_buffer of 0.bias"
    model[1].running_mean[1] = float("-inf")
    assert first_nonfinite(model, opt) == "1.running_mean"
