"""The study's axes (quantity, domain, quality, granularity, fusion, periodic clustering, dense) expanded
from a validated config into what must exist: pretraining runs, supervised baselines, evaluation
jobs, and each run's spec. Pure functions of the config; sslstudy.names names their files.

Axes other than quantity use each domain's *reference* subset: the largest of ``study.subsets``.
"""

from __future__ import annotations

import copy
import difflib

from .errors import UserError
from .names import (
    ALL,
    CLEAN,
    CORRUPTIONS,
    POOL_SEP,
    SUPERVISED,
    dataset_dir,
    image_size_after,
    labels_tag,
    member_name,
    parse_member,
    pool_members,
    pool_name,
    quality_tag,
    run_id,
    subset_path,
    subset_tag,
)


def pick(config: dict, axis: str, key: str) -> list:
    """An axis's methods or domains: its own list, or study's when null."""
    value = config[axis][key]
    return list(config["study"][key] if value is None else value)


def seeds(config: dict, axis: str) -> list[int]:
    """An axis's seeds: its own list, or study.seeds when null (the eight-method comparison's)."""
    value = config[axis].get("seeds")
    return list(config["study"]["seeds"] if value is None else value)


def reference_subset(config: dict) -> str:
    return subset_tag(max(config["study"]["subsets"]))


def quality_subset(config: dict) -> str:
    v = config["quality"]["subset"]
    return reference_subset(config) if v is None else subset_tag(v)


def qualities(config: dict) -> list[str]:
    strengths = config["quality"]
    return [quality_tag(kind, s) for kind in CORRUPTIONS for s in strengths[kind]]


def pools(config: dict) -> list[str]:
    return [pool_name(p) for p in config["domain"]["pools"]]


def _run(method: str, domain: str, subset: str, seed: int, quality: str = CLEAN) -> dict:
    return dict(
        method=method,
        domain=domain,
        subset=subset,
        quality=quality,
        seed=seed,
        kind="ssl",
        id=run_id(method, domain, subset, seed, quality),
    )


def supervised_model(domain: str, labels, seed: int) -> dict:
    tag = labels_tag(labels)
    return dict(
        method=SUPERVISED,
        domain=domain,
        subset=tag,
        quality=CLEAN,
        seed=seed,
        kind="supervised",
        labels=tag,
        id=run_id(SUPERVISED, domain, tag, seed),
    )


def _unique(items: list[dict]) -> list[dict]:
    return list({it["id"]: it for it in items}.values())


def ssl_runs(config: dict) -> list[dict]:
    """Every pretraining run of the study, in a stable order, without duplicates."""
    return _unique([r for runs in runs_by_axis(config).values() for r in runs])


def runs_by_axis(config: dict) -> dict[str, list[dict]]:
    """The pretraining runs each part of the study asks for (a run may serve several): the method
    comparison (study), then each axis in the order ssl_runs lists them."""
    s, ref = config["study"], reference_subset(config)
    out = dict(
        study=[
            _run(m, d, subset_tag(v), sd)
            for m in s["methods"]
            for d in s["domains"]
            for v in s["subsets"]
            for sd in s["seeds"]
        ]
    )
    q = config["quantity"]
    out["quantity"] = (
        [
            _run(m, d, t, sd)
            for m in pick(config, "quantity", "methods")
            for d in pick(config, "quantity", "domains")
            for t in dict.fromkeys([ref, *map(subset_tag, q["subsets"])])
            for sd in seeds(config, "quantity")
        ]
        if q["labels"]
        else []
    )
    out["quality"] = (
        [
            _run(m, d, quality_subset(config), sd, ql)
            for m in pick(config, "quality", "methods")
            for d in pick(config, "quality", "domains")
            for ql in [CLEAN, *qualities(config)]
            for sd in seeds(config, "quality")
        ]
        if qualities(config)
        else []
    )
    dom = config["domain"]
    out["domain"] = [
        _run(m, d, ref, sd)
        for m in pick(config, "domain", "methods")
        for d in dom["domains"] + pools(config)
        for sd in seeds(config, "domain")
    ]
    out["granularity"] = [
        _run(m, d, ref, sd)
        for m in pick(config, "granularity", "methods")
        for d in pick(config, "granularity", "domains")
        for sd in seeds(config, "granularity")
    ]
    out["fusion"] = [m for a, b in fusion_pairs(config) for m in (a, b) if m["kind"] == "ssl"]
    out["dense"] = (
        [
            _run(m, d, ref, sd)
            for m in pick(config, "dense", "methods")
            for d in pick(config, "dense", "domains")
            for sd in seeds(config, "dense")
        ]
        if config["dense"]["enabled"]
        else []
    )
    return out


