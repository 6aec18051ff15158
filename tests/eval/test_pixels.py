"""The real-pixel test set from images shipped inside installed packages (sslstudy.data.shipped):
scikit-learn's digits as an ImageFolder tree, ingested into the packed format."""

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from sslstudy import axes, config
from sslstudy.checkpoint import list_checkpoints, load_backbone
from sslstudy.data.packed import load_dataset
from sslstudy.data.shipped import DIGIT_GROUPS, GROUPS, build_digits, digits_pixels
from sslstudy.data.subsets import save_indices
from sslstudy.eval.features import embed
from sslstudy.eval.probes import knn_accuracy
from sslstudy.train import train

from tests.helpers import ROOT, read_metrics

STUDY = ROOT / "params" / "study.yaml"

FILES = ("images.npy", "labels.csv", "meta.json")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The digits built twice from scratch (trees kept), in separate folders."""
    out = []
    for k in range(2):
        base = tmp_path_factory.mktemp(f"digits{k}")
        r = build_digits(base / "digits", tree=base / "tree", workers=1 + k)  # the worker count changes nothing
        out.append((base, r))
    return out


def test_builds_the_same_bytes_twice(built):
    (a, ra), (b, rb) = built
    assert not ra["skipped"] and not rb["skipped"] and ra["failed"] == rb["failed"] == 0
    for name in FILES:
        assert (a / "digits" / name).read_bytes() == (b / "digits" / name).read_bytes(), name
    pngs = sorted(p.relative_to(a / "tree") for p in (a / "tree").rglob("*.png"))
    assert len(pngs) == 1797
    assert all((a / "tree" / p).read_bytes() == (b / "tree" / p).read_bytes() for p in pngs)
    assert (a / "tree-hierarchy.csv").read_bytes() == (b / "tree-hierarchy.csv").read_bytes()


def test_ten_digits_in_three_groups_with_the_expected_splits(built):
    (base, _), _ = built
    ds = load_dataset(base / "digits")
    assert ds.levels == ["group", "digit"] and ds.name == "digits"
    assert ds.n_classes("digit") == 10 and ds.n_classes("group") == 3
    assert ds.class_names("digit") == [str(k) for k in range(10)]
    assert sorted(ds.class_names("group")) == sorted(GROUPS)
    parent = np.asarray(ds.class_names("group"))[ds.meta["parents"]["digit"]]
    assert {int(d): g for d, g in zip(ds.class_names("digit"), parent)} == DIGIT_GROUPS
    assert ds.images.shape == (1797, 32, 32, 3) and ds.images.dtype == np.uint8
    split = ds.labels["split"].value_counts().to_dict()
    assert split == {"train": 1259, "val": 179, "test": 359}
    per_digit = pd.crosstab(ds.labels["digit"], ds.labels["split"])
    assert per_digit["val"].tolist() == [18] * 8 + [17, 18]
    assert per_digit["test"].tolist() == [36, 36, 35, 37, 36, 36, 36, 36, 35, 36]
    assert set(ds.labels.groupby("group")["digit"].nunique()) == {3, 4}


def test_pixels_and_labels_are_load_digits(built):
    (base, _), _ = built
    ds = load_dataset(base / "digits")
    images, digits = digits_pixels(32)
    orig = np.array([int(f.rsplit("-", 1)[1][:4]) for f in ds.labels["file"]])
    assert sorted(orig) == list(range(1797))
    assert np.array_equal(np.asarray(ds.images), images[orig])  # PNG is lossless, 32 px in and out
    assert np.array_equal(ds.labels["digit"].to_numpy(), digits[orig])
    assert np.array_equal(images[..., 0], images[..., 2])  # grayscale as RGB
    assert images.min() == 0 and images.max() == 255


def test_rebuilding_an_up_to_date_output_is_skipped(built):
    (base, _), _ = built
    before = {n: (base / "digits" / n).read_bytes() for n in FILES}
    r = build_digits(base / "digits", tree=base / "tree")
    assert r["skipped"]
    assert {n: (base / "digits" / n).read_bytes() for n in FILES} == before


# ---- every method's study defaults on real pixels: no collapse, and better than random weights

METHODS = ["simclr", "moco", "byol", "swav", "barlow", "densecl", "deepcluster", "pcl"]
# Runs the health check flags by the normalised std of the backbone's (ReLU, uncentred) features
# alone while kNN improves (docs/defaults.md): the check's threshold, not these defaults, is at fault.


def _default_spec(method: str, dataset, subset) -> tuple[dict, dict]:
    """The pretraining spec the workflow builds for ``method`` from params/study.yaml on
    ``dataset``, and the study's kNN settings."""
    params = yaml.safe_load(STUDY.read_text())
    params["data"]["datasets"] = {"digits": str(dataset)}
    params["study"].update(methods=[method], domains=["digits"], seeds=[0])
    cfg = config.validate(params, "tests/test_pixels.py")
    run = dict(
        id=f"{method}/digits_all_clean/seed0", method=method, domain="digits", subset="all", seed=0, quality="clean"
    )
    spec = axes.pretrain_spec(cfg, run)
    spec.update(checkpoint_every=spec["epochs"], threads=1, data=dict(dataset=str(dataset), subset=str(subset)))
    return spec, cfg["eval"]


@pytest.fixture(scope="module")
def digits_train(built, tmp_path_factory):
    (base, _), _ = built
    ds = load_dataset(base / "digits")
    subset = tmp_path_factory.mktemp("subset") / "all.npy"
    save_indices(subset, ds.split_indices("train"))
    return base / "digits", subset, ds


@pytest.mark.slow  # trains every method for minutes
@pytest.mark.parametrize("method", METHODS)
def test_every_method_learns_from_real_pixels_with_its_defaults(method, digits_train, tmp_path):
    """params/study.yaml's pretraining of each method on the digits' train split: kNN on the digits
    beats the same network's random weights, and no epoch is flagged collapsed."""
    dataset, subset, ds = digits_train
    spec, ev = _default_spec(method, dataset, subset)
    train(spec, tmp_path / "run")
    records = read_metrics(tmp_path / "run")
    assert len(records) == spec["epochs"]
    tr, te = ds.split_indices("train"), ds.split_indices("test")
    knn = []
    for ckpt in (list_checkpoints(tmp_path / "run")[0], tmp_path / "run" / "final.pt"):  # ep000 = random weights
        backbone, cfg = load_backbone(ckpt)
        with torch.no_grad():
            x_tr, x_te = (embed(backbone, ds.images, i, cfg["views"][0]["size"]) for i in (tr, te))
            x_tr, x_te = x_tr.cpu().numpy(), x_te.cpu().numpy()
        knn.append(
            knn_accuracy(
                x_tr,
                ds.label_array("digit", tr),
                x_te,
                ds.label_array("digit", te),
                k=sorted(ev["knn_k"])[len(ev["knn_k"]) // 2],
                temperature=ev["knn_temperature"],
            )
        )
    random_weights, trained = knn
    assert trained > random_weights, (method, knn)
    collapsed = [r for r in records if r.get("collapsed")]
    assert not collapsed, collapsed[:1]
