"""Run health during training: every epoch's record holds the embedding health of fixed training
images; a collapse is flagged, logged once, and ends the job under pretrain.on_collapse: stop."""

import math
import shutil

import numpy as np
import pytest
import torch
from sslstudy import config
from sslstudy import train as T
from sslstudy.checkpoint import list_checkpoints
from sslstudy.errors import UserError
from sslstudy.launch import launch_pretrain
from sslstudy.train import Diverged, train

from tests.helpers import method_spec, natural_subset, read_metrics, tiny_spec

NEW = ("effective_rank", "normalized_std", "dim", "trivial_loss", "collapsed", "collapse_reason")


def _logged(run, line: str) -> int:
    """How many train.log lines carry exactly this message."""
    return sum(ln.endswith(f" WARNING {line}") for ln in (run / "train.log").read_text().splitlines())


def test_healthy_run_records_its_health_and_trains_as_without_it(tiny_data, subset128, tmp_path, monkeypatch):
    spec = tiny_spec(tiny_data / "natural", subset128)
    train(spec, tmp_path / "run")
    recs = read_metrics(tmp_path / "run")
    assert [r["epoch"] for r in recs] == [1, 2, 3]
    for r in recs:
        assert r["dim"] == 32 and 1.5 < r["effective_rank"] <= 32 and r["normalized_std"] > 0.1 / math.sqrt(32)
        assert r["trivial_loss"] == pytest.approx(math.log(2 * 32 - 1)) and "collapsed" not in r
    assert "collapsed" not in (tmp_path / "run" / "train.log").read_text()

    # the same run without the measurement: the same weights, optimiser state and metrics, bit for bit
    monkeypatch.setattr(T._Trainer, "_health", lambda self, rec: T._HEALTHY)
    train(spec, tmp_path / "plain")
    a, b = (torch.load(tmp_path / d / "final.pt", weights_only=False) for d in ("run", "plain"))
    assert a["model"].keys() == b["model"].keys() and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys() and all(torch.equal(sa[i][k], sb[i][k]) for i in sa for k in sa[i])
    plain = read_metrics(tmp_path / "plain")
    assert not any(k in r for r in plain for k in NEW)
    drop = NEW + ("seconds", "views_per_s")
    assert [{k: v for k, v in r.items() if k not in drop} for r in recs] == [
        {k: v for k, v in r.items() if k not in drop} for r in plain
    ]


def test_constant_embeddings_are_flagged_at_once_and_logged_once(tiny_data, tmp_path):
    blank = tmp_path / "natural"  # every image the same: the backbone embeds them all alike
    shutil.copytree(tiny_data / "natural", blank)
    images = np.load(blank / "images.npy")
    np.save(blank / "images.npy", np.ascontiguousarray(np.broadcast_to(images[:1], images.shape)))
    spec = tiny_spec(blank, natural_subset(tmp_path, tmp_path / "s.npy", 128), epochs=2)
    train(spec, tmp_path / "run")
    recs = read_metrics(tmp_path / "run")
    line = f"{spec['run']}: collapsed at epoch 1 (effective rank 1.0 of 32; normalised std 0 vs 1/√d = 0.177)"
    assert [(r["collapsed"], r["collapse_reason"]) for r in recs] == [(True, line)] * 2
    assert recs[0]["normalized_std"] == 0.0 and recs[0]["effective_rank"] == pytest.approx(1.0, abs=1e-3)
    assert _logged(tmp_path / "run", line) == 1  # once, not every epoch
    assert (tmp_path / "run" / "final.pt").is_file()  # warn (the default) trains on


def _launch(executor: str) -> dict:
    return config.validate(dict(study=dict(methods=["swav"], domains=["natural"]), launch=dict(executor=executor)))[
        "launch"
    ]


def test_stop_ends_the_job_with_the_reason_and_keeps_the_checkpoints(tiny_data, subset128, tmp_path, capsys):
    """SwAV with uniform codes (huge epsilon) and flat scores (huge temperature): the loss sits at ln K
    from the first epoch, so collapse_check flags it once `patience` (3) epochs say so."""
    spec = method_spec("swav", tiny_data / "natural", subset128, epochs=4)
    spec["method"]["params"].update(epsilon=1e3, temperature=1e2)
    run = tmp_path / "run"
    line = f"{spec['run']}: collapsed at epoch 1 (loss 3.871 = ln 48)"
    with pytest.raises(UserError) as e:  # a local job: its failure as the launcher reports it
        launch_pretrain(dict(spec, on_collapse="stop"), run, _launch("local"))
    assert f" failed: sslstudy.train.Collapsed: {line}; log: " in str(e.value).splitlines()[0]
    assert [p.name for p in list_checkpoints(run)] == [f"ep{i:03d}.pt" for i in range(4)]
    assert (
        torch.load(run / "checkpoints" / "last.pt", weights_only=False)["epoch"] == 3
        and not (run / "final.pt").exists()
    )
    recs = read_metrics(run)
    assert [r.get("collapsed", False) for r in recs] == [False, False, True] and recs[-1]["collapse_reason"] == line
    assert all(r["trivial_loss"] == pytest.approx(math.log(48)) for r in recs)
    assert _logged(run, line) == 1

    # warn: the run resumes from its checkpoints (on_collapse is not part of what must match), finishes,
    # and the launcher prints the reason once
    capsys.readouterr()
    launch_pretrain(dict(spec, on_collapse="warn"), run, _launch("debug"))
    assert capsys.readouterr().out.splitlines().count(line) == 1
    assert "resumed from last.pt (epoch 3 of 4, step 0 of 4)" in (run / "train.log").read_text()
    assert [r.get("collapsed", False) for r in read_metrics(run)] == [False, False, True, True]
    assert _logged(run, line) == 1 and (run / "final.pt").is_file()


def test_nonfinite_embeddings_diverge_before_the_epoch_is_saved(tiny_data, subset128, tmp_path, monkeypatch):
    monkeypatch.setattr(T, "embed", lambda *a, **k: torch.full((8, 32), float("nan")))
    with pytest.raises(Diverged, match="embeddings of fixed training images are not finite after epoch 1"):
        train(tiny_spec(tiny_data / "natural", subset128, epochs=1), tmp_path / "run")
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["ep000.pt"]
    assert read_metrics(tmp_path / "run") == []
