"""Bad input: one clear line naming the file and the fix, exit code 2, nothing half-written."""

import shutil

import pytest
import yaml
from sslstudy.cli import main

from tests.helpers import AXES_OFF, copy_workflow, run


def one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def test_misspelled_key(tmp_path, capsys):
    p = tmp_path / "p.yaml"
    p.write_text("study: {methods: [simclr], domains: [natural]}\npretrain: {epocs: 3}\n")
    err = one_line_error(capsys, ["validate", str(p)])
    assert str(p) in err and "'epocs' was unexpected" in err


def test_wrong_type_and_bad_yaml(tmp_path, capsys):
    p = tmp_path / "p.yaml"
    p.write_text("study: {methods: [simclr], domains: [natural]}\npretrain: {epochs: many}\n")
    assert "pretrain.epochs" in one_line_error(capsys, ["validate", str(p)])
    p.write_text("study: {methods: [simclr], domains: [natural]}\npretrain: {epochs: 2}\n")
    assert "warmup_epochs (3, for simclr) must be smaller than pretrain.epochs (2)" in one_line_error(
        capsys, ["validate", str(p)]
    )
    p.write_text("study: {methods: [simclr]\n")
    assert "not valid YAML" in one_line_error(capsys, ["validate", str(p)])


@pytest.mark.parametrize(
    "yaml,needle",
    [
        (
            "study: {methods: [simclr], domains: [natural], seeds: [0, 1, 0]}",
            "study.seeds: [0, 1, 0] has non-unique elements",
        ),
        (
            "study: {methods: [simclr], domains: [natural], seeds: [-1]}",
            "study.seeds.0: -1 is less than the minimum of 0",
        ),
        ("study: {methods: [simclr], domains: [natural], seeds: []}", "study.seeds: [] should be non-empty"),
        ("study: {methods: [simclr], domains: [natural], seeds: 3}", "study.seeds: 3 is not of type 'array'"),
        (
            "study: {methods: [simclr], domains: [natural]}\nquality: {seeds: [1, 1]}",
            "quality.seeds: [1, 1] has non-unique elements",
        ),
        ("study: {methods: [simclr], domains: [natural]}\ndomain: {seeds: []}", "domain.seeds: [] should be non-empty"),
        (
            "study: {methods: [simclr], domains: [natural]}\npretrain: {on_collapse: halt}",
            "pretrain.on_collapse: 'halt' is not one of ['warn', 'stop']",
        ),
    ],
)
def test_bad_seeds_and_on_collapse(tmp_path, capsys, yaml, needle):
    p = tmp_path / "p.yaml"
    p.write_text(yaml + "\n")
    err = one_line_error(capsys, ["validate", str(p)])
    assert str(p) in err and needle in err


def test_subset_larger_than_dataset(tiny_data, tmp_path, capsys):
    out = tmp_path / "s.npy"
    err = one_line_error(
        capsys,
        ["subset", "--dataset", str(tiny_data / "natural"), "--subset", "n5000", "--seed", "0", "--out", str(out)],
    )
    assert "5000" in err and str(tiny_data / "natural") in err
    assert not out.exists() and not list(tmp_path.iterdir())


def test_missing_dataset_folder(tmp_path, capsys):
    err = one_line_error(
        capsys,
        [
            "subset",
            "--dataset",
            str(tmp_path / "nope"),
            "--subset",
            "frac1",
            "--seed",
            "0",
            "--out",
            str(tmp_path / "s.npy"),
        ],
    )
    assert str(tmp_path / "nope") in err


