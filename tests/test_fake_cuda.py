"""Device bugs caught without a GPU: the code's paths run with every device tensor on fake CUDA
(tests.helpers.FakeCuda). A CPU tensor mixed into a CUDA op raises as it would on a GPU, and so does
reading a CUDA tensor's values on the host (a sync the step must not make). Forward passes only:
backward needs a real GPU, so the one optimiser call of a loop is replaced where a path has one."""

import json

import numpy as np
import pytest
import torch
from sslstudy import hostsync
from sslstudy.augment import batch_params, views_from
from sslstudy.data.packed import load_dataset
from sslstudy.eval import lowshot
from sslstudy.eval.features import embed
from sslstudy.methods import REGISTRY
from sslstudy.methods.base import Batch
from sslstudy.models import build_backbone
from sslstudy.optim import build_optimizer
from sslstudy.train import build_model

from tests.helpers import fake_cuda

METHODS = sorted(REGISTRY)
EVAL = dict(batch_size=256, linear_epochs=3, cluster_seed=0, val_fraction=0.1)
FINETUNE = dict(epochs=1, min_steps=3, batch_size=16, lr=0.05, weight_decay=5e-4, scale=[0.5, 1.0])


def test_fine_tuning_runs_on_the_jobs_device(tiny_data, monkeypatch):
    """Fine-tuning (and the supervised baseline: the same loop on a new network) given device cuda:
    the network, views, labels, loss, optimiser and predictions are all on the GPU."""
    steps = []
    monkeypatch.setattr(
        lowshot,
        "_update",
        lambda opt, loss: steps.append(
            (loss.device.type, {p.device.type for g in opt.param_groups for p in g["params"]})
        ),
    )
    monkeypatch.setattr(hostsync, "read_on_host", _read_nothing)
    ds = load_dataset(tiny_data / "natural")
    train = lowshot.labelled_indices(ds, 1, EVAL)
    with fake_cuda():
        model = lowshot.train_classifier(
            build_backbone("cnn4", width=4), ds, train, FINETUNE, 32, seed=0, device="cuda"
        )
        assert {p.device.type for p in model.parameters()} == {"cuda"}
        logits = model.head(embed(model.backbone, ds.images, ds.split_indices("test")[:8], 32))
        assert logits.device.type == "cuda" and logits.shape == (8, ds.n_classes("fine"))
    assert steps == [("cuda", {"cuda"})] * 4  # 64 labelled images, batches of 16


@pytest.mark.parametrize("command", ["supervised", "finetune"])
def test_fine_tuning_and_supervised_jobs_pass_their_device_on(command, tiny_data, tmp_path, monkeypatch):
    """`sslstudy supervised` and `sslstudy lowshot --mode finetune` train on --device (here cuda, the
    training itself then run on the CPU, as no GPU is here): not on the CPU whatever the job's device."""
    from sslstudy.checkpoint import BACKBONE, atomic_torch_save
    from sslstudy.cli import run_command

    asked, train_classifier = [], lowshot.train_classifier

    def on_the_cpu(backbone, ds, train, cfg, size, seed, device=None):
        asked.append(torch.device(device) if device is not None else next(backbone.parameters()).device)
        return train_classifier(backbone, ds, train, cfg, size, seed, "cpu")

    monkeypatch.setattr(lowshot, "train_classifier", on_the_cpu)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # --device cuda accepted
    arch = dict(arch="cnn4", width=4)
    common = ["--dataset", str(tiny_data / "natural"), "--size", "32", "--run", "r", "--eval", json.dumps(EVAL)]
    common += [
        "--finetune",
        json.dumps(FINETUNE),
        "--labels",
        "l1",
        "--device",
        "cuda",
        "--out",
        str(tmp_path / "s.csv"),
    ]
    if command == "supervised":
        run_command(
            [
                "supervised",
                *common,
                "--seed",
                "0",
                "--backbone",
                json.dumps(arch),
                "--checkpoint",
                str(tmp_path / "sup.pt"),
            ]
        )
    else:
        ckpt = tmp_path / "final.pt"
        from tests.helpers import natural_subset

        subset = natural_subset(tiny_data, tmp_path / "subset.npy", 64)
        state = {BACKBONE + k: v for k, v in build_backbone(**arch).state_dict().items()}
        atomic_torch_save(
            dict(epoch=1, model=state, config=dict(seed=0, epochs=1, backbone=arch, data=dict(subset=str(subset)))),
            ckpt,
        )
        run_command(["lowshot", *common, "--checkpoint", str(ckpt), "--mode", "finetune"])
    assert asked == [torch.device("cuda")]


