"""The tests that need a GPU: skipped without CUDA; benchmarks/gpu_check.sh runs them on the GPU
machines. Training (backward included), fine-tuning and the evaluation's torch paths on a real CUDA
device, each against what the CPU gives where the numbers can be compared."""

import json

import numpy as np
import pytest
import torch
from sslstudy import distributed as dist
from sslstudy.data.packed import load_dataset
from sslstudy.eval import lowshot
from sslstudy.eval.kmeans import lloyd_torch
from sslstudy.eval.probes import knn_predict
from sslstudy.methods import REGISTRY
from sslstudy.models import build_backbone
from sslstudy.train import train

from tests.helpers import final_weights, method_spec

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("method", sorted(REGISTRY))
def test_every_method_trains_on_cuda(method, tiny_data, subset128, tmp_path):
    """2 epochs on the GPU in bf16 autocast: finite losses and weights, and train.log says where it ran."""
    train(method_spec(method, tiny_data / "natural", subset128, epochs=2, device="cuda"), tmp_path / "run")
    log = (tmp_path / "run" / "train.log").read_text()
    assert "device cuda" in log and "bf16 autocast on CUDA" in log, log
    losses = [json.loads(x)["loss"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and all(np.isfinite(losses)), losses
    assert all(torch.isfinite(v).all() for v in final_weights(tmp_path / "run").values() if v.is_floating_point())


def test_fine_tuning_on_cuda(tiny_data):
    ds = load_dataset(tiny_data / "natural")
    train_rows = lowshot.labelled_indices(ds, 1, dict(cluster_seed=0, val_fraction=0.1))
    cfg = dict(epochs=2, min_steps=5, batch_size=16, lr=0.05, weight_decay=5e-4, scale=[0.5, 1.0])
    model = lowshot.train_classifier(build_backbone("cnn4", width=4), ds, train_rows, cfg, 32, seed=0, device="cuda")
    assert {p.device.type for p in model.parameters()} == {"cuda"}
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert len(lowshot.trained_rows(model, ds, 32, "finetune")) == len(ds.levels)


def test_torch_kmeans_and_knn_on_cuda_agree_with_the_cpu():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 8, 2000)
    x = (5 * rng.normal(size=(8, 16))[y] + 0.5 * rng.normal(size=(2000, 16))).astype(np.float32)
    on_gpu = lloyd_torch(x, 8, seed=0, niter=10, device="cuda").cpu().numpy()
    on_cpu = lloyd_torch(x, 8, seed=0, niter=10, device="cpu").numpy()
    np.testing.assert_allclose(on_gpu, on_cpu, atol=1e-3)
    gpu_pred = knn_predict(x[:1500], y[:1500], x[1500:], k=10, gpu=None, device="cuda")
    cpu_pred = knn_predict(x[:1500], y[:1500], x[1500:], k=10, gpu=False)
    assert np.mean(gpu_pred == cpu_pred) > 0.99


def test_this_process_takes_a_gpu_it_sees():
    assert 0 <= dist.local_gpu() < torch.cuda.device_count()
