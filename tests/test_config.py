"""sslstudy.config: the schema is parsed once per process and handed out as fresh copies."""

import pytest
import yaml
from sslstudy import config
from sslstudy.errors import UserError


def test_schema_is_parsed_once_same_as_pure_python_yaml_and_copied():
    reference = yaml.load(config.SCHEMA.read_text(), Loader=yaml.SafeLoader)  # the pure-Python parser
    a = config.load_schema()
    assert a == reference
    a["properties"].clear()  # a caller's change does not leak into the next one
    assert config.load_schema() == reference
    config.load_schema()
    assert config._schema.cache_info().misses == 1


STUDY = dict(study=dict(methods=["simclr"], domains=["natural"], subsets=[1.0]))


@pytest.mark.parametrize(
    "evalcfg, needle",
    [
        (dict(knn_k=[]), "eval.knn_k: [] should be non-empty"),
        (dict(knn_k=[10, 10]), "eval.knn_k: [10, 10] has non-unique elements"),
        (dict(knn_k=[0, 5]), "eval.knn_k.0: 0 is less than the minimum of 1"),
        (dict(linear_lr=[0.5, -1]), "eval.linear_lr.1: -1 is less than or equal to the minimum of 0"),
        (dict(linear_wd=[-0.1]), "eval.linear_wd.0: -0.1 is less than the minimum of 0"),
        (dict(val_fraction=1.0), "eval.val_fraction: 1.0 is greater than or equal to the maximum of 1"),
    ],
)
def test_bad_probe_grids_are_one_clear_line(evalcfg, needle):
    with pytest.raises(UserError) as e:
        config.validate(dict(STUDY, eval=evalcfg), "params/study.yaml")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("params/study.yaml: ") and needle in msg, msg


def test_probe_grids_of_the_shipped_params_are_valid():
    for path in ("params/study.yaml", "params/paper.yaml"):
        ev = config.validate(yaml.safe_load(open(path)), path)["eval"]
        assert len(ev["knn_k"]) > 1 and len(ev["linear_lr"]) * len(ev["linear_wd"]) > 1 and 0 < ev["val_fraction"] < 1


@pytest.mark.parametrize("method", ["moco", "densecl", "pcl"])
def test_a_partial_method_optim_keeps_the_methods_own_optimiser(method):
    """The MoCo family's default optim is SGD while pretrain.optim is LARS: {lr: 1.0} changes the rate of
    that SGD; naming LARS overrides pretrain.optim instead (the SGD defaults do not leak into it)."""
    from sslstudy import axes

    run = dict(
        id=f"{method}/natural_frac1_clean/seed0",
        method=method,
        domain="natural",
        subset="frac1",
        seed=0,
        quality="clean",
    )
    study = dict(
        study=dict(methods=[method], domains=["natural"], subsets=[1.0]),
        pretrain=dict(optim=dict(name="lars", lr=8.0, weight_decay=1.0e-6, warmup_epochs=1)),
    )
    default = axes.pretrain_spec(config.validate(study), run)["optim"]
    partial = axes.pretrain_spec(config.validate(dict(study, methods={method: dict(optim=dict(lr=1.0))})), run)["optim"]
    assert default["name"] == "sgd" and partial == dict(default, lr=1.0)
    lars = axes.pretrain_spec(
        config.validate(dict(study, methods={method: dict(optim=dict(name="lars", lr=2.0))})), run
    )["optim"]
    assert (lars["name"], lars["lr"], lars["weight_decay"], lars["warmup_epochs"]) == ("lars", 2.0, 1.0e-6, 1)


def test_a_method_batch_size_and_epochs_override_pretrain_for_that_method_only():
    from sslstudy import axes

    study = dict(
        study=dict(methods=["simclr", "byol"], domains=["natural"], subsets=[1.0]),
        pretrain=dict(batch_size=128, epochs=6),
        methods=dict(byol=dict(batch_size=64, epochs=12)),
    )
    c = config.validate(study)
    spec = {r["method"]: axes.pretrain_spec(c, r) for r in axes.ssl_runs(c)}
    assert spec["byol"]["batch_size"] == 64 and spec["simclr"]["batch_size"] == 128
    assert spec["byol"]["epochs"] == 12 and spec["simclr"]["epochs"] == 6
    assert not {"batch_size", "epochs"} & set(spec["byol"]["method"]["params"])  # the method's heads never see them
    with pytest.raises(UserError) as e:
        config.validate(dict(study, methods=dict(byol=dict(batch_size=1))), "params/study.yaml")
    assert "\n" not in str(e.value) and "methods.byol.batch_size: 1 is less than the minimum of 2" in str(e.value)
    with pytest.raises(UserError) as e:  # the warm-up is checked against the method's own epochs
        config.validate(
            dict(study, methods=dict(byol=dict(epochs=2, optim=dict(warmup_epochs=2)))), "params/study.yaml"
        )
    assert "\n" not in str(
        e.value
    ) and "warmup_epochs (2, for byol) must be smaller than methods.byol.epochs (2)" in str(e.value)
