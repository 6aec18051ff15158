"""Ingestion of real collections, on small replicas of each source's released on-disk layout."""

import os
import pickle
import re

import numpy as np
import pandas as pd
import pytest
import yaml
from sslstudy import config, names
from sslstudy.data import ingest as ingest_mod
from sslstudy.data.ingest import balanced_split, ingest
from sslstudy.data.packed import load_dataset
from sslstudy.data.sources.hierarchy import build_tables
from sslstudy.errors import UserError

from tests import replicas
from tests.helpers import BIN, copy_workflow, run, tiny_params


def names_at(ds, level):
    """Per row: the class name at ``level``."""
    return np.asarray(ds.class_names(level), dtype=object)[ds.labels[level].to_numpy()]


def ancestors_ok(ds):
    """Every row's labels agree with meta's parents (load_dataset checks it too; here by names)."""
    for child, parent in zip(ds.levels[1:], ds.levels[:-1]):
        par = np.asarray(ds.meta["parents"][child])[ds.labels[child].to_numpy()]
        assert np.array_equal(par, ds.labels[parent].to_numpy())


# --------------------------------------------------------------------------- ImageFolder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    base = tmp_path_factory.mktemp("imagefolder")
    src = replicas.synth_imagefolder(base / "tree", n_images=640)
    (base / "tree" / src["names"]["fine"][0] / "README.txt").write_text("not an image")
    return base, src


def test_imagefolder_with_hierarchy_matches_source_exactly(folder, tmp_path):
    base, src = folder
    r = ingest(
        "imagefolder",
        base / "tree",
        tmp_path / "shapes",
        size=32,
        hierarchy=src["hierarchy"],
        workers=2,
        progress=False,
    )
    assert r["failed"] == 0 and r["images"] == 640 and any("1 file(s) that are not images" in n for n in r["notes"])
    ds = load_dataset(tmp_path / "shapes")
    assert ds.levels == ["coarse", "mid", "fine"] and ds.meta["name"] == "shapes"
    # every row: the same pixels (32 px PNG / lossless WebP in, 32 px out) and the same names per level
    orig = np.array([int(f.rsplit("img", 1)[1][:5]) for f in ds.labels["file"]])
    assert sorted(orig) == list(range(640))
    assert np.array_equal(np.asarray(ds.images), src["images"][orig])
    for level in ds.levels:
        want = np.asarray(src["names"][level], dtype=object)[src["labels"][level].to_numpy()[orig]]
        assert np.array_equal(names_at(ds, level), want), level
    ancestors_ok(ds)
    assert set(ds.labels["domain"]) == {"shapes"}
    # class-balanced drawn splits: per fine class 10 images -> 1 val, 2 test, 7 train
    counts = pd.crosstab(ds.labels["fine"], ds.labels["split"])
    assert (counts["val"] == 1).all() and (counts["test"] == 2).all() and (counts["train"] == 7).all()


def test_imagefolder_without_hierarchy_is_one_level_in_sorted_order(folder, tmp_path):
    base, src = folder
    ingest("imagefolder", base / "tree", tmp_path / "flat", size=16, workers=1, progress=False)
    ds = load_dataset(tmp_path / "flat")
    assert ds.levels == ["class"] and ds.class_names("class") == sorted(src["names"]["fine"])
    assert ds.images.shape[1:] == (16, 16, 3)
    folders = [f.split("/")[0] for f in ds.labels["file"]]
    assert list(names_at(ds, "class")) == folders


