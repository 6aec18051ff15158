"""The shared trainer: schedules, LARS, checkpoints, resume, divergence."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from sslstudy.checkpoint import list_checkpoints, load_backbone
from sslstudy.errors import UserError
from sslstudy.optim import LARS, cosine_schedule
from sslstudy.train import Diverged, Stopped, build_model, train

from tests.helpers import final_weights, read_metrics, tiny_spec, wait_for


def test_cosine_schedule():
    s = cosine_schedule(1.0, 0.1, total_steps=100, warmup_steps=10)
    assert len(s) == 100 and s[0] == 0.0 and s[10] == pytest.approx(1.0)
    assert np.all(np.diff(s[:11]) > 0) and np.all(np.diff(s[10:]) <= 1e-12)
    assert s[-1] == pytest.approx(0.1, abs=1e-3)


def test_lars_step_matches_formula():
    w = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))  # ||w|| = 5
    b = torch.nn.Parameter(torch.tensor([1.0]))
    w.grad, b.grad = torch.tensor([[0.6, 0.8]]), torch.tensor([0.5])
    opt = LARS([dict(params=[w], weight_decay=0.1), dict(params=[b], weight_decay=0.0, lars=False)], lr=0.5, eta=0.01)
    opt.step()
    d = np.array([0.6, 0.8]) + 0.1 * np.array([3.0, 4.0])  # grad + wd * w, norm 1.5
    trust = 0.01 * 5.0 / np.linalg.norm(d)
    np.testing.assert_allclose(w.detach().numpy()[0], np.array([3.0, 4.0]) - 0.5 * trust * d, rtol=1e-6)
    assert b.item() == pytest.approx(1.0 - 0.5 * 0.5)  # exempt group: plain SGD, no decay


def test_lars_decays_groups_without_trust_ratio():
    # lars=False skips only the trust ratio: weight decay still applies (DeepCluster's classifier group)
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    v = torch.nn.Parameter(torch.tensor([2.0]))
    opt = LARS(
        [dict(params=[w], weight_decay=0.1, momentum=0.0, lars=False), dict(params=[v], weight_decay=0.1, lars=False)],
        lr=0.5,
        momentum=0.9,
        eta=0.01,
    )
    for _ in range(2):
        w.grad, v.grad = torch.tensor([0.6, 0.8]), torch.tensor([0.5])
        opt.step()
    # w: no momentum, step 1: 0.5 * ([0.6, 0.8] + 0.1 * [3, 4]) -> [2.55, 3.4];
    # step 2: 0.5 * ([0.6, 0.8] + 0.1 * [2.55, 3.4]) -> [2.1225, 2.83]
    np.testing.assert_allclose(w.detach().numpy(), [2.1225, 2.83], rtol=1e-6)
    # v: d1 = 0.5 + 0.1 * 2 = 0.7 -> 1.65; d2 = 0.5 + 0.1 * 1.65 = 0.665, buffer 0.9 * 0.7 + 0.665 -> 1.0025
    assert v.item() == pytest.approx(1.0025, rel=1e-6)


def test_train_writes_checkpoints_and_resumes_exactly(tiny_data, subset128, tmp_path):
    spec = tiny_spec(tiny_data / "natural", subset128)
    full = tmp_path / "full"
    train(spec, full)
    assert [p.name for p in list_checkpoints(full)] == ["ep000.pt", "ep001.pt", "ep002.pt", "ep003.pt"]
    lines = read_metrics(full)
    assert [r["epoch"] for r in lines] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in lines)
    state = torch.load(full / "final.pt", weights_only=False)
    assert state["config"] == spec and state["epoch"] == 3

    # an interrupted run, stopped mid-epoch (4 steps per epoch) as a preemption would stop it
    part = tmp_path / "part"
    with pytest.raises(Stopped):
        train(spec, part, stop_after=6)
    assert not (part / "final.pt").exists()
    train(spec, part)
    assert "resumed from last.pt (epoch 1 of 3, step 2 of 4)" in (part / "train.log").read_text()
    a = torch.load(full / "final.pt", weights_only=False)["model"]
    b = torch.load(part / "final.pt", weights_only=False)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["epoch"] for r in read_metrics(full)] == [r["epoch"] for r in read_metrics(part)] == [1, 2, 3]

    # a line of an epoch that last.pt does not hold (killed between the two writes) and a cut line go
    with (part / "metrics.jsonl").open("a") as f:
        f.write('{"epoch": 4, "loss": 1.0}\n{"epo')
    train(dict(spec, threads=2), part)  # another thread count still resumes (a run may move to a SLURM node)
    assert [r["epoch"] for r in read_metrics(part)] == [1, 2, 3]

    # a changed config does not resume from the old checkpoints
    train(dict(spec, epochs=2), part)
    assert "made with another config; starting over" in (part / "train.log").read_text()

    # epoch 0 is the random initialisation of this seed, and differs from the trained weights
    rand, _ = load_backbone(full / "checkpoints" / "ep000.pt")
    trained, cfg = load_backbone(full / "final.pt")
    assert cfg == spec
    assert not torch.equal(rand.state_dict()["features.0.weight"], trained.state_dict()["features.0.weight"])
    assert not any(p.name.startswith(".") for p in (full / "checkpoints").iterdir())  # no temp files left


# a trainer that hangs once it has written part of the last.pt of epoch 2 (torch.save, into the temp
# file), and then touches the file argv[3]
HANGS_IN_A_SAVE = """
import json, pathlib, sys, time, torch
from sslstudy.train import train
save = torch.save
def save_or_hang(obj, f, *args, **kwargs):
    if isinstance(obj, dict) and obj.get("epoch") == 2 and "optimizer" in obj:
        f.write(b"the first bytes of a checkpoint")
        f.flush()
        pathlib.Path(sys.argv[3]).touch()
        time.sleep(600)
    return save(obj, f, *args, **kwargs)
