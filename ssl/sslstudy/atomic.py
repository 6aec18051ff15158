"""Write to a temp name beside the target, then rename: a killed writer never leaves a file that
looks complete (the temp name starts with a dot and is removed on error; one killed outright, by
SIGKILL, leaves it: `remove_killed_writes` clears a folder of them). A write that runs out of
space (ENOSPC, a quota) is one DiskFull line naming the file, what it needed, the folder and its
free space; the temp file is removed and any earlier file of that name is left as it was."""

from __future__ import annotations

import errno
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .errors import UserError

_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)
# torch.save given a file name writes from C++ and reports a full disk only as this enforce failure
_TORCH_WRITE_FAILED = ("inline_container.cc", "PytorchStreamWriter failed writing")


class DiskFull(UserError):
    """A write ran out of space on its filesystem."""


def _size(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def _existing(folder: Path) -> Path:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _mount_point(folder: Path) -> Path:
    folder = folder.resolve()
    while not os.path.ismount(folder):
        folder = folder.parent
    return folder


def disk_full(path: str | os.PathLike, needed: int | None = None) -> DiskFull:
    """The DiskFull line for `path` (needed: the bytes being written, when known)."""
    folder = _existing(Path(path).parent)
    usage = shutil.disk_usage(folder)
    what = f"needs {_size(needed)}" if needed else "ran out of space"
    return DiskFull(
        f"{path}: no space left on device: writing it {what}, and {folder} has {_size(usage.free)} free "
        f"(filesystem {_mount_point(folder)}, {_size(usage.total)}); free space there or move the study to a larger "
        "disk, then rerun (nothing half-written was kept)"
    )


def out_of_space(e: BaseException, path: str | os.PathLike | None = None, needed: int | None = None) -> bool:
    """Whether exception `e` (or one it was raised from) is a write that found no space; torch's bare
    write failure counts when `path`'s filesystem has less than `needed` (else 1 MB) free."""
    seen = e
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _NO_SPACE:
            return True
        seen = seen.__cause__ or seen.__context__
    if path is not None and isinstance(e, RuntimeError) and any(m in str(e) for m in _TORCH_WRITE_FAILED):
        return shutil.disk_usage(_existing(Path(path).parent)).free < (needed or 1_000_000)
    return False


def temp_path(path: Path) -> Path:
    """The hidden sibling this process writes `path` to before the rename."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def remove_killed_writes(folder: Path, name: str = "*") -> list[Path]:
    """Delete the temp files and folders of `name` (a glob) in `folder` that writers killed outright left
    (SIGKILL, a lost node: their cleanup never ran), whatever their process; returns them. Only for files
    whose writers have all ended, e.g. a run's when its trainer starts."""
    left = sorted(folder.glob(f".{name}.tmp-*"))
    for p in left:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return left


@contextmanager
def atomic_path(path: str | os.PathLike, size: int | None = None) -> Iterator[Path]:
    """Yields the temp path to write; renames it to `path` when the block succeeds. size: the bytes
    the block writes, when known (named by the DiskFull line)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except Exception as e:
        tmp.unlink(missing_ok=True)  # before measuring the free space
        if not isinstance(e, DiskFull) and out_of_space(e, path, size):
            raise disk_full(path, size) from None
        raise
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path, len(data)) as tmp:
        tmp.write_bytes(data)


def tensor_bytes(obj) -> int:
    """The bytes of the tensors in obj (nested dicts, lists, tuples), each storage counted once."""
    import torch

    seen, total, todo = set(), 0, [obj]
    while todo:
        x = todo.pop()
        if isinstance(x, torch.Tensor):
            storage = x.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
        elif isinstance(x, dict):
            todo.extend(x.values())
        elif isinstance(x, (list, tuple)):
            todo.extend(x)
    return total


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    """torch.save through a temp file; through a Python file object, so a full disk raises its OSError."""
    import torch

    with atomic_path(path, tensor_bytes(obj)) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)


@contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temp folder to fill; it replaces the folder `path` (and whatever was in it) when the
    block succeeds, and is removed on error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if path.is_dir():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if not isinstance(e, DiskFull) and out_of_space(e):
            raise disk_full(path) from None
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def require_space(folder: str | os.PathLike, needed: int, path: str | os.PathLike) -> None:
    """DiskFull for `path` before writing `needed` bytes into `folder` when it has less free: for writes
    through a memory map, where a full disk is a SIGBUS, not an error."""
    if shutil.disk_usage(_existing(Path(folder))).free < needed:
        raise disk_full(path, needed)