def test_imagenet_layout_keeps_its_splits_and_resizes_shorter_side_then_centre(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("val", 2)):
        for wnid in ("n01440764", "n01443537"):
            for i in range(n):
                replicas.save(replicas.noise_image(rng), tmp_path / "imnet" / split / wnid / f"{wnid}_{i}.JPEG")
    wide = replicas.noise_image(rng, 40, 80)
    replicas.save(wide, tmp_path / "imnet" / "train" / "n01440764" / "wide.png")
    # two groups (a one-class level is refused); rock has no images and is left out
    (tmp_path / "h.csv").write_text("wnid,group\nn01440764,fish\nn01443537,shark\nn09999999,rock\n")
    ingest(
        "imagenet",
        tmp_path / "imnet",
        tmp_path / "data" / "imnet",
        size=20,
        hierarchy=tmp_path / "h.csv",
        progress=False,
        workers=1,
    )
    ds = load_dataset(tmp_path / "data" / "imnet")
    assert ds.levels == ["group", "wnid"] and ds.class_names("group") == ["fish", "shark"]
    split_of = dict(zip(ds.labels["file"], ds.labels["split"]))
    assert {s for f, s in split_of.items() if f.startswith("train/")} == {"train"}
    assert {s for f, s in split_of.items() if f.startswith("val/")} == {"test"}  # val is ImageNet's test set
    # the reference, done the long way: shorter side 40 -> 20 (80 x 40 -> 40 x 20), then the middle 20 columns
    ref = np.asarray(Image.fromarray(wide).resize((40, 20), Image.Resampling.BICUBIC))[:, 10:30]
    row = ds.labels.index[ds.labels["file"] == "train/n01440764/wide.png"][0]
    assert np.abs(np.asarray(ds.images[row]).astype(int) - ref).max() <= 1


def test_hierarchy_file_errors_name_the_file_and_fix(folder, tmp_path):
    base, src = folder
    bad = tmp_path / "bad.csv"
    bad.write_text("fine,coarse\n" + src["names"]["fine"][0] + ",disk\n")
    with pytest.raises(UserError, match=r"bad\.csv: no row for class\(es\) .* and 60 more; add them"):
        ingest("imagefolder", base / "tree", tmp_path / "x", hierarchy=bad, progress=False)
    bad.write_text("class,parent,grandparent\na,p,g1\nb,p,g2\n")
    with pytest.raises(UserError, match=r"bad\.csv:3: parent 'p' has parent 'g2' here but 'g1' on line 2"):
        ingest("imagefolder", base / "tree", tmp_path / "x", hierarchy=bad, progress=False)
    bad.write_text("category,indoor,outdoor\n/a/abbey,0,1\n/b/barn,1,1\n")
    with pytest.raises(UserError, match="0/1 membership sheet"):
        ingest("imagefolder", base / "tree", tmp_path / "x", hierarchy=bad, progress=False)
    assert not (tmp_path / "x").exists()


def test_a_level_with_one_class_is_refused(tmp_path):
    """A one-class collection once ingested and then scored 1.0 on every metric for any weights."""
    rng = np.random.default_rng(0)
    for i in range(6):
        replicas.save(replicas.noise_image(rng), tmp_path / "pets" / "cat" / f"{i}.png")
    p = run(
        [str(BIN / "sslstudy"), "ingest", "imagefolder", "pets", "--name", "pets", "--size", "16"],
        cwd=tmp_path,
        check=False,
    )
    assert p.returncode == 2 and p.stderr.strip().splitlines() == [
        "sslstudy ingest: error: dataset pets (pets): level 'class' has one class ('cat'); a level with one class "
        "is not a level: kNN, linear, NMI and ARI all score 1.0 on it, for any weights; ingest a collection with "
        "images of two or more classes"
    ]
    assert not (tmp_path / "data").exists()

    # two classes under one coarse class: the coarse level is the one-class level; the fix drops it
    for i in range(6):
        replicas.save(replicas.noise_image(rng), tmp_path / "pets" / "dog" / f"{i}.png")
    (tmp_path / "tree.csv").write_text("class,kingdom\ncat,animal\ndog,animal\n")
    with pytest.raises(UserError) as e:
        ingest("imagefolder", tmp_path / "pets", tmp_path / "two", hierarchy=tmp_path / "tree.csv", progress=False)
    assert "level 'kingdom' has one class ('animal')" in str(e.value)
    assert str(e.value).endswith("leave it out: --levels class (data.ingest.two.levels in params)")
    assert not (tmp_path / "two").exists()
    ingest(
        "imagefolder",
        tmp_path / "pets",
        tmp_path / "two",
        hierarchy=tmp_path / "tree.csv",
        levels=["class"],
        progress=False,
    )
    assert load_dataset(tmp_path / "two").class_names("class") == ["cat", "dog"]


# --------------------------------------------------------------------------- CIFAR-100