torch.save = save_or_hang
train(json.loads(sys.argv[1]), sys.argv[2])
"""


def test_a_trainer_killed_while_saving_leaves_no_temp_file_once_resumed(tiny_data, subset128, tmp_path):
    """SIGKILL mid-write (a lost node; SLURM once its grace after SIGTERM is over) leaves the temp file, which
    no cleanup of the killed process removes: the run's next trainer does, and resumes exactly."""
    spec = tiny_spec(tiny_data / "natural", subset128)
    train(spec, tmp_path / "full")
    run, ck = tmp_path / "killed", tmp_path / "killed" / "checkpoints"
    hanging = tmp_path / "hanging"
    trainer = subprocess.Popen([sys.executable, "-c", HANGS_IN_A_SAVE, json.dumps(spec), str(run), str(hanging)])
    try:
        wait_for(hanging.exists, "the trainer to hang in its save of last.pt", 120)
    finally:
        trainer.kill()
        trainer.wait()
    assert [p.name for p in ck.glob(".*")] == [f".last.pt.tmp-{trainer.pid}"]  # what the kill left
    train(spec, run)
    assert not list(run.rglob(".*.tmp-*"))
    assert "resumed from last.pt (epoch 1 of 3, step 0 of 4)" in (run / "train.log").read_text()
    assert f"removed checkpoints/.last.pt.tmp-{trainer.pid}" in (run / "train.log").read_text()
    a, b = final_weights(tmp_path / "full"), final_weights(run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_epoch_checkpoints_hold_only_the_backbone(tiny_data, subset128, tmp_path):
    spec = tiny_spec(tiny_data / "natural", subset128, epochs=1)
    run = tmp_path / "run"
    train(spec, run)
    ep = torch.load(run / "checkpoints" / "ep001.pt", weights_only=False)
    full = torch.load(run / "final.pt", weights_only=False)  # the full checkpoint of the same epoch
    assert sorted(ep) == ["config", "epoch", "model"] and ep["epoch"] == full["epoch"] == 1 and ep["config"] == spec
    assert ep["model"] and all(k.startswith("backbone.") for k in ep["model"])
    assert "optimizer" in full and "optimizer" in torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    assert (run / "checkpoints" / "ep001.pt").stat().st_size < (run / "final.pt").stat().st_size
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(load_backbone(run / "checkpoints" / "ep001.pt")[0](x), load_backbone(run / "final.pt")[0](x))
        # ep000.pt: the initialisation of this seed
        assert torch.equal(load_backbone(run / "checkpoints" / "ep000.pt")[0](x), build_model(spec).backbone.eval()(x))


@pytest.mark.parametrize("rank", [1, 0])
def test_only_the_lead_rank_changes_files_on_resume(rank, tmp_path, monkeypatch):
    from sslstudy import distributed as dist
    from sslstudy.checkpoint import atomic_torch_save, resume_state

    cfg = dict(run="r", seed=0, threads=1)
    ck = tmp_path / "checkpoints"
    atomic_torch_save(dict(epoch=1, config=cfg), ck / "last.pt")
    atomic_torch_save(dict(epoch=1), ck / "ep001.pt")
    metrics = '{"epoch": 1}\n{"epoch": 2}\n'  # epoch 2 is not in last.pt
    (tmp_path / "metrics.jsonl").write_text(metrics)
    barriers = []
    monkeypatch.setattr(dist, "rank", lambda: rank)
    monkeypatch.setattr(dist, "barrier", lambda: barriers.append(sorted(p.name for p in ck.iterdir())))

    assert resume_state(tmp_path, cfg)["epoch"] == 1
    kept = (tmp_path / "metrics.jsonl").read_text()
    assert kept == (metrics if rank else '{"epoch": 1}\n')
    assert resume_state(tmp_path, dict(cfg, seed=1)) is None  # another config: the run starts over
    assert sorted(p.name for p in ck.iterdir()) == ([] if rank == 0 else ["ep001.pt", "last.pt"])
    # starting over drops the old run's records too (they would mix into the new run's history)
    assert (tmp_path / "metrics.jsonl").read_text() == (kept if rank else "")
    # each call waited for every rank with the files untouched
    assert barriers == [["ep001.pt", "last.pt"]] * 2


def test_nonfinite_loss_stops_at_once(tiny_data, subset128, tmp_path):
    spec = tiny_spec(
        tiny_data / "natural",
        subset128,
        optim=dict(name="sgd", lr=1e12, final_lr=0.0, momentum=0.9, weight_decay=0.0, eta=1e-3, warmup_epochs=0),
    )
    with pytest.raises(Diverged, match="lower pretrain.optim.lr"):
        train(spec, tmp_path / "run")
    assert not (tmp_path / "run" / "final.pt").exists()


DIVERGE_SCRIPT = """
import json, sys
import sslstudy.train as T
from sslstudy import distributed as dist
from sslstudy.methods.simclr import SimCLR

forward = SimCLR.forward
def forward_nan_on_rank_1(self, batch):
    loss, logs = forward(self, batch)
    return (loss * float("nan") if dist.rank() == 1 and batch.step == 5 else loss), logs
SimCLR.forward = forward_nan_on_rank_1
try:
    T.train(json.loads(sys.argv[1]), sys.argv[2])
except T.Diverged as e:
    print("DIVERGED", str(e).split(": ", 1)[1])
"""


def test_a_nonfinite_loss_on_one_rank_stops_every_rank(tiny_data, subset128, tmp_path):
    """2 gloo processes on one run folder, rank 1's loss NaN at the 2nd epoch's 2nd step: both ranks raise
    Diverged with that loss, step and rank (before the epoch is saved), instead of rank 0 waiting in DDP's
    all-reduce for a rank that already left; the line says the rerun resumes from the epoch before."""
    from tests.helpers import run_ranks

    spec = tiny_spec(tiny_data / "natural", subset128, batch_size=32, epochs=3)
    run_dir = tmp_path / "run"
    outs = run_ranks(DIVERGE_SCRIPT, lambda r: [json.dumps(spec), str(run_dir)], timeout=300)
    steps = len(np.load(subset128)) // 32
    assert steps == 4  # step 5 is the 2nd epoch's 2nd step (1-based epoch 2, 0-based step 1)
    said = [next((ln for ln in o.splitlines() if ln.startswith("DIVERGED")), o[-2000:]) for o in outs]
    line = (
        "DIVERGED loss is nan at epoch 2 step 1 on rank 1 of 2; lower pretrain.optim.lr (or methods.simclr.optim.lr "
        "where set; now 1.0) in params and rerun: it resumes from checkpoints/last.pt, the last finite state"
    )
    assert said == [line] * 2
    last = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=False)
    assert last["epoch"] == 1  # the epoch with the NaN was not saved
    assert not (run_dir / "checkpoints" / "ep002.pt").exists()
    assert (run_dir / "checkpoints" / "diverged.json").is_file()  # what lets the rerun with a lower lr resume


