"""Peak memory and FLOPs of the study's jobs without running them: one step of each under fake
tensors on the CPU (torch's FakeTensorMode: shapes and dtypes, no storage), its peak from MemTracker
(torch.distributed._tools.mem_tracker: every tensor alive at once, rounded as the CUDA caching
allocator rounds) and its FLOPs from FlopCounterMode. The device does not change the sizes, so the
fake tensors are CPU ones (they allow the backward pass) under the CPU's bf16 autocast, as the
trainer runs on GPUs.

A data-parallel job is sized on one rank with the collectives of sslstudy.distributed simulated
(`simulated_ranks`): a gather returns as many rows as the world would, so SimCLR's global logits,
shuffle-BN's gathered batch and the queues' gathered keys have their real sizes.

What fake tensors can't run is worked around here, not skipped (sslstudy.preflight reports them):
a host read of a tensor's value (`.item()`, `int(t)`, `bool(t)`: Queue.push's pointer, DeepCluster's
NMI log, PCL's logs) returns 0 (`_HostReads`); SwAV is sized with its queue full (its fill counter a
plain int); PCL's negative prototypes are drawn without `nonzero` (a shape that depends on values);
faiss (k-means) and the embedding caches on the host are sized by formula in sslstudy.preflight.

`run_task` sizes one task; `python -m sslstudy.estimate TASKS.json` is a worker process
(sslstudy.cost.estimate shares the tasks among a few, so that a crash, which fake tensors have
caused, costs one task).
"""

from __future__ import annotations

import contextlib
import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch
from torch.distributed._tools.mem_tracker import MemTracker
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode


