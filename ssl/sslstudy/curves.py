"""Live training curves: every epoch record of a pretraining run (what metrics.jsonl gets) also goes to
a TensorBoard event file beside it, so that ``tensorboard --logdir results/runs`` shows every run of a
study under its run id while the study runs. metrics.jsonl stays the record the report reads.

The trainer's lead rank calls :func:`log_epoch` once per epoch; it appends one record to the run's
event file (names.CURVES), step = the epoch. Only tensorboard's protobuf messages are imported, at the
first call: torch's SummaryWriter and tensorboard's EventFileWriter import tensorboard's whole summary
API, and the masked CRC-32C of the record framing is a few lines (docs/performance.md: the import
cost of each).

Resuming: before its scalars each epoch writes a SessionLog START at its step, which tells TensorBoard
to drop what it holds at that step or later. An epoch done again (killed between metrics.jsonl and
last.pt, or a run started over with another config) so replaces its earlier values instead of adding
a second point, as it replaces its metrics.jsonl line.
"""

from __future__ import annotations

import struct
import time
from pathlib import Path

from . import names

FILE_VERSION = "brain.Event:2"  # the first event of an event file; TensorBoard purges on START only from 2 on
#: the group (the tag's prefix, one section of the dashboard) of each record key; the method's own logs
#: (loss terms, nmi_prev, queue_used, ...) go to train
GROUPS = dict(
    lr="train",
    seconds="speed",
    views_per_s="speed",
    effective_rank="health",
    normalized_std="health",
    trivial_loss="health",
    collapsed="health",
)
NOT_CURVES = ("epoch", "step", "dim", "collapse_reason")  # the x axis, a constant, the reason's text


def scalars(rec: dict) -> dict[str, float]:
    """The curves of one epoch record by tag ("train/loss", "health/effective_rank", ...): every number in
    it but the epoch, step and embedding width, and collapsed as 1.0 or 0.0 (in every record)."""
    rec = dict(rec, collapsed=bool(rec.get("collapsed", False)))
    return {f"{GROUPS.get(k, 'train')}/{k}": float(v) for k, v in rec.items() if k not in NOT_CURVES}


def log_epoch(run_dir: str | Path, rec: dict) -> None:
    """Append epoch record `rec` (a metrics.jsonl line: epoch, loss, lr, ...) to the run's event file as
    scalars at step rec["epoch"], preceded by a SessionLog START there (and the file version when the
    file is new). The epoch's records go out in one write call, in append mode."""
    from tensorboard.compat.proto import event_pb2, summary_pb2

    path = Path(run_dir) / names.CURVES
    now, step = time.time(), int(rec["epoch"])
    events = []
    if not (path.is_file() and path.stat().st_size):
        events.append(event_pb2.Event(wall_time=now, file_version=FILE_VERSION))
    start = event_pb2.SessionLog(status=event_pb2.SessionLog.START)
    events.append(event_pb2.Event(wall_time=now, step=step, session_log=start))
    values = [summary_pb2.Summary.Value(tag=tag, simple_value=v) for tag, v in scalars(rec).items()]
    events.append(event_pb2.Event(wall_time=now, step=step, summary=summary_pb2.Summary(value=values)))
    with path.open("ab") as f:
        f.write(b"".join(tfrecord(e.SerializeToString()) for e in events))


# ----------------------------------------------------------------------------- the event file's framing
def tfrecord(data: bytes) -> bytes:
    """One TFRecord: the length (uint64, little-endian), its masked CRC-32C, the data, the data's."""
    header = struct.pack("<Q", len(data))
    return header + struct.pack("<I", masked_crc32c(header)) + data + struct.pack("<I", masked_crc32c(data))


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        c = byte
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1  # the Castagnoli polynomial, reflected
        table.append(c)
    return table


_CRC32C = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = _CRC32C[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """TFRecord's checksum: the CRC-32C rotated right by 15 bits plus a constant, as TensorFlow writes it."""
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF
