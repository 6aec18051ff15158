"""The study's axes in the package: corruptions, pools, labelled subsets, few-label training, fusion
and the expansion of params into runs and evaluations."""

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from sslstudy import axes, config, names
from sslstudy.data.corrupt import corrupt_dataset, corrupt_images
from sslstudy.data.packed import load_dataset
from sslstudy.data.pool import pool_dataset
from sslstudy.errors import UserError
from sslstudy.eval import lowshot
from sslstudy.eval.features import Features, embed_dataset, probe_splits
from sslstudy.eval.fusion import fusion_scores
from sslstudy.models import build_backbone
from sslstudy.names import parse_quality

from tests.helpers import TINY_EVAL


def rng():
    return np.random.default_rng(0)


def checker(n=4, size=32):
    yy, xx = np.mgrid[:size, :size]
    img = (((yy + xx) % 2) * 255).astype(np.uint8)
    return np.repeat(np.repeat(img[None, :, :, None], 3, axis=3), n, axis=0)


# ------------------------------------------------------------------------------------ corruptions
def test_quality_tags_round_trip_and_unknown_is_a_user_error():
    assert parse_quality("saltpepper0.01") == ("saltpepper", 0.01)
    assert parse_quality("jpeg10") == ("jpeg", 10.0)
    with pytest.raises(UserError, match="unknown corruption 'sepia3'"):
        parse_quality("sepia3")


def test_downup_keeps_size_and_removes_the_finest_detail():
    x = checker()
    for f, max_std in ((2, 2.0), (4, 2.0)):
        y = corrupt_images(x, f"downup{f}", rng())
        assert y.shape == x.shape
        assert y.std() < max_std, (f, y.std())  # a 1-px checkerboard averages to flat grey
        assert abs(float(y.mean()) - 127.5) < 2
    assert np.array_equal(
        corrupt_images(np.full((2, 32, 32, 3), 77, np.uint8), "downup2", rng()), np.full((2, 32, 32, 3), 77)
    )


def test_lowres_makes_smaller_images():
    x = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    assert corrupt_images(x, "lowres16", rng()).shape == (3, 16, 16, 3)


def test_blur_matches_torchvision():
    x = np.random.default_rng(2).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    ours = corrupt_images(x, "blur1.5", rng()).astype(int)
    ref = TF.gaussian_blur(torch.from_numpy(x).permute(0, 3, 1, 2).float(), kernel_size=[11, 11], sigma=[1.5, 1.5])
    ref = ref.round().clamp(0, 255).permute(0, 2, 3, 1).numpy().astype(int)
    assert np.abs(ours - ref).max() <= 1


def test_jpeg_loses_detail_more_at_low_quality():
    x = np.random.default_rng(3).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    err = {q: np.abs(corrupt_images(x, f"jpeg{q}", rng()).astype(int) - x).mean() for q in (10, 90)}
    assert err[10] > err[90] > 0


def test_salt_and_pepper_hits_about_p_of_the_pixels_black_or_white():
    x = np.full((64, 32, 32, 3), 100, np.uint8)
    y = corrupt_images(x, "saltpepper0.01", np.random.default_rng(5))
    hit = (y != 100).any(axis=3)
    assert 0.008 < hit.mean() < 0.012  # 65,536 pixels: p = 0.01 +- 5 sigma
    assert set(np.unique(y[hit])) == {0, 255} and (y[hit] == y[hit][:, :1]).all()  # all channels alike


def test_corrupted_copy_is_deterministic_per_seed(tiny_data, tmp_path):
    src = tiny_data / "natural"
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        corrupt_dataset(src, tmp_path / name, "saltpepper0.01", seed)
    a, b, c = (load_dataset(tmp_path / n) for n in "abc")
    assert np.array_equal(a.images, b.images) and not np.array_equal(a.images, c.images)
    assert a.labels.equals(load_dataset(src).labels) and a.meta["source"]["corruption"] == "saltpepper0.01"


