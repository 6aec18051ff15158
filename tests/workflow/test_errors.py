"""Bad input: one clear line naming the file and the fix, exit code 2, nothing half-written."""

import shutil

import pytest
from sslstudy.cli import main

from tests.helpers import copy_workflow, run


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