def supervised_models(config: dict) -> list[dict]:
    q = config["quantity"]
    out = []
    if q["supervised"]:
        out += [
            supervised_model(d, n, sd)
            for d in pick(config, "quantity", "domains")
            for n in q["labels"]
            for sd in seeds(config, "quantity")
        ]
    if config["granularity"]["supervised"]:
        out += [
            supervised_model(d, ALL, sd)
            for d in pick(config, "granularity", "domains")
            for sd in seeds(config, "granularity")
        ]
    out += [m for a, b in fusion_pairs(config) for m in (a, b) if m["kind"] == "supervised"]
    return _unique(out)


def models(config: dict) -> dict[str, dict]:
    """Every trained network by id (SSL runs and supervised baselines)."""
    return {m["id"]: m for m in ssl_runs(config) + supervised_models(config)}


def member(config: dict, name: str, seed: int) -> dict:
    method, domain = parse_member(name)
    if method == SUPERVISED:
        return supervised_model(domain, ALL, seed)
    return _run(method, domain, reference_subset(config), seed)


def fusion_pairs(config: dict) -> list[tuple[dict, dict]]:
    """(member a, member b) for every seed: pairs of the kinds asked for, then the explicit ones."""
    f = config["fusion"]
    methods, domains = pick(config, "fusion", "methods"), pick(config, "fusion", "domains")
    names = []
    if "methods" in f["kinds"]:
        names += [
            (member_name(m1, d), member_name(m2, d))
            for d in domains
            for i, m1 in enumerate(methods)
            for m2 in methods[i + 1 :]
        ]
    if "domains" in f["kinds"]:
        names += [
            (member_name(m, d1), member_name(m, d2))
            for m in methods
            for i, d1 in enumerate(domains)
            for d2 in domains[i + 1 :]
        ]
    if "supervised" in f["kinds"]:
        names += [(member_name(m, d), member_name(SUPERVISED, d)) for m in methods for d in domains]
    names += [tuple(p) for p in f["pairs"]]
    for a, b in names:
        if a == b:
            raise UserError(f"fusion pair {a} + {b} fuses a model with itself; fix fusion.pairs in params")
    return [
        (member(config, a, sd), member(config, b, sd))
        for a, b in dict.fromkeys(names)
        for sd in seeds(config, "fusion")
    ]


def eval_domains(model: dict) -> list[str]:
    """Where a model is evaluated by default: its clean domain, or each member of a pool."""
    return pool_members(model["domain"])


def evaluations(config: dict) -> list[tuple[str, str, str]]:
    """Frozen evaluations as (model id, weights, evaluation domain), without duplicates."""
    ref, twins = reference_subset(config), random_twins(config, "frozen")  # twins: the method comparison's runs
    out = [(rid, "pretrained", on) for rid, on in twins] + [
        (src, "random", on) for (rid, on), src in twins.items() if rid == src
    ]
    if qualities(config):
        out += [
            (run_id(m, d, quality_subset(config), sd, ql), "pretrained", d)
            for m in pick(config, "quality", "methods")
            for d in pick(config, "quality", "domains")
            for ql in [CLEAN, *qualities(config)]
            for sd in seeds(config, "quality")
        ]
    dom = config["domain"]
    on = (
        dom["evaluate_on"]
        if dom["evaluate_on"] is not None
        else list(dict.fromkeys(dom["domains"] + [d for p in dom["pools"] for d in p]))
    )
    for m in pick(config, "domain", "methods"):
        for d in dom["domains"] + pools(config):
            out += [(run_id(m, d, ref, sd), "pretrained", e) for sd in seeds(config, "domain") for e in on]
    g = config["granularity"]
    for d in pick(config, "granularity", "domains"):
        for sd in seeds(config, "granularity"):
            out += [(run_id(m, d, ref, sd), "pretrained", d) for m in pick(config, "granularity", "methods")]
            if g["supervised"]:
                out.append((supervised_model(d, ALL, sd)["id"], "pretrained", d))
    return list(dict.fromkeys(out))