def test_cifar100_pickles_keep_official_labels_and_pixels(tmp_path):
    src = replicas.cifar100(tmp_path / "raw", {"train": 3, "test": 1})
    ingest("cifar100", tmp_path / "raw", tmp_path / "cifar", size=32, progress=False, workers=2)
    ds = load_dataset(tmp_path / "cifar")
    assert ds.levels == ["coarse", "fine"] and len(ds) == 400
    assert ds.class_names("fine") == src["fine_names"] and ds.class_names("coarse") == src["coarse_names"]
    assert ds.meta["parents"]["fine"] == src["coarse_of"].tolist()
    for part in ("train", "test"):
        rows = ds.labels[ds.labels["split"] == part]
        p = src["parts"][part]
        assert list(rows["file"]) == [f"{part}/img_{part}_{i:05d}.png" for i in range(len(p["fine"]))]
        assert np.array_equal(rows["fine"], p["fine"]) and np.array_equal(rows["coarse"], p["coarse"])
        assert np.array_equal(np.asarray(ds.images)[rows["index"].to_numpy()], p["pixels"])


def test_cifar100_refuses_pickles_that_run_code(tmp_path):
    src = replicas.cifar100(tmp_path / "raw", {"train": 1, "test": 1})

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    (src["folder"] / "meta").write_bytes(pickle.dumps({b"fine_label_names": Evil()}))
    with pytest.raises(UserError, match=r"meta: not a CIFAR-100 python pickle \(UnpicklingError: refusing to load"):
        ingest("cifar100", src["folder"], tmp_path / "c", progress=False)


# --------------------------------------------------------------------------- iNat2021


@pytest.fixture(scope="module")
def inat(tmp_path_factory):
    root = tmp_path_factory.mktemp("inat")
    return root, replicas.inat2021(root)


def test_inat2021_taxonomy_levels_and_broken_files_reported(inat, tmp_path):
    root, src = inat
    r = ingest("inat2021", root, tmp_path / "inat", size=24, max_failed=0.1, progress=False, workers=2)
    assert r["failed"] == 2 and r["images"] == 6 * 5 - 2
    report = pd.read_csv(names.ingest_report(tmp_path / "inat"))
    assert sorted(report["file"]) == sorted(src["broken"])
    assert report["error"].str.contains("FileNotFoundError").sum() == 1
    assert report["error"].str.contains("truncated|broken|OSError", regex=True).sum() == 1
    ds = load_dataset(tmp_path / "inat")
    assert ds.levels == ["kingdom", "phylum", "class", "order", "family", "genus", "species"]
    cats = {c["id"]: c for c in src["categories"]}
    for f, split, *_ in ds.labels[["file", "split"]].itertuples(index=False):
        want_split, cid = src["expected"][f]
        assert split == {"train": "train", "val": "test"}[want_split]
    rows = ds.labels.set_index("file")
    for level, key in zip(ds.levels, [*replicas.RANKS, "name"]):
        got = dict(zip(ds.labels["file"], names_at(ds, level)))
        for f in rows.index:
            want = cats[src["expected"][f][1]][key]
            assert got[f] == want or got[f].endswith(f" / {want}"), (level, got[f], want)
    ancestors_ok(ds)
    # the homonym genus Morus is two classes, spelled with their paths, under different families
    morus = [n for n in ds.class_names("genus") if n.endswith("Morus")]
    assert len(morus) == 2 and all(" / " in n for n in morus)
    assert ds.n_classes("kingdom") == 2 and ds.n_classes("species") == 6


