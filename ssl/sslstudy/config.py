"""Study config: load, validate against workflow/schemas/config.schema.yaml (defaults filled in,
unknown keys rejected), and expand into the runs of the grid."""
from __future__ import annotations

import copy
import functools
from pathlib import Path

import jsonschema
import yaml

from .errors import UserError

SCHEMA = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"


def _with_defaults(validator_cls):
    set_props = validator_cls.VALIDATORS["properties"]

    def fill(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if "default" in sub and key not in instance:
                    instance[key] = copy.deepcopy(sub["default"])
        yield from set_props(validator, properties, instance, schema)

    return jsonschema.validators.extend(validator_cls, {"properties": fill})


_Validator = _with_defaults(jsonschema.Draft7Validator)


@functools.lru_cache(maxsize=1)
def _schema() -> dict:
    # libyaml's loader when PyYAML has it: ~8x less CPU than the pure-Python one on this file
    return yaml.load(SCHEMA.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def load_schema() -> dict:
    """The config schema (parsed once per process; a fresh copy each call)."""
    return copy.deepcopy(_schema())


def _coerce(schema: dict, value, root: dict | None = None):
    """Snakemake's --config parses nested values with YAML's BaseLoader (all strings): give strings
    the scalar type the schema asks for, so `--config "eval={'knn_k': 5}"` works."""
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
    ok = {"integer": lambda v: isinstance(v, int) and not isinstance(v, bool), "number": lambda v: isinstance(v, (int, float)),
          "boolean": lambda v: isinstance(v, bool), "null": lambda v: v is None}
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
        raise UserError(f"{source}: {where}: {e.message}; fix it (allowed keys and types: {SCHEMA.relative_to(SCHEMA.parents[2])})")
    p = config["pretrain"]
    for m in config["study"]["methods"]:
        warm = config["methods"].get(m, {}).get("optim", {}).get("warmup_epochs", p["optim"]["warmup_epochs"])
        if warm >= p["epochs"]:
            raise UserError(f"{source}: warmup_epochs ({warm}, for {m}) must be smaller than pretrain.epochs ({p['epochs']}); lower it")
    return config


def load(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such params file; pass an existing one (e.g. params/study.yaml)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}:{line} is not valid YAML; fix the syntax") from None
    return validate(raw, str(path))


def subset_tag(size: float) -> str:
    """study.subsets entries: a number <= 1 is a fraction of the train split, an integer > 1 a count."""
    if size <= 1:
        return f"frac{size:g}"
    if size != int(size):
        raise UserError(f"subset size {size} is neither a fraction <= 1 nor a whole number of images; fix study.subsets in params")
    return f"n{int(size)}"


def run_id(method: str, domain: str, subset: str, seed: int, quality: str = "clean") -> str:
    """Paths read like the study's table: simclr/natural_frac0.25_clean/seed0."""
    return f"{method}/{domain}_{subset}_{quality}/seed{seed}"


INGEST_ROOT = "data"  # where the ingest rule writes data.ingest entries (as `sslstudy ingest` does by default)


def dataset_path(config: dict, domain: str) -> str:
    """A domain's packed folder: data.datasets[domain], data/<domain> for data.ingest entries, or
    data.root/<domain> (the synthetic domains)."""
    d = config["data"]
    if domain in d.get("datasets", {}):
        return d["datasets"][domain]
    if domain in d.get("ingest", {}):
        return f"{INGEST_ROOT}/{domain}"
    return f"{d['root']}/{domain}"


def ingest_args(config: dict, name: str) -> list[str]:
    """`sslstudy ingest` arguments for the data.ingest entry ``name``."""
    s = config["data"]["ingest"][name]
    args = [s["source"], s["path"], "--name", name, "--out-root", INGEST_ROOT, "--size", str(s["size"]),
            "--val-fraction", str(s["val_fraction"]), "--test-fraction", str(s["test_fraction"]),
            "--seed", str(s["seed"]), "--max-failed", str(s["max_failed"])]
    for key in ("hierarchy", "train_split", "max_per_class"):
        if s[key] is not None:
            args += [f"--{key.replace('_', '-')}", str(s[key])]
    if s["levels"]:
        args += ["--levels", ",".join(s["levels"])]
    return args


def check_datasets(config: dict) -> None:
    """Every domain of the grid has its packed folder (full checks happen when a job loads it)."""
    clash = sorted(set(config["data"].get("datasets", {})) & set(config["data"].get("ingest", {})))
    if clash:
        raise UserError(f"data.datasets and data.ingest both name {', '.join(clash)}; keep one")
    from .axes import check

    for d in check(config):
        if d in config["data"].get("ingest", {}):
            continue  # the ingest rule writes it
        path = Path(dataset_path(config, d))
        if not (path / "images.npy").is_file():
            if d in config["data"].get("datasets", {}):
                hint = f"ingest it (`sslstudy ingest <source> <path> --name {path.name}`) or fix data.datasets.{d}"
            elif config["data"]["root"] == "data/synth":
                hint = "run `sslstudy synth` (or add it to data.datasets if it is ingested data)"
            else:
                hint = "ingest it or fix data.root"
            raise UserError(f"{path}: no such dataset folder (domain {d!r} in study.domains); {hint}, or `dvc checkout data.dvc`")


def subset_path(config: dict, domain: str, subset: str) -> str:
    return f"results/subsets/{domain}/seed{config['seed']}/{subset}.npy"


def pretrain_spec(config: dict, run: dict) -> dict:
    """Everything one pretraining run depends on (saved in every checkpoint)."""
    from .axes import dataset_dir
    from .names import image_size_after

    p = config["pretrain"]
    if run["method"] not in config["methods"]:
        raise UserError(f"method {run['method']!r} has no hyper-parameters under methods: in params; add them")
    params = copy.deepcopy(config["methods"][run["method"]])
    optim = dict(p["optim"], **params.pop("optim", {}))
    views = [dict(p["views"], **{k: v for k, v in o.items() if k != "repeat"})
             for o in params.pop("views", [{}, {}]) for _ in range(o.get("repeat", 1))]
    shrink = image_size_after(run["quality"], p["views"]["size"]) / p["views"]["size"]  # lowres: smaller views
    views = [dict(v, size=max(2, round(v["size"] * shrink))) if shrink < 1 else v for v in views]
    return dict(
        run=run["id"], seed=run["seed"], epochs=p["epochs"], batch_size=p["batch_size"],
        checkpoint_every=p["checkpoint_every"], threads=p["threads"], on_collapse=p["on_collapse"],
        backbone=p["backbone"], optim=optim, views=views,
        method=dict(name=run["method"], params=params),
        data=dict(dataset=dataset_dir(config, run["domain"], run["quality"]), subset=subset_path(config, run["domain"], run["subset"])),
    )