@pytest.mark.parametrize("wanted", [True, False])
def test_the_trainer_applies_the_methods_sync_batchnorm(tiny_data, subset128, tmp_path, monkeypatch, wanted):
    """methods.<m>.sync_batchnorm reaches distributed.sync_batchnorm with the run's device, before the
    optimiser is built (test_distributed.py: what it converts, and when)."""
    from sslstudy import distributed as dist

    asked = []
    monkeypatch.setattr(
        dist, "sync_batchnorm", lambda model, want, device, what: asked.append((want, device.type)) or model
    )
    spec = tiny_spec(
        tiny_data / "natural",
        subset128,
        epochs=1,
        optim=dict(tiny_spec(tiny_data, subset128)["optim"], warmup_epochs=0),
    )
    spec["method"]["params"]["sync_batchnorm"] = wanted
    train(spec, tmp_path / "run")
    assert asked == [(wanted, "cpu")]


def test_batch_larger_than_subset(tiny_data, subset128, tmp_path):
    spec = tiny_spec(tiny_data / "natural", subset128, batch_size=1024)
    with pytest.raises(
        UserError,
        match=(
            f"fewer than one batch of 1024; lower methods.{spec['method']['name']}.batch_size, "
            "else pretrain.batch_size$"
        ),
    ):
        train(spec, tmp_path / "run")


