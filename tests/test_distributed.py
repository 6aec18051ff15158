"""sslstudy.distributed: which GPU each rank takes, and the group its host-side flags travel on."""

import pytest
import torch
from sslstudy import distributed as dist


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
    dist.init_from_env(cuda=True)
    assert chosen == [want]
    assert dist.local_gpu() == want


def test_a_cpu_run_on_a_gpu_machine_takes_no_gpu(monkeypatch):
    """pretrain.device cpu (e.g. the suite's gloo ranks, LOCAL_RANK 1, on a one-GPU machine): no set_device."""
    chosen = []
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    dist.init_from_env(cuda=False)
    assert chosen == [] and dist.host_group() is None


def _net() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.BatchNorm2d(4),
        torch.nn.Flatten(),
        torch.nn.Linear(16, 5),
        torch.nn.BatchNorm1d(5),
    )


@pytest.mark.parametrize(
    "wanted,ranks,device,synced",
    [(True, 2, "cuda", True), (False, 2, "cuda", False), (True, 1, "cuda", False), (True, 2, "cpu", False)],
)
def test_batch_norm_is_synchronised_where_asked_with_several_gpu_ranks(
    monkeypatch, caplog, wanted, ranks, device, synced
):
    """A method's sync_batchnorm converts every batch norm to SyncBatchNorm with several ranks on GPUs
    (the same weights and state_dict keys); with one rank, unasked, or on the CPU (torch's SyncBatchNorm
    runs on GPUs only) the model is left as it is, the last said in the log."""
    import logging

    monkeypatch.setattr(dist, "world", lambda: ranks)
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with caplog.at_level(logging.INFO, logger="sslstudy.distributed"):
        out = dist.sync_batchnorm(net, wanted, torch.device(device), "simclr/run")
    norms = [type(m) for m in out.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert norms == ([torch.nn.SyncBatchNorm] * 2 if synced else [torch.nn.BatchNorm2d, torch.nn.BatchNorm1d])
    after = out.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())
    cpu_line = "simclr/run: sync_batchnorm asked, but torch's SyncBatchNorm runs on GPUs only"
    assert (cpu_line in caplog.text) == (wanted and ranks > 1 and device == "cpu")


def test_torch_has_no_cpu_sync_batchnorm(tmp_path):
    """Why CPU ranks keep their own statistics: in a process group (gloo, one rank), a SyncBatchNorm in
    training mode refuses CPU inputs."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        bn = torch.nn.SyncBatchNorm(3).train()
        with pytest.raises(ValueError, match="SyncBatchNorm expected input tensor to be on GPU"):
            bn(torch.randn(4, 3))
    finally:
        dist.destroy_process_group()
