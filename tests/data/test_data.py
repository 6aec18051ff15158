"""Tests for sslstudy.data: the packed format, the synthetic generator and nested subsets."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sslstudy.data import packed, subsets, synth
from sslstudy.data.packed import PackedDataset, load_dataset, write_dataset
from sslstudy.errors import UserError

FILES = ("images.npy", "labels.csv", "masks.npy", "meta.json")  # what `generate` writes
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def small_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth_small")
    synth.generate(root, n_images=256, image_size=32, seed=0)
    return root


@pytest.fixture(scope="module")
def domain_data() -> dict:
    """2048 images per domain at 32 px (about a second in all)."""
    return {d: synth.generate_domain(d, 2048, 32, seed=0) for d in synth.DOMAINS}


@pytest.fixture
def good_dataset(tmp_path) -> Path:
    images, labels, meta, masks = synth.generate_domain("natural", 128, image_size=16, seed=3, masks=True)
    path = tmp_path / "x"
    write_dataset(path, images, labels, meta, masks)
    return path


def _digest(folder: Path) -> dict[str, str]:
    return {f: hashlib.sha256((folder / f).read_bytes()).hexdigest() for f in FILES}


# --------------------------------------------------------------------------- synth: determinism


def test_generate_is_byte_identical_and_seed_sensitive(tmp_path, small_root):
    again = synth.generate(tmp_path / "again", n_images=256, image_size=32, seed=0)
    assert [p.name for p in again] == list(synth.DOMAINS)
    for p in again:
        assert sorted(os.listdir(p)) == sorted(FILES)
        assert _digest(p) == _digest(small_root / p.name), p.name
    # regenerating over an existing folder gives the same bytes and leaves no temp siblings
    synth.generate(tmp_path / "again", domains=["texture"], n_images=256, image_size=32, seed=0)
    assert _digest(tmp_path / "again" / "texture") == _digest(small_root / "texture")
    assert sorted(os.listdir(tmp_path / "again")) == sorted(synth.DOMAINS)

    other = synth.generate(tmp_path / "other", domains=["natural"], n_images=256, image_size=32, seed=1)[0]
    a = np.load(small_root / "natural" / "images.npy")
    b = np.load(other / "images.npy")
    assert a.shape == b.shape
    assert np.mean(a != b) > 0.5
    # and domains with the same seed are different images too
    c = np.load(small_root / "aerial" / "images.npy")
    assert np.mean(a != c) > 0.5


def test_generation_does_not_depend_on_python_hash_seed():
    code = (
        "import hashlib; from sslstudy.data import synth; "
        "im, lab, meta = synth.generate_domain('texture', 128, 16, seed=5); "
        "print(hashlib.sha256(im.tobytes() + lab.to_csv().encode()).hexdigest())"
    )
    outs = []
    for hs in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hs, PYTHONPATH=os.pathsep.join(sys.path))
        res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        outs.append(res.stdout.strip())
    assert outs[0] == outs[1] and len(outs[0]) == 64


def test_meta_is_canonical_and_free_of_volatile_fields(small_root):
    raw = (small_root / "natural" / "meta.json").read_text()
    meta = json.loads(raw)
    assert raw == json.dumps(meta, sort_keys=True, indent=2) + "\n"
    assert set(meta) == {"name", "levels", "classes", "parents", "image_size", "n_images", "source", "masks"}
    assert meta["source"]["seed"] == 0 and meta["source"]["domain"] == "natural"
    text = raw.lower()
    for volatile in ("time", "date", 'version": "', "numpy", "host", "user"):
        assert volatile not in text, volatile


def test_image_size_64_and_chunking():
    # 640 images = one full chunk of 512 + a partial one
    images, labels, meta = synth.generate_domain("aerial", 640, image_size=64, seed=2)
    assert images.shape == (640, 64, 64, 3) and images.dtype == np.uint8
    assert meta["image_size"] == 64 and meta["n_images"] == 640
    assert len(labels) == 640
    # no saturated/blank images: every image has real content
    assert (images.reshape(640, -1).std(axis=1) > 5).all()


@pytest.mark.parametrize(
    "kwargs, needle",
    [
        (dict(domain="natural", n_images=100), "multiple of 64"),
        (dict(domain="natural", n_images=64), "at least 128"),
        (dict(domain="natural", n_images=128, image_size=8), "image_size=8"),
        (dict(domain="moon", n_images=128), "unknown synthetic domain"),
        (dict(domain="natural", n_images=128, seed=-1), "seed"),
        (dict(domain="natural", n_images=128, test_fraction=1.0), "test_fraction"),
    ],
)
def test_generator_argument_errors(kwargs, needle):
    with pytest.raises(UserError, match=needle) as info:
        synth.generate_domain(**kwargs)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- synth: hierarchy and balance


def test_hierarchy_and_balance(small_root):
    for d in synth.DOMAINS:
        ds = load_dataset(small_root / d)
        assert ds.levels == ["coarse", "mid", "fine"]
        assert [ds.n_classes(lv) for lv in ds.levels] == [4, 16, 64]
        lab = ds.labels
        assert (lab["domain"] == d).all()
        mid_parent = np.asarray(ds.meta["parents"]["mid"])
        fine_parent = np.asarray(ds.meta["parents"]["fine"])
        assert np.array_equal(mid_parent[lab["mid"].to_numpy()], lab["coarse"].to_numpy())
        assert np.array_equal(fine_parent[lab["fine"].to_numpy()], lab["mid"].to_numpy())
        assert np.array_equal(np.bincount(mid_parent, minlength=4), [4] * 4)
        assert np.array_equal(np.bincount(fine_parent, minlength=16), [4] * 16)
        # every fine class has N/64 images, and the same number of test images
        per_class = lab.groupby("fine").size()
        assert len(per_class) == 64 and (per_class == 256 // 64).all()
        tests = lab[lab["split"] == "test"].groupby("fine").size()
        assert len(tests) == 64 and (tests == 1).all()  # round(4 * 0.25)
        assert set(lab["split"]) == {"train", "test"}
        # images are not stored sorted by class
        assert not (np.diff(lab["fine"].to_numpy()) >= 0).all()
        names = ds.meta["classes"]
        assert names["fine"][lab["fine"].iloc[0]].startswith(names["mid"][lab["mid"].iloc[0]])


def test_split_balance_default_size(domain_data):
    _, lab, _ = domain_data["natural"]
    counts = pd.crosstab(lab["fine"], lab["split"])
    assert (counts["test"] == 8).all() and (counts["train"] == 24).all()


def test_class_definitions():
    names = synth.class_names()
    assert names["coarse"] == ["disk", "square", "triangle", "cross"]
    assert names["mid"][:4] == ["disk-hstripes", "disk-vstripes", "disk-checker", "disk-rings"]
    assert names["fine"][:4] == ["disk-hstripes-c2", "disk-hstripes-c3", "disk-hstripes-c4", "disk-hstripes-c5"]
    assert len(set(names["fine"])) == 64


# --------------------------------------------------------------------------- synth: learnability sanity


def _knn_accuracy(train_x, train_y, test_x, test_y, k=10):
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-6
    a = (train_x - mu) / sd
    b = (test_x - mu) / sd
    dist = (b * b).sum(1)[:, None] - 2.0 * b @ a.T + (a * a).sum(1)[None, :]
    nn = np.argpartition(dist, k, axis=1)[:, :k]
    votes = train_y[nn]
    pred = np.array([np.bincount(v, minlength=int(train_y.max()) + 1).argmax() for v in votes])
    return float((pred == test_y).mean())


def _mean_rgb(images):
    return images.reshape(len(images), -1, 3).astype(np.float32).mean(axis=1)


def _structure_feature(images):
    """|grayscale| after per-image standardisation: blind to hue and to brightness/contrast
    and to which of the object's colours is lighter; keeps outline and pattern."""
    g = images.astype(np.float32) @ LUMA
    g = (g - g.mean(axis=(1, 2), keepdims=True)) / (g.std(axis=(1, 2), keepdims=True) + 1e-6)
    return np.abs(g).reshape(len(images), -1)


