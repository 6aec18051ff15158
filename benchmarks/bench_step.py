"""The project's whole training step vs a bare step of the same model, side by side in one process.

    PYTHONPATH=ssl python benchmarks/bench_step.py [--tiny] [--methods simclr byol swav] [--compile]
        [--arch resnet50 --size 224 --batch 256 --precision bf16] [--width 16] [--steps 6] [--rounds 2]

ours: sslstudy.train.train on a synthetic domain for two epochs; its second epoch's `seconds` in
metrics.jsonl times the step loop alone (read from the memmap one batch ahead, views, forward/backward,
LARS, schedules, logs; no checkpoint or health check). bare: the same model (sslstudy.train.build_model,
same config and seed) trained by a loop written inline here: the first batch's views made once and
kept on the device, the method's loss written out (SimCLR's NT-Xent, BYOL's regression to a momentum
target, SwAV's swapped prediction with Sinkhorn codes over multi-crop views), plain SGD. Same batch
size, views and precision; the ratio ours/bare is what the trainer's data, views and bookkeeping cost.
Rounds alternate ours and bare; the best round of each is printed (least disturbed by other processes).
On CUDA it also prints MFU (model FLOPs of a bare step, from torch.utils.flop_counter, over the GPU's
dense bf16 peak) and peak GPU memory; everywhere the process's peak host RSS.
--tiny: a 2-core CPU size that CI runs in seconds (tests/test_benchmarks.py).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ssl"))

from sslstudy import axes, config  # noqa: E402
from sslstudy.augment import ViewSpec, make_views  # noqa: E402
from sslstudy.data.packed import load_dataset  # noqa: E402
from sslstudy.data.subsets import load_indices, nested_subsets, save_indices  # noqa: E402
from sslstudy.data.synth import generate  # noqa: E402
from sslstudy.device import choose_device, choose_precision  # noqa: E402
from sslstudy.train import build_model, train  # noqa: E402

#: dense bf16 peak (FLOP/s) by GPU name, from the vendors' data sheets (SXM parts)
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12}


def spec_for(method: str, a, dataset: Path, subset: Path) -> dict:
    """The run spec the workflow would build (schema defaults for the method), at this size."""
    views = dict(size=a.size)
    p = dict(
        epochs=2,
        batch_size=a.batch,
        checkpoint_every=2,
        threads=a.threads,
        precision=a.precision,
        compile=a.compile,
        backbone=dict(arch=a.arch, width=a.width, small_stem=a.size < 64),
        views=views,
        optim=dict(warmup_epochs=0),
    )
    methods = {}
    if method == "swav":  # multi-crop: 2 full-size views and 6 small ones (SwAV's 2x224 + 6x96)
        small = max(8, round(a.size * 96 / 224))
        methods["swav"] = dict(
            views=[dict(repeat=2), dict(repeat=6, size=small, scale=[0.05, 0.14])], queue_start_epoch=10**6
        )
    cfg = config.validate(dict(study=dict(methods=[method], domains=["natural"]), pretrain=p, methods=methods))
    spec = axes.pretrain_spec(cfg, axes.ssl_runs(cfg)[0])
    spec["data"] = dict(dataset=str(dataset), subset=str(subset))
    return spec


def ours(spec: dict, run_dir: Path) -> float:
    """images/s of the trainer's second epoch."""
    train(spec, run_dir)
    rec = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    steps = rec["step"] // rec["epoch"]
    return steps * spec["batch_size"] / rec["seconds"]


def first_views(spec: dict, model, device) -> list[torch.Tensor]:
    ds = load_dataset(spec["data"]["dataset"])
    rows = np.sort(load_indices(spec["data"]["subset"]))[: spec["batch_size"]]
    images = torch.from_numpy(ds.images[rows]).to(device)
    gen = torch.Generator().manual_seed(0)
    return [make_views(images, ViewSpec(**v), gen).contiguous(memory_format=torch.channels_last) for v in spec["views"]]


def bare_loss(method: str, m, views: list[torch.Tensor], c: dict) -> torch.Tensor:
    """The method's loss written out on the model's own modules."""
    if method == "simclr":
        z = F.normalize(torch.cat([m.projector(m.backbone(v)) for v in views[:2]]), dim=1)
        n = views[0].shape[0]
        logits = (z @ z.T / c["temperature"]).float().fill_diagonal_(float("-inf"))
        return F.cross_entropy(logits, torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device))
    if method == "byol":
        p = [F.normalize(m.predictor(m.projector(m.backbone(v))), dim=1) for v in views[:2]]
        with torch.no_grad():
            z = [F.normalize(m.target_projector(m.target_backbone(v)), dim=1) for v in views[:2]]
        return (4 - 2 * (p[0] * z[1]).sum(1) - 2 * (p[1] * z[0]).sum(1)).mean()
    if method == "swav":
        feats, sizes = [], sorted({v.shape[-1] for v in views}, reverse=True)
        for s in sizes:  # same-size crops through the backbone together
            feats.append(m.backbone(torch.cat([v for v in views if v.shape[-1] == s])))
        z = F.normalize(m.projector(torch.cat(feats)), dim=1)
        scores = m.prototypes(z).float().chunk(len(views))
        loss = 0.0
        for a in (0, 1):
            with torch.no_grad():  # Sinkhorn-Knopp codes of view a
                q = torch.exp(scores[a].detach() / c["epsilon"]).T
                q /= q.sum()
                k, b = q.shape
                for _ in range(c["sinkhorn_iterations"]):
                    q /= q.sum(1, keepdim=True) * k
                    q /= q.sum(0, keepdim=True) * b
                q = (q * b).T
            for v in range(len(views)):
                if v != a:
                    loss = loss - (q * F.log_softmax(scores[v] / c["temperature"], dim=1)).sum(1).mean()
        return loss / (2 * (len(views) - 1))
    raise ValueError(method)


