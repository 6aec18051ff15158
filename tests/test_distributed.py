"""sslstudy.distributed: which GPU each rank takes, and the group its host-side flags travel on."""

import pytest
import torch
from sslstudy import distributed as D


@pytest.mark.parametrize(
    "local_rank,visible,want",
    [
        ("0", 4, 0),
        ("3", 4, 3),  # every task sees all 4 GPUs of its node: its LOCAL_RANK-th
        ("0", 1, 0),
        ("1", 1, 0),  # one GPU bound to each task (--gpus-per-task 1): the only one it sees
        ("3", 1, 0),
        ("5", 2, 1),  # two GPUs per task
    ],
)
def test_each_rank_takes_a_gpu_it_sees(monkeypatch, local_rank, visible, want):
    """set_device(LOCAL_RANK) is an invalid device ordinal on ranks >= 1 where each task sees one GPU."""
    chosen = []
    monkeypatch.setenv("LOCAL_RANK", local_rank)
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: visible)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    D.init_from_env(cuda=True)
    assert chosen == [want]
    assert D.local_gpu() == want


def test_a_cpu_run_on_a_gpu_machine_takes_no_gpu(monkeypatch):
    """pretrain.device cpu (e.g. the suite's gloo ranks, LOCAL_RANK 1, on a one-GPU machine): no set_device."""
    chosen = []
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    D.init_from_env(cuda=False)
    assert chosen == [] and D.host_group() is None