@pytest.mark.parametrize("domain", synth.DOMAINS)
def test_colour_is_a_nuisance_structure_is_signal(domain_data, domain):
    # Measured (2048 images, 32 px, seeds 0-2, kNN k=10 on coarse, chance 0.25):
    #   mean RGB      natural 0.25-0.26, texture 0.25-0.27, aerial 0.27-0.28
    #   |std. gray|   natural 0.70-0.73, texture 0.57-0.62, aerial 0.67-0.72
    images, lab, _ = domain_data[domain]
    train = (lab["split"] == "train").to_numpy()
    test = ~train
    y = lab["coarse"].to_numpy()
    colour_acc = _knn_accuracy(_mean_rgb(images[train]), y[train], _mean_rgb(images[test]), y[test])
    struct_acc = _knn_accuracy(_structure_feature(images[train]), y[train], _structure_feature(images[test]), y[test])
    assert colour_acc < 0.45, colour_acc
    assert struct_acc > 0.45, struct_acc
    assert struct_acc > colour_acc + 0.2, (struct_acc, colour_acc)


# --------------------------------------------------------------------------- synth: domains differ


def _domain_stats(images):
    f = images.astype(np.float32) / 255.0
    chroma = float((f.max(-1) - f.min(-1)).mean())
    g = f @ LUMA
    hf = float(np.median(np.abs(np.diff(g, axis=2)), axis=(1, 2)).mean())  # typical neighbour step
    std = float(g.std(axis=(1, 2)).mean())
    return chroma, hf, std


