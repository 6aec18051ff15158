"""`sslstudy export`: a trained backbone as backbone.safetensors plus config.json, for use outside
the project.

- resnet18 / resnet50: the key names of torchvision's model (``conv1.weight``, ``layer1.0.bn1.running_mean``
  ...). The classifier ``fc`` is not in the file (the backbone was trained without one): set
  ``model.fc = torch.nn.Identity()`` and ``load_state_dict(..., strict=True)`` gives the 512/2048-d
  features the study evaluated. With the small-image stem (config.json ``"stem": "small"``,
  pretrain.backbone.small_stem) replace ``conv1`` by a 3x3 stride-1 conv (64 channels, padding 1,
  no bias) and ``maxpool`` by ``Identity`` first; ``"stem": "torchvision"`` needs no change.
- cnn4 has no torchvision twin: the file keeps sslstudy's key names (``features.0.weight`` ...)
  and config.json says how to build it (``sslstudy.models.CNN4(width=...)``).

config.json also has what a user needs to feed it: input size, normalisation (ImageNet mean/std
of RGB in [0, 1]), and where it came from: method, epochs, dataset and data.dvc md5, seed, run.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file

from . import __version__, names
from .atomic import atomic_path, tensor_bytes, write_bytes
from .augment import MEAN, STD
from .checkpoint import load_backbone, load_checkpoint
from .errors import UserError
from .models import ARCHS, ResNetBackbone

WEIGHTS = "backbone.safetensors"
CONFIG = "config.json"
TORCHVISION = ("resnet18", "resnet50")
SMALL_STEM = "conv1 = Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False); maxpool = Identity()"


def checkpoint(run: Path, epoch: int | None) -> Path:
    """run/final.pt, or run/checkpoints/epNNN.pt for an epoch; one clear line when it is not there."""
    if not run.is_dir():
        raise UserError(
            f"{run}: no such run folder; give one of results/runs/<method>/<domain>_<subset>_<quality>/seed<N> "
            f"(or results/supervised/...)"
        )
    path = run / names.FINAL if epoch is None else run / names.CHECKPOINTS / names.epoch_checkpoint(epoch)
    if not path.is_file():
        have = sorted(p.name for p in (run / names.CHECKPOINTS).glob(names.EPOCH_GLOB))
        what = "not a finished run (no final.pt)" if epoch is None else f"no checkpoint of epoch {epoch}"
        raise UserError(f"{run}: {what}; checkpoints there: {', '.join(have) or 'none'} (--epoch N exports one)")
    return path


def state_dict(backbone: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The backbone's tensors under the names that config.json's model takes (see the module doc); a
    ResNet's fc is an Identity in the study's backbone, so the file has no fc keys."""
    sd = backbone.net.state_dict() if isinstance(backbone, ResNetBackbone) else backbone.state_dict()
    return {k: v.detach().cpu().contiguous() for k, v in sd.items()}


def data_md5(data_dvc: Path | None) -> str | None:
    if data_dvc is None or not data_dvc.is_file():
        return None
    try:
        return yaml.safe_load(data_dvc.read_text())["outs"][0]["md5"]
    except (yaml.YAMLError, KeyError, IndexError, TypeError):
        raise UserError(
            f"{data_dvc}: not a DVC file with outs[0].md5; give the data's .dvc file with --data-dvc"
        ) from None


def describe(cfg: dict, arch: str, epochs: int, dim: int, md5: str | None, source: Path) -> dict:
    bb = cfg["backbone"]
    method = cfg.get("method", {}).get("name", names.SUPERVISED)  # supervised checkpoints have no method
    out = dict(architecture=arch, feature_dim=dim, weights=WEIGHTS)
    if arch in TORCHVISION:
        small = bool(bb.get("small_stem", True))
        out.update(
            key_names=f"torchvision.models.{arch}",
            fc="omitted: set model.fc = torch.nn.Identity() before load_state_dict(strict=True)",
            stem="small" if small else "torchvision",
            stem_change=SMALL_STEM if small else None,
        )
    else:
        out.update(
            key_names="sslstudy.models.CNN4",
            build=f"sslstudy.models.CNN4(width={bb.get('width', 32)})",
            build_args=dict(width=bb.get("width", 32)),
        )
    out.update(
        input_size=cfg["views"][0]["size"],
        input="RGB, float in [0, 1], (x - mean) / std per channel",
        normalisation=dict(mean=list(MEAN), std=list(STD)),
        method=method,
        method_params=cfg.get("method", {}).get("params"),
        epochs=epochs,
        seed=cfg["seed"],
        run=cfg.get("run"),
        dataset=cfg["data"]["dataset"],
        data_dvc_md5=md5,
        checkpoint=str(source),
        sslstudy=__version__,
    )
    return out


def export(run: Path, out: Path, epoch: int | None = None, data_dvc: Path | None = Path("data.dvc")) -> Path:
    """Writes out/backbone.safetensors and out/config.json; returns out."""
    src = checkpoint(Path(run), epoch)
    state = load_checkpoint(src)
    arch = state.get("config", {}).get("backbone", {}).get("arch")
    if arch not in ARCHS:
        raise UserError(f"{src}: architecture {arch!r} cannot be exported; export knows {', '.join(ARCHS)}")
    backbone, cfg = load_backbone(src)
    tensors = state_dict(backbone)
    info = describe(cfg, arch, int(state.get("epoch", cfg.get("epochs", 0))), backbone.out_dim, data_md5(data_dvc), src)
    with atomic_path(out / WEIGHTS, tensor_bytes(tensors)) as tmp:
        save_file(tensors, str(tmp), metadata=dict(architecture=arch, key_names=info["key_names"]))
    write_bytes(out / CONFIG, (json.dumps(info, indent=2) + "\n").encode())
    return out