# ---------------------------------------------------------------------------- views
@pytest.mark.parametrize(
    "over",
    [
        dict(),  # the study's SimCLR view
        dict(size=16, scale=[0.05, 0.14]),  # a SwAV small crop
        dict(jitter_p=1.0, gray_p=1.0, blur_p=1.0, solarize_p=1.0, hflip=1.0),  # every augmentation on
        dict(jitter_p=0.0, gray_p=0.0, blur_p=0.0, solarize_p=0.0, hflip=0.0, scale=[1.0, 1.0]),  # none
    ],
)
def test_views_are_made_on_cuda_from_host_parameters(over, tiny_data):
    """Views of a batch on the GPU: parameters drawn on the host (as the trainer draws them), every
    kernel on the device, no value read back."""
    from sslstudy.augment import ViewSpec

    ds = load_dataset(tiny_data / "natural")
    spec = ViewSpec(**dict(dict(size=32, scale=[0.2, 1.0]), **over))
    params = batch_params(spec, 32, 32, torch.Generator().manual_seed(0), 16)
    with fake_cuda():
        images = hostsync.to_device(torch.from_numpy(np.array(ds.images[:16])), "cuda")
        v = views_from(images, params, spec)
        assert (v.device.type, v.dtype, tuple(v.shape)) == ("cuda", torch.float32, (16, 3, spec.size, spec.size))


# ---------------------------------------------------------------------------- every method's step
def _read_nothing(t: torch.Tensor) -> np.ndarray:
    """hostsync.read_on_host's stand-in: fake tensors hold no values; -1 everywhere (LossWatch: no
    non-finite step; the torch k-means: no empty cluster)."""
    return np.full(tuple(t.shape), -1, dtype=torch.empty(0, dtype=t.dtype).numpy().dtype)


def _spec(method: str, tiny_data, subset) -> dict:
    from tests.helpers import method_spec

    spec = method_spec(method, tiny_data / "natural", subset, batch_size=16, epochs=2)
    if method == "swav":  # the queue too: filled over two steps, used from the third
        spec["method"]["params"].update(queue_length=32, queue_start_epoch=0)
    return spec