def test_domains_have_different_statistics(domain_data):
    # Measured (seed 0): chroma natural .35 texture .29 aerial .10;
    # median |dx| natural .009 texture .034 aerial .043; per-image std natural .152 texture .131 aerial .117
    stats = {d: _domain_stats(domain_data[d][0][:1024]) for d in synth.DOMAINS}
    (c_n, hf_n, s_n), (c_t, hf_t, s_t), (c_a, hf_a, s_a) = (stats[d] for d in synth.DOMAINS)
    assert c_a < 0.5 * c_n and c_a < 0.5 * c_t  # aerial: muted palette
    assert hf_t > 2.0 * hf_n and hf_a > 2.0 * hf_n  # texture/aerial: busy, high-frequency grounds
    assert s_a < 0.9 * s_n  # aerial: low contrast


def test_contact_sheet_writes_png(tmp_path, domain_data):
    images, lab, _ = domain_data["texture"]
    out = synth.contact_sheet(images, lab, tmp_path / "sheets" / "texture.png", level="coarse", n_per_class=5)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    w, h = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (w, h) == (2 + 5 * (64 + 2), 2 + 4 * (64 + 2))
    assert not any(p.name.startswith(".") for p in out.parent.iterdir())  # no temp file left


def test_write_png_round_trips_the_pixels(tmp_path):
    from PIL import Image

    rgb = np.random.default_rng(0).integers(0, 256, (7, 5, 3), dtype=np.uint8)
    synth.write_png(tmp_path / "x.png", rgb)
    with Image.open(tmp_path / "x.png") as im:
        assert im.format == "PNG" and im.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(im), rgb)
    with pytest.raises(ValueError, match="expected"):
        synth.write_png(tmp_path / "y.png", rgb[..., 0])


# --------------------------------------------------------------------------- packed: API and atomic writes


def test_packed_roundtrip_and_api(good_dataset):
    ds = load_dataset(good_dataset)
    assert isinstance(ds, PackedDataset)
    assert isinstance(ds.images, np.memmap) and not ds.images.flags.writeable
    assert ds.images.shape == (128, 16, 16, 3)
    tr, te = ds.split_indices("train"), ds.split_indices("test")
    assert tr.dtype == np.int64 and len(tr) + len(te) == 128
    assert np.intersect1d(tr, te).size == 0
    assert ds.n_classes("fine") == 64 and ds.levels == ["coarse", "mid", "fine"]
    assert np.array_equal(ds.label_array("coarse", tr), ds.labels["coarse"].to_numpy()[tr])
    assert ds.split_indices("val").size == 0  # a split ingested data may have; synthetic data has none
    with pytest.raises(UserError, match="unknown split"):
        ds.split_indices("valid")
    with pytest.raises(UserError, match="unknown label level"):
        ds.n_classes("species")


def test_interrupted_write_is_never_loaded(tmp_path, good_dataset):
    # an interrupted writer leaves only a hidden temp sibling: the target does not exist
    half = tmp_path / ".y.tmp-123"
    half.mkdir()
    shutil.copy(good_dataset / "images.npy", half / "images.npy")
    with pytest.raises(UserError, match="no such dataset folder") as info:
        load_dataset(tmp_path / "y")
    assert str(tmp_path / "y") in str(info.value)
    # with an existing dataset, a stale temp sibling is ignored and the old data loads intact
    before = _digest(good_dataset)
    stale = tmp_path / ".x.tmp-123"
    stale.mkdir()
    (stale / "images.npy").write_bytes(b"partial")
    ds = load_dataset(good_dataset)
    assert len(ds) == 128 and _digest(good_dataset) == before
    # replacing a dataset swaps it in whole and cleans up after itself
    images, labels, meta = synth.generate_domain("aerial", 128, image_size=16, seed=4)
    write_dataset(good_dataset, images, labels, meta)
    assert load_dataset(good_dataset).meta["name"] == "aerial"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([".x.tmp-123", ".y.tmp-123", "x"])


