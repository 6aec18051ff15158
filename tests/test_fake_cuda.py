"""Device bugs caught without a GPU: the code's paths run with every device tensor on fake CUDA
(tests.helpers.FakeCuda). A CPU tensor mixed into a CUDA op raises as it would on a GPU, and so does
reading a CUDA tensor's values on the host (a sync the step must not make). Forward passes only:
backward needs a real GPU, so the one optimiser call of a loop is replaced where a path has one."""

import json

import pytest
import torch
from sslstudy import hostsync
from sslstudy.data.packed import load_dataset
from sslstudy.eval import lowshot
from sslstudy.models import build_backbone
from sslstudy.train import embed

from tests.helpers import fake_cuda

EVAL = dict(batch_size=256, linear_epochs=3, cluster_seed=0, val_fraction=0.1)
FINETUNE = dict(epochs=1, min_steps=3, batch_size=16, lr=0.05, weight_decay=5e-4, scale=[0.5, 1.0])


def _all_finite(t: torch.Tensor) -> list:
    """read_on_host's stand-in: fake tensors hold no values; LossWatch reads -1 (no non-finite step)."""
    return torch.full(tuple(t.shape), -1.0).tolist()


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
    monkeypatch.setattr(hostsync, "read_on_host", _all_finite)
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
    from sslstudy.cli import run_command
    from sslstudy.train import BACKBONE, atomic_torch_save

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