class _HostReads(TorchDispatchMode):
    """A value read back to Python from a fake tensor (aten._local_scalar_dense: .item(), int(), bool(),
    float()) returns 0 / False instead of failing: the sizes never depend on it here."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            t = args[0]
            return False if t.dtype == torch.bool else 0.0 if t.is_floating_point() else 0
        return func(*args, **(kwargs or {}))


class _PeakTracker(MemTracker):
    """MemTracker keeping the per-device peak only: its per-module peak snapshots, which this module
    does not read, cost most of its time (a loop over every module at every op). Without its gradient
    hooks, which it would put on frozen parameters too (a momentum copy's) and fail: every gradient
    is still counted, as the output of the backward op that makes it."""

    def _track_module_params_and_buffers(self, module, install_grad_hooks: bool = True):
        return super()._track_module_params_and_buffers(module, install_grad_hooks=False)

    def _update_peak_stats(self, peak_state) -> None:
        for dev, snap in self._curr_mem_snap.items():
            if self._peak_mem.get(dev, 0) < snap["Total"]:
                self._peak_mem[dev] = snap["Total"]
                self._peak_mem_snap[dev] = dict(snap)


def measure(step, *tracked) -> tuple[int, int]:
    """(peak bytes, FLOPs) of step() under the fake mode already entered: the tensors, modules and
    optimisers in ``tracked`` (made before) count from the start, everything step() makes while it is alive."""
    tracker = _PeakTracker()
    tracker.track_external(*tracked)
    flops = FlopCounterMode(display=False)
    with tracker, flops, _HostReads():
        step()
    peak = sum(snap["Total"] for snap in tracker.get_tracker_snapshot("peak").values())
    return int(peak), int(flops.get_total_flops())


@contextlib.contextmanager
def simulated_ranks(world: int):
    """sslstudy.distributed as rank 0 of `world` processes: gathers return `world` times the rows
    (allocated as all_gather allocates them: one buffer per rank, then the concatenation), reductions
    and barriers do nothing."""
    from . import distributed

    def gather(x):
        with torch.no_grad():
            return torch.cat([x, *(torch.empty_like(x) for _ in range(world - 1))])

    def gather_with_grad(x):
        return torch.cat([x, *(torch.empty_like(x) for _ in range(world - 1))])

    with _patched(
        distributed,
        world=lambda: world,
        rank=lambda: 0,
        gather=gather,
        gather_with_grad=gather_with_grad,
        all_reduce_sum=lambda x, group=None: x,
        all_reduce_sum_async=lambda x, group=None: None,
        barrier=lambda: None,
    ):
        yield


@contextlib.contextmanager
def _fake():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=True):
        yield


def _momentum_copy(module: torch.nn.Module) -> torch.nn.Module:
    """methods.base.momentum_copy for fake modules (deepcopy can't copy a fake tensor's storage):
    the same module with fresh tensors of the same shapes."""
    fresh = {id(t): torch.empty_like(t) for t in module.buffers()}
    fresh.update({id(p): torch.nn.Parameter(torch.empty_like(p), requires_grad=False) for p in module.parameters()})
    return copy.deepcopy(module, fresh)


@contextlib.contextmanager
def _patched(module, **replacements):
    saved = {k: getattr(module, k) for k in replacements}
    for k, v in replacements.items():
        setattr(module, k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(module, k, v)


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _warm(model: torch.nn.Module, opt: torch.optim.Optimizer) -> None:
    """The optimiser's state as in every step after the first (momentum buffers), so the step's peak
    counts it: one step on zero gradients."""
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    opt.step()
    opt.zero_grad(set_to_none=True)


# ----------------------------------------------------------------------------- the tasks
def pretrain_step(spec: dict, per_gpu: int, world: int, n_train: int, image_size: int, autocast: bool = True) -> dict:
    """One training step of a pretraining run at `per_gpu` images on each of `world` ranks (from the
    second step on: optimiser state warm, SwAV's queue in use, PCL's prototypes in the loss, no
    prototype freeze), then the method's per-epoch clustering where it has one. autocast: the forward
    in bf16, as on GPUs (the trainer's precision auto); off, in float32."""
    from .methods import base, pcl

    negatives = lambda pos, k, r, gen: torch.zeros(min(r, k), dtype=torch.long, device=pos.device)  # noqa: E731
    with _patched(pcl, sample_negatives=negatives), _patched(base, momentum_copy=_momentum_copy):
        with simulated_ranks(world), _fake():
            model, opt, images, step = pretrain_setup(spec, per_gpu, world, n_train, image_size, autocast)
            peak, flops = measure(step, model, opt, images)
            params = [p for p in model.parameters()]
            out = dict(
                peak_bytes=peak,
                flops_per_image=flops / per_gpu,
                grad_bytes=_nbytes(p for p in params if p.requires_grad),
                model_bytes=_nbytes(model.state_dict().values()),
                backbone_bytes=_nbytes(model.backbone.state_dict().values()),
                optimizer_bytes=_nbytes(t for s in opt.state.values() for t in s.values() if torch.is_tensor(t)),
                embed_dim=int(model.backbone.out_dim),
            )
            if spec["method"]["name"] == "deepcluster":
                out["clustering_peak_bytes"] = measure(deepcluster_epoch(model, n_train, world), model, opt)[0]
    return out


def pretrain_setup(spec: dict, per_gpu: int, world: int, n_train: int, image_size: int, autocast: bool = True) -> tuple:
    """(model, optimiser, the rank's batch of images, step()) of a pretraining run as it is at a late
    step (see pretrain_step), with fake tensors or real ones, whichever mode is on."""
    from .methods.base import Batch
    from .optim import build_optimizer
    from .train import build_model

    spec = dict(spec, batch_size=per_gpu * world, seed=0)  # the seed changes no size
    epoch = spec["epochs"] - 1
    total = spec["epochs"] * max(1, n_train // spec["batch_size"])
    step_index = total - 1
    gen = torch.Generator().manual_seed(0)
    model = build_model(spec, n_train)
    if spec["method"]["name"] == "swav" and model.queues:
        model.filled = spec["method"]["params"]["queue_length"]  # the queue full (its count: a plain int)
    if spec["method"]["name"] == "deepcluster":
        model.labels.zero_()  # as after the first k-means
    opt = build_optimizer(model, spec["optim"], spec["optim"]["lr"])
    _warm(model, opt)
    # the rank's batch as read (uint8, pinned, copied to the GPU), before its views are made
    images = torch.zeros(per_gpu, image_size, image_size, 3, dtype=torch.uint8)

    def step():
        views = [
            torch.rand(per_gpu, 3, v.size, v.size, generator=gen).contiguous(memory_format=torch.channels_last)
            for v in model.view_specs
        ]
        # the index on the host too, as the trainer gives it (PCL reads its batch's clusters there)
        batch = Batch(views, torch.arange(per_gpu), step_index, total, epoch, gen, np.arange(per_gpu))
        model.before_step(step_index, total)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss, _ = model(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        model.before_optimizer_step(step_index)
        opt.step()
        model.after_step(step_index, total)

    return model, opt, images, step


def measured(step, *tracked) -> int:
    """Peak bytes of step() run with real tensors on the CPU: the tensors of ``tracked`` (modules,
    optimisers, tensors) alive at its start, plus the highest level the CPU allocator reached during it
    (torch.profiler's memory events: every allocation and free, in order). What an estimate is checked
    against (tests/test_estimate.py, docs/preflight.md)."""
    from torch.profiler import ProfilerActivity, profile

    storages = {}
    for obj in tracked:
        if isinstance(obj, torch.nn.Module):
            tensors = [*obj.parameters(), *obj.buffers()]
        elif isinstance(obj, torch.optim.Optimizer):
            tensors = [t for s in obj.state.values() for t in s.values() if torch.is_tensor(t)]
        else:
            tensors = [obj]
        for t in tensors:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    level = peak = 0
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]  # one per allocation/free
    for e in sorted(events, key=lambda e: e.start_ns()):
        level += e.nbytes()
        peak = max(peak, level)
    return sum(storages.values()) + peak


EMBED_BATCH = 256  # train.Context.features' batch


def deepcluster_epoch(model, n_train: int, world: int):
    """DeepCluster's per-epoch clustering on one rank, as a step to size: its share of the features as
    eval.features.embed makes them (a batch at a time, then concatenated), then pca_whiten (float64 covariance
    and chunks, the gathered (N, pca_dim) result). k-means (faiss) is sized by sslstudy.cost."""
    from .methods.deepcluster import pca_whiten

    per, dim = -(-n_train // world), model.top.in_features

    def epoch():
        feats = torch.cat([torch.randn(min(EMBED_BATCH, per - i), dim) for i in range(0, per, EMBED_BATCH)])
        pca_whiten(feats, model.cfg["pca_dim"], n_train)

    return epoch


def embed_forward(backbone: dict, batch: int, image_size: int, size: int) -> dict:
    """The evaluation's embedding (eval.features.embed): the backbone in eval mode on `batch` stored images
    resized to `size`, bf16 autocast, no gradient."""
    from .augment import eval_view
    from .models import build_backbone

    with _fake():
        net = build_backbone(**backbone).eval()
        images = torch.empty(batch, image_size, image_size, 3, dtype=torch.uint8)

        @torch.no_grad()
        def step():
            x = eval_view(images, size).contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                net(x).float()

        peak, flops = measure(step, net, images)
        return dict(peak_bytes=peak, flops_per_image=flops / batch, embed_dim=int(net.out_dim))


def finetune_step(backbone: dict, batch: int, size: int, n_classes: int) -> dict:
    """One step of fine-tuning or supervised training (eval.lowshot.train_classifier): the backbone and
    a linear head on `batch` views, bf16 autocast, SGD with Nesterov momentum."""
    from .eval.lowshot import Classifier
    from .models import build_backbone

    with _fake():
        model = Classifier(build_backbone(**backbone), n_classes)
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
        _warm(model, opt)
        y = torch.zeros(batch, dtype=torch.long)

        def step():
            views = torch.empty(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = model(views)
            loss = torch.nn.functional.cross_entropy(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        peak, flops = measure(step, model, opt, y)
        return dict(peak_bytes=peak, flops_per_image=flops / batch, model_bytes=_nbytes(model.state_dict().values()))


TASKS = dict(pretrain=pretrain_step, embed=embed_forward, finetune=finetune_step)


def run_task(task: dict) -> dict:
    """A task is {"kind": one of TASKS, **its arguments}."""
    torch.set_num_threads(1)
    args = {k: v for k, v in task.items() if k != "kind"}
    return TASKS[task["kind"]](**args)


def _serve(path: str) -> None:
    """A worker: {key: task} (a JSON file), one {key: result or {"error": why}} line per task on stdout."""
    tasks = json.loads(Path(path).read_text())
    Path(path).unlink()
    for key, task in tasks.items():
        try:
            result = run_task(task)
        except Exception as e:  # noqa: BLE001 - reported as that job's problem
            result = dict(error=f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}")
        print(json.dumps({key: result}), flush=True)


if __name__ == "__main__":
    _serve(sys.argv[1])