# ------------------------------------------------------------------------------------------ pools
def test_pool_is_as_large_as_one_domain_with_equal_parts(tiny_data, tmp_path):
    pool_dataset([tiny_data / "natural", tiny_data / "aerial"], tmp_path / "pool", seed=0)
    p, nat = load_dataset(tmp_path / "pool"), load_dataset(tiny_data / "natural")
    assert p.name == "natural+aerial" and p.levels == nat.levels
    for split in ("train", "test"):
        rows = p.labels[p.labels["split"] == split]
        assert len(rows) == len(nat.split_indices(split))
        assert rows["domain"].value_counts().to_dict() == {
            "natural": len(rows) // 2,
            "aerial": len(rows) - len(rows) // 2,
        }
    # every pooled image is an image of its source domain with that image's labels
    for i in (0, len(p) - 1):
        src = load_dataset(tiny_data / p.labels.loc[i, "domain"])
        j = [k for k in range(len(src)) if np.array_equal(src.images[k], p.images[i])]
        assert j and (src.labels.loc[j[0], p.levels] == p.labels.loc[i, p.levels]).all()


# -------------------------------------------------------------------------- labelled subsets, training


def test_labelled_subsets_are_nested_balanced_and_outside_val(tiny_data):
    ds = load_dataset(tiny_data / "natural")
    one, two = (lowshot.labelled_indices(ds, n, TINY_EVAL) for n in (1, 2))
    val = probe_splits(ds, TINY_EVAL)["val"]
    assert set(one) <= set(two) and set(two) <= set(ds.split_indices("train")) - set(val)
    assert (np.bincount(ds.label_array("fine", two), minlength=64) == 2).all()
    assert len(lowshot.labelled_indices(ds, "all", TINY_EVAL)) == len(ds.split_indices("train")) - len(val)
    with pytest.raises(UserError, match="lower quantity.labels"):
        lowshot.labelled_indices(ds, 1000, TINY_EVAL)


def test_training_from_scratch_fits_its_labelled_images(tiny_data):
    ds = load_dataset(tiny_data / "natural")
    torch.set_num_threads(1)
    train = lowshot.labelled_indices(ds, 1, TINY_EVAL)  # 64 images, one per fine class
    cfg = dict(epochs=1, min_steps=60, batch_size=32, lr=0.05, weight_decay=5e-4, scale=[0.9, 1.0])
    model = lowshot.train_classifier(build_backbone("cnn4", width=8), ds, train, cfg, 32, seed=0)
    fit = np.mean(lowshot.predict(model, ds, train, 32) == ds.label_array("fine", train))
    assert fit > 0.5, fit  # chance: 1/64
    assert len(lowshot.trained_rows(model, ds, 32, "supervised")) == 3


@pytest.mark.parametrize("native", [None, "amx_bf16"])
def test_fine_tuning_autocasts_in_bf16_where_the_cpu_has_it(tiny_data, monkeypatch, caplog, native):
    """finetune.precision auto: bf16 autocast when the CPU reports native bf16 (said in the log), else
    the same weights as fp32."""
    import logging

    import sslstudy.device

    monkeypatch.setattr(sslstudy.device, "cpu_bf16", lambda: native)
    ds = load_dataset(tiny_data / "natural")
    torch.set_num_threads(1)
    train = lowshot.labelled_indices(ds, 1, TINY_EVAL)
    cfg = dict(epochs=1, min_steps=10, batch_size=32, lr=0.05, weight_decay=5e-4, scale=[0.9, 1.0])

    def fine_tune(precision):
        torch.manual_seed(0)  # the same initial weights for both (the global generator, whatever ran before)
        return lowshot.train_classifier(
            build_backbone("cnn4", width=8), ds, train, dict(cfg, precision=precision), 32, seed=0
        )

    with caplog.at_level(logging.INFO, logger="sslstudy.lowshot"):
        auto, fp32 = fine_tune("auto"), fine_tune("fp32")
    same = all(torch.equal(a, b) for a, b in zip(auto.state_dict().values(), fp32.state_dict().values()))
    assert same == (native is None)
    bf16 = "fine-tuning on 64 images on cpu: bf16 autocast on the CPU (amx_bf16)"
    assert (bf16 in caplog.text) == (native is not None)
    assert "fine-tuning on 64 images on cpu: fp32 (precision: fp32)" in caplog.text


