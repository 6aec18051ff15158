"""Which config made each result, so that no result of an earlier config passes for the current one.

A model's config hash (``model_config``) is a hash of what its spec says about its weights: the
pretraining spec of an SSL run (axes.pretrain_spec), the supervised job's settings of a supervised
network (axes.supervised_spec). Every checkpoint's config gives it (`of_config`); the evaluation
rows, embedding caches and few-label, fusion and supervised tables carry it in column
``model_config``. The workflow gives it as a param to every rule that reads a model (a changed model
reruns them, also when a failed job left its final.pt missing), and the report checks every row
against the hash the config now gives (`check_finals`, `check_rows`). Torch-free: Snakemake imports
it at parse time.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from . import axes, names
from .errors import UserError

COLUMN = "model_config"
NOT_WEIGHTS = ("threads", "gpus", "on_collapse", "precision_fallback")  # a run may move to a SLURM node
RERUN = "run the study again (snakemake) to redo it"


def identity(spec: dict) -> dict:
    """The spec without what changes no weight: the thread and GPU counts, what to do on collapse,
    whether bf16 may fall back. Also what must match for a run to resume from its checkpoints."""
    return {k: v for k, v in spec.items() if k not in NOT_WEIGHTS}


def config_hash(spec: dict) -> str:
    """16 hex digits of the SHA-256 of identity(spec) as JSON with sorted keys."""
    return hashlib.sha256(json.dumps(identity(spec), sort_keys=True).encode()).hexdigest()[:16]


def of_config(cfg: dict) -> str:
    """The model config hash of a checkpoint's config: the one it records (supervised networks), else its spec's."""
    return cfg.get(COLUMN) or config_hash(cfg)


def model_hash(config: dict, model: dict) -> str:
    """The hash the study's config gives a model (an axes.models entry)."""
    return config_hash(axes.model_spec(config, model))


def expected(config: dict) -> dict[str, str]:
    """Every model of the study by id -> the hash the config gives it."""
    return {rid: model_hash(config, m) for rid, m in axes.models(config).items()}


def check_finals(config: dict) -> None:
    """Every model of the study has its final.pt (the weights its results were made from); else one line."""
    for rid, m in axes.models(config).items():
        final = Path(names.final_checkpoint(m))
        if not final.is_file():
            raise UserError(
                f"{rid}: {final} is missing (its job failed or it was deleted), so its results may be of an "
                "earlier config; run the study again (snakemake): it retrains the model and redoes what reads it"
            )


def check_rows(kind: str, df, path: Path, config: dict, hashes: dict[str, str]) -> None:
    """Every row of one evaluation table (kind: frozen, lowshot, ...; read from path) carries the hash the
    config now gives the model(s) it evaluated (hashes: `expected`); else one line naming the model and the fix."""
    if df.empty:
        return
    if COLUMN not in df:
        raise UserError(f"{path}: no {COLUMN} column (written before results named their model's config); {RERUN}")
    for model, want, found in zip(*_expected_of(kind, df, config, hashes), df[COLUMN].astype(str)):
        if want is None:
            raise UserError(f"{path}: results of {model}, which this config does not train; {RERUN}")
        if found != want:
            raise UserError(
                f"{model}: {path} was made from a model of another config ({COLUMN} {found}, "
                f"the config now gives {want}); {RERUN}"
            )


def _expected_of(kind: str, df, config: dict, hashes: dict[str, str]) -> tuple[list, list]:
    """(the model each row evaluated, the hash the config gives it or None): a fusion row's is its pair's
    (both members' hashes, joined by +), any other row's its run's."""
    if kind != "fusion":
        return list(df["run"]), [hashes.get(r) for r in df["run"]]
    keys = list(zip(df["pair"], df["seed"].astype(int)))
    pairs = {
        (pair, seed): "+".join(model_hash(config, axes.member(config, name, seed)) for name in pair.split(" + "))
        for pair, seed in set(keys)
    }  # a pair is "<member a> + <member b>" (sslstudy.cli's fusion)
    return [f"{pair} (seed {seed})" for pair, seed in keys], [pairs[k] for k in keys]
