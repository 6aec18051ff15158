"""data.dvc pins the built-in data: regenerating it from params gives the same DVC hash."""
import yaml

from conftest import ROOT, run
from sslstudy import config
from sslstudy.data.synth import generate


def dvc_md5(dvc_file):
    return yaml.safe_load(dvc_file.read_text())["outs"][0]["md5"]


def test_regenerated_data_matches_data_dvc(tmp_path):
    s = config.load(ROOT / "params/study.yaml")["data"]["synth"]
    generate(tmp_path / "data" / "synth", domains=s["domains"], n_images=s["n_images"], image_size=s["image_size"], seed=s["seed"])
    run(["dvc", "init", "--no-scm", "-q"], cwd=tmp_path)
    run(["dvc", "add", "-q", "data"], cwd=tmp_path)
    assert dvc_md5(tmp_path / "data.dvc") == dvc_md5(ROOT / "data.dvc")


def test_dvc_yaml_stage_is_valid():
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert stages["study"]["cmd"].startswith("snakemake ")
    p = run(["dvc", "stage", "list"], cwd=ROOT)
    assert "study" in p.stdout


def test_dvc_lock_is_not_git_ignored():
    # DVC refuses to run (`'dvc.lock' is git-ignored`) when it is: seen once, keep it out of .gitignore
    p = run(["git", "check-ignore", "-q", "dvc.lock"], cwd=ROOT, check=False)
    assert p.returncode == 1