def random_twins(config: dict, kind: str) -> dict[tuple[str, str], str]:
    """(run id, domain) of every run compared with its random weights (the eight-method comparison's
    runs for kind "frozen", the dense axis's for "dense") -> the run whose evaluation of them it shares.
    Every run of a seed starts from the same backbone weights (train.build_model seeds the backbone
    before building anything else), so they are evaluated once per seed and domain, by the first run."""
    if kind == "frozen":
        s = config["study"]
        wanted = [
            (m, d, subset_tag(v), sd)
            for m in s["methods"]
            for d in s["domains"]
            for v in s["subsets"]
            for sd in s["seeds"]
        ]
    elif config["dense"]["enabled"]:
        wanted = [
            (m, d, reference_subset(config), sd)
            for d in pick(config, "dense", "domains")
            for sd in seeds(config, "dense")
            for m in pick(config, "dense", "methods")
        ]
    else:
        wanted = []
    first, out = {}, {}
    for m, d, sub, sd in wanted:
        rid = run_id(m, d, sub, sd)
        out[(rid, d)] = first.setdefault((sd, d), rid)
    return out


def lowshot_jobs(config: dict) -> list[tuple[str, str]]:
    """(SSL run id, mode) of the quantity axis: one job each, over every count of lowshot_labels."""
    q = config["quantity"]
    if not q["labels"]:
        return []
    runs = [
        r
        for r in ssl_runs(config)
        if r["quality"] == CLEAN
        and r["method"] in pick(config, "quantity", "methods")
        and r["domain"] in pick(config, "quantity", "domains")
        and r["subset"] in [reference_subset(config), *map(subset_tag, q["subsets"])]
        and r["seed"] in seeds(config, "quantity")
    ]
    return [(r["id"], mode) for r in runs for mode in q["modes"]]


def lowshot_labels(config: dict) -> list[str]:
    """The labels tags (l10, lall) every lowshot job covers."""
    return [labels_tag(n) for n in config["quantity"]["labels"]]


def cluster_runs(config: dict) -> list[str]:
    """The eight-method comparison's runs (study.methods x study.domains, reference subset), per clustering seed."""
    if not config["clustering"]["enabled"]:
        return []
    s, ref = config["study"], reference_subset(config)
    return [run_id(m, d, ref, sd) for m in s["methods"] for d in s["domains"] for sd in seeds(config, "clustering")]


def dense_jobs(config: dict) -> list[tuple[str, str, str]]:
    """Dense evaluations as (model id, weights, domain): each dense method's run on the reference
    subset, pretrained, the random weights once per seed (random_twins), and the supervised network
    with all labels where trained."""
    d = config["dense"]
    if not d["enabled"]:
        return []
    ref, trained, twins = reference_subset(config), models(config), random_twins(config, "dense")
    out = []
    for dom in pick(config, "dense", "domains"):
        for sd in seeds(config, "dense"):
            for m in pick(config, "dense", "methods"):
                rid = run_id(m, dom, ref, sd)
                out += [(rid, "pretrained", dom)] + ([(rid, "random", dom)] if twins[(rid, dom)] == rid else [])
            sup = supervised_model(dom, ALL, sd)["id"]
            if d["supervised"] and sup in trained:
                out.append((sup, "pretrained", dom))
    return list(dict.fromkeys(out))


def fusion_domains(a: dict, b: dict) -> list[str]:
    """Where a fusion pair is scored: each member's evaluation domains."""
    return list(dict.fromkeys(eval_domains(a) + eval_domains(b)))


def evaluation_plan(config: dict) -> dict[str, dict[str, list]]:
    """Each evaluated model's one evaluate job, by model id: its frozen and dense evaluations as
    (weights, domain), every (weights, domain) it embeds (the frozen ones and the embedding caches
    fusion and the few-label linear probe read, pretrained weights), and the domains its every
    checkpoint is clustered on (cluster: runs of the clustering axis, else empty)."""
    plan: dict = {}

    def entry(rid: str) -> dict:
        return plan.setdefault(rid, dict(frozen=[], dense=[], embed=[], cluster=[]))

    def add(rid: str, kind: str, weights: str, on: str) -> None:
        jobs = entry(rid)[kind]
        if (weights, on) not in jobs:
            jobs.append((weights, on))

    for rid, w, on in evaluations(config):
        add(rid, "frozen", w, on)
        add(rid, "embed", w, on)
    for rid, w, on in dense_jobs(config):
        add(rid, "dense", w, on)
    for a, b in fusion_pairs(config):
        for on in fusion_domains(a, b):
            add(a["id"], "embed", "pretrained", on)
            add(b["id"], "embed", "pretrained", on)
    trained = models(config)
    for rid, mode in lowshot_jobs(config):
        if mode == "linear":
            add(rid, "embed", "pretrained", trained[rid]["domain"])
    for rid in cluster_runs(config):
        entry(rid)["cluster"] = eval_domains(trained[rid])
    return plan


