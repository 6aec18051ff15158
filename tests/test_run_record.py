"""A run's training record (metrics.jsonl) after the faults a rerun meets: the resumed run's records
equal an uninterrupted run's, whatever happened to the file in between (Snakemake deletes a job's logs,
metrics.jsonl among them, before the job starts; a kill leaves it ahead of or behind the checkpoint)."""

import pytest
import torch
from sslstudy import train as T
from sslstudy.train import Stopped, train

from tests.helpers import read_metrics, tiny_spec

WALL_CLOCK = ("seconds", "views_per_s")  # differ between any two runs
STOP_AFTER = 9  # steps: epochs 1 and 2 of 3 done (4 steps each) and one step of epoch 3


def records(run_dir) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in WALL_CLOCK} for r in read_metrics(run_dir)]


@pytest.fixture(scope="module")
def uninterrupted(tiny_data, subset128, tmp_path_factory):
    spec = tiny_spec(tiny_data / "natural", subset128)
    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    train(spec, run_dir)
    return spec, records(run_dir)


def _behind(path):  # the file lost its last line (a full disk, a copy cut short): epoch 2 is in last.pt only
    path.write_text(path.read_text().splitlines(keepends=True)[0])


def _ahead(path):  # a line of an epoch last.pt does not hold (killed between the two writes) and a line cut short
    with path.open("a") as f:
        f.write('{"epoch": 3, "loss": 1.0}\n{"epo')


FAULTS = dict(
    deleted=lambda path: path.unlink(),  # what Snakemake does to a job's logs before the job starts
    emptied=lambda path: path.write_text(""),
    behind=_behind,
    ahead=_ahead,
)


@pytest.mark.parametrize("fault", FAULTS)
def test_a_resumed_run_has_the_records_of_an_uninterrupted_one(uninterrupted, tmp_path, fault):
    spec, full = uninterrupted
    run_dir = tmp_path / "run"
    with pytest.raises(Stopped):
        train(spec, run_dir, stop_after=STOP_AFTER)
    assert [r["epoch"] for r in records(run_dir)] == [1, 2]
    FAULTS[fault](run_dir / "metrics.jsonl")
    train(spec, run_dir)
    assert "resumed from last.pt (epoch 2 of 3, step 1 of 4)" in (run_dir / "train.log").read_text()
    assert records(run_dir) == full
    # the checkpoint holds the record it resumes from
    state = torch.load(run_dir / "checkpoints/last.pt", weights_only=False)
    assert [{k: v for k, v in r.items() if k not in WALL_CLOCK} for r in state["records"]] == full


def test_a_rerun_after_the_last_epoch_keeps_the_whole_record(uninterrupted, tmp_path):
    """A finished run's job run again (Snakemake's --forcerun, or its final.pt deleted): the trainer
    resumes at the end and only writes final.pt; the record Snakemake deleted comes back whole."""
    spec, full = uninterrupted
    run_dir = tmp_path / "run"
    train(spec, run_dir)
    (run_dir / "metrics.jsonl").unlink()
    (run_dir / "final.pt").unlink()
    train(spec, run_dir)
    assert records(run_dir) == full


def test_a_record_deleted_while_the_run_trains_comes_back_whole(uninterrupted, tmp_path, monkeypatch):
    """E.g. a Snakemake restarted while its SLURM job trains on: it deletes the job's logs and re-attaches."""
    spec, full = uninterrupted
    log_epoch = T._Trainer._log_epoch

    def deleted_before_epoch_3(self, rec, seconds):
        if rec["epoch"] == 3:
            (self.run_dir / "metrics.jsonl").unlink()
        log_epoch(self, rec, seconds)

    monkeypatch.setattr(T._Trainer, "_log_epoch", deleted_before_epoch_3)
    train(spec, tmp_path / "run")
    assert records(tmp_path / "run") == full


def test_a_restart_from_scratch_starts_the_record_over(uninterrupted, tmp_path):
    spec, full = uninterrupted
    run_dir = tmp_path / "run"
    with pytest.raises(Stopped):
        train(dict(spec, seed=1), run_dir, stop_after=STOP_AFTER)  # another config's checkpoints and record
    train(spec, run_dir)
    assert "made with another config; starting over" in (run_dir / "train.log").read_text()
    assert records(run_dir) == full