def bare(method: str, spec: dict, device, dtype, steps: int, compile_: bool) -> tuple[float, float]:
    """images/s of the inline loop, and the FLOPs of one of its steps."""
    torch.set_num_threads(spec["threads"])
    model = build_model(spec, 10**6).to(device, memory_format=torch.channels_last)
    if compile_:
        model.backbone.compile()
    views, c = first_views(spec, model, device), spec["method"]["params"]
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    pairs = (
        [(model.target_backbone, model.backbone), (model.target_projector, model.projector)] if method == "byol" else []
    )

    def step():
        if method == "swav":
            with torch.no_grad():
                model.prototypes.weight.copy_(F.normalize(model.prototypes.weight, dim=1))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype is not None):
            loss = bare_loss(method, model, views, c)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            for t, o in pairs:
                torch._foreach_lerp_(list(t.parameters()), list(o.parameters()), 0.004)
        return loss.item()  # as the trainer does: one sync per step

    for _ in range(2):
        step()  # warm-up (cuDNN autotuning, compilation)
    flops = 0.0
    if device.type == "cuda":
        from torch.utils.flop_counter import FlopCounterMode

        with FlopCounterMode(display=False) as fc:
            step()
        flops = float(fc.get_total_flops())
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * spec["batch_size"] / (time.perf_counter() - t0), flops


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", nargs="+", default=["simclr", "byol", "swav"])
    ap.add_argument("--tiny", action="store_true", help="cnn4 of width 8, 32 px, batch 32: seconds on 2 CPU cores")
    ap.add_argument("--arch", default="resnet50")
    ap.add_argument("--width", type=int, default=32, help="cnn4 width (the default study's: 16)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    ap.add_argument("--compile", action="store_true", help="torch.compile the backbone on both sides")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per epoch / bare round (default 6, --tiny 4)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, help="also write the rows here")
    a = ap.parse_args(argv)
    if a.tiny:
        a.arch, a.size, a.batch, a.width = "cnn4", 32, 32, 8
    a.steps = a.steps or (4 if a.tiny else 6)
    with tempfile.TemporaryDirectory(prefix="bench_step") as tmp:
        tmp = Path(tmp)
        n = 64 * math.ceil(a.batch * a.steps / 0.75 / 64 + 0.5)  # synth: 64 classes, 3/4 of the images for training
        generate(tmp / "data", domains=("natural",), n_images=n, image_size=a.size, seed=0)
        ds = load_dataset(tmp / "data" / "natural")
        subset = tmp / "subset.npy"
        k = a.batch * a.steps
        save_indices(subset, nested_subsets(ds.labels, [k], seed=0)[k])
        rows = []
        for method in a.methods:
            spec = spec_for(method, a, tmp / "data" / "natural", subset)
            device = choose_device(spec)
            dtype, precision = choose_precision(spec, device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            best_ours = best_bare = 0.0
            flops = 0.0
            for r in range(a.rounds):
                best_ours = max(best_ours, ours(spec, tmp / f"run_{method}_{r}"))
                ips, flops = bare(method, spec, device, dtype, a.steps, a.compile)
                best_bare = max(best_bare, ips)
            row = dict(
                method=method,
                arch=a.arch,
                size=a.size,
                batch=a.batch,
                views=len(spec["views"]),
                device=str(device),
                precision=precision,
                compile=a.compile,
                ours_img_s=round(best_ours, 1),
                bare_img_s=round(best_bare, 1),
                ratio=round(best_ours / best_bare, 3),
                host_peak_rss_gb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
            )
            if device.type == "cuda":
                name = torch.cuda.get_device_name(device)
                peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
                row.update(gpu=name, gpu_peak_mem_gb=round(torch.cuda.max_memory_allocated(device) / 2**30, 2))
                if peak and flops:
                    row["bare_mfu"] = round(flops * best_bare / a.batch / peak, 3)
                    row["ours_mfu"] = round(flops * best_ours / a.batch / peak, 3)
            rows.append(row)
            print("  ".join(f"{k}={v}" for k, v in row.items()), flush=True)
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1) + "\n")
    return dict(rows=rows)


if __name__ == "__main__":
    main()