def check(config: dict, source: str = "params") -> list[str]:
    """Names an axis uses are well formed and methods have hyper-parameters; returns the plain domains."""
    _check_method_names(config, source)
    plain = {d for r in models(config).values() for d in pool_members(r["domain"])}
    plain |= {e for _, _, e in evaluations(config) + dense_jobs(config)}
    for d in sorted(plain):
        if POOL_SEP in d or "_" in d:
            raise UserError(f"{source}: domain name {d!r} may not contain '+' or '_' (they separate pools and run ids)")
    return sorted(plain)


def _check_method_names(config: dict, source: str) -> None:
    """Every method an axis names is one of the schema's (methods:, all filled in by config.validate);
    else one line naming it, where it is named, the closest known name and all of them."""
    known = sorted(config["methods"])
    lists = [("study.methods", config["study"]["methods"])]
    lists += [(f"{k}.methods", v.get("methods")) for k, v in config.items() if isinstance(v, dict) and k != "study"]
    for key, methods in lists:
        for m in methods if isinstance(methods, list) else []:
            if m not in known:
                close = difflib.get_close_matches(m, known, n=1)
                guess = f" (did you mean {close[0]}?)" if close else ""
                raise UserError(f"{source}: unknown method {m!r} in {key}{guess}; the methods are {', '.join(known)}")


METHOD_PRETRAIN = ("batch_size", "epochs")  # the pretrain settings a method may override


def method_pretrain(config: dict, method: str, key: str) -> tuple:
    """One of METHOD_PRETRAIN for a method: methods.<m>.<key> where set and not null, else
    pretrain.<key>. -> (value, the params key it came from)."""
    own = (config["methods"].get(method) or {}).get(key)
    return (own, f"methods.{method}.{key}") if own is not None else (config["pretrain"][key], f"pretrain.{key}")


def pretrain_spec(config: dict, run: dict) -> dict:
    """Everything one pretraining run depends on (saved in every checkpoint)."""
    p = config["pretrain"]
    if run["method"] not in config["methods"]:
        _check_method_names(config, "params")  # names the unknown method and the known ones
        raise UserError(f"method {run['method']!r} has no hyper-parameters under methods: in params; add them")
    params = copy.deepcopy(config["methods"][run["method"]])
    optim = dict(p["optim"], **params.pop("optim", {}))
    batch_size, epochs = (method_pretrain(config, run["method"], k)[0] for k in METHOD_PRETRAIN)
    for k in METHOD_PRETRAIN:
        params.pop(k, None)  # the trainer's, not the heads'
    views = [
        dict(p["views"], **{k: v for k, v in o.items() if k != "repeat"})
        for o in params.pop("views", [{}, {}])
        for _ in range(o.get("repeat", 1))
    ]
    shrink = image_size_after(run["quality"], p["views"]["size"]) / p["views"]["size"]  # lowres: smaller views
    views = [dict(v, size=max(2, round(v["size"] * shrink))) if shrink < 1 else v for v in views]
    return dict(
        run=run["id"],
        seed=run["seed"],
        epochs=epochs,
        batch_size=batch_size,
        checkpoint_every=p["checkpoint_every"],
        threads=p["threads"],
        on_collapse=p["on_collapse"],
        device=p["device"],
        precision=p["precision"],
        precision_fallback=p["precision_fallback"],
        compile=p["compile"],
        backbone=p["backbone"],
        optim=optim,
        views=views,
        method=dict(name=run["method"], params=params),
        data=dict(
            dataset=dataset_dir(config, run["domain"], run["quality"]),
            subset=subset_path(config, run["domain"], run["subset"]),
        ),
    )


def supervised_spec(config: dict, model: dict) -> dict:
    """Everything a supervised network depends on: the supervised rule's settings (its model config)."""
    return dict(
        run=model["id"],
        seed=model["seed"],
        labels=model["labels"],
        dataset=dataset_dir(config, model["domain"]),
        backbone=config["pretrain"]["backbone"],
        size=config["pretrain"]["views"]["size"],
        finetune=config["finetune"],
        eval=config["eval"],
    )


def model_spec(config: dict, model: dict) -> dict:
    """The spec of any model of the study (models(config) entry): what its weights depend on."""
    return pretrain_spec(config, model) if model["kind"] == "ssl" else supervised_spec(config, model)
