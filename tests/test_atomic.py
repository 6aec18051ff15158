"""Writes through sslstudy.atomic when the disk is full: one line naming the file, the size being
written, the folder and its free space; no temp file left and the earlier file kept as it was."""

import errno
import json
import subprocess

import numpy as np
import pandas as pd
import pytest
import torch
from sslstudy.checkpoint import atomic_torch_save
from sslstudy.errors import UserError

from tests.helpers import BIN, natural_subset, tiny_spec


def no_space(*args, **kwargs):
    """A write that gets some bytes out, then finds the disk full."""
    f = next(a for a in args if hasattr(a, "write"))
    f.write(b"\0" * 100)
    raise OSError(errno.ENOSPC, "No space left on device")


def one_line(e: pytest.ExceptionInfo) -> str:
    line = str(e.value)
    assert "\n" not in line and "no space left on device" in line, line
    return line


def hidden(folder) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*"))


def test_a_full_disk_under_a_checkpoint_is_one_line_and_keeps_the_old_one(tmp_path, monkeypatch):
    old = tmp_path / "checkpoints" / "last.pt"
    atomic_torch_save(dict(epoch=1, w=torch.zeros(10)), old)
    before = old.read_bytes()
    monkeypatch.setattr(torch, "save", no_space)
    with pytest.raises(UserError) as e:
        atomic_torch_save(dict(epoch=2, w=torch.zeros(250_000)), old)
    line = one_line(e)
    assert line.startswith(f"{old}: ") and "writing it needs 1.0 MB" in line  # 250,000 float32
    assert f"and {old.parent} has " in line and " free (filesystem " in line
    assert old.read_bytes() == before and hidden(tmp_path) == []


def test_a_full_disk_under_an_embedding_cache_or_a_packed_dataset_is_one_line(tmp_path, monkeypatch):
    from sslstudy.data.packed import load_dataset, write_dataset
    from sslstudy.eval.features import Features

    cache = tmp_path / "embeddings.npz"
    Features(np.ones((4, 2), np.float16), np.arange(4)).save(cache)
    monkeypatch.setattr(np, "savez", no_space)
    with pytest.raises(UserError) as e:
        Features(np.zeros((1000, 8), np.float16), np.arange(1000)).save(cache)
    assert one_line(e).startswith(f"{cache}: ") and "needs 24.0 KB" in str(e.value)  # 16,000 + 8,000 bytes
    assert Features.load(cache).x.tolist() == [[1, 1]] * 4 and hidden(tmp_path) == []

    images = np.zeros((6, 8, 8, 3), np.uint8)
    labels = pd.DataFrame(dict(index=range(6), split=["train"] * 4 + ["val", "test"], domain="d", c=[0, 1] * 3))
    meta = dict(name="d", levels=["c"], classes=dict(c=["a", "b"]), parents={}, image_size=8, n_images=6, source={})
    write_dataset(tmp_path / "d", images, labels, meta)
    monkeypatch.setattr(np, "save", no_space)
    with pytest.raises(UserError) as e:
        write_dataset(tmp_path / "d", images + 1, labels, meta)
    assert one_line(e).startswith(f"{tmp_path / 'd'}: ") and "needs 1.2 KB" in str(e.value)  # 6 x 8 x 8 x 3
    assert int(load_dataset(tmp_path / "d").images.max()) == 0 and hidden(tmp_path) == []


@pytest.fixture()
def small_disk(tmp_path):
    """A real 1 MB filesystem (a tmpfs: needs root; skipped where mount is refused)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True, text=True)
    if p.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {p.stderr.strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=True)


def test_a_really_full_disk_under_a_checkpoint(small_disk):
    """torch.save given a file name reports a full disk as `unexpected pos`; here the one line."""
    old = small_disk / "last.pt"
    atomic_torch_save(dict(epoch=1), old)
    before = old.read_bytes()
    with pytest.raises(UserError) as e:
        atomic_torch_save(dict(epoch=2, w=torch.zeros(500_000)), old)
    line = one_line(e)
    assert line.startswith(f"{old}: ") and "needs 2.0 MB" in line and f"(filesystem {small_disk}, 1.0 MB)" in line
    assert old.read_bytes() == before and hidden(small_disk) == []


def test_pretraining_onto_a_full_disk_ends_with_the_one_line(small_disk, tiny_data, tmp_path):
    """The command a study's pretrain rule runs: its last line on stderr (the rule's log) is the error."""
    spec = tiny_spec(
        tiny_data / "natural",
        natural_subset(tiny_data, tmp_path / "subset.npy", 128),
        backbone=dict(arch="cnn4", width=32, small_stem=True),  # a 1.6 MB checkpoint
    )
    run_dir = small_disk / "run"
    p = subprocess.run(
        [
            BIN / "sslstudy",
            "pretrain",
            "--run-dir",
            run_dir,
            "--spec",
            json.dumps(spec),
            "--launch",
            '{"executor": "inline"}',
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    last = p.stderr.strip().splitlines()[-1]
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr
    assert last.startswith(f"sslstudy pretrain: error: {run_dir / 'checkpoints/ep000.pt'}: no space left on device")
    assert "needs 1.6 MB" in last and f"(filesystem {small_disk}, 1.0 MB)" in last
    assert hidden(run_dir / "checkpoints") == [] and not list((run_dir / "checkpoints").iterdir())