def test_inat2021_folder_names_alone_give_the_same_table_and_levels_are_selectable(inat, tmp_path):
    root, _ = inat
    opts = dict(size=16, max_failed=0.1, progress=False, workers=1)
    ingest("inat2021", root, tmp_path / "a", levels=["kingdom", "class", "species"], **opts)
    no_json = tmp_path / "nojson"
    no_json.mkdir()
    for split in ("train", "val"):
        (no_json / split).symlink_to(root / split)
    ingest("inat2021", no_json, tmp_path / "b", levels=["species", "kingdom", "class"], **opts)
    a, b = load_dataset(tmp_path / "a"), load_dataset(tmp_path / "b")
    assert a.levels == b.levels == ["kingdom", "class", "species"]
    assert a.meta["classes"] == b.meta["classes"] and a.meta["parents"] == b.meta["parents"]
    ta = a.labels.sort_values("file").drop(columns=["index", "domain"]).reset_index(drop=True)
    tb = b.labels.sort_values("file").drop(columns=["index", "domain"]).reset_index(drop=True)
    assert list(ta["file"]) == list(tb["file"])  # the same 28 readable images
    # without the JSON the missing file is not listed at all; the truncated one is reported either way
    assert (
        len(pd.read_csv(names.ingest_report(tmp_path / "a"))) == 2
        and len(pd.read_csv(names.ingest_report(tmp_path / "b"))) == 1
    )
    merged = tb.merge(ta, on="file", suffixes=("_b", "_a"))
    for col in ("split", "kingdom", "class", "species"):
        assert (merged[f"{col}_a"] == merged[f"{col}_b"]).all()


# --------------------------------------------------------------------------- Places365


def test_places365_standard_layout_with_scene_hierarchy(tmp_path):
    src = replicas.places365(tmp_path / "places")
    ingest(
        "places365",
        tmp_path / "places",
        tmp_path / "pl",
        size=32,
        hierarchy=src["hierarchy"],
        progress=False,
        workers=2,
    )
    ds = load_dataset(tmp_path / "pl")
    assert ds.levels == ["level1", "level2", "category"]
    assert ds.class_names("level1") == ["indoor", "outdoor, man-made", "outdoor, natural"]
    assert ds.n_classes("level2") == 5 and ds.n_classes("category") == 6
    got = {lv: dict(zip(ds.labels["file"], names_at(ds, lv))) for lv in ds.levels}
    scenes = [c.split("/", 2)[2] for c in replicas.PLACES]
    assert set(got["category"]) == set(src["expected"])
    for f, (split, label) in src["expected"].items():
        scene = scenes[label]
        assert got["category"][f] == scene
        assert (got["level2"][f], got["level1"][f]) == replicas.PLACES_TREE[scene]
        assert ds.labels.loc[ds.labels["file"] == f, "split"].item() == split
    ancestors_ok(ds)


# --------------------------------------------------------------------------- behaviour


def test_rerun_skips_changes_redo_and_interrupted_work_resumes(folder, tmp_path, monkeypatch):
    base, src = folder
    out = tmp_path / "d" / "shapes"
    kw = dict(size=16, hierarchy=src["hierarchy"], workers=2, progress=False)
    first = ingest("imagefolder", base / "tree", out, **kw)
    first_splits = load_dataset(out).labels["split"].to_numpy()
    stamp = (out / "images.npy").stat().st_mtime_ns
    again = ingest("imagefolder", base / "tree", out, **kw)
    assert again["skipped"] and (out / "images.npy").stat().st_mtime_ns == stamp
    # other options -> a different fingerprint -> ingested again
    other = ingest("imagefolder", base / "tree", out, **dict(kw, seed=1))
    assert not other["skipped"] and other["decoded"] == first["decoded"] == 640
    assert not np.array_equal(load_dataset(out).labels["split"].to_numpy(), first_splits)
    # an interrupted run (here: stopped by the failure check) keeps its decoded chunks; the re-run reuses them
    monkeypatch.setattr(ingest_mod, "CHUNK", 100)
    broken = base / "tree" / src["names"]["fine"][3] / "zz_broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    try:
        with pytest.raises(
            UserError,
            match=r"shapes\.ingest-report\.csv: 1 of 641 images \(0\.2%\) could not be read, "
            r"more than --max-failed 0; fix or remove them",
        ):
            ingest("imagefolder", base / "tree", out, **dict(kw, max_failed=0.0))
        assert len(list(out.parent.glob(".shapes.ingest-*/chunk-*.npz"))) == 7
        resumed = ingest("imagefolder", base / "tree", out, **dict(kw, max_failed=0.01))
        assert resumed["decoded"] == 0 and resumed["failed"] == 1 and resumed["images"] == 640
        assert not list(out.parent.glob(".shapes.ingest-*"))  # work folder removed once written
        assert pd.read_csv(names.ingest_report(out))["file"].tolist() == [broken.relative_to(base / "tree").as_posix()]
    finally:
        broken.unlink()