def test_failed_write_keeps_old_dataset(good_dataset, monkeypatch):
    before = _digest(good_dataset)
    images, labels, meta = synth.generate_domain("texture", 128, image_size=16, seed=4)

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(packed, "_meta_bytes", boom)
    with pytest.raises(OSError):
        write_dataset(good_dataset, images, labels, meta)
    assert _digest(good_dataset) == before
    assert sorted(p.name for p in good_dataset.parent.iterdir()) == ["x"]


# --------------------------------------------------------------------------- packed: validation errors


def _rewrite_labels(path: Path, fn) -> None:
    df = pd.read_csv(path / "labels.csv", keep_default_na=False)
    fn(df).to_csv(path / "labels.csv", index=False)


def _set_label(row: int, column: str, new):
    """A corruption: labels.csv's cell (row, column) set to new(the cell's value)."""

    def change(df):
        df.loc[row, column] = new(df.loc[row, column])
        return df

    return lambda p: _rewrite_labels(p, change)


def _corruptions():
    def missing_file(name):
        return lambda p: (p / name).unlink()

    def truncate(p):
        data = (p / "images.npy").read_bytes()
        (p / "images.npy").write_bytes(data[: len(data) // 2])

    def truncate_header(p):
        (p / "images.npy").write_bytes((p / "images.npy").read_bytes()[:40])

    def garbage(p):
        (p / "images.npy").write_bytes(b"this is not a numpy file" * 10)

    def float_images(p):
        np.save(p / "images.npy", np.zeros((128, 16, 16, 3), np.float32))

    def gray_images(p):
        np.save(p / "images.npy", np.zeros((128, 16, 16), np.uint8))

    def rgba_images(p):
        np.save(p / "images.npy", np.zeros((128, 16, 16, 4), np.uint8))

    def short_labels(p):
        _rewrite_labels(p, lambda df: df.iloc[:-1])

    def no_level(p):
        _rewrite_labels(p, lambda df: df.drop(columns=["mid"]))

    out_of_range = _set_label(5, "fine", lambda _: 64)
    bad_split = _set_label(7, "split", lambda _: "validation")
    bad_parent = _set_label(3, "coarse", lambda coarse: (coarse + 1) % 4)

    def bad_json(p):
        (p / "meta.json").write_text("{not json")

    def meta_count(p):
        meta = json.loads((p / "meta.json").read_text())
        meta["n_images"] = 999
        (p / "meta.json").write_text(json.dumps(meta))

    return {
        "missing images": (missing_file("images.npy"), "missing file"),
        "missing labels": (missing_file("labels.csv"), "missing file"),
        "missing meta": (missing_file("meta.json"), "missing file"),
        "truncated data": (truncate, "npy"),
        "truncated header": (truncate_header, "npy"),
        "garbage": (garbage, "npy"),
        "dtype": (float_images, "uint8"),
        "ndim": (gray_images, "N, H, W, 3"),
        "channels": (rgba_images, "N, H, W, 3"),
        "row count": (short_labels, "127 rows"),
        "level column": (no_level, "missing column(s) mid"),
        "label range": (out_of_range, "64 classes"),
        "split": (bad_split, "validation"),
        "parents": (bad_parent, "parents"),
        "json": (bad_json, "JSON"),
        "meta count": (meta_count, "n_images"),
    }


@pytest.mark.parametrize("case", list(_corruptions()))
def test_load_errors_name_path_in_one_line(good_dataset, case):
    corrupt, needle = _corruptions()[case]
    corrupt(good_dataset)
    with pytest.raises(UserError) as info:
        load_dataset(good_dataset)
    msg = str(info.value)
    assert str(good_dataset) in msg
    assert needle in msg
    assert "\n" not in msg
    assert "sslstudy synth" in msg or "params/" in msg


def test_missing_folder_error(tmp_path):
    with pytest.raises(UserError) as info:
        load_dataset(tmp_path / "data" / "x")
    msg = str(info.value)
    assert msg.startswith(str(tmp_path / "data" / "x") + ": no such dataset folder")
    assert "sslstudy synth" in msg and "params/" in msg


def test_write_rejects_inconsistent_inputs(tmp_path):
    images, labels, meta = synth.generate_domain("natural", 128, image_size=16, seed=0)
    with pytest.raises(UserError, match="label rows"):
        write_dataset(tmp_path / "a", images, labels.iloc[:-1], meta)
    with pytest.raises(UserError, match="uint8"):
        write_dataset(tmp_path / "a", images.astype(np.float32), labels, meta)
    assert not (tmp_path / "a").exists()


# --------------------------------------------------------------------------- subsets


@pytest.fixture(scope="module")
def train_labels(domain_data) -> pd.DataFrame:
    return domain_data["natural"][1]  # 2048 images: 1536 train, 24 per fine class


def test_subsets_nested_and_balanced(train_labels):
    sizes = [64, 100, 333, 1000, 1536]
    subs = subsets.nested_subsets(train_labels, sizes, seed=0)
    assert list(subs) == sizes
    train_idx = set(train_labels.loc[train_labels["split"] == "train", "index"])
    fine = train_labels["fine"].to_numpy()
    prev = np.array([], dtype=np.int64)
    for s in sizes:
        idx = subs[s]
        assert idx.dtype == np.int64 and len(idx) == s and len(np.unique(idx)) == s
        assert set(idx.tolist()) <= train_idx
        assert np.isin(prev, idx).all()  # nested
        counts = np.bincount(fine[idx], minlength=64)
        assert counts.max() - counts.min() <= 1, (s, counts)
        prev = idx
    # every prefix of the underlying order is balanced, too
    order = subsets.balanced_order(train_labels, seed=0)
    for s in (1, 17, 63, 65, 129, 777):
        counts = np.bincount(fine[order[:s]], minlength=64)
        assert counts.max() - counts.min() <= 1
    coarse_subs = subsets.nested_subsets(train_labels, [10], seed=0, stratify="coarse")
    c = np.bincount(train_labels["coarse"].to_numpy()[coarse_subs[10]], minlength=4)
    assert c.max() - c.min() <= 1


def test_subsets_deterministic_and_seed_sensitive(train_labels):
    a = subsets.nested_subsets(train_labels, [64, 256], seed=7)
    b = subsets.nested_subsets(train_labels, [256, 64], seed=7)
    c = subsets.nested_subsets(train_labels, [64, 256], seed=8)
    assert all(np.array_equal(a[s], b[s]) for s in (64, 256))
    assert not np.array_equal(a[64], c[64]) and not np.array_equal(a[256], c[256])
    assert len(np.intersect1d(a[256], c[256])) < 200  # not merely a reshuffle of the same images
    test = subsets.nested_subsets(train_labels, [64], seed=7, split="test")[64]
    assert (train_labels.set_index("index").loc[test, "split"] == "test").all()


def test_subsets_balance_as_far_as_possible_when_unbalanced():
    labels = pd.DataFrame({"index": np.arange(30), "split": "train", "fine": [0] * 20 + [1] * 7 + [2] * 3})
    subs = subsets.nested_subsets(labels, [9, 15, 30], seed=1)
    assert np.array_equal(np.bincount(labels["fine"].to_numpy()[subs[9]], minlength=3), [3, 3, 3])
    assert np.array_equal(np.bincount(labels["fine"].to_numpy()[subs[15]], minlength=3), [6, 6, 3])
    assert np.array_equal(subs[30], np.arange(30))


def test_subset_too_large_error(train_labels):
    with pytest.raises(UserError) as info:
        subsets.nested_subsets(train_labels, [64, 5000], seed=0, dataset="data/synth/natural")
    msg = str(info.value)
    assert msg == (
        "subset of 5000 images requested but data/synth/natural has only 1536 train images; lower the size in params/"
    )
    with pytest.raises(UserError, match=">= 1"):
        subsets.nested_subsets(train_labels, [0], seed=0)
    with pytest.raises(UserError, match="no column 'species'"):
        subsets.nested_subsets(train_labels, [10], seed=0, stratify="species")


def test_fractions_to_sizes():
    assert subsets.fractions_to_sizes(1536, [0.01, 0.1, 0.5, 1.0]) == [15, 154, 768, 1536]
    assert subsets.fractions_to_sizes(10, [0.01, 0.25]) == [1, 3]
    with pytest.raises(UserError):
        subsets.fractions_to_sizes(10, [1.5])
    with pytest.raises(UserError):
        subsets.fractions_to_sizes(10, [0.0])


def test_save_load_indices(tmp_path):
    idx = np.array([5, 3, 9], dtype=np.int32)
    path = tmp_path / "sub" / "idx_3.npy"
    subsets.save_indices(path, idx)
    back = subsets.load_indices(path)
    assert back.dtype == np.int64 and np.array_equal(back, [5, 3, 9])
    assert sorted(p.name for p in path.parent.iterdir()) == ["idx_3.npy"]
    path.write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(UserError, match=re.escape(str(path))):
        subsets.load_indices(path)
    with pytest.raises(UserError, match="no such index file"):
        subsets.load_indices(tmp_path / "nope.npy")
    with pytest.raises(UserError, match="1-D integer"):
        subsets.save_indices(tmp_path / "f.npy", np.array([0.5]))