def test_supervised_checkpoint_reads_as_trained_not_random(tiny_data, tmp_path):
    import json

    import pandas as pd
    from sslstudy.checkpoint import load_backbone
    from sslstudy.cli import run_command

    arch, ft = (
        dict(arch="cnn4", width=4),
        dict(epochs=2, min_steps=1, batch_size=32, lr=0.05, weight_decay=5e-4, scale=[0.9, 1.0]),
    )
    ckpt, common = tmp_path / "final.pt", ["--dataset", str(tiny_data / "natural"), "--size", "32", "--run", "sup"]
    run_command(
        [
            "supervised",
            *common,
            "--labels",
            "l1",
            "--seed",
            "0",
            "--eval",
            json.dumps(TINY_EVAL),
            "--backbone",
            json.dumps(arch),
            "--finetune",
            json.dumps(ft),
            "--checkpoint",
            str(ckpt),
            "--out",
            str(tmp_path / "scores.csv"),
        ]
    )
    state = torch.load(ckpt, weights_only=False)
    assert state["epoch"] == state["config"]["epochs"] == 2  # 64 labelled images, 2 x 2 steps of 32
    assert load_backbone(ckpt)[1]["epochs"] == 2
    # its frozen evaluation is recorded at the trained epoch, not at 0 (the random weights' epoch)
    run_command(
        [
            "evaluate",
            "--dataset",
            f"natural={tiny_data / 'natural'}",
            "--size",
            "32",
            "--run",
            "sup",
            "--checkpoint",
            f"pretrained={ckpt}",
            "--eval",
            json.dumps(TINY_EVAL),
            "--frozen",
            "pretrained_on_natural",
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "eval"),
        ]
    )
    df = pd.read_csv(tmp_path / "eval" / names.FROZEN_FILE)
    assert set(df["epoch"]) == {2} and set(df["weights"]) == {"pretrained"} and set(df["split"]) == {"test"}
    assert sorted(p.name for p in (tmp_path / "eval").iterdir()) == ["embeddings", names.FROZEN_FILE]  # no dense table
    feats = Features.load(tmp_path / "eval" / names.EMBEDDINGS_FILE.format(weights="pretrained", on="natural"))
    assert feats.x.dtype == np.float16 and len(feats.index) == len(ds_rows(tiny_data / "natural"))


def test_one_lowshot_call_over_every_count_equals_one_call_per_count(tiny_data, subset128, tmp_path):
    """A (run, mode) job loads the checkpoint (or cache) once; fine-tuning trains a fresh copy per
    count: its table is the per-count tables stacked."""
    import json

    import pandas as pd
    from sslstudy.checkpoint import BACKBONE, atomic_torch_save
    from sslstudy.cli import run_command

    arch = dict(arch="cnn4", width=4)
    torch.manual_seed(0)
    ckpt = tmp_path / "final.pt"
    atomic_torch_save(
        dict(
            epoch=3,
            model={BACKBONE + k: v for k, v in build_backbone(**arch).state_dict().items()},
            config=dict(
                seed=0,
                epochs=3,
                backbone=arch,
                data=dict(subset=str(subset128)),
            ),
        ),
        ckpt,
    )
    common = [
        "--checkpoint",
        str(ckpt),
        "--dataset",
        str(tiny_data / "natural"),
        "--size",
        "32",
        "--run",
        "r",
        "--eval",
        json.dumps(TINY_EVAL),
        "--device",
        "cpu",
    ]
    run_command(
        [
            "evaluate",
            "--checkpoint",
            f"pretrained={ckpt}",
            "--dataset",
            f"natural={tiny_data / 'natural'}",
            "--size",
            "32",
            "--embed",
            "pretrained_on_natural",
            "--eval",
            json.dumps(TINY_EVAL),
            "--device",
            "cpu",
            "--out",
            str(tmp_path / "eval"),
        ]
    )
    ft = dict(epochs=1, min_steps=3, batch_size=16, lr=0.05, weight_decay=5e-4, scale=[0.5, 1.0])
    for mode, extra in [
        (
            "linear",
            ["--embeddings", str(tmp_path / "eval" / names.EMBEDDINGS_FILE.format(weights="pretrained", on="natural"))],
        ),
        ("finetune", ["--finetune", json.dumps(ft)]),
    ]:
        run_command(
            ["lowshot", *common, "--mode", mode, "--labels", "l1", "l2", *extra, "--out", str(tmp_path / f"{mode}.csv")]
        )
        both = pd.read_csv(tmp_path / f"{mode}.csv")
        assert list(dict.fromkeys(both["labels"])) == ["l1", "l2"] and set(both["pretrain_images"]) == {128}
        for tag, n in (("l1", 64), ("l2", 128)):
            run_command(
                [
                    "lowshot",
                    *common,
                    "--mode",
                    mode,
                    "--labels",
                    tag,
                    *extra,
                    "--out",
                    str(tmp_path / f"{mode}_{tag}.csv"),
                ]
            )
            alone = pd.read_csv(tmp_path / f"{mode}_{tag}.csv")
            assert set(alone["labelled_images"]) == {n}
            pd.testing.assert_frame_equal(both[both["labels"] == tag].reset_index(drop=True), alone, check_exact=True)


