"""A pretraining run's training record: metrics.jsonl in its folder, one JSON line per finished epoch
(loss, lr, health; sslstudy.train writes them).

The record is kept in checkpoints/last.pt too (key ``records``: epochs 1 to the checkpoint's epoch),
so the file always matches the state a run resumes from, whatever happened to it in between:
Snakemake deletes a job's logs, metrics.jsonl among them (workflow/rules/pretrain.smk), before the job
starts; a kill can leave the line of an epoch the checkpoint does not hold, or a line cut short; a
full disk a file half-written. On resume the trainer rewrites the file from the checkpoint's records
(`restore`); after every epoch it rewrites the whole file from the records it holds (`write`, temp
name then rename), so a file deleted while the run trains comes back complete at the next epoch.
"""

from __future__ import annotations

import json
from pathlib import Path

from .atomic import write_bytes


def write(path: Path, records: list[dict]) -> None:
    """metrics.jsonl holding exactly `records`, one JSON line each."""
    write_bytes(path, "".join(json.dumps(r) + "\n" for r in records).encode())


def read(path: Path, epochs: int) -> list[dict]:
    """The records of epochs 1..epochs in the file (none when it is absent); a line cut short is skipped."""
    lines = path.read_text().splitlines() if path.is_file() else []
    return [json.loads(ln) for ln in lines if _epoch_of(ln) <= epochs]


def restore(path: Path, state: dict | None) -> None:
    """Rewrite metrics.jsonl as the record of the checkpoint the run resumes from (state: last.pt's
    dict; None when the run starts over, with an empty record). A last.pt written before checkpoints
    held the record keeps the file's lines of the epochs it holds."""
    if state is None:
        records = []
    elif "records" in state:
        records = state["records"]
    else:
        records = read(path, state["epoch"])
    write(path, records)


def _epoch_of(line: str) -> float:
    try:
        return json.loads(line)["epoch"]
    except (ValueError, KeyError):
        return float("inf")  # a line cut short by a kill