def test_balanced_split_is_seeded_and_per_class():
    y = np.repeat(np.arange(4), [10, 5, 2, 1])
    a, b, c = (balanced_split(y, 0.1, 0.2, s) for s in (0, 0, 1))
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    table = pd.crosstab(y, a)
    # 10 -> 2 test, 1 val; 5 -> 1 test, 1 val (0.5 rounds half up); 2 -> 0 test, 0 val; 1 -> train only
    assert table.loc[0].to_dict() == {"test": 2, "train": 7, "val": 1}
    assert table.loc[1].to_dict() == {"test": 1, "train": 3, "val": 1}
    assert table.loc[2].to_dict() == {"test": 0, "train": 2, "val": 0}
    assert table.loc[3].to_dict() == {"test": 0, "train": 1, "val": 0}


def test_build_tables_numbers_by_name_and_splits_homonyms():
    classes, parents, index = build_tables(["k", "g"], [("B", "x"), ("A", "x"), ("A", "y")])
    assert classes == {"k": ["A", "B"], "g": ["A / x", "B / x", "y"]}
    assert parents == {"g": [0, 1, 0]}
    assert index.tolist() == [[1, 0, 0], [1, 0, 2]]


def test_cli_ingest_prints_counts_and_errors_in_one_line(tmp_path):
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        for i in range(5):
            replicas.save(replicas.noise_image(rng), tmp_path / "pets" / c / f"{i}.jpg")
    replicas.truncated_jpeg(rng, tmp_path / "pets" / "dog" / "9.jpg")
    cmd = [str(BIN / "sslstudy"), "ingest", "imagefolder", "pets", "--name", "pets", "--size", "24"]
    p = run([*cmd, "--max-failed", "0.2"], cwd=tmp_path)
    assert (
        "data/pets: 10 images of 24 px (classes: class 2); 1 unreadable (listed in data/pets.ingest-report.csv)"
        in p.stdout
    )
    p = run([*cmd, "--max-failed", "0.2"], cwd=tmp_path)
    assert "data/pets: up to date" in p.stdout
    p = run(cmd, cwd=tmp_path, check=False)
    assert p.returncode == 2 and p.stderr.strip().splitlines() == [
        "sslstudy ingest: error: data/pets.ingest-report.csv: 1 of 11 images (9.1%) could not be read, more than "
        "--max-failed 0.01; fix or remove them (the report lists each), or raise --max-failed"
    ]
    p = run(
        [str(BIN / "sslstudy"), "ingest", "cifar100", "pets", "--name", "c", "--hierarchy", "x.csv"],
        cwd=tmp_path,
        check=False,
    )
    assert p.returncode == 2 and "source cifar100 takes no --hierarchy" in p.stderr