def ds_rows(path):
    return load_dataset(path).labels["index"]


def test_fusion_rows_cover_both_members_and_the_pair(tiny_data):
    ds = load_dataset(tiny_data / "natural")
    torch.manual_seed(0)
    a, b = (embed_dataset(build_backbone("cnn4", width=w).eval(), ds, 32, 256) for w in (4, 8))
    df = fusion_scores(a, b, ds, TINY_EVAL)
    assert sorted(df["member"].unique()) == ["a", "a+b", "b"]
    dims = df.groupby("member")["dim"].first()
    assert dims["a+b"] == dims["a"] + dims["b"] == 32 + 64
    assert len(df) == 3 * 3 and df["value"].between(0, 1).all()


def test_fusion_command_reads_each_cache_as_its_member(tiny_data, tmp_path):
    """`sslstudy fusion` as the fusion rule calls it: --embeddings-a/-b name the members' caches,
    --name-a/-b their labels in the table."""
    import json

    import pandas as pd
    from sslstudy.cli import run_command

    ds = load_dataset(tiny_data / "natural")
    torch.manual_seed(0)
    caches = {}
    for member, width in (("a", 4), ("b", 8)):  # 32 and 64 feature dimensions
        caches[member] = tmp_path / f"{member}.npz"
        embed_dataset(build_backbone("cnn4", width=width).eval(), ds, 32, 256).save(caches[member])
    out = tmp_path / "fusion.csv"
    run_command(
        ["fusion", "--embeddings-a", str(caches["a"]), "--embeddings-b", str(caches["b"])]
        + ["--name-a", "simclr@natural", "--name-b", "barlow@natural", "--seed", "3"]
        + ["--dataset", str(tiny_data / "natural"), "--size", "32", "--eval", json.dumps(TINY_EVAL), "--device", "cpu"]
        + ["--out", str(out)]
    )
    df = pd.read_csv(out)
    by_member = df.groupby("member")[["model", "dim"]].first()
    assert by_member.loc["a"].tolist() == ["simclr@natural", 32]
    assert by_member.loc["b"].tolist() == ["barlow@natural", 64]
    assert by_member.loc["a+b"].tolist() == ["simclr@natural + barlow@natural", 96]
    assert set(df["pair"]) == {"simclr@natural + barlow@natural"} and set(df["seed"]) == {3}


# ------------------------------------------------------------------------------- the grid in params
def grid(**axes_over):
    raw = dict(study=dict(methods=["simclr"], domains=["natural", "aerial"], subsets=[1.0]))
    raw.update(axes_over)
    return config.validate(raw)