@pytest.mark.parametrize("method", METHODS)
def test_every_methods_step_runs_on_cuda_without_host_syncs(method, tiny_data, subset128, monkeypatch):
    """Three steps of each method on fake CUDA, as the trainer makes them: the model built on the CPU
    and moved (channels_last), views of each of its view specs from the images copied over, the
    forward and loss in bf16 autocast, the queue pushes, the EMA of the targets, SwAV's prototypes and
    queue, PCL's prototypes and negatives, DeepCluster's pseudo-labels, the optimiser (LARS or SGD) on
    stand-in gradients, the logged sums and the loss check. Nothing mixes a CPU tensor in; nothing
    reads a CUDA value on the host."""
    monkeypatch.setattr(hostsync, "read_on_host", _read_nothing)
    spec = _spec(method, tiny_data, subset128)
    ds = load_dataset(spec["data"]["dataset"])
    idx = np.sort(np.load(spec["data"]["subset"]))
    bs, (h, w), sums = spec["batch_size"], ds.images.shape[1:3], {}
    with fake_cuda():
        model = build_model(spec, len(idx)).to("cuda", memory_format=torch.channels_last)
        opt = build_optimizer(model, spec["optim"], 0.1)
        watch, gen = hostsync.LossWatch(every=2), torch.Generator().manual_seed(0)
        model.train()
        for step in range(3):
            rows = np.arange(step * bs, (step + 1) * bs)
            images = hostsync.to_device(torch.from_numpy(np.asarray(ds.images[idx[rows]])), "cuda")
            views = [
                views_from(images, batch_params(s, h, w, gen, bs), s).contiguous(memory_format=torch.channels_last)
                for s in model.view_specs
            ]
            assert [(v.device.type, v.shape[-1]) for v in views] == [("cuda", s.size) for s in model.view_specs]
            # epoch 1: past every warm-up (PCL's prototypes, SwAV's queue)
            batch = Batch(views, hostsync.to_device(torch.from_numpy(rows), "cuda"), 10 + step, 100, 1, gen, rows)
            model.before_step(batch.step, batch.total_steps)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss, logs = model(batch)
            assert loss.device.type == "cuda" and loss.dim() == 0
            watch.add(loss, batch.step)
            for k, v in dict(loss=loss, **logs).items():
                sums[k] = hostsync.accumulate(sums.get(k, 0.0), v)
            for p in model.parameters():  # backward needs a real GPU: the optimiser steps on stand-in gradients
                p.grad = torch.zeros_like(p) if p.requires_grad else None
            model.before_optimizer_step(batch.step)
            opt.step()
            model.after_step(batch.step, batch.total_steps)
            if watch.due(step):
                assert watch.check("cuda") is None
        assert hostsync.host_sums(sums).keys() == sums.keys()
        assert {v.device.type for v in model.state_dict().values()} == {"cuda"}
        if method == "swav":
            assert model.filled == 32  # the queue filled (two pushes of 16) and was used on the third step


# ---------------------------------------------------------------------------- the evaluation's paths
def test_embedding_knn_linear_heads_kmeans_and_dense_maps_run_on_cuda(tiny_data, monkeypatch):
    """The evaluation on a GPU: `embed` (eval view, bf16 autocast), the torch kNN, the multi-head
    linear probe (closed-form gradients: trained whole), the torch k-means (faiss without GPUs), and
    the dense evaluation's feature maps, all with their tensors on fake CUDA."""
    import sslstudy.eval.kmeans as kmeans_mod
    from sslstudy.eval.dense import feature_maps
    from sslstudy.eval.probes import knn_predict_grid, linear_heads

    monkeypatch.setattr(hostsync, "read_on_host", _read_nothing)
    monkeypatch.setattr(kmeans_mod, "_torch_cuda", lambda: True)
    ds = load_dataset(tiny_data / "natural")
    rows = ds.split_indices("test")[:32]
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 8)).astype(np.float32), rng.integers(0, 4, 64)
    with fake_cuda():
        backbone = build_backbone("cnn4", width=4).to("cuda", memory_format=torch.channels_last)
        z = embed(backbone, ds.images, rows, 32)
        assert (z.device.type, z.dtype, tuple(z.shape)) == ("cuda", torch.float32, (32, backbone.out_dim))
        pred = knn_predict_grid(x, y, x[:10], [3, 5], device="cuda")
        assert [p.shape for p in pred.values()] == [(10,), (10,)]
        heads = linear_heads(x, y, 4, [0.1, 0.5], [0.0], epochs=2, batch_size=16, device="cuda")
        assert heads.weight.device.type == "cuda" and heads.predict(x).shape == (2, 64)
        cent, assign, sq = kmeans_mod.kmeans(x, 4, seed=0, niter=3, gpu=True)  # the torch Lloyd on cuda
        assert (cent.shape, assign.shape, sq.shape) == ((4, 8), (64,), (64,))
        maps = feature_maps(backbone, ds, rows, 32, batch_size=16)
        assert maps.device.type == "cpu" and maps.dim() == 4 and maps.shape[0] == 32