def test_study_config_names_ingested_datasets_as_domains(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a clean clone has no data/synth until `sslstudy synth` runs
    (tmp_path / "data/synth/natural").mkdir(parents=True)
    np.save(tmp_path / "data/synth/natural/images.npy", np.zeros((1, 1), np.uint8))
    cfg = config.validate(
        {
            "data": {"datasets": {"pets": str(tmp_path / "pets")}},
            "study": {"methods": ["simclr"], "domains": ["natural", "pets"]},
        }
    )
    assert names.dataset_path(cfg, "pets") == str(tmp_path / "pets")
    assert names.dataset_path(cfg, "natural") == "data/synth/natural"
    with pytest.raises(
        UserError,
        match=r"pets: no such dataset folder \(domain 'pets' in study.domains\); ingest it "
        r"\(`sslstudy ingest <source> <path> --name pets`\)",
    ):
        config.check_datasets(cfg)
    with pytest.raises(UserError, match="data.datasets"):
        config.validate({"data": {"datasets": {"bad_name": "x"}}, "study": {"methods": ["simclr"], "domains": ["x"]}})


def test_snakemake_ingest_rule_driven_by_params(tmp_path):

    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        for i in range(12):
            replicas.save(replicas.noise_image(rng), tmp_path / "pets" / c / f"{i}.jpg")
    wf = tmp_path / "wf"
    wf.mkdir()
    copy_workflow(wf)
    params = tiny_params(
        dict(ingest={"pets": {"source": "imagefolder", "path": str(tmp_path / "pets"), "size": 24}}),
        ["pets"],
        shipped=False,
        batch_size=16,
        views={"size": 24},  # the stored size: the workflow's preflight refuses larger views
    )
    params["study"]["subsets"] = [1.0]
    (wf / "params/study.yaml").write_text(yaml.safe_dump(params))  # alone: --configfile would merge into it
    run(["snakemake", "data/pets/meta.json", "--cores", "2"], cwd=wf)
    ds = load_dataset(wf / "data/pets")
    assert len(ds) == 24 and ds.image_size == 24 and ds.class_names("class") == ["cat", "dog"]
    assert "data/pets: 24 images of 24 px" in (wf / "logs/ingest/pets.log").read_text()
    dry = run(["snakemake", "-n"], cwd=wf)
    assert not re.search(r"^ingest\s+\d", dry.stdout + dry.stderr, re.M)  # up to date; the study jobs follow
    assert re.search(r"^subset\s+1$", dry.stdout + dry.stderr, re.M)
    changed = run(
        [
            "snakemake",
            "-n",
            "--config",
            "data={'ingest': {'pets': {'source': 'imagefolder', 'path': '%s', 'size': 32}}}" % (tmp_path / "pets"),
        ],
        cwd=wf,
    )
    assert re.search(r"^ingest\s+1$", changed.stdout + changed.stderr, re.M)
    lint = run(["snakemake", "--lint"], cwd=wf)
    assert "Congratulations, your workflow is in a good condition!" in lint.stdout + lint.stderr


def test_preflight_reads_a_domain_not_ingested_yet_from_its_listing(folder, tmp_path, monkeypatch):
    """The workflow's preflight runs before the ingest job: its facts of a data.ingest domain come
    from the collection's listing and the ingest plan, and equal the packed folder's once ingested."""
    from sslstudy import preflight

    base, src = folder
    monkeypatch.chdir(tmp_path)
    entry = dict(source="imagefolder", path=str(base / "tree"), size=24, hierarchy=str(src["hierarchy"]))
    cfg = config.validate(tiny_params(dict(ingest={"shapes": entry}), ["shapes"], shipped=False))
    planned = preflight.plain_data(cfg)["shapes"]
    assert not (tmp_path / "data/shapes").exists()
    ingest("imagefolder", base / "tree", tmp_path / "data/shapes", size=24, hierarchy=src["hierarchy"], progress=False)
    packed = preflight.plain_data(cfg)["shapes"]
    assert planned.splits == packed.splits and planned.splits["train"] > 0
    assert planned.classes == packed.classes and planned.class_names == packed.class_names
    assert planned.image_size == packed.image_size == 24
    assert np.array_equal(planned.train_per_class, packed.train_per_class)
    assert np.array_equal(planned.fit_per_class, packed.fit_per_class)


def test_preflight_refuses_a_source_argument_its_ingest_job_would_refuse(folder, tmp_path, monkeypatch):
    """A data.ingest argument its source takes none of (a hierarchy on cifar100, a train_split on an
    ImageFolder) is refused by the preflight, before any job, naming its params key: not ingested yet
    or packed (a changed entry reruns the ingest job); the ingest job refuses it with the same line."""
    from sslstudy import preflight

    base, src = folder
    monkeypatch.chdir(tmp_path)

    def grid(**entry):
        ingest = {"shapes": dict(path=str(base / "tree"), size=24, **entry)}
        f = tmp_path / "study.yaml"
        f.write_text(yaml.safe_dump(tiny_params(dict(ingest=ingest), ["shapes"], shipped=False, views={"size": 24})))
        return preflight.load_grid([], study=str(f))

    def refusal(**entry):
        with pytest.raises(UserError) as e:
            preflight.run(grid(**entry), tmp_path / "preflight.csv", estimate=False)
        return str(e.value)

    assert refusal(source="cifar100", hierarchy=str(src["hierarchy"])) == (
        "source cifar100 takes no --hierarchy (data.ingest.shapes.hierarchy in params); remove it, or use a source "
        "that takes it: imagefolder, imagenet, places365"
    )
    wrong_split_args = dict(hierarchy=str(src["hierarchy"]), train_split="train_mini")
    wrong_split = dict(source="imagefolder", **wrong_split_args)
    line = (
        "source imagefolder takes no --train-split (data.ingest.shapes.train_split in params); remove it, or use a "
        "source that takes it: inat2021"
    )
    assert refusal(**wrong_split) == line
    valid = dict(source="imagefolder", hierarchy=str(src["hierarchy"]))
    assert preflight.run(grid(**valid), tmp_path / "preflight.csv", estimate=False).problems == []
    assert not (tmp_path / "data/shapes").exists()  # planned from the listing, nothing written

    with pytest.raises(UserError) as e:
        ingest("imagefolder", base / "tree", tmp_path / "data/shapes", size=24, progress=False, **wrong_split_args)
    assert str(e.value) == line and not (tmp_path / "data/shapes").exists()
    ingest("imagefolder", base / "tree", tmp_path / "data/shapes", size=24, hierarchy=src["hierarchy"], progress=False)
    assert refusal(**wrong_split) == line  # packed: the rerun its changed entry asks for would be refused
    assert preflight.run(grid(**valid), tmp_path / "preflight.csv", estimate=False).problems == []


# --------------------------------------------------------------------------- PASCAL VOC segmentation


def _nearest_crop(ids: np.ndarray, size: int) -> np.ndarray:
    """The shorter side scaled to ``size`` and the centre square, by nearest pixel centres."""
    h, w = ids.shape
    side = min(h, w)
    top, left = (h - side) / 2, (w - side) / 2
    c = (np.arange(size) + 0.5) * side / size
    return ids[np.floor(top + c).astype(int)][:, np.floor(left + c).astype(int)]


def test_voc_layout_ingests_images_with_their_masks(tmp_path):
    from sslstudy.data.sources.voc import CLASSES

    expected = replicas.voc(tmp_path / "VOC2012")
    ingest("voc", tmp_path / "VOC2012", tmp_path / "out" / "voc", size=32, workers=1, progress=False)
    ds = load_dataset(tmp_path / "out" / "voc")
    assert len(ds) == len(expected) and ds.mask_levels == ["class"]
    assert ds.mask_classes("class") == list(CLASSES) and ds.meta["masks"]["ignore"] == 255
    assert ds.masks.shape == (len(expected), 32, 32, 1)
    for row in ds.labels.to_dict("records"):
        e = expected[row["file"].split("/")[-1].removesuffix(".jpg")]
        assert row["split"] == e["split"]
        assert ds.class_names("class")[row["class"]] == CLASSES[e["cls"]]  # the object, not the person
        got = ds.masks[row["index"], ..., 0]
        want = _nearest_crop(e["mask"], 32)
        assert (got == want).mean() > 0.97, row["file"]  # off by one source pixel at most where PIL rounds
        assert set(np.unique(got)) == {0, 15, 255, e["cls"]}  # the ignore border survives resizing
        assert got[16, 16] == e["cls"]
    assert (ds.labels["split"] == "train").sum() == 6 and (ds.labels["split"] == "test").sum() == 4


def test_voc_bad_masks_are_one_error_naming_the_file(tmp_path):
    from PIL import Image

    root = tmp_path / "VOC2012"
    replicas.voc(root)
    mask = root / "SegmentationClass" / "2007_000003.png"
    ids = np.asarray(Image.open(mask)).copy()

    replicas.voc_mask(ids[:, :-2], mask)  # two columns short
    with pytest.raises(UserError, match=re.escape(str(mask)) + r": mask is 78x60 but its image .* is 80x60"):
        ingest("voc", root, tmp_path / "out" / "voc", size=32, workers=1, progress=False)

    bad = ids.copy()
    bad[0, 10] = 30
    replicas.voc_mask(bad, mask)
    with pytest.raises(UserError, match=re.escape(str(mask)) + r": class id 30 is outside the palette"):
        ingest("voc", root, tmp_path / "out" / "voc", size=32, workers=1, progress=False)

    Image.fromarray(np.stack([ids] * 3, -1)).save(mask)  # an RGB rendering of the colours
    with pytest.raises(UserError, match=re.escape(str(mask)) + r": mask is a RGB image, not a palette PNG"):
        ingest("voc", root, tmp_path / "out" / "voc", size=32, workers=1, progress=False)
    assert not (tmp_path / "out" / "voc").exists()