def test_axes_off_by_default_leave_the_plain_grid():
    c = grid()
    assert [r["id"] for r in axes.ssl_runs(c)] == [
        "simclr/natural_frac1_clean/seed0",
        "simclr/aerial_frac1_clean/seed0",
    ]
    assert not axes.supervised_models(c) and not axes.lowshot_jobs(c) and not axes.fusion_pairs(c)
    assert len(axes.evaluations(c)) == 4 and len(axes.cluster_runs(c)) == 2


def test_each_axis_adds_its_runs_for_its_own_methods_and_domains():
    c = grid(
        quantity=dict(domains=["natural"], subsets=[0.5], labels=[1, "all"], modes=["linear"]),
        quality=dict(domains=["aerial"], jpeg=[10, 50], lowres=[16]),
        domain=dict(domains=["natural", "aerial"], pools=[["natural", "aerial"]], evaluate_on=["natural", "texture"]),
        fusion=dict(domains=["natural"], kinds=["supervised"], pairs=[["simclr@natural", "simclr@aerial"]]),
    )
    ids = [r["id"] for r in axes.ssl_runs(c)]
    for rid in (
        "simclr/natural_frac0.5_clean/seed0",
        "simclr/aerial_frac1_jpeg50/seed0",
        "simclr/aerial_frac1_lowres16/seed0",
        "simclr/natural+aerial_frac1_clean/seed0",
    ):
        assert rid in ids
    assert len(ids) == len(set(ids)) == 2 + 1 + 3 + 1
    assert {m["id"] for m in axes.supervised_models(c)} == {
        "supervised/natural_l1_clean/seed0",
        "supervised/natural_lall_clean/seed0",
    }
    assert axes.lowshot_jobs(c) == [
        ("simclr/natural_frac1_clean/seed0", "linear"),
        ("simclr/natural_frac0.5_clean/seed0", "linear"),
    ]
    assert axes.lowshot_labels(c) == ["l1", "lall"]  # each job covers every count
    ev = axes.evaluations(c)
    assert ("simclr/natural+aerial_frac1_clean/seed0", "pretrained", "texture") in ev
    assert ("simclr/aerial_frac1_jpeg10/seed0", "pretrained", "aerial") in ev
    assert [(a["id"], b["id"]) for a, b in axes.fusion_pairs(c)] == [
        ("simclr/natural_frac1_clean/seed0", "supervised/natural_lall_clean/seed0"),
        ("simclr/natural_frac1_clean/seed0", "simclr/aerial_frac1_clean/seed0"),
    ]
    spec = axes.pretrain_spec(c, next(r for r in axes.ssl_runs(c) if r["quality"] == "lowres16"))
    assert [v["size"] for v in spec["views"]] == [16, 16] and spec["data"][
        "dataset"
    ] == "results/data/seed0/aerial_lowres16"


def test_one_evaluate_job_per_model_covers_what_every_axis_reads():
    """evaluation_plan: a model's frozen and dense evaluations and the embedding caches fusion and the
    few-label linear probe read, in one job; a model only those read is embedded, not scored."""
    c = grid(
        quantity=dict(domains=["natural"], subsets=[0.5], labels=[1, "all"], modes=["linear"]),
        fusion=dict(domains=["natural"], kinds=["supervised"], pairs=[["simclr@natural", "simclr@aerial"]]),
        dense=dict(enabled=True, domains=["natural"]),
    )
    plan, both = axes.evaluation_plan(c), [("pretrained", "natural"), ("random", "natural")]
    assert plan == {
        "simclr/natural_frac1_clean/seed0": dict(
            frozen=both, dense=both, embed=both + [("pretrained", "aerial")], cluster=["natural"]
        ),
        "simclr/aerial_frac1_clean/seed0": dict(
            frozen=[("pretrained", "aerial"), ("random", "aerial")],
            dense=[],
            embed=[("pretrained", "aerial"), ("random", "aerial"), ("pretrained", "natural")],
            cluster=["aerial"],
        ),  # the periodic clustering of the method comparison's runs
        "supervised/natural_lall_clean/seed0": dict(
            frozen=[], dense=[("pretrained", "natural")], embed=[("pretrained", "natural")], cluster=[]
        ),
        "simclr/natural_frac0.5_clean/seed0": dict(
            frozen=[], dense=[], embed=[("pretrained", "natural")], cluster=[]
        ),  # few-label linear
    }
    assert {(r, w, on) for r, p in plan.items() for w, on in p["frozen"]} == set(axes.evaluations(c))
    assert {(r, w, on) for r, p in plan.items() for w, on in p["dense"]} == set(axes.dense_jobs(c))