@pytest.mark.parametrize("arch,dim", [("resnet18", 512), ("resnet50", 2048), ("cnn4", 64)])
def test_backbones(arch, dim):
    from sslstudy.models import build_backbone

    net = build_backbone(arch, width=8, small_stem=True).eval()
    with torch.no_grad():
        out = net(torch.zeros(2, 3, 32, 32))
    assert out.shape == (2, dim) and net.out_dim == dim
    if arch != "cnn4":
        assert net.net.conv1.kernel_size == (3, 3) and isinstance(net.net.maxpool, torch.nn.Identity)
        assert build_backbone(arch, small_stem=False).net.conv1.kernel_size == (7, 7)


def test_unknown_backbone():
    from sslstudy.models import build_backbone

    with pytest.raises(UserError, match="pretrain.backbone.arch"):
        build_backbone("vgg")


# ----------------------------------------------------------------------------- device, precision, data overlap
def test_a_gpu_request_without_cuda_is_one_line(tiny_data, subset128, tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    spec = tiny_spec(tiny_data / "natural", subset128)
    for over, asked in (
        (dict(device="auto", gpus=2), "the job has 2 GPU(s) (launch.pretrain.gpus)"),
        (dict(device="cuda"), "pretrain.device is cuda"),
    ):
        with pytest.raises(UserError) as e:
            train(dict(spec, **over), tmp_path / "run")
        msg = str(e.value)
        assert (
            "\n" not in msg and asked in msg and "torch sees no CUDA device" in msg and "pretrain.device: cpu" in msg
        ), msg
    train(dict(spec, gpus=2, device="cpu", epochs=1, optim=dict(spec["optim"], warmup_epochs=0)), tmp_path / "cpu")
    assert "device cpu" in (tmp_path / "cpu" / "train.log").read_text()


def test_bf16_on_a_cpu_without_it_stops_or_falls_back_when_allowed(tiny_data, subset128, tmp_path, monkeypatch):
    import sslstudy.device

    monkeypatch.setattr(sslstudy.device, "cpu_bf16", lambda: None)
    spec = tiny_spec(
        tiny_data / "natural",
        subset128,
        epochs=1,
        optim=dict(tiny_spec(tiny_data, subset128)["optim"], warmup_epochs=0),
    )
    with pytest.raises(UserError) as e:
        train(dict(spec, precision="bf16"), tmp_path / "stop")
    assert "\n" not in str(e.value) and "no native bf16" in str(e.value) and "precision_fallback: true" in str(e.value)
    train(dict(spec, precision="bf16", precision_fallback=True), tmp_path / "fallback")
    train(dict(spec, precision="auto"), tmp_path / "auto")
    text = (tmp_path / "fallback" / "train.log").read_text()
    assert "training in fp32 (pretrain.precision_fallback: true)" in text and "precision fp32 (bf16 asked" in text
    assert (
        "precision fp32 (precision auto: this CPU has no native bf16" in (tmp_path / "auto" / "train.log").read_text()
    )
    a = torch.load(tmp_path / "fallback" / "final.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "auto" / "final.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)  # the fallback is plain fp32


class _OnTheCaller:
    """A ThreadPoolExecutor stand-in that reads each batch on the calling (main) thread: the loop as it
    was before the reader thread."""

    def __init__(self, *a, **kw):
        pass

    def shutdown(self, wait=True):
        pass

    def submit(self, fn, *args):
        from concurrent.futures import Future

        f = Future()
        f.set_result(fn(*args))
        return f


@pytest.mark.parametrize("method", ["simclr", "moco"])  # MoCo's forward draws from the views' generator too
def test_reading_and_views_ahead_in_a_thread_change_no_bit(method, tiny_data, subset128, tmp_path, monkeypatch):
    """With a core to spare, the next batch is read and its views made in a background thread while the
    step's backward runs: the same weights, bit for bit, as reading and making views on the main thread."""
    import threading

    import sslstudy.data.prefetch as P

    from tests.helpers import method_spec

    spec = method_spec(method, tiny_data / "natural", subset128, epochs=2)
    calls, read = [], P.Prefetcher._read

    def spy(self, it, params=None):
        calls.append((threading.current_thread().name, params is not None))
        return read(self, it, params)

    monkeypatch.setattr(P.Prefetcher, "_read", spy)
    monkeypatch.setattr(P.os, "sched_getaffinity", lambda pid: {0, 1})
    train(spec, tmp_path / "ahead")
    steps = len(calls) // 2
    assert steps > 2 and all(n.startswith("sslstudy-read") for n, _ in calls), calls
    assert [v for _, v in calls] == 2 * ([False] + [True] * (steps - 1))  # an epoch's first views: on the main thread
    monkeypatch.setattr(P, "ThreadPoolExecutor", _OnTheCaller)
    monkeypatch.setattr(P.os, "sched_getaffinity", lambda pid: {0})  # no core to spare: views on the main thread
    calls.clear()
    train(spec, tmp_path / "inline")
    assert calls == [(threading.main_thread().name, False)] * (2 * steps)
    a = torch.load(tmp_path / "ahead" / "final.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "inline" / "final.pt", weights_only=False)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


OPTIMIZERS = """
import sys, torch
if sys.argv[1] == "dynamo":
    import torch._dynamo
from sslstudy.optim import build_optimizer
torch.manual_seed(0)
out = []
for wd in (1e-4, 0.0):
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    net.optim_groups = lambda wd: [dict(params=list(net.parameters()), weight_decay=wd, lars=True)]
    opt = build_optimizer(net, dict(name="lars", momentum=0.9, eta=0.001, weight_decay=wd), 0.5)
    for _ in range(3):
        opt.zero_grad()
        net(torch.randn(8, 4)).square().mean().backward()
        opt.step()
    opt.load_state_dict(opt.state_dict())
    out += [p.sum().item() for p in net.parameters()]
print("torch._dynamo" in sys.modules, out)
"""


def test_lars_runs_without_importing_dynamo_and_steps_the_same():
    """optim.skip_dynamo_import: building, stepping and (re)loading LARS leaves torch._dynamo unimported (a second
    of start-up per pretraining job) and gives the weights of optimizers whose dynamo guard ran.
    (torch.optim's own steps, e.g. SGD's, still import it.)"""
    import subprocess
    import sys

    lean, guarded = (
        subprocess.run([sys.executable, "-c", OPTIMIZERS, how], capture_output=True, text=True, check=True).stdout
        for how in ("lean", "dynamo")
    )
    assert lean.startswith("False ") and guarded.startswith("True ")
    assert lean.split(" ", 1)[1] == guarded.split(" ", 1)[1]
