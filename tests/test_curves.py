"""TensorBoard curves: the event file beside metrics.jsonl, read back with TensorBoard's own reader."""

import importlib.util
import json
import os
import urllib.parse
import urllib.request

import pytest
from sslstudy import curves, names
from sslstudy.train import Stopped, train
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

from tests.helpers import ROOT, read_metrics, tiny_spec


def curves_of(run_dir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of the run's event files as TensorBoard loads them: [(step, value), ...]."""
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def assert_curves_match_metrics(run_dir) -> None:
    """One point per epoch and tag, equal (as float32) to the epoch's metrics.jsonl value."""
    recs, got = read_metrics(run_dir), curves_of(run_dir)
    assert recs and [p.name for p in run_dir.glob("*tfevents*")] == [names.CURVES]
    for key in ("loss", "lr", "views_per_s", "seconds", "effective_rank", "normalized_std", "trivial_loss"):
        tag = f"{curves.GROUPS.get(key, 'train')}/{key}"
        assert got[tag] == [(r["epoch"], pytest.approx(r[key], rel=1e-6)) for r in recs], tag
    assert got["health/collapsed"] == [(r["epoch"], float(r.get("collapsed", False))) for r in recs]
    assert set(got) == set(curves.scalars(recs[-1]))


def test_masked_crc32c_is_tensorflows():
    for data in (b"", b"a", bytes(range(256)), os.urandom(1000)):
        assert curves.masked_crc32c(data) == masked_crc32c(data)


def test_scalars_of_a_record():
    rec = dict(epoch=3, step=12, loss=2.5, loss_dense=1.0, lr=0.1, seconds=4.0, views_per_s=64.0, dim=8)
    rec.update(effective_rank=3.5, normalized_std=0.2, collapsed=True, collapse_reason="rank 1")
    assert curves.scalars(rec) == {
        "train/loss": 2.5,
        "train/loss_dense": 1.0,
        "train/lr": 0.1,
        "speed/seconds": 4.0,
        "speed/views_per_s": 64.0,
        "health/effective_rank": 3.5,
        "health/normalized_std": 0.2,
        "health/collapsed": 1.0,
    }
    assert curves.scalars(dict(epoch=1, loss=1.0))["health/collapsed"] == 0.0


def test_training_writes_the_metrics_as_curves(tiny_data, subset128, tmp_path):
    spec = tiny_spec(tiny_data / "natural", subset128)
    full = tmp_path / "full"
    train(spec, full)
    assert [r["epoch"] for r in read_metrics(full)] == [1, 2, 3]
    assert_curves_match_metrics(full)

    # stopped mid-epoch 2 after its record was written but not last.pt (a kill between the two
    # writes): the resumed run does epoch 2 again, and its new values replace the old ones
    part = tmp_path / "part"
    with pytest.raises(Stopped):
        train(spec, part, stop_after=6)
    curves.log_epoch(part, dict(read_metrics(part)[0], epoch=2, loss=99.0))
    train(spec, part)
    assert_curves_match_metrics(part)
    assert 99.0 not in [v for _, v in curves_of(part)["train/loss"]]

    # a changed config starts over: the curves hold only the new run's two epochs
    train(dict(spec, epochs=2), part)
    assert [r["epoch"] for r in read_metrics(part)] == [1, 2]
    assert_curves_match_metrics(part)


def test_tensorboard_serves_each_run_by_its_id_with_one_point_per_epoch(tmp_path):
    """TensorBoard's own server (benchmarks/tensorboard_screenshot.py starts it) on event files written as a
    killed and resumed run writes them: epoch 2 twice, the second value kept."""
    spec = importlib.util.spec_from_file_location("shot", ROOT / "benchmarks/tensorboard_screenshot.py")
    shot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(shot)
    run = tmp_path / "runs/simclr/natural_frac1_clean/seed0"
    run.mkdir(parents=True)
    for epoch, loss in ((1, 5.0), (2, 99.0), (2, 4.5), (3, 4.0)):
        curves.log_epoch(run, dict(epoch=epoch, loss=loss, lr=0.1))
    with shot.serve(tmp_path / "runs", timeout=120) as url:
        query = urllib.parse.urlencode(dict(run="simclr/natural_frac1_clean/seed0", tag="train/loss"))
        with urllib.request.urlopen(f"{url}/data/plugin/scalars/scalars?{query}", timeout=30) as r:
            points = json.load(r)
    assert [(step, value) for _, step, value in points] == [(1, 5.0), (2, 4.5), (3, 4.0)]