def test_an_axis_runs_its_own_seeds_and_study_seeds_when_null():
    c = grid(
        study=dict(methods=["simclr"], domains=["natural"], seeds=[0, 1, 2]),
        quality=dict(jpeg=[10], seeds=[0]),
        fusion=dict(kinds=["supervised"], seeds=[1, 2]),
        granularity=dict(supervised=True),
    )
    ids = [r["id"] for r in axes.ssl_runs(c)]
    assert [i for i in ids if "jpeg" in i] == ["simclr/natural_frac1_jpeg10/seed0"]
    assert {f"simclr/natural_frac1_clean/seed{s}" for s in (0, 1, 2)} <= set(ids)
    assert [a["seed"] for a, _ in axes.fusion_pairs(c)] == [1, 2]
    assert sorted(m["seed"] for m in axes.supervised_models(c)) == [0, 1, 2]  # granularity: study.seeds
    assert axes.seeds(c, "quality") == [0] and axes.seeds(c, "domain") == [0, 1, 2]
    assert axes.cluster_runs(c) == [f"simclr/natural_frac1_clean/seed{s}" for s in (0, 1, 2)]  # not the jpeg run
    assert axes.cluster_runs(grid(clustering=dict(seeds=[1]))) == [
        "simclr/natural_frac1_clean/seed1",
        "simclr/aerial_frac1_clean/seed1",
    ]


def test_bad_axis_values_are_one_line_errors():
    with pytest.raises(UserError, match="quality.jpeg.0"):
        grid(quality=dict(jpeg=[0]))
    with pytest.raises(UserError, match="fuses a model with itself"):
        axes.fusion_pairs(grid(fusion=dict(pairs=[["simclr@natural", "simclr@natural"]])))
    with pytest.raises(UserError, match="unknown method 'nosuch' in quality.methods; the methods are barlow, byol"):
        axes.check(grid(quality=dict(methods=["nosuch"], jpeg=[10])))


def test_random_weights_are_evaluated_once_per_seed_and_domain():
    """Every method's run of a seed starts from the same backbone weights, so the eight-method
    comparison evaluates them once per seed and domain (random_twins) and the others share them."""
    c = config.load("params/study.yaml")
    s = c["study"]
    twins = axes.random_twins(c, "frozen")
    assert len(twins) == len(s["methods"]) * len(s["seeds"])
    assert set(twins.values()) == {f"{s['methods'][0]}/natural_frac1_clean/seed{sd}" for sd in s["seeds"]}
    assert sorted(r for r, w, _ in axes.evaluations(c) if w == "random") == sorted(set(twins.values()))
    dense = [(r, on) for r, w, on in axes.dense_jobs(c) if w == "random"]
    assert dense == [(src, on) for (r, on), src in axes.random_twins(c, "dense").items() if r == src]
    assert len(dense) == len(axes.seeds(c, "dense"))
    from sslstudy.train import build_model

    refs = []
    for sd in s["seeds"][:2]:
        states = {}
        for m in s["methods"]:
            spec = axes.pretrain_spec(c, next(r for r in axes.ssl_runs(c) if r["method"] == m and r["seed"] == sd))
            states[m] = build_model(spec, n_train=256).backbone.state_dict()
        refs.append(states[s["methods"][0]])
        for m, st in states.items():
            assert st.keys() == refs[-1].keys() and all(torch.equal(st[k], refs[-1][k]) for k in st), (m, sd)
    assert not torch.equal(refs[0]["features.0.weight"], refs[1]["features.0.weight"])  # the seed does change them