def test_corrupt_image_array(tiny_data, tmp_path, capsys):
    bad = tmp_path / "natural"
    shutil.copytree(tiny_data / "natural", bad)
    raw = (bad / "images.npy").read_bytes()
    (bad / "images.npy").write_bytes(raw[: len(raw) // 2])  # truncated copy
    err = one_line_error(
        capsys, ["subset", "--dataset", str(bad), "--subset", "frac1", "--seed", "0", "--out", str(tmp_path / "s.npy")]
    )
    assert "images.npy" in err
    (bad / "images.npy").write_bytes(b"garbage" * 100)
    assert "images.npy" in one_line_error(
        capsys, ["subset", "--dataset", str(bad), "--subset", "frac1", "--seed", "0", "--out", str(tmp_path / "s.npy")]
    )
    assert not (tmp_path / "s.npy").exists()


@pytest.mark.parametrize(
    "extra,needle",
    [
        ("pretrain={'epocs': 3}", "'epocs' was unexpected"),
        ("study={'methods': ['simclr'], 'domains': ['nope']}", "no such dataset folder"),
        ("launch={'cluster': 'slurm'}", "'cluster' was unexpected); launch.cluster is now launch.executor"),
        (
            "study={'methods': ['simclr'], 'domains': ['natural'], 'seeds': [0, 0]}",
            "study.seeds: [0, 0] has non-unique elements",
        ),
        (
            "study={'methods': ['simclr', 'mocco'], 'domains': ['natural']}",
            "unknown method 'mocco' in study.methods (did you mean moco?); the methods are barlow, byol, deepcluster, "
            "densecl, moco, pcl, simclr, swav",
        ),
        (
            "quantity={'methods': ['simclr', 'xyz']}",
            "unknown method 'xyz' in quantity.methods; the methods are barlow, byol,",
        ),
    ],
)
def test_snakemake_rejects_bad_config_before_any_job(tmp_path, tiny_data, extra, needle):
    wf = copy_workflow(tmp_path)
    p = run(["snakemake", "-n", "--config", f"data={{'root': '{tiny_data}'}}", extra], cwd=wf, check=False)
    assert p.returncode != 0
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and needle in lines[0], p.stderr
    assert "Traceback" not in p.stderr
    assert not (wf / "results").exists()


def test_snakemake_refuses_a_dataset_with_a_one_class_level(tmp_path, tiny_data):
    """A packed domain whose coarse level has one class: refused before any job, naming it and the fix."""
    import numpy as np
    import pandas as pd
    from sslstudy.data.packed import write_dataset

    n = 12
    labels = pd.DataFrame(dict(index=range(n), split=["train", "val", "test"] * 4, domain="solo"))
    labels["kingdom"], labels["class"] = 0, [0, 1] * 6
    meta = dict(
        name="solo",
        levels=["kingdom", "class"],
        classes=dict(kingdom=["animal"], **{"class": ["cat", "dog"]}),
        parents=dict(**{"class": [0, 0]}),
        image_size=8,
        n_images=n,
        source={},
    )
    write_dataset(tmp_path / "solo", np.zeros((n, 8, 8, 3), np.uint8), labels, meta)
    (tmp_path / "wf").mkdir()
    wf = copy_workflow(tmp_path / "wf")
    data = f"data={{'root': '{tiny_data}', 'datasets': {{'solo': '{tmp_path / 'solo'}'}}}}"
    study = "study={'methods': ['simclr'], 'domains': ['natural', 'solo']}"
    p = run(
        ["snakemake", "-n", "--config", data, study, "domain={'evaluate_on': ['natural', 'aerial']}"],
        cwd=wf,
        check=False,
    )
    assert p.returncode != 0 and "Traceback" not in p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert lines == [
        f"error: {tmp_path / 'solo/meta.json'}: dataset 'solo' (study.domains): level 'kingdom' has one class "
        "('animal'); a level with one class is not a level: kNN, linear, NMI and ARI all score 1.0 on it, for any "
        "weights; re-ingest it without that level (sslstudy ingest ... --name solo --levels class)"
    ], p.stderr
    assert not (wf / "results").exists()


def test_a_yaml_syntax_error_names_the_file_line_and_column(tmp_path, capsys):
    """Snakemake's own message for it ("Config file is not valid JSON or YAML") names neither."""
    wf = copy_workflow(tmp_path)
    params = wf / "params/study.yaml"
    params.write_text("study: {methods: [simclr], domains: [natural]}\npretrain:\n  epochs: [3\n  batch_size: 32\n")
    line = (
        "params/study.yaml:4:13: not valid YAML: expected ',' or ']', but got ':' (while parsing a flow "
        "sequence at 3:11); fix the syntax there"
    )
    p = run(["snakemake", "-n"], cwd=wf, check=False)
    assert p.returncode != 0 and "Traceback" not in p.stderr
    assert [ln for ln in p.stderr.splitlines() if ln.startswith("error:")] == [f"error: {line}"], p.stderr
    assert one_line_error(capsys, ["validate", str(params)]) == f"sslstudy validate: error: {params}{line[17:]}"


def test_a_failed_job_s_one_line_reaches_the_terminal_under_quiet_rules(tmp_path, tiny_data):
    """`--quiet rules` hides the failed job's log (and --show-failed-logs with it): the workflow's
    onerror prints the job's one-line error with its log's path."""
    wf = copy_workflow(tmp_path)
    tiny = dict(
        AXES_OFF,
        study=dict(methods=["simclr"], domains=["natural"], subsets=[64], seeds=[0]),
        # a failure no preflight can see: the loss diverges while training
        pretrain=dict(epochs=2, batch_size=32, threads=1, backbone=dict(arch="cnn4", width=4), optim=dict(lr=1e30)),
        data=dict(root=str(tiny_data)),
    )
    (wf / "tiny.yaml").write_text(yaml.safe_dump(tiny))
    target = "results/runs/simclr/natural_n64_clean/seed0/final.pt"
    p = run(["snakemake", target, "--cores", "1", "--configfile", "tiny.yaml", "--quiet", "rules"], cwd=wf, check=False)
    assert p.returncode != 0
    assert (
        "logs/pretrain/simclr/natural_n64_clean/seed0.log: sslstudy pretrain: error: "
        "results/runs/simclr/natural_n64_clean/seed0: the backbone's embeddings of fixed training images are not "
        "finite after epoch 1; lower pretrain.optim.lr (or methods.simclr.optim.lr where set; now 1e+30) in params "
        "and rerun: it starts over"
    ) in p.stderr.splitlines(), p.stderr


def test_failed_job_lines_reads_only_this_run_s_logs(tmp_path):
    import os
    import time

    from sslstudy.errors import failed_job_lines

    logs = tmp_path / "logs"
    (logs / "a").mkdir(parents=True)
    (logs / "a/old.log").write_text("sslstudy subset: error: from an earlier run\n")
    os.utime(logs / "a/old.log", (0, 0))
    (logs / "a/ok.log").write_text("2026 INFO done\n")
    (logs / "a/mine.log").write_text("x\nsslstudy evaluate: error: first\nsslstudy evaluate: error: last\ncpu line\n")
    (logs / "crash.log").write_text('Traceback (most recent call last):\n  File "x"\nValueError: boom\n')
    assert failed_job_lines(logs, time.time() - 60) == [
        f"{logs / 'a/mine.log'}: sslstudy evaluate: error: last",
        f"{logs / 'crash.log'}: ValueError: boom",
    ]


def test_command_line_strings_get_schema_types():
    from sslstudy.config import validate

    c = validate(
        {
            "study": {"methods": ["simclr"], "domains": ["natural"], "subsets": ["0.5", "1000"]},
            "pretrain": {"epochs": "7", "optim": {"lr": "0.5"}, "views": {"scale": ["0.1", "1"]}},
            "launch": {
                "slurm": {"partition": "null", "account": "gpu"},
                "pretrain": {"tasks_per_node": "null", "mem_gb": "0.5"},
            },
        }
    )
    assert c["pretrain"]["epochs"] == 7 and c["pretrain"]["optim"]["lr"] == 0.5
    assert c["study"]["subsets"] == [0.5, 1000] and c["pretrain"]["views"]["scale"] == [0.1, 1]
    assert c["launch"]["slurm"] == dict(partition=None, account="gpu", qos=None, signal_delay_s=90, extra={})
    assert c["launch"]["pretrain"] == dict(
        nodes=1, gpus=1, tasks_per_node=None, cpus=8, mem_gb=0.5, time_min=120, gpu_mem_gb=80, tflops_per_gpu=100
    )
    with pytest.raises(Exception, match="pretrain.epochs"):
        validate({"study": {"methods": ["simclr"], "domains": ["natural"]}, "pretrain": {"epochs": "seven"}})
