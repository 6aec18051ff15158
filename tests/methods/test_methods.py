"""Every registered method through the shared trainer: exact mid-epoch resume, data-parallel
training on 2 gloo processes, and learning something on the default synthetic data."""

import numpy as np
import pytest
import torch
from sslstudy import axes, config
from sslstudy.methods import REGISTRY
from sslstudy.train import Stopped, train

from tests.helpers import final_weights, method_spec, read_metrics, run_ranks

METHODS = sorted(REGISTRY)


@pytest.mark.parametrize("method", METHODS)
def test_mid_epoch_resume_is_exact(method, tiny_data, subset128, tmp_path):
    """4 steps per epoch; stopping after 6 steps interrupts epoch 2 in the middle."""
    spec = method_spec(method, tiny_data / "natural", subset128)
    train(spec, tmp_path / "full")
    with pytest.raises(Stopped):
        train(spec, tmp_path / "part", stop_after=6)
    train(spec, tmp_path / "part")
    assert "resumed from last.pt (epoch 1 of 3, step 2 of 4)" in (tmp_path / "part" / "train.log").read_text()
    a, b = final_weights(tmp_path / "full"), final_weights(tmp_path / "part")
    assert a.keys() == b.keys()
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, f"{method}: resumed state differs in {diff[:5]}"


DDP_SCRIPT = """
import json, sys
from sslstudy.train import train
train(json.loads(sys.argv[1]), sys.argv[2])
"""


@pytest.mark.parametrize("method", METHODS)
def test_two_gloo_processes_train_and_agree(method, tiny_data, subset128, tmp_path):
    """DDP on CPU (global batch 32 = 2 x 16): training finishes and rank 0 alone writes the run folder."""
    import json

    spec = method_spec(method, tiny_data / "natural", subset128, epochs=2)
    run_ranks(DDP_SCRIPT, lambda r: [json.dumps(spec), str(tmp_path / ("rank0" if r == 0 else "run"))])
    assert (tmp_path / "rank0" / "final.pt").is_file() and not (tmp_path / "run" / "final.pt").exists()
    records = read_metrics(tmp_path / "rank0")
    assert len(records) == 2 and all(np.isfinite(r["loss"]) for r in records)


def test_official_defaults_validate():
    """params/methods/<method>.yaml holds each method's official hyper-parameters (sources in
    comments): one file per registered method, each valid against the schema."""
    import yaml

    files = sorted((config.SCHEMA.parents[2] / "params" / "methods").glob("*.yaml"))
    assert [f.stem for f in files] == METHODS
    for f in files:
        block = yaml.safe_load(f.read_text())["methods"]
        assert list(block) == [f.stem]
        cfg = config.validate(
            dict(study=dict(methods=[f.stem], domains=["natural"]), methods=block, pretrain=dict(epochs=100)), str(f)
        )
        spec = axes.pretrain_spec(cfg, axes.ssl_runs(cfg)[0])
        assert spec["views"][0]["size"] == 224


def test_official_recipes_synchronise_batch_norm_and_the_study_does_not():
    """sync_batchnorm: true where the official code synchronises batch norm across GPUs (SimCLR's
    global_bn, BYOL's cross-replica BN, SwAV's --sync_bn, Barlow Twins' convert_sync_batchnorm); the
    study's default (one process) is false for every method."""
    import yaml

    files = sorted((config.SCHEMA.parents[2] / "params" / "methods").glob("*.yaml"))
    synced = {f.stem for f in files if yaml.safe_load(f.read_text())["methods"][f.stem].get("sync_batchnorm")}
    assert synced == {"simclr", "byol", "swav", "barlow"}
    cfg = config.validate(dict(study=dict(methods=METHODS, domains=["natural"])))
    assert all(cfg["methods"][m]["sync_batchnorm"] is False for m in METHODS)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_under_cpu_bf16_autocast(method, tiny_data, subset128, tmp_path, monkeypatch):
    """precision bf16 on the CPU (this CPU's native-bf16 check forced on): every loss, queue, Sinkhorn,
    DenseCL match and k-means sees bf16 activations; the losses stay finite and the weights differ
    from an fp32 run's (autocast really ran)."""

    import sslstudy.device

    monkeypatch.setattr(sslstudy.device, "cpu_bf16", lambda: "forced by the test")
    spec = method_spec(method, tiny_data / "natural", subset128, epochs=2)
    train(dict(spec, precision="bf16"), tmp_path / "bf16")
    train(dict(spec, precision="fp32"), tmp_path / "fp32")
    assert "precision bf16 autocast on the CPU (forced by the test)" in (tmp_path / "bf16" / "train.log").read_text()
    losses = [r["loss"] for r in read_metrics(tmp_path / "bf16")]
    assert len(losses) == 2 and all(np.isfinite(losses)), losses
    a, b = final_weights(tmp_path / "bf16"), final_weights(tmp_path / "fp32")
    assert all(torch.isfinite(v).all() for v in a.values() if v.is_floating_point())
    assert any(not torch.equal(a[k], b[k]) for k in a), f"{method}: bf16 autocast changed nothing"


SIGNAL_SCRIPT = """
import json, os, signal, sys
import sslstudy.train as T
from sslstudy import distributed as dist

step = T._Trainer._step
def step_and_signal(self, *args):
    step(self, *args)
    if dist.rank() == 1 and self.pos.it == 1:  # after the epoch's 2nd step: a preemption warning for rank 1 only
        os.kill(os.getpid(), signal.SIGUSR2)
T._Trainer._step = step_and_signal
try:
    T.train(json.loads(sys.argv[1]), sys.argv[2])
except T.Stopped as e:
    print("STOPPED", str(e).rsplit(": ", 1)[1])
"""


def test_a_signal_on_one_rank_stops_every_rank_at_the_same_step(tiny_data, subset128, tmp_path):
    """SIGUSR2 on rank 1 only (2 gloo processes): the ranks sum their flags without waiting on it each
    step and both stop at the same step boundary; rank 0 saves last.pt there."""
    import json

    spec = method_spec("simclr", tiny_data / "natural", subset128, epochs=2)
    outs = run_ranks(SIGNAL_SCRIPT, lambda r: [json.dumps(spec), str(tmp_path / f"rank{r}")])
    stops = [next(ln for ln in o.splitlines() if ln.startswith("STOPPED")) for o in outs]
    assert stops[0] == stops[1] == "STOPPED stopped at epoch 0 step 3", (
        stops
    )  # signalled after step 1, read before step 3
    last = torch.load(tmp_path / "rank0" / "checkpoints" / "last.pt", weights_only=False)
    assert (last["epoch"], last["it"]) == (0, 3)
