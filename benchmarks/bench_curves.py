"""What the TensorBoard curves add to a pretraining job: the CPU time of the imports each writer needs, in a
process that has already imported the trainer (as every pretrain job has), and of one epoch's record.

    PYTHONPATH=ssl .venv/bin/python benchmarks/bench_curves.py [--rounds 5]

Each import is timed in a fresh process (`time.process_time` around it), best and median of the rounds:
sslstudy.curves' protobuf messages (what it imports), against torch's SummaryWriter and tensorboard's
EventFileWriter (which import tensorboard's whole summary API). Then sslstudy.curves.log_epoch on a
metrics.jsonl-like record, its first call (the import included) and the next ones.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile

IMPORTS = {
    "sslstudy.curves (protobuf messages)": "from tensorboard.compat.proto import event_pb2, summary_pb2",
    "torch.utils.tensorboard.SummaryWriter": "from torch.utils.tensorboard import SummaryWriter",
    "tensorboard EventFileWriter": "from tensorboard.summary.writer.event_file_writer import EventFileWriter",
}
TIMED_IMPORT = """
import time, sslstudy.train
t = time.process_time()
{stmt}
print(time.process_time() - t)
"""
TIMED_WRITES = """
import time, sslstudy.train
from sslstudy import curves
rec = dict(epoch=1, step=4, loss=4.9, lr=0.09, seconds=0.5, views_per_s=400.0, effective_rank=11.4,
           normalized_std=0.15, dim=64, trivial_loss=4.1)
t = time.process_time()
curves.log_epoch({folder!r}, rec)
first = time.process_time() - t
t = time.process_time()
for epoch in range(2, 102):
    curves.log_epoch({folder!r}, dict(rec, epoch=epoch))
print(first, (time.process_time() - t) / 100)
"""


def cpu_seconds(code: str) -> list[float]:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return [float(x) for x in out.split()]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args(argv)
    for name, stmt in IMPORTS.items():
        ms = [1000 * cpu_seconds(TIMED_IMPORT.format(stmt=stmt))[0] for _ in range(a.rounds)]
        report(f"import {name}", ms)
    firsts, nexts = [], []
    for _ in range(a.rounds):
        with tempfile.TemporaryDirectory() as folder:
            first, then = cpu_seconds(TIMED_WRITES.format(folder=folder))
        firsts.append(1000 * first)
        nexts.append(1000 * then)
    report("log_epoch, first call (with the import)", firsts)
    report("log_epoch, each next epoch", nexts)


def report(what: str, ms: list[float]) -> None:
    print(f"{what:<50} CPU {min(ms):7.2f} ms best, {statistics.median(ms):7.2f} ms median")


if __name__ == "__main__":
    main()
