"""Dense evaluation: the built-in data's masks against the generator's geometry, masks carried by
corruptions and pools, and the frozen dense probe and correspondence score on backbones whose
answer is known."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from sslstudy import names, provenance
from sslstudy.augment import MEAN, STD, ViewSpec
from sslstudy.data import synth
from sslstudy.data.corrupt import corrupt_dataset
from sslstudy.data.packed import load_dataset, write_dataset
from sslstudy.data.pool import pool_dataset
from sslstudy.errors import UserError
from sslstudy.eval.dense import confusion, correspondence_accuracy, dense_probe, evaluate_dense, miou, pixel_accuracy
from sslstudy.eval.features import Features
from torch import nn

from tests.helpers import TINY_EVAL
from tests.study_tables import run_ids


@pytest.fixture(scope="module")
def masked(tmp_path_factory):
    """natural and aerial, 128 images of 32 px each, with masks."""
    root = tmp_path_factory.mktemp("masked")
    synth.generate(root, domains=["natural", "aerial"], n_images=128, image_size=32, seed=0)
    return root


# ---------------------------------------------------------------------------- masks


def _geometry(domain: str, n: int, seed: int = 0) -> dict:
    """The generator's drawn labels and object placement, re-drawn from its seed."""
    rng = np.random.default_rng(synth.domain_seed(seed, domain).spawn(1 + -(-n // synth.CHUNK))[0])
    fine, _ = synth._labels(rng, n, 0.25)
    p = synth._draw_params(rng, domain, n)
    return dict(fine=fine, cx=p["cx"], cy=p["cy"], r=p["r"])


def test_masks_follow_the_drawn_objects():
    n, size = 128, 32
    images, labels, meta, masks = synth.generate_domain("natural", n, size, seed=0, masks=True)
    g = _geometry("natural", n)
    assert np.array_equal(g["fine"], labels["fine"].to_numpy())
    c = (np.arange(size) + 0.5) / size  # pixel centres
    checked = 0
    for i in range(n):
        coarse, mid = int(labels["coarse"][i]), int(labels["mid"][i])
        u = (c[None, :] - g["cx"][i]) / g["r"][i]
        v = (c[:, None] - g["cy"][i]) / g["r"][i]
        if coarse == 0:
            d = np.sqrt(u * u + v * v) - 1.0  # disk of radius 1 (object units)
        elif coarse == 1:
            d = np.maximum(np.abs(u), np.abs(v)) - 0.86  # square of half-side 0.86
        else:
            continue
        clear = np.abs(d) > 1e-3  # away from float32 rounding at the boundary
        want = np.where(d < 0, 1 + coarse, 0)
        assert np.array_equal(masks[i, ..., 0][clear], want[clear]), i
        assert np.array_equal(masks[i, ..., 1][clear], np.where(d < 0, 1 + mid, 0)[clear]), i
        checked += 1
        # the object's centre pixel is the object, the corner pixels are background
        row, col = int(g["cy"][i] * size), int(g["cx"][i] * size)
        assert masks[i, row, col, 0] == 1 + coarse and masks[i, 0, 0, 0] == 0
    assert checked >= 50
    # every image: the mid mask is the coarse mask refined (same object pixels)
    assert np.array_equal(masks[..., 0] > 0, masks[..., 1] > 0)
    assert set(np.unique(masks[..., 1])) <= set(range(1 + synth.N_MID))
    assert meta["masks"]["classes"]["coarse"] == ["background", *synth.SHAPES]
    # object pixels are the images' foreground: far more of them differ from the corner colour
    fg = masks[..., 0] > 0
    assert 0.15 < fg.mean() < 0.6


def test_masks_leave_the_images_and_labels_unchanged():
    im0, lab0, meta0 = synth.generate_domain("texture", 128, 32, seed=5)
    im1, lab1, meta1, _ = synth.generate_domain("texture", 128, 32, seed=5, masks=True)
    assert im0.tobytes() == im1.tobytes()
    pd.testing.assert_frame_equal(lab0, lab1)
    assert {k: v for k, v in meta1.items() if k != "masks"} == meta0


def test_generate_writes_masks_that_load(masked):
    ds = load_dataset(masked / "natural")
    assert ds.mask_levels == ["coarse", "mid"]
    assert ds.masks.shape == (128, 32, 32, 2) and ds.masks.dtype == np.uint8
    idx = ds.split_indices("test")
    assert np.array_equal(ds.mask_array("mid", idx), np.asarray(ds.masks)[idx, ..., 1])
    with pytest.raises(UserError, match="no mask level 'fine'"):
        ds.mask_array("fine", idx)


def test_lowres_and_downup_keep_full_size_masks(masked, tmp_path):
    src = load_dataset(masked / "natural")
    for tag in ("lowres16", "downup2", "jpeg10"):
        corrupt_dataset(masked / "natural", tmp_path / tag, tag, seed=0)
        ds = load_dataset(tmp_path / tag)
        assert ds.image_size == (16 if tag == "lowres16" else 32)
        assert ds.masks.shape == (128, 32, 32, 2)
        assert np.array_equal(np.asarray(ds.masks), np.asarray(src.masks)), tag


def test_pools_carry_the_members_masks(masked, tmp_path):
    pool_dataset([masked / "natural", masked / "aerial"], tmp_path / "pool", seed=0)
    pool = load_dataset(tmp_path / "pool")
    members = {d: load_dataset(masked / d) for d in ("natural", "aerial")}
    assert pool.masks.shape[0] == len(pool)
    for d, ds in members.items():
        rows = np.flatnonzero(pool.labels["domain"].to_numpy() == d)
        # each pooled image's mask is its member's mask for the same image bytes
        lookup = {ds.images[i].tobytes(): i for i in range(len(ds))}
        for r in rows:
            assert np.array_equal(pool.masks[r], ds.masks[lookup[pool.images[r].tobytes()]])


def test_mask_problems_are_one_clear_error(masked, tmp_path):
    images, labels, meta, masks = synth.generate_domain("natural", 64 * 2, 16, seed=0, masks=True)
    bad = masks.copy()
    bad[3, 2, 2, 0] = 9  # coarse has 5 classes
    with pytest.raises(UserError, match="mask level 'coarse' holds value 9 \\(image 3\\)"):
        write_dataset(tmp_path / "x", images, labels, meta, bad)
    with pytest.raises(UserError, match="masks must be uint8 of shape"):
        write_dataset(tmp_path / "x", images, labels, meta, masks[:, :8])
    write_dataset(tmp_path / "x", images, labels, meta, masks)
    np.save(tmp_path / "x" / "masks.npy", masks[:10])
    with pytest.raises(UserError, match="masks.npy: shape is"):
        load_dataset(tmp_path / "x")
    (tmp_path / "x" / "masks.npy").unlink()
    with pytest.raises(UserError, match="masks.npy: missing file"):
        load_dataset(tmp_path / "x")


# ---------------------------------------------------------------------------- the probe


def _class_images(masks: np.ndarray) -> np.ndarray:
    """Images whose red channel spells the coarse mask class (40 per class)."""
    img = np.zeros((*masks.shape[:3], 3), dtype=np.uint8)
    img[..., 0] = 40 * masks[..., 0]
    return img


class Decoder(nn.Module):
    """A hand-built backbone: the one-hot of the class the red channel spells, at full resolution
    (``constant``: zeros everywhere instead)."""

    def __init__(self, k: int, constant: bool = False):
        super().__init__()
        self.k, self.constant = k, constant
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward_map(self, x):
        red = x[:, 0] * STD[0] + MEAN[0]  # undo the evaluation view's normalisation
        cls = (red * 255 / 40).round().long().clamp(0, self.k - 1)
        f = nn.functional.one_hot(cls, self.k).permute(0, 3, 1, 2).float()
        return torch.zeros_like(f) if self.constant else f

    def forward(self, x):
        return self.forward_map(x).mean(dim=(2, 3))


def _masked_toy(tmp_path, masked):
    """The natural domain's masks with images that spell them (coarse level only)."""
    src = load_dataset(masked / "natural")
    masks = np.asarray(src.masks)
    meta = dict(src.meta)
    return_path = tmp_path / "toy"
    write_dataset(return_path, _class_images(masks), src.labels, meta, masks)
    return load_dataset(return_path)


CFG = dict(epochs=10, batch_size=1024, lr=0.05, seed=0, pixels=64, correspondence_images=0)


def test_probe_is_near_perfect_on_features_that_encode_the_mask(tmp_path, masked):
    ds = _masked_toy(tmp_path, masked)
    df = evaluate_dense(Decoder(5), ds, CFG, 32, {})
    v = df.set_index(["level", "metric"])["value"]
    assert v["coarse", "miou"] > 0.99 and v["coarse", "pixel_acc"] > 0.999
    # the mid classes are not in the red channel: the shape is, not the pattern
    assert v["mid", "miou"] < 0.7


def test_probe_is_at_chance_on_constant_features(tmp_path, masked):
    ds = _masked_toy(tmp_path, masked)
    df = evaluate_dense(Decoder(5, constant=True), ds, CFG, 32, {})
    v = df.set_index(["level", "metric"])["value"]
    test = ds.mask_array("coarse", ds.split_indices("test"))
    background = float((test == 0).mean())  # the majority class, the best a constant can do
    assert v["coarse", "pixel_acc"] == pytest.approx(background, abs=1e-6)
    assert v["coarse", "miou"] == pytest.approx(background / 5, abs=1e-6)  # background's IoU, over 5 classes


def test_probe_upsamples_coarse_maps_and_honours_ignore():
    # 2x2 feature map, 8x8 masks: each quadrant one class, one quadrant ignored in training
    n, k = 40, 4
    y = torch.zeros((n, 1, 8, 8), dtype=torch.long)
    f = torch.zeros((n, k, 2, 2))
    for q, (r, c) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        y[:, 0, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4] = q
        f[:, q, r, c] = 1.0
    f += 0.01 * torch.randn(f.shape, generator=torch.Generator().manual_seed(0))
    y_train = y.clone()
    y_train[:, 0, :4, :4] = 255  # class 0 never seen in training
    pred = dense_probe(f, y_train, f, [k], epochs=30, batch_size=256, lr=0.1, seed=0, pixels=32)
    assert pred.shape == (n, 1, 8, 8)
    conf = confusion(pred[:, 0].numpy(), y[:, 0].numpy(), k)
    # the three trained quadrants are right away from the quadrant borders
    inner = pred[:, 0, 5:8, 5:8]
    assert (inner == 3).all() and (pred[:, 0, 0:3, 5:8] == 1).all()
    assert pixel_accuracy(conf) > 0.6


def test_miou_and_pixel_accuracy_by_hand():
    target = np.array([[0, 0, 1, 255]])
    pred = np.array([[0, 1, 1, 0]])
    conf = confusion(pred, target, 3)
    assert conf.sum() == 3  # the ignored pixel is not counted
    assert pixel_accuracy(conf) == pytest.approx(2 / 3)
    assert miou(conf) == pytest.approx((1 / 2 + 1 / 2) / 2)  # class 2 absent from both: left out


# ---------------------------------------------------------------------------- correspondence


class Position(nn.Module):
    """Features that say where in the image a pixel is: images are coordinate ramps (red = x,
    green = y), features a radial basis over a 6x6 grid of positions, average-pooled to 8x8."""

    def __init__(self, constant: bool = False):
        super().__init__()
        self.constant = constant
        self.dummy = nn.Parameter(torch.zeros(1))
        g = (torch.arange(6) + 0.5) / 6
        self.register_buffer("centres", torch.stack(torch.meshgrid(g, g, indexing="xy"), -1).reshape(-1, 2))

    def forward_map(self, x):
        xy = torch.stack([x[:, 0] * STD[0] + MEAN[0], x[:, 1] * STD[1] + MEAN[1]], -1)  # (N, H, W, 2)
        d = ((xy[..., None, :] - self.centres) ** 2).sum(-1)
        f = torch.exp(-d / 0.01).permute(0, 3, 1, 2)
        f = nn.functional.adaptive_avg_pool2d(f, 8)
        return torch.ones_like(f) if self.constant else f


class _Ramps:
    def __init__(self, n: int, size: int = 32):
        c = ((np.arange(size) + 0.5) / size * 255).round().astype(np.uint8)
        img = np.zeros((n, size, size, 3), dtype=np.uint8)
        img[..., 0] = c[None, None, :]
        img[..., 1] = c[None, :, None]
        self.images = img


def test_correspondence_finds_positions_and_not_constants():
    ds = _Ramps(64)
    spec = ViewSpec(size=32, scale=(0.3, 1.0), jitter_p=0.0, gray_p=0.0, blur_p=0.0)
    idx = np.arange(64)
    good = correspondence_accuracy(Position(), ds, idx, spec, seed=0, batch_size=16)
    flat = correspondence_accuracy(Position(constant=True), ds, idx, spec, seed=0, batch_size=16)
    assert good > 0.95
    assert flat < 0.3  # every match is cell 0
    assert correspondence_accuracy(Position(), ds, idx, spec, seed=0, batch_size=16) == good  # seeded


def test_missing_masks_is_one_clear_error(tmp_path):
    images, labels, meta = synth.generate_domain("natural", 128, 16, seed=0)
    write_dataset(tmp_path / "plain", images, labels, meta)
    with pytest.raises(UserError, match="no masks.npy .*sslstudy synth"):
        evaluate_dense(Decoder(5), load_dataset(tmp_path / "plain"), CFG, 16, {})
    assert json.loads((tmp_path / "plain" / "meta.json").read_text()).get("masks") is None


# ---------------------------------------------------------------------------- command and report


IDS = dict(method="densecl", domain="natural", subset="frac1", quality="clean", seed=0)


def _checkpoints(tmp_path) -> dict:
    """ep000.pt (random) and final.pt (other weights, 3 epochs) of a cnn4, as pretraining writes them."""
    from sslstudy.checkpoint import BACKBONE, atomic_torch_save
    from sslstudy.models import build_backbone

    arch, out = dict(arch="cnn4", width=4), {}
    for seed, (weights, name, epoch) in enumerate([("random", "ep000.pt", 0), ("pretrained", "final.pt", 3)]):
        torch.manual_seed(seed)
        state = {BACKBONE + k: v for k, v in build_backbone(**arch).state_dict().items()}
        out[weights] = tmp_path / name
        atomic_torch_save(
            dict(epoch=epoch, model=state, config=dict(backbone=arch, epochs=3, views=[{}, {}])), out[weights]
        )
    return out


def _evaluate(masked, checkpoints: dict, out, *evaluations: str) -> int:
    from sslstudy.cli import main

    return main(
        [
            "evaluate",
            "--checkpoint",
            *(f"{w}={p}" for w, p in checkpoints.items()),
            "--dataset",
            f"natural={masked / 'natural'}",
            f"aerial={masked / 'aerial'}",
            *evaluations,
            "--eval",
            json.dumps(TINY_EVAL),
            "--dense-eval",
            json.dumps(dict(CFG, epochs=2, correspondence_images=16)),
            "--views",
            json.dumps(dict(scale=[0.4, 1.0])),
            "--size",
            "32",
            "--run",
            "densecl/natural_frac1_clean/seed0",
            "--ids",
            json.dumps(IDS),
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
    )


def test_dense_evaluation_writes_a_tidy_table(masked, tmp_path):
    ckpt = _checkpoints(tmp_path)
    assert _evaluate(masked, dict(random=ckpt["random"]), tmp_path / "eval", "--dense", "random_on_natural") == 0
    assert [p.name for p in (tmp_path / "eval").iterdir()] == [names.DENSE_FILE]  # no frozen table, no embeddings
    df = pd.read_csv(tmp_path / "eval" / names.DENSE_FILE)
    assert list(df.columns) == [
        "run",
        *IDS,
        "weights",
        "epoch",
        "model_config",
        "eval_domain",
        "level",
        "metric",
        "value",
    ]
    # the hash of the evaluated checkpoint's config (sslstudy.provenance)
    config = torch.load(ckpt["random"], weights_only=False)["config"]
    assert set(df["model_config"]) == {provenance.of_config(config)}
    assert set(zip(df["level"], df["metric"])) == {
        ("coarse", "miou"),
        ("coarse", "pixel_acc"),
        ("mid", "miou"),
        ("mid", "pixel_acc"),
        ("label-free", "correspondence"),
    }
    assert (df["epoch"] == 0).all() and (df["weights"] == "random").all() and (df["eval_domain"] == "natural").all()
    assert df["value"].between(0, 1).all()


def test_one_evaluate_call_equals_one_call_per_evaluation(masked, tmp_path):
    """A model's job (each checkpoint loaded once, frozen, dense and embed-only evaluations in one
    process) writes exactly what separate processes per evaluation write."""
    ckpt = _checkpoints(tmp_path)
    plan = [
        "--frozen",
        "pretrained_on_natural",
        "random_on_natural",
        "pretrained_on_aerial",
        "--dense",
        "pretrained_on_natural",
        "random_on_natural",
        "--embed",
        "random_on_aerial",
    ]
    assert _evaluate(masked, ckpt, tmp_path / "one", *plan) == 0
    one = tmp_path / "one"
    frozen, dense = (pd.read_csv(one / f) for f in (names.FROZEN_FILE, names.DENSE_FILE))
    assert list(
        frozen.drop_duplicates(["weights", "eval_domain"])[["weights", "eval_domain"]].itertuples(
            index=False, name=None
        )
    ) == [("pretrained", "natural"), ("pretrained", "aerial"), ("random", "natural")]
    assert set(frozen.query("weights == 'pretrained'")["epoch"]) == {3} and set(
        frozen.query("weights == 'random'")["epoch"]
    ) == {0}
    for flag, e in [
        ("--frozen", "pretrained_on_natural"),
        ("--frozen", "pretrained_on_aerial"),
        ("--frozen", "random_on_natural"),
        ("--dense", "pretrained_on_natural"),
        ("--dense", "random_on_natural"),
        ("--embed", "random_on_aerial"),
    ]:
        alone = tmp_path / flag.strip("-") / e
        assert _evaluate(masked, ckpt, alone, flag, e) == 0
        weights, on = names.parse_evaluation(e)
        table, file = (dense, names.DENSE_FILE) if flag == "--dense" else (frozen, names.FROZEN_FILE)
        if flag != "--embed":
            rows = table[(table["weights"] == weights) & (table["eval_domain"] == on)].reset_index(drop=True)
            pd.testing.assert_frame_equal(rows, pd.read_csv(alone / file), check_exact=True)
        if flag != "--dense":
            cache = names.EMBEDDINGS_FILE.format(weights=weights, on=on)
            a, b = (Features.load(d / cache) for d in (one, alone))
            assert np.array_equal(a.x, b.x) and np.array_equal(a.index, b.index)


def test_evaluate_names_what_an_evaluation_lacks(masked, tmp_path, capsys):
    ckpt = _checkpoints(tmp_path)
    for args, needle in [
        (["--frozen", "pretrained_on_texture"], "pretrained_on_texture needs --dataset texture=DIR"),
        (["--dense", "random_on_natural"], "random_on_natural needs --checkpoint random=PATH"),
        (["--frozen", "natural"], "evaluation 'natural': expected <pretrained|random>_on_<domain>"),
        (["--cluster", "natural"], "--cluster needs --run-dir"),
        (["--cluster", "texture", "--run-dir", str(tmp_path)], "--cluster texture needs --dataset texture=DIR"),
        ([], "nothing to do"),
    ]:
        assert _evaluate(masked, dict(pretrained=ckpt["pretrained"]), tmp_path / "eval", *args) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1, err
        assert not (tmp_path / "eval").exists()


def _dense_rows(values: dict) -> pd.DataFrame:
    """(method, seed) -> coarse mIoU, as the dense command writes them."""
    return pd.DataFrame(
        [
            dict(
                run_ids(m, "natural", "frac1", "clean", s),
                weights="pretrained",
                epoch=30,
                eval_domain="natural",
                level="coarse",
                metric="miou",
                value=v,
            )
            for (m, s), v in values.items()
        ]
    )


def test_report_section_summarises_and_pairs_densecl_with_moco(tmp_path):
    from sslstudy.report import dense as R
    from sslstudy.report.html import ENV, Page

    df = _dense_rows(
        {
            ("densecl", 0): 0.60,
            ("densecl", 1): 0.64,
            ("densecl", 2): 0.62,
            ("moco", 0): 0.50,
            ("moco", 1): 0.55,
            ("moco", 2): 0.51,
            ("simclr", 0): 0.4,
        }
    )
    s = R.summary(df).set_index("method")
    assert s.loc["densecl", "mean"] == pytest.approx(0.62) and s.loc["densecl", "n"] == 3
    assert s.loc["simclr", "n"] == 1 and np.isnan(s.loc["simclr", "low"])
    v = R.versus(df).iloc[0]
    assert v["mean"] == pytest.approx((0.10 + 0.09 + 0.11) / 3) and v["n"] == 3
    assert v["significant"] and v["verdict"] == "higher"
    assert R.versus(df[df["method"] != "moco"]).empty
    page = Page(tmp_path, tmp_path)
    html = ENV.get_template("dense.html").render(dense=R.section(page, df))
    assert "densecl - moco" in html and (tmp_path / "tables" / "dense_versus.csv").is_file()
    assert "Not in this study" in ENV.get_template("dense.html").render(dense=R.section(page, pd.DataFrame()))


def test_periodic_clustering_reuses_the_embeddings_of_the_job(masked, tmp_path, monkeypatch):
    """The final and epoch-0 checkpoints, embedded by the job's frozen evaluations, are not loaded or
    embedded again by its periodic clustering, and their rows equal those of a clustering that embeds
    every checkpoint itself."""
    import shutil
    from pathlib import Path

    import sslstudy.checkpoint as C
    from sslstudy.data.packed import load_dataset
    from sslstudy.eval.checkpoint_clustering import cluster_checkpoints

    made, run = _checkpoints(tmp_path), tmp_path / "run"
    (run / names.CHECKPOINTS).mkdir(parents=True)
    shutil.copy(made["pretrained"], run / names.FINAL)
    shutil.copy(made["pretrained"], run / names.CHECKPOINTS / "ep003.pt")  # the last epoch's: final.pt's weights
    shutil.copy(made["random"], run / names.CHECKPOINTS / "ep000.pt")
    shutil.copy(made["random"], run / names.CHECKPOINTS / "ep001.pt")  # an intermediate one, embedded by the clustering
    loaded, load = [], C.load_backbone
    monkeypatch.setattr(C, "load_backbone", lambda path, *a, **k: loaded.append(Path(path).name) or load(path, *a, **k))
    ckpt = dict(pretrained=run / names.FINAL, random=run / names.CHECKPOINTS / "ep000.pt")
    assert (
        _evaluate(
            masked,
            ckpt,
            tmp_path / "eval",
            "--frozen",
            "pretrained_on_natural",
            "random_on_natural",
            "--cluster",
            "natural",
            "--run-dir",
            str(run),
        )
        == 0
    )
    assert loaded == ["final.pt", "ep000.pt", "ep001.pt"]
    got = pd.read_csv(tmp_path / "eval" / names.CLUSTERS_FILE)
    fresh = cluster_checkpoints(run, dict(natural=load_dataset(masked / "natural")), TINY_EVAL, 32)
    assert sorted(set(got["epoch"])) == [0, 1, 3] and len(got) == len(fresh)
    np.testing.assert_array_equal(got[list(fresh.columns)].to_numpy(), fresh.to_numpy())
