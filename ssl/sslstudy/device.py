"""Where and in what precision pretraining (and fine-tuning) runs: the device, the CPU's native bf16,
the autocast dtype."""

from __future__ import annotations

import logging
import socket

import torch

from .errors import UserError

log = logging.getLogger("sslstudy.device")


def choose_device(cfg: dict) -> torch.device:
    """pretrain.device (auto: the GPU when torch sees CUDA). A job given GPUs (cfg gpus, from
    launch.pretrain.gpus on SLURM) or device cuda on a machine without CUDA: one UserError line."""
    want = cfg.get("device", "auto")
    if want == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    if want == "cuda" or cfg.get("gpus"):
        asked = (
            "pretrain.device is cuda" if want == "cuda" else f"the job has {cfg['gpus']} GPU(s) (launch.pretrain.gpus)"
        )
        build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "built without CUDA"
        raise UserError(
            f"{cfg['run']}: {asked} but torch sees no CUDA device on {socket.gethostname()} "
            f"(torch {torch.__version__}, {build}); run it on a GPU node with the CUDA build (make study GPU=1), "
            f"or set launch.pretrain.gpus: 0 or pretrain.device: cpu in params"
        )
    return torch.device("cpu")


def cpu_bf16() -> str | None:
    """The CPU's native bf16 instructions (AMX or AVX512-BF16, from /proc/cpuinfo's flags), or None."""
    try:
        flags = next((ln.split(":", 1)[1].split() for ln in open("/proc/cpuinfo") if ln.startswith("flags")), [])
    except OSError:
        return None
    found = [f for f in ("amx_bf16", "avx512_bf16") if f in flags]
    return "+".join(found) or None


def choose_precision(cfg: dict, device: torch.device) -> tuple[torch.dtype | None, str]:
    """pretrain.precision (or finetune.precision) -> (the autocast dtype or None for fp32, what ran in words)."""
    want = cfg.get("precision", "auto")
    if want == "fp32":
        return None, "fp32 (precision: fp32)"
    if device.type == "cuda":
        return torch.bfloat16, "bf16 autocast on CUDA"
    native = cpu_bf16()
    if native:
        return torch.bfloat16, f"bf16 autocast on the CPU ({native})"
    if want == "auto":
        return None, "fp32 (precision auto: this CPU has no native bf16, no AMX or AVX512-BF16)"
    why = (
        f"{cfg['run']}: pretrain.precision is bf16 but this CPU has no native bf16 "
        "(no AMX or AVX512-BF16 in /proc/cpuinfo)"
    )
    if not cfg.get("precision_fallback", False):
        raise UserError(
            f"{why}; set pretrain.precision: auto or fp32, or pretrain.precision_fallback: true to train in fp32"
        )
    log.warning("%s; training in fp32 (pretrain.precision_fallback: true)", why)
    return None, "fp32 (bf16 asked, no native bf16 on this CPU; precision_fallback)"


def inference_autocast(device: torch.device) -> dict:
    """torch.autocast's arguments for embedding on `device`: bf16 on CUDA, float32 (disabled) elsewhere."""
    return dict(device_type="cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
