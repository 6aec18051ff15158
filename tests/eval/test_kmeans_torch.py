"""The torch Lloyd fallback of sslstudy.eval.kmeans (for GPUs faiss cannot use), run on the CPU and
checked against faiss itself, and the choice between faiss CPU, faiss GPU and the fallback."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
import sslstudy.eval.kmeans as kmeans_mod
import torch
from sklearn.metrics import adjusted_rand_score
from sslstudy.errors import UserError
from sslstudy.eval.kmeans import kmeans, lloyd_torch


def faiss_from(x: np.ndarray, init: np.ndarray, niter: int) -> np.ndarray:
    """faiss's own Lloyd iterations started from given centroids."""
    k, d = init.shape
    cp = faiss.ClusteringParameters()
    cp.niter, cp.min_points_per_centroid, cp.max_points_per_centroid = niter, 1, x.shape[0]
    clus = faiss.Clustering(d, k, cp)
    faiss.copy_array_to_vector(np.ascontiguousarray(init, dtype=np.float32).ravel(), clus.centroids)
    clus.train(x, faiss.IndexFlatL2(d))
    return faiss.vector_to_array(clus.centroids).reshape(k, d)


def nearest(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    return ((x[:, None, :].astype(np.float64) - c[None].astype(np.float64)) ** 2).sum(-1).argmin(1)


def test_same_lloyd_steps_as_faiss_from_the_same_start():
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(10, 16))[rng.integers(0, 10, 3000)] + rng.normal(size=(3000, 16))).astype(np.float32)
    init = x[:10].copy()
    for niter in (1, 6):
        ref = faiss_from(x, init, niter)
        ours = lloyd_torch(torch.from_numpy(x), 10, niter=niter, init_centroids=init).numpy()
        np.testing.assert_allclose(ours, ref, atol=1e-4)
        assert (nearest(x, ours) == nearest(x, ref)).mean() > 0.999
    assert np.abs(ours - faiss_from(x, init, 1)).max() > 0.05  # six steps did move on


def test_finds_the_same_clusters_as_faiss_on_separated_blobs():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 8, 2400)
    x = (5 * rng.normal(size=(8, 16))[y] + 0.5 * rng.normal(size=(2400, 16))).astype(np.float32)
    _, ref_assign, ref_sq = kmeans(x, 8, seed=0, nredo=10, gpu=False)
    c = lloyd_torch(x, 8, seed=0, nredo=10).numpy()
    assign = nearest(x, c)
    assert adjusted_rand_score(ref_assign, assign) == 1.0 and adjusted_rand_score(y, assign) == 1.0
    sq = ((x - c[assign]) ** 2).sum()
    assert abs(sq / ref_sq.sum() - 1) < 1e-4


def test_an_emptied_cluster_is_refilled_by_splitting():
    p = np.array([[1.0, 2.0], [3.0, 1.0]], dtype=np.float32)
    x = np.repeat(p, 50, axis=0)
    c = lloyd_torch(x, 2, niter=4, init_centroids=p[[0, 0]]).numpy()  # both start on one point
    assert np.isfinite(c).all()
    np.testing.assert_allclose(np.sort(c, axis=0), np.sort(p, axis=0), atol=1e-6)


def test_spherical_subsample_and_redo():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(500, 6)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    c = lloyd_torch(x, 5, niter=5, spherical=True, n_train=100, nredo=2)
    np.testing.assert_allclose(torch.linalg.norm(c, dim=1).numpy(), 1.0, rtol=1e-5)
    assert torch.equal(c, lloyd_torch(x, 5, niter=5, spherical=True, n_train=100, nredo=2))  # seeded


def test_kmeans_through_the_fallback(monkeypatch):
    monkeypatch.setattr(kmeans_mod, "_kmeans_backend", lambda gpu, init: "torch-cuda")
    monkeypatch.setattr(kmeans_mod, "_TORCH_DEVICE", "cpu")
    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, 5))
    cent, assign, sq = kmeans(x, 7, seed=1, niter=10)
    assert cent.shape == (7, 5) and cent.dtype == np.float32
    assert assign.dtype == np.int64 and sq.dtype == np.float32
    np.testing.assert_array_equal(assign, nearest(x, cent))
    np.testing.assert_allclose(sq, ((x - cent[assign]) ** 2).sum(1), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "gpu,init,faiss_gpus,cuda,want",
    [
        (None, "random", 1, True, "faiss-gpu"),
        (None, "random", 0, True, "torch-cuda"),
        (None, "kmeans++", 0, True, "faiss-cpu"),
        (None, "random", 0, False, "faiss-cpu"),
        (True, "random", 0, True, "torch-cuda"),
        (True, "kmeans++", 0, True, UserError),
        (True, "random", 0, False, UserError),
        (False, "random", 1, True, "faiss-cpu"),
    ],
)
def test_backend_choice(monkeypatch, gpu, init, faiss_gpus, cuda, want):
    monkeypatch.setattr(kmeans_mod, "_num_gpus", lambda: faiss_gpus)
    monkeypatch.setattr(kmeans_mod, "_torch_cuda", lambda: cuda)
    if want is UserError:
        with pytest.raises(UserError, match="GPU"):
            kmeans_mod._kmeans_backend(gpu, init)
    else:
        assert kmeans_mod._kmeans_backend(gpu, init) == want


def test_faiss_gpu_indexes_sit_on_this_ranks_gpu_only(monkeypatch):
    """With faiss GPUs, k-means and kNN copy their index to this process's GPU (torch's current device,
    the rank's own after distributed.init_from_env), not to every GPU of the node: a stand-in faiss
    records where the index goes and keeps it on the CPU."""
    from sslstudy.eval.probes import knn_predict

    calls = []
    monkeypatch.setattr(kmeans_mod, "_num_gpus", lambda: 4)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 2)
    monkeypatch.setattr(faiss, "index_cpu_to_gpus_list", lambda index, gpus=None, **kw: calls.append(gpus) or index)
    monkeypatch.setattr(faiss, "index_cpu_to_all_gpus", lambda *a, **kw: pytest.fail("index spread over all GPUs"))
    rng = np.random.default_rng(4)
    x = rng.normal(size=(300, 6)).astype(np.float32)
    cent, assign, _ = kmeans(x, 5, seed=0)
    np.testing.assert_array_equal(assign, nearest(x, cent))
    knn_predict(x, assign, x[:10], k=3)
    assert calls == [[2], [2]]


def test_pseudo_labels_of_a_cpu_run_come_from_faiss_on_the_cpu(monkeypatch):
    """DeepCluster/PCL's k-means runs where the features are: a CPU run on a GPU machine (torch sees
    CUDA, faiss-cpu installed) does not send its k-means to the GPU's torch Lloyd."""
    from sslstudy.methods.clustering import shared_kmeans

    monkeypatch.setattr(kmeans_mod, "_torch_cuda", lambda: True)
    monkeypatch.setattr(kmeans_mod, "lloyd_torch", lambda *a, **kw: pytest.fail("k-means of CPU features on a GPU"))
    x = torch.from_numpy(np.random.default_rng(5).normal(size=(200, 4)).astype(np.float32))
    c, a, sq = shared_kmeans(x, 3, seed=0)
    ref_c, ref_a, _ = kmeans(x.numpy(), 3, seed=0, gpu=False)
    assert torch.equal(a, torch.from_numpy(ref_a)) and np.array_equal(c.numpy(), ref_c)
