"""The workflow runs `sslstudy preflight` before its first job (Snakemake's onstart): a grid that
fails it submits nothing, one that passes runs, and a rerun with nothing to do runs no preflight
and reruns no job."""

import yaml

from tests.helpers import AXES_OFF, copy_workflow, run

SUBSET = "results/subsets/natural/seed0/n64.npy"
RUN = "results/runs/simclr/natural_n64_clean/seed0/final.pt"


def grid(tiny_data, **change) -> dict:
    """One SimCLR run on tiny_data's natural domain, every axis off."""
    g = dict(
        data=dict(root=str(tiny_data)),
        study=dict(methods=["simclr"], domains=["natural"], subsets=[64], seeds=[0]),
        pretrain=dict(epochs=2, batch_size=32, backbone=dict(arch="cnn4", width=4), optim=dict(warmup_epochs=1)),
        **AXES_OFF,
    )
    g.update(change)
    return g


def snakemake(wf, params: dict, *targets, check=True):
    (wf / "grid.yaml").write_text(yaml.safe_dump(params))
    return run(["snakemake", *targets, "--cores", "2", "--configfile", "grid.yaml"], cwd=wf, check=check)


def test_a_failing_preflight_submits_nothing(tmp_path, tiny_data):
    wf = copy_workflow(tmp_path)
    bad = grid(tiny_data, pretrain=dict(grid(tiny_data)["pretrain"], batch_size=96))  # > the 64-image subset
    p = snakemake(wf, bad, SUBSET, check=False)
    out = p.stdout + p.stderr
    assert p.returncode != 0
    assert (
        "pretrain simclr (natural n64 clean): 64 training images, fewer than one global batch of 96; "
        "lower pretrain.batch_size or pick a larger subset"
    ) in out
    assert "sslstudy preflight failed: nothing was submitted" in out
    assert not (wf / SUBSET).exists() and not (wf / "results/subsets").exists()


def test_a_passing_preflight_runs_first_and_a_no_change_rerun_is_a_no_op(tmp_path, tiny_data):
    wf = copy_workflow(tmp_path)
    first = snakemake(wf, grid(tiny_data), RUN)
    out = first.stdout + first.stderr
    assert out.index("sslstudy preflight: checking") < out.index("rule subset") < out.index("rule pretrain")
    assert "GPU-hours in total" in out and (wf / RUN).is_file() and (wf / "results/preflight.csv").is_file()
    again = snakemake(wf, grid(tiny_data), RUN)
    assert "Nothing to be done" in again.stdout + again.stderr
    assert "sslstudy preflight" not in again.stdout + again.stderr
    # a preflight-only setting reruns no job: the jobs' --launch leaves it out
    launch = dict(pretrain=dict(gpu_mem_gb=40), evaluation=dict(tflops_per_gpu=50))
    dry = run(["snakemake", RUN, "-n", "--configfile", "grid.yaml", "--config", f"launch={launch}"], cwd=wf)
    assert "Nothing to be done" in dry.stdout + dry.stderr
    changed = run(
        ["snakemake", RUN, "-n", "--configfile", "grid.yaml", "--config", "launch={'pretrain': {'cpus': 4}}"], cwd=wf
    )
    assert "Nothing to be done" not in changed.stdout + changed.stderr  # what the jobs read still reruns them
