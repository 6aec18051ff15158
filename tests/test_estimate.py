"""sslstudy.estimate: one step under fake tensors; the simulated ranks give a gather its world's rows;
in worker processes (sslstudy.cost.estimate) a worker that dies costs only its task."""

import subprocess
import sys

import pytest
import torch
from sslstudy import cost, estimate

from tests.helpers import method_spec


def spec(method: str = "simclr", width: int = 4, batch_size: int = 16) -> dict:
    """A pretraining spec as sslstudy.cost sizes it (no seed, data, threads), the method's schema defaults."""
    s = method_spec(method, "unused", "unused", backbone=dict(arch="cnn4", width=width), batch_size=batch_size)
    return {k: v for k, v in s.items() if k not in ("run", "seed", "data", "threads", "on_collapse")}


def task(method="simclr", per_gpu=8, world=1) -> dict:
    return dict(kind="pretrain", spec=spec(method), per_gpu=per_gpu, world=world, n_train=64, image_size=32)


def test_a_gather_has_the_rows_of_every_rank():
    with estimate.simulated_ranks(4):
        from sslstudy import distributed

        x = torch.ones(3, 2, requires_grad=True)
        assert distributed.world() == 4 and distributed.local_slice(12) == slice(0, 3)
        assert distributed.gather(x).shape == (12, 2)
        distributed.gather_with_grad(x).sum().backward()
        assert torch.equal(x.grad, torch.ones(3, 2))  # this rank's rows carry the gradient
    assert distributed.world() == 1


def test_simclr_logits_grow_with_the_world():
    """SimCLR's logits are over the global batch: at the same per-GPU batch, 8 ranks need more memory
    on each than 1, and the FLOPs per image grow too (the (2N)^2 similarity)."""
    one, eight = (estimate.run_task(task(world=w)) for w in (1, 8))
    assert eight["peak_bytes"] > one["peak_bytes"] and eight["flops_per_image"] > one["flops_per_image"]


def test_a_worker_that_dies_fails_only_its_task(monkeypatch):
    """The first worker reports its first task, then dies (as a fake-tensor crash would): its other task
    runs again alone and succeeds; a task that raises is reported with its error."""
    real = cost._worker
    calls = []

    def dying(tasks):
        calls.append(list(tasks))
        if len(calls) > 1:
            return real(tasks)
        first = next(iter(tasks))
        code = f"import json, os; print(json.dumps({{{first!r}: {{'peak_bytes': 1}}}}), flush=True); os._exit(9)"
        return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)

    monkeypatch.setattr(cost, "_worker", dying)
    bad = dict(task(), per_gpu=0)  # no images: the step fails
    out = cost.estimate({"a": task(), "b": task("moco"), "c": bad}, workers=1)
    assert out["a"] == {"peak_bytes": 1}
    assert out["b"]["peak_bytes"] > 0 and out["b"]["flops_per_image"] > 0
    assert set(out["c"]) == {"error"}
    assert calls == [["a", "b", "c"], ["b"], ["c"]]


METHODS = ["simclr", "moco", "byol", "swav", "barlow", "densecl", "deepcluster", "pcl"]


@pytest.mark.parametrize("method", METHODS)
def test_the_estimate_is_within_25_percent_of_the_measured_peak(method):
    """A small real configuration of each method (the default study's backbone, cnn4 width 16, its
    schema-default heads, 64 images at 32 px): the fake-tensor estimate of one step against the same
    step with real tensors on the CPU, measured from the CPU allocator (estimate.measured). In float32:
    under bf16 autocast the CPU's kernels allocate conversions a GPU's don't (docs/preflight.md)."""
    s = spec(method, width=16, batch_size=64)
    args = dict(spec=s, per_gpu=64, world=1, n_train=512, image_size=32, autocast=False)
    estimated = estimate.run_task(dict(kind="pretrain", **args))
    torch.manual_seed(0)
    model, opt, images, step = estimate.pretrain_setup(**args)
    real = estimate.measured(step, model, opt, images)
    assert 0.75 <= estimated["peak_bytes"] / real <= 1.25, (estimated["peak_bytes"], real)
    if method == "deepcluster":  # and the per-epoch whitening beside the model
        epoch = estimate.deepcluster_epoch(model, 512, 1)
        ratio = estimated["clustering_peak_bytes"] / estimate.measured(epoch, model, opt)
        assert 0.75 <= ratio <= 1.25, ratio
