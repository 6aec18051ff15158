"""Study config: load, validate against workflow/schemas/config.schema.yaml (defaults filled in,
unknown keys rejected), and check that the grid's datasets exist (sslstudy.axes expands the grid)."""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path

import jsonschema
import yaml

from .axes import check, method_pretrain
from .data.levels import refuse_one_class
from .errors import UserError
from .names import IMAGES_FILE, META_FILE, SYNTH_ROOT, dataset_path

SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"
RENAMED = {  # old keys: their error names the new one
    "launch.cluster": "launch.executor",
    "launch.timeout_min": "launch.pretrain.time_min and launch.evaluation.time_min",
    **{
        f"launch.slurm.{old}": f"launch.pretrain.{new} and launch.evaluation.{new}"
        for old, new in (("gpus_per_node", "gpus"), ("cpus_per_task", "cpus (per node)"), ("mem_gb", "mem_gb"))
    },
    "launch.slurm.nodes": "launch.pretrain.nodes",
    "launch.slurm.tasks_per_node": "launch.pretrain.tasks_per_node",
}


def _with_defaults(validator_cls):
    set_props = validator_cls.VALIDATORS["properties"]

    def fill(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                default = sub.get("default")
                if "default" in sub and key not in instance:
                    instance[key] = copy.deepcopy(default)
                elif _completes(default, instance.get(key)):
                    instance[key] = {**copy.deepcopy(default), **instance[key]}
        yield from set_props(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_cls, {"properties": fill})


def _completes(default, given) -> bool:
    """A partial object (a MoCo-family method's optim: {lr: 1.0}) is completed from its non-empty
    default, unless it names another optimiser: then it overrides pretrain.optim alone."""
    return (
        isinstance(default, dict)
        and bool(default)
        and isinstance(given, dict)
        and given.get("name", default.get("name")) == default.get("name")
    )


_Validator = _with_defaults(jsonschema.Draft7Validator)


@functools.lru_cache(maxsize=1)
def _schema() -> dict:
    # libyaml's loader when PyYAML has it: much less CPU than the pure-Python one (docs/performance.md)
    return yaml.load(SCHEMA.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def load_schema() -> dict:
    """The config schema (parsed once per process; a fresh copy each call)."""
    return copy.deepcopy(_schema())


def _coerce(schema: dict, value, root: dict | None = None):
    """Snakemake's --config parses nested values with YAML's BaseLoader (all strings): give strings
    the scalar type the schema asks for, so `--config "eval={'linear_epochs': 5}"` works."""
    root = schema if root is None else root
    if "$ref" in schema:  # only local refs: "#/definitions/name"
        schema = root["definitions"][schema["$ref"].rsplit("/", 1)[-1]]
    if isinstance(value, dict):
        props = schema.get("properties", {})
        rest = schema.get("additionalProperties")
        rest = rest if isinstance(rest, dict) else {}
        return {k: _coerce(props.get(k, rest), v, root) for k, v in value.items()}
    if isinstance(value, list):
        return [_coerce(schema.get("items", {}), v, root) for v in value]
    if not isinstance(value, str):
        return value
    types = schema.get("type", [])
    types = [types] if isinstance(types, str) else types
    if "anyOf" in schema:  # e.g. [integer, "all"]: the first branch the string parses as
        for branch in schema["anyOf"]:
            v = _coerce(branch, value)
            if not _Validator(branch).is_valid(v):
                continue
            return v
        return value
    if "string" in types:
        return None if "null" in types and value in ("null", "~") else value
    parsed = yaml.safe_load(value) if value.strip() else None
    ok = {
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, (int, float)),
        "boolean": lambda v: isinstance(v, bool),
        "null": lambda v: v is None,
    }
    enum = schema.get("enum")
    if any(ok[t](parsed) for t in types if t in ok) or (enum and parsed in enum and not isinstance(parsed, str)):
        return parsed
    return value


def validate(config: dict, source: str = "config") -> dict:
    """Return a validated copy of config with defaults filled; raise UserError on the first problem."""
    schema = load_schema()
    config = _coerce(schema, copy.deepcopy(config))
    errors = sorted(_Validator(schema).iter_errors(config), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        where = ".".join(str(p) for p in e.absolute_path) or "top level"
        if e.validator == "additionalProperties":
            e.message += "".join(
                f"; {k} is now {RENAMED[k]}" for k in (f"{where}.{x}" for x in e.instance) if k in RENAMED
            )
        raise UserError(
            f"{source}: {where}: {e.message}; fix it (allowed keys and types: {SCHEMA.relative_to(SCHEMA.parents[2])})"
        )
    p = config["pretrain"]
    for m in config["study"]["methods"]:
        warm = config["methods"].get(m, {}).get("optim", {}).get("warmup_epochs", p["optim"]["warmup_epochs"])
        epochs, key = method_pretrain(config, m, "epochs")
        if warm >= epochs:
            raise UserError(
                f"{source}: warmup_epochs ({warm}, for {m}) must be smaller than {key} ({epochs}); lower it"
            )
    return config


def validate_launch(launch: dict, source: str = "--launch") -> dict:
    """A launch section alone (a command's --launch JSON), defaults filled; UserError on the first problem."""
    schema = load_schema()["properties"]["launch"]
    launch = copy.deepcopy(launch)
    errors = sorted(_Validator(schema).iter_errors(launch), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        where = ".".join(["launch", *map(str, e.absolute_path)])
        if e.validator == "additionalProperties":
            e.message += "".join(
                f"; {k} is now {RENAMED[k]}" for k in (f"{where}.{x}" for x in e.instance) if k in RENAMED
            )
        raise UserError(
            f"{source}: {where}: {e.message}; fix it (allowed keys and types: {SCHEMA.relative_to(SCHEMA.parents[2])})"
        )
    return launch


PREFLIGHT_ONLY = ("gpu_mem_gb", "tflops_per_gpu")  # launch.pretrain / launch.evaluation keys no job reads


def job_launch(launch: dict) -> dict:
    """The launch section as the jobs get it (their --launch): without the keys only `sslstudy preflight`
    reads, so changing them reruns no job."""
    return {
        k: {kk: vv for kk, vv in v.items() if kk not in PREFLIGHT_ONLY} if k in ("pretrain", "evaluation") else v
        for k, v in launch.items()
    }


def load(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such params file; pass an existing one (e.g. params/study.yaml)")
    return validate(read_yaml(path) or {}, str(path))


def read_yaml(path: str | Path):
    """A params file parsed; a syntax error is one UserError line: file:line:column, the problem and
    where the construct it breaks opened (Snakemake's own message for it names neither file nor line)."""
    try:
        return yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as e:
        mark, problem = getattr(e, "problem_mark", None), getattr(e, "problem", None) or str(e).splitlines()[0]
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        context, opened = getattr(e, "context", None), getattr(e, "context_mark", None)
        if context:
            problem += f" ({context}" + (f" at {opened.line + 1}:{opened.column + 1}" if opened else "") + ")"
        raise UserError(f"{where}: not valid YAML: {problem}; fix the syntax there") from None


def check_datasets(config: dict) -> None:
    """Every domain of the grid has its packed folder (full checks happen when a job loads it)."""
    clash = sorted(set(config["data"].get("datasets", {})) & set(config["data"].get("ingest", {})))
    if clash:
        raise UserError(f"data.datasets and data.ingest both name {', '.join(clash)}; keep one")
    for d in check(config):
        if d in config["data"].get("ingest", {}):
            continue  # the ingest rule writes it
        path = Path(dataset_path(config, d))
        if (path / META_FILE).is_file():
            _check_levels(path, d)
        if not (path / IMAGES_FILE).is_file():
            if d in config["data"].get("datasets", {}):
                hint = f"ingest it (`sslstudy ingest <source> <path> --name {path.name}`) or fix data.datasets.{d}"
            elif config["data"]["root"] == SYNTH_ROOT:
                hint = "run `sslstudy synth` (or add it to data.datasets if it is ingested data)"
            else:
                hint = "ingest it or fix data.root"
            raise UserError(
                f"{path}: no such dataset folder (domain {d!r} in study.domains); {hint}, or `dvc checkout data.dvc`"
            )


def _check_levels(path: Path, domain: str) -> None:
    """Every label level of a domain's packed folder has two or more classes (meta.json, read alone)."""
    try:
        meta = json.loads((path / META_FILE).read_text())
        levels, classes = meta["levels"], meta["classes"]
        refuse_one_class(
            f"{path / META_FILE}: dataset {domain!r} (study.domains)",
            levels,
            classes,
            drop=f"re-ingest it without that level (sslstudy ingest ... --name {path.name} --levels {{others}})",
            more=f"re-ingest it from a collection of two or more classes (sslstudy ingest ... --name {path.name})",
        )
    except (ValueError, KeyError, TypeError):
        return  # unreadable meta.json: the job that loads the folder says what is wrong with it
