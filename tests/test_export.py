"""`sslstudy export`: the backbone reloads into torchvision (strict=True) or sslstudy's CNN4 and gives the
project's features on a fixed input; config.json says how; bad input is one clear line."""

import json

import pytest
import torch
import torchvision
from safetensors.torch import load_file
from sslstudy import names
from sslstudy.augment import MEAN, STD, eval_view
from sslstudy.checkpoint import BACKBONE, atomic_torch_save, load_backbone
from sslstudy.cli import main
from sslstudy.data.packed import load_dataset
from sslstudy.models import CNN4, ResNetBackbone
from sslstudy.train import train

from tests.helpers import natural_subset, tiny_spec


@pytest.fixture(scope="module")
def images(tiny_data):
    """A fixed input: the evaluation view (normalised, 32 px) of the first 8 images."""
    ds = load_dataset(tiny_data / "natural")
    return eval_view(torch.from_numpy(ds.images[:8].copy()), 32)


def trained(tmp_path, tiny_data, arch):
    subset = natural_subset(tiny_data, tmp_path / "subset.npy", 64)
    spec = tiny_spec(tiny_data / "natural", subset, epochs=1, backbone=dict(arch=arch, width=4, small_stem=True))
    run = tmp_path / "runs" / spec["run"]
    train(spec, run)
    return run


def export(run, out, *extra):
    return main(["export", str(run), "--out", str(out), *extra])


def features(backbone, x):
    with torch.no_grad():
        return backbone.eval()(x)


def test_resnet18_loads_into_torchvision_strict_with_the_same_features(tmp_path, tiny_data, images):
    run = trained(tmp_path, tiny_data, "resnet18")
    dvc = tmp_path / "data.dvc"
    dvc.write_text("outs:\n- md5: abc123.dir\n  path: data\n")
    assert export(run, tmp_path / "out", "--data-dvc", str(dvc)) == 0
    cfg = json.loads((tmp_path / "out/config.json").read_text())
    assert (cfg["architecture"], cfg["stem"], cfg["feature_dim"], cfg["input_size"]) == ("resnet18", "small", 512, 32)
    assert cfg["normalisation"] == dict(mean=list(MEAN), std=list(STD))
    assert (cfg["method"], cfg["epochs"], cfg["seed"], cfg["data_dvc_md5"]) == ("simclr", 1, 0, "abc123.dir")
    assert cfg["dataset"] == str(tiny_data / "natural") and cfg["run"] == "simclr/natural_frac1_clean/seed0"

    sd = load_file(tmp_path / "out/backbone.safetensors")
    net = torchvision.models.resnet18()
    assert set(net.state_dict()) - set(sd) == {"fc.weight", "fc.bias"}  # torchvision's names; fc omitted
    net.conv1 = torch.nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)  # config.json's stem_change
    net.maxpool = torch.nn.Identity()
    net.fc = torch.nn.Identity()
    net.load_state_dict(sd, strict=True)
    ours, _ = load_backbone(run / names.FINAL)
    assert torch.allclose(features(net, images), features(ours, images), atol=1e-5)
    assert features(ours, images).std() > 0  # not a constant output


def test_resnet50_epoch_checkpoint_with_the_torchvision_stem(tmp_path, tiny_data, images):
    """An epNNN.pt (backbone weights only) of a resnet50 without the small stem: torchvision.models.resnet50()
    needs no change but fc."""
    torch.manual_seed(0)
    bb = ResNetBackbone("resnet50", small_stem=False)
    for m in bb.modules():  # BN buffers away from their defaults, so the test sees whether they travel
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    spec = tiny_spec(
        tiny_data / "natural", tmp_path / "s.npy", backbone=dict(arch="resnet50", width=4, small_stem=False)
    )
    run = tmp_path / "run"
    atomic_torch_save(
        dict(epoch=2, model={BACKBONE + k: v for k, v in bb.state_dict().items()}, config=spec),
        run / names.CHECKPOINTS / names.epoch_checkpoint(2),
    )
    assert export(run, tmp_path / "out", "--epoch", "2", "--data-dvc", str(tmp_path / "none.dvc")) == 0
    cfg = json.loads((tmp_path / "out/config.json").read_text())
    assert (cfg["stem"], cfg["stem_change"], cfg["feature_dim"], cfg["epochs"], cfg["data_dvc_md5"]) == (
        "torchvision",
        None,
        2048,
        2,
        None,
    )
    net = torchvision.models.resnet50()
    net.fc = torch.nn.Identity()
    net.load_state_dict(load_file(tmp_path / "out/backbone.safetensors"), strict=True)
    assert torch.allclose(features(net, images), features(bb, images), atol=1e-5)


def test_cnn4_keeps_sslstudy_names_and_says_how_to_build_it(tmp_path, tiny_data, images):
    run = trained(tmp_path, tiny_data, "cnn4")
    assert export(run, tmp_path / "out") == 0
    cfg = json.loads((tmp_path / "out/config.json").read_text())
    assert cfg["build"] == "sslstudy.models.CNN4(width=4)" and cfg["feature_dim"] == 32
    net = CNN4(**cfg["build_args"])
    net.load_state_dict(load_file(tmp_path / "out/backbone.safetensors"), strict=True)
    ours, _ = load_backbone(run / names.FINAL)
    assert torch.allclose(features(net, images), features(ours, images), atol=1e-6)


def one_line(capsys):
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("sslstudy export: error: "), err
    return err


def test_bad_run_folders_and_architectures_are_one_clear_line(tmp_path, tiny_data, capsys):
    assert export(tmp_path / "nowhere", tmp_path / "out") == 2
    assert "nowhere: no such run folder" in one_line(capsys)
    (tmp_path / "empty" / names.CHECKPOINTS).mkdir(parents=True)
    assert export(tmp_path / "empty", tmp_path / "out") == 2
    assert "not a finished run (no final.pt); checkpoints there: none" in one_line(capsys)
    assert export(tmp_path / "empty", tmp_path / "out", "--epoch", "3") == 2
    assert "no checkpoint of epoch 3" in one_line(capsys)
    spec = tiny_spec(tiny_data / "natural", tmp_path / "s.npy", backbone=dict(arch="vit_b_16"))
    atomic_torch_save(dict(epoch=1, model={}, config=spec), tmp_path / "vit" / names.FINAL)
    assert export(tmp_path / "vit", tmp_path / "out") == 2
    assert "architecture 'vit_b_16' cannot be exported; export knows cnn4, resnet18, resnet50" in one_line(capsys)
    assert not (tmp_path / "out").exists()
