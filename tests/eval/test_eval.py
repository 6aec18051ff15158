"""Tests of sslstudy.eval.probes and sslstudy.eval.kmeans against independent implementations."""

from __future__ import annotations

import contextlib
import math

import faiss
import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.preprocessing import StandardScaler
from sslstudy.errors import UserError
from sslstudy.eval.kmeans import assignment_scores, cluster_scores, kmeans
from sslstudy.eval.probes import knn_accuracy, knn_predict, l2_normalize, linear_probe
from threadpoolctl import threadpool_limits


@contextlib.contextmanager
def single_threaded():
    """Run the (independent) reference implementations on one BLAS/OpenMP/torch
    thread: they are small, and a 2-core CI machine shared with other jobs makes
    multi-threaded small work many times slower."""
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(torch_threads)


def blobs(n, n_classes, d, spread, seed, noise=1.0):
    """Gaussian class blobs: class means ~ N(0, spread^2), within-class noise N(0, noise^2)."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(n_classes, d)) * spread
    y = rng.integers(0, n_classes, size=n)
    return means[y] + rng.normal(size=(n, d)) * noise, y


# ---------------------------------------------------------------- l2_normalize


def test_l2_normalize_unit_rows_zero_safe():
    x = np.array([[3.0, 4.0], [0.0, 0.0], [1e-30, 0.0], [-2.0, 0.0]])
    out = l2_normalize(x)
    assert out.dtype == np.float32 and out.flags["C_CONTIGUOUS"]
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out[0], [0.6, 0.8], rtol=1e-6)
    np.testing.assert_array_equal(out[1], [0.0, 0.0])
    np.testing.assert_allclose(out[3], [-1.0, 0.0])
    # non-contiguous float64 input
    big = np.random.default_rng(0).normal(size=(50, 20))[:, ::2]
    np.testing.assert_allclose(np.linalg.norm(l2_normalize(big), axis=1), 1.0, rtol=1e-5)


# ---------------------------------------------------------------- kNN


def test_knn_uniform_matches_sklearn_cosine():
    rng = np.random.default_rng(1)
    xtr = rng.normal(size=(600, 12))
    ytr = rng.integers(0, 2, size=600)  # 2 classes and odd k: a majority vote can never tie
    xte = rng.normal(size=(400, 12))
    ours = knn_predict(xtr, ytr, xte, k=9, weighting="uniform")
    with single_threaded():
        ref = KNeighborsClassifier(n_neighbors=9, metric="cosine", algorithm="brute").fit(xtr, ytr).predict(xte)
    # Continuous data has no exactly tied distances; float32 (faiss) vs float64
    # (sklearn) could in principle swap a 9th/10th neighbour that differ by
    # ~1e-7, hence the 99 % bound instead of exact equality.
    assert np.mean(ours == ref) >= 0.99

    # 4 classes: the tie rule (smallest label) is the same as sklearn's.
    y4 = rng.integers(0, 4, size=600)
    ours4 = knn_predict(xtr, y4, xte, k=7, weighting="uniform")
    with single_threaded():
        ref4 = KNeighborsClassifier(n_neighbors=7, metric="cosine", algorithm="brute").fit(xtr, y4).predict(xte)
    assert np.mean(ours4 == ref4) >= 0.99


def brute_force_exp_knn(xtr, ytr, xte, k, temperature):
    """Reference: dense float64 cosine matrix, argsort, np.add.at of exp(sim/T)."""
    a = xtr / np.linalg.norm(xtr, axis=1, keepdims=True)
    b = xte / np.linalg.norm(xte, axis=1, keepdims=True)
    sim = b @ a.T
    top = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    classes = np.unique(ytr)
    cls_index = {c: i for i, c in enumerate(classes)}
    votes = np.zeros((len(xte), len(classes)))
    rows = np.repeat(np.arange(len(xte)), k)
    cols = np.array([cls_index[c] for c in ytr[top].ravel()])
    np.add.at(votes, (rows, cols), np.exp(np.take_along_axis(sim, top, axis=1) / temperature).ravel())
    return classes[votes.argmax(axis=1)]


@pytest.mark.parametrize("k,temperature", [(20, 0.07), (5, 0.5)])
def test_knn_exp_matches_bruteforce(k, temperature):
    rng = np.random.default_rng(2)
    xtr = rng.normal(size=(700, 16))
    ytr = rng.choice(np.array([3, 7, 11, 40]), size=700)  # non-contiguous label values
    xte = rng.normal(size=(300, 16))
    ours = knn_predict(xtr, ytr, xte, k=k, temperature=temperature, weighting="exp")
    ref = brute_force_exp_knn(xtr, ytr, xte, k, temperature)
    assert set(np.unique(ours)) <= {3, 7, 11, 40}
    assert np.mean(ours == ref) >= 0.99


def test_knn_exp_differs_from_uniform_and_k_is_clipped():
    rng = np.random.default_rng(3)
    xtr = rng.normal(size=(40, 8))
    ytr = rng.integers(0, 3, size=40)
    xte = rng.normal(size=(200, 8))
    # k larger than the training set: clipped to 40, same as asking for 40.
    np.testing.assert_array_equal(knn_predict(xtr, ytr, xte, k=500), knn_predict(xtr, ytr, xte, k=40))
    # With all 40 neighbours and uniform votes every query gets the majority class.
    majority = np.bincount(ytr).argmax()
    assert np.all(knn_predict(xtr, ytr, xte, k=500, weighting="uniform") == majority)
    # A sharp temperature makes the exp vote follow the nearest neighbour instead.
    nn1 = knn_predict(xtr, ytr, xte, k=1)
    assert np.mean(knn_predict(xtr, ytr, xte, k=40, temperature=0.001) == nn1) >= 0.99


def test_knn_accuracy_on_blobs_and_scale_invariance():
    x, y = blobs(1200, 5, 32, spread=2.0, seed=4)
    acc = knn_accuracy(x[:800], y[:800], x[800:], y[800:], k=10)
    assert acc > 0.95
    # cosine kNN ignores per-row scale
    scale = np.random.default_rng(5).uniform(0.1, 10.0, size=(400, 1))
    np.testing.assert_array_equal(
        knn_predict(x[:800], y[:800], x[800:] * scale), knn_predict(x[:800], y[:800], x[800:])
    )


def test_knn_input_validation():
    x = np.ones((10, 4))
    y = np.zeros(10, dtype=int)
    with pytest.raises(UserError, match="train_y"):
        knn_predict(x, y[:9], x)
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(UserError, match="test_x"):
        knn_predict(x, y, bad)
    with pytest.raises(UserError, match="train_x"):
        knn_predict(bad, y, x)
    with pytest.raises(UserError, match="dimensions"):
        knn_predict(x, y, np.ones((3, 5)))
    with pytest.raises(UserError, match="weighting"):
        knn_predict(x, y, x, weighting="cosine")
    with pytest.raises(UserError, match="test_y"):
        knn_accuracy(x, y, x, y[:5])


# ---------------------------------------------------------------- linear probe


def test_linear_probe_separable_blobs():
    x, y = blobs(2000, 10, 64, spread=1.0, seed=6)
    pred = linear_probe(x[:1000], y[:1000], x[1000:], n_classes=10, epochs=50)
    assert pred.dtype == np.int64 and pred.shape == (1000,)
    assert np.mean(pred == y[1000:]) > 0.95


def test_linear_probe_noise_labels_near_chance():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(3000, 32))
    y = rng.integers(0, 10, size=3000)
    pred = linear_probe(x[:2000], y[:2000], x[2000:], n_classes=10, epochs=30)
    acc = np.mean(pred == y[2000:])
    assert abs(acc - 0.1) < 0.04  # chance is 0.1; 1000 test points give sd ~0.01


def test_linear_probe_deterministic_for_a_seed():
    x, y = blobs(1500, 8, 32, spread=0.3, seed=8)
    a = linear_probe(x[:1000], y[:1000], x[1000:], n_classes=8, epochs=20, seed=3)
    b = linear_probe(x[:1000], y[:1000], x[1000:], n_classes=8, epochs=20, seed=3)
    np.testing.assert_array_equal(a, b)


def test_linear_probe_close_to_sklearn_logistic_regression():
    # Hard, anisotropic problem (~70 % accuracy): the SGD probe must land
    # within a few points of the exact regularised optimum.
    x, y = blobs(4000, 20, 64, spread=0.35, seed=9)
    x = x @ np.random.default_rng(10).normal(size=(64, 64))
    xtr, ytr, xte, yte = x[:2000], y[:2000], x[2000:], y[2000:]
    ours = np.mean(linear_probe(xtr, ytr, xte, n_classes=20) == yte)
    with single_threaded():
        scaler = StandardScaler().fit(xtr)
        ref_model = LogisticRegression(C=1.0, max_iter=3000).fit(scaler.transform(xtr), ytr)
        ref = np.mean(ref_model.predict(scaler.transform(xte)) == yte)
    assert 0.5 < ref < 0.9  # the problem really is hard
    assert abs(ours - ref) < 0.03


def test_linear_probe_matches_torch_optim_reference():
    """Same training written with nn.Linear + autograd + torch.optim.SGD + LambdaLR."""
    x, y = blobs(700, 6, 24, spread=0.4, seed=11)
    xtr, ytr, xte = x[:500], y[:500], x[500:]
    epochs, lr, wd, bs, seed = 5, 0.5, 5e-4, 64, 4
    ours = linear_probe(xtr, ytr, xte, n_classes=6, epochs=epochs, lr=lr, weight_decay=wd, batch_size=bs, seed=seed)

    xt = xtr.astype(np.float32)
    mean, std = xt.mean(0), xt.std(0)
    tr = torch.tensor((xt - mean) / std)
    te = torch.tensor((xte.astype(np.float32) - mean) / std)
    model = torch.nn.Linear(24, 6)
    torch.nn.init.zeros_(model.weight)
    torch.nn.init.zeros_(model.bias)
    opt = torch.optim.SGD(
        [{"params": [model.weight], "weight_decay": wd}, {"params": [model.bias], "weight_decay": 0.0}],
        lr=lr,
        momentum=0.9,
        nesterov=True,
    )
    total = epochs * math.ceil(500 / bs)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / total)))
    gen = torch.Generator().manual_seed(seed)
    target = torch.tensor(ytr)
    with single_threaded():
        for _ in range(epochs):
            order = torch.randperm(500, generator=gen)
            for i in range(0, 500, bs):
                batch = order[i : i + bs]
                loss = torch.nn.functional.cross_entropy(model(tr[batch]), target[batch])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
        with torch.no_grad():
            ref = model(te).argmax(1).numpy()
    assert np.mean(ours == ref) >= 0.99


def test_linear_probe_input_validation():
    x = np.random.default_rng(0).normal(size=(20, 4))
    y = np.arange(20) % 3
    with pytest.raises(UserError, match="train_y"):
        linear_probe(x, y[:-1], x, n_classes=3)
    with pytest.raises(UserError, match="train_y"):
        linear_probe(x, y, x, n_classes=2)  # label 2 out of range
    bad = x.copy()
    bad[0, 0] = np.inf
    with pytest.raises(UserError, match="test_x"):
        linear_probe(x, y, bad, n_classes=3)
    bad[0, 0] = np.nan
    with pytest.raises(UserError, match="train_x"):
        linear_probe(bad, y, x, n_classes=3)
    with pytest.raises(UserError, match="dimensions"):
        linear_probe(x, y, x[:, :3], n_classes=3)
    with pytest.raises(UserError, match="2-D"):
        linear_probe(x[:, 0], y, x, n_classes=3)


# ---------------------------------------------------------------- k-means
# faiss on the CPU (gpu=False: on a GPU machine too); the GPU paths: tests/eval/test_kmeans_torch.py


def test_kmeans_blobs_scores_and_outputs():
    x, y = blobs(3000, 8, 16, spread=5.0, seed=12, noise=0.5)
    for seed in range(3):
        scores = cluster_scores(x, y, seed=seed)
        assert scores["k"] == 8
        assert scores["nmi"] > 0.99 and scores["ari"] > 0.99

    cent, assign, sq = kmeans(x, 8, seed=0, gpu=False)
    assert cent.shape == (8, 16) and cent.dtype == np.float32
    assert assign.shape == (3000,) and assign.dtype == np.int64
    assert sq.shape == (3000,) and np.all(sq >= 0)
    # assignments are the nearest centroid, distances are squared L2 to it
    dist = ((x[:, None, :] - cent[None, :, :].astype(np.float64)) ** 2).sum(-1)
    np.testing.assert_array_equal(assign, dist.argmin(1))
    np.testing.assert_allclose(sq, dist.min(1), rtol=1e-3, atol=1e-3)


def test_kmeans_deterministic_and_input_conversion():
    rng = np.random.default_rng(13)
    x = rng.normal(size=(1500, 20))  # float64
    c1, a1, d1 = kmeans(x, 12, seed=5, gpu=False)
    c2, a2, d2 = kmeans(x, 12, seed=5, gpu=False)
    np.testing.assert_array_equal(c1, c2)
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(d1, d2)
    # float64 non-contiguous view == the same values as contiguous float32
    wide = np.repeat(x, 2, axis=1)[:, ::2]
    assert not wide.flags["C_CONTIGUOUS"]
    c3, a3, _ = kmeans(wide, 12, seed=5, gpu=False)
    c4, a4, _ = kmeans(np.ascontiguousarray(x, dtype=np.float32), 12, seed=5, gpu=False)
    np.testing.assert_array_equal(a3, a4)
    np.testing.assert_array_equal(c3, c4)


def test_kmeans_inertia_close_to_sklearn():
    rng = np.random.default_rng(14)
    x = rng.normal(size=(2000, 8))
    _, _, sq = kmeans(x, 10, seed=0, niter=50, nredo=3, gpu=False)
    with single_threaded():
        ref = KMeans(n_clusters=10, n_init=3, random_state=0).fit(x).inertia_
    assert float(sq.sum()) <= 1.01 * ref


def test_kmeans_k_larger_than_n_raises_before_faiss():
    x = np.random.default_rng(0).normal(size=(5, 3))
    with pytest.raises(UserError, match=r"k=6.*N=5"):
        kmeans(x, 6)
    with pytest.raises(UserError, match="k"):
        kmeans(x, 0)
    bad = x.copy()
    bad[1, 1] = np.nan
    with pytest.raises(UserError, match="NaN"):
        kmeans(bad, 2)


def test_kmeans_few_points_per_centroid_is_silent(capfd):
    x = np.random.default_rng(15).normal(size=(50, 4))
    cent, assign, _ = kmeans(x, 10, seed=1, gpu=False)  # 5 points per centroid, far below faiss's 39
    out, err = capfd.readouterr()
    assert "WARNING" not in err and "WARNING" not in out
    assert cent.shape == (10, 4) and len(np.unique(assign)) == 10
    # k == N: every point is its own centroid
    _, assign_n, sq_n = kmeans(x[:7], 7, gpu=False)
    assert sorted(assign_n.tolist()) == list(range(7)) and np.allclose(sq_n, 0.0, atol=1e-5)


def test_kmeans_spherical_unit_centroids_and_thread_count_restored():
    x = l2_normalize(np.random.default_rng(16).normal(size=(800, 10)))
    before = faiss.omp_get_max_threads()
    cent, _, _ = kmeans(x, 6, spherical=True, gpu=False)
    assert faiss.omp_get_max_threads() == before
    np.testing.assert_allclose(np.linalg.norm(cent, axis=1), 1.0, rtol=1e-5)


@pytest.mark.skipif(faiss.get_num_gpus() > 0 or torch.cuda.is_available(), reason="only meaningful without a GPU")
def test_kmeans_gpu_true_without_gpu_is_a_user_error():
    with pytest.raises(UserError, match="GPU"):
        kmeans(np.ones((10, 2)), 2, gpu=True)


# ---------------------------------------------------------------- NMI / ARI


def test_assignment_scores_equal_sklearn():
    rng = np.random.default_rng(17)
    labels = rng.integers(0, 5, size=300)
    assign = np.where(rng.random(300) < 0.7, labels, rng.integers(0, 7, size=300))
    s = assignment_scores(labels, assign)
    assert s["nmi"] == pytest.approx(normalized_mutual_info_score(labels, assign))
    assert s["ari"] == pytest.approx(adjusted_rand_score(labels, assign))
    assert 0.2 < s["nmi"] < 0.95
    # a relabelled perfect clustering scores 1
    perfect = assignment_scores(labels, (labels + 3) % 5)
    assert perfect["nmi"] == pytest.approx(1.0) and perfect["ari"] == pytest.approx(1.0)
    with pytest.raises(UserError, match="assignments"):
        assignment_scores(labels, assign[:-1])


def test_assignment_scores_equal_sklearn_on_random_and_degenerate_labelings():
    """The project's own NMI/ARI (numpy, no sklearn import at job start) against sklearn's."""
    rng = np.random.default_rng(3)
    cases = [
        (np.zeros(5, int), np.zeros(5, int)),
        (np.arange(5), np.arange(5)),
        (np.zeros(5, int), np.arange(5)),
        (np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1])),
        (np.array([3]), np.array([7])),
    ]
    for _ in range(200):
        n, ky, ka = rng.integers(2, 400), rng.integers(1, 10), rng.integers(1, 12)
        y = rng.integers(0, ky, n)
        cases.append((y, np.where(rng.random(n) < 0.5, y % ka, rng.integers(0, ka, n))))
    for y, a in cases:
        s = assignment_scores(y, a)
        assert s["nmi"] == pytest.approx(normalized_mutual_info_score(y, a), abs=1e-12)
        assert s["ari"] == pytest.approx(adjusted_rand_score(y, a), abs=1e-12)


def test_random_features_give_nmi_near_zero():
    rng = np.random.default_rng(18)
    x = rng.normal(size=(3000, 16))
    y = rng.integers(0, 10, size=3000)
    s = cluster_scores(x, y, seed=0)
    assert s["k"] == 10
    assert s["nmi"] < 0.02 and abs(s["ari"]) < 0.02
    s20 = cluster_scores(x, y, k=20)
    assert s20["k"] == 20
    with pytest.raises(UserError, match="labels"):
        cluster_scores(x, y[:-1])


# ------------------------------------------------------- multi-head probe, choices on val, splits, cache
from sslstudy.eval.features import Features, eval_device, probe_splits  # noqa: E402
from sslstudy.eval.frozen import choose_knn, choose_linear  # noqa: E402
from sslstudy.eval.probes import knn_predict_grid, linear_heads  # noqa: E402

EVAL = dict(
    knn_k=[1, 5, 25],
    knn_temperature=0.07,
    linear_epochs=20,
    linear_lr=[0.01, 0.5, 5.0],
    linear_wd=[0.0, 1e-2],
    cluster_seed=0,
    val_fraction=0.2,
)


def test_multi_head_probe_equals_each_head_trained_alone():
    x, y = blobs(300, 5, 12, spread=2.0, seed=0)
    grid = ([0.05, 0.5, 3.0], [0.0, 1e-3])
    heads = linear_heads(x, y, 5, *grid, epochs=5, batch_size=64, seed=3)
    preds = heads.predict(x)
    for h, (lr, wd) in enumerate(heads.grid):
        alone = linear_heads(x, y, 5, [lr], [wd], epochs=5, batch_size=64, seed=3)
        torch.testing.assert_close(heads.weight[h], alone.weight[0], rtol=1e-4, atol=1e-5)
        assert np.array_equal(preds[h], alone.predict(x)[0])
        assert np.array_equal(
            alone.predict(x)[0], linear_probe(x, y, x, 5, epochs=5, lr=lr, weight_decay=wd, batch_size=64, seed=3)
        )
    assert heads.grid == [(lr, wd) for lr in grid[0] for wd in grid[1]]


def test_knn_grid_equals_one_search_per_k():
    xtr, ytr = blobs(400, 4, 8, spread=1.0, seed=1)
    xte, _ = blobs(100, 4, 8, spread=1.0, seed=2)
    got = knn_predict_grid(xtr, ytr, xte, [1, 7, 30])
    for k in (1, 7, 30):
        assert np.array_equal(got[k], knn_predict(xtr, ytr, xte, k=k))


def _split(x, y, rng):
    i = rng.permutation(len(y))
    a, b, c = np.split(i, [len(y) // 2, 3 * len(y) // 4])
    return (x[a], y[a]), (x[b], y[b]), x[c], y[c]


def test_chosen_hyper_parameters_depend_on_val_only():
    rng = np.random.default_rng(0)
    x, y = blobs(600, 6, 10, spread=0.8, seed=4, noise=1.5)
    fit, val, x_te, y_te = _split(x, y, rng)
    _, lin = choose_linear(fit, val, x_te, 6, EVAL, "cpu")
    _, knn = choose_knn(fit, val, x_te, EVAL, "cpu")
    # the choices never see test labels; with other val labels they change
    _, lin2 = choose_linear(fit, (val[0], rng.permutation(val[1])), x_te, 6, EVAL, "cpu")
    _, knn2 = choose_knn(fit, (val[0], np.zeros_like(val[1])), x_te, EVAL, "cpu")
    assert (lin, knn) != (lin2, knn2)
    # k=1 fits a noisy-labelled fit set exactly; val (clean labels) prefers a large k
    noisy = fit[1].copy()
    flip = rng.random(len(noisy)) < 0.4
    noisy[flip] = rng.integers(0, 6, flip.sum())
    _, k = choose_knn((fit[0], noisy), val, x_te, EVAL, "cpu")
    assert k == dict(knn_k=25)


def test_val_preferring_a_learning_rate_gets_it():
    # val labelled by one head's own predictions, on rows where every other head disagrees somewhere
    x, y = blobs(400, 4, 6, spread=1.0, seed=5, noise=2.0)
    heads = linear_heads(x, y, 4, EVAL["linear_lr"], EVAL["linear_wd"], epochs=20, seed=0)
    preds = heads.predict(x[:200])
    target = 3  # head (lr 0.5, wd 1e-2)
    others = np.delete(np.arange(len(heads.grid)), target)
    keep = np.flatnonzero((preds[others] != preds[target]).any(axis=0))
    assert len(keep) > 5
    val = (x[:200][keep], preds[target][keep])  # val labels agree with that head alone everywhere
    _, chosen = choose_linear((x, y), val, x[200:], 4, EVAL, "cpu")
    assert chosen == dict(linear_lr=0.5, linear_wd=1e-2)


def test_val_holdout_is_class_balanced_seeded_and_disjoint(tiny_data):
    from sslstudy.data.packed import load_dataset

    ds = load_dataset(tiny_data / "natural")
    sp = probe_splits(ds, EVAL)
    train = ds.split_indices("train")
    assert set(sp["fit"]) | set(sp["val"]) == set(train) and not set(sp["fit"]) & set(sp["val"])
    counts = np.bincount(ds.label_array("fine", sp["val"]), minlength=64)
    assert counts.max() - counts.min() <= 1 and abs(len(sp["val"]) - 0.2 * len(train)) < 1
    assert np.array_equal(sp["val"], probe_splits(ds, EVAL)["val"])
    assert not np.array_equal(sp["val"], probe_splits(ds, dict(EVAL, cluster_seed=1))["val"])
    assert np.array_equal(sp["test"], ds.split_indices("test"))
    # a dataset with its own val split: that split, and train whole
    ds.labels.loc[ds.labels["index"].isin(train[:50]), "split"] = "val"
    own = probe_splits(ds, EVAL)
    assert np.array_equal(own["val"], train[:50]) and np.array_equal(own["fit"], train[50:])


def test_embedding_cache_round_trip_and_float16_keeps_the_numbers(tiny_data, tmp_path):
    from sslstudy.data.packed import load_dataset
    from sslstudy.eval.features import embed, embed_dataset
    from sslstudy.eval.frozen import evaluate
    from sslstudy.models import build_backbone

    ds = load_dataset(tiny_data / "natural")
    torch.manual_seed(0)
    net = build_backbone("cnn4", width=8).eval()
    feats = embed_dataset(net, ds, 32, 256)
    feats.model_config = "0123abcd"  # the embedded model's config hash (sslstudy.provenance) goes with it
    feats.save(tmp_path / "e.npz")
    back = Features.load(tmp_path / "e.npz")
    assert back.x.dtype == np.float16 and np.array_equal(back.x, feats.x) and np.array_equal(back.index, feats.index)
    assert back.model_config == "0123abcd"
    rows = ds.split_indices("test")[::7]
    full = embed(net, ds.images, rows, 32).numpy()
    np.testing.assert_allclose(back.take(rows), full, rtol=1e-3, atol=1e-3)
    cfg = dict(EVAL, batch_size=256)
    f16 = evaluate(back, ds, cfg, "cpu")
    f32 = evaluate(Features(embed(net, ds.images, feats.index, 32).numpy(), feats.index), ds, cfg, "cpu")
    assert (f16["metric"] == f32["metric"]).all() and set(f16["split"]) == {"test"}
    assert np.abs(f16["value"] - f32["value"]).max() <= 0.02  # 1,024 test images: 2 points is noise
    with pytest.raises(UserError, match="re-run its evaluate job"):
        back.take(np.array([len(ds) + 5]))
    # other test labels change the scores, never the chosen k / head
    test = ds.labels["split"] == "test"
    for level in ds.levels:
        ds.labels.loc[test, level] = np.random.default_rng(1).permutation(ds.labels.loc[test, level].to_numpy())
    shuffled = evaluate(back, ds, cfg, "cpu")
    chosen = ["knn_k", "linear_lr", "linear_wd"]
    assert shuffled[chosen].equals(f16[chosen]) and not shuffled["value"].equals(f16["value"])


def test_eval_device_selection():
    assert eval_device("cpu") == torch.device("cpu")
    assert eval_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UserError, match="use auto, cuda or cpu"):
        eval_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="sees no CUDA device"):
            eval_device("cuda")


@pytest.mark.skipif(faiss.get_num_gpus() > 0, reason="faiss GPU: the torch search is not picked")
def test_knn_backend_choice_and_the_torch_search_match_faiss(monkeypatch):
    import sslstudy.eval.probes as probes

    assert probes._knn_backend(None, "cpu", 20) == "faiss-cpu" and probes._knn_backend(None, None, 20) == "faiss-cpu"
    assert probes._knn_backend(None, "cuda", 20) == "torch"  # CUDA torch, faiss without GPUs
    assert probes._knn_backend(False, "cuda", 20) == "faiss-cpu"
    xtr, ytr = blobs(500, 5, 16, spread=1.0, seed=6)
    xte, _ = blobs(300, 5, 16, spread=1.0, seed=7)
    ref = knn_predict_grid(xtr, ytr, xte, [3, 20])
    monkeypatch.setattr(probes, "_knn_backend", lambda gpu, device, k: "torch")
    monkeypatch.setattr(probes, "_TORCH_SIMS", 500 * 64)  # several chunks of query rows
    got = knn_predict_grid(xtr, ytr, xte, [3, 20], device="cpu")
    assert all(np.array_equal(ref[k], got[k]) for k in (3, 20))


def test_probe_standardisation_moments_are_numpys_without_its_float64_copy():
    """eval.probes._moments (chunked, float64 sums) equals numpy's mean and std of the features."""
    from sslstudy.eval import probes

    x = (np.random.default_rng(0).standard_normal((20_000, 7)) * [1, 2, 3, 4, 5, 6, 1e-3] + 5).astype(np.float32)
    mean, std = probes._moments(x)
    np.testing.assert_allclose(mean, x.mean(axis=0, dtype=np.float64), rtol=1e-12)
    np.testing.assert_allclose(std, x.std(axis=0, dtype=np.float64), rtol=1e-10)
