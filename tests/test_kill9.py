"""kill -9 in the middle of real ``python -m pipeline`` processes, then the same command again: the outputs
equal an uninterrupted run's, and nothing half-written is ever taken for finished.

Fast (default suite): the two mechanisms every stage relies on, in real processes killed with SIGKILL:
atomic writes (a killed writer never leaves part of a file under its final name) and the run lock (a
killed holder never blocks the next job). Slow: prepare, train_cls, train_det and predict on a tiny demo
run, each compared with an uninterrupted run of the same command in another run directory.

What "equal" means where (CPU, ``run.threads=1``, one worker): the conversion and the folds are exact by
construction (byte-identical PNGs, identical tables). The classifier has no resume: a killed fold is
trained again from the start, and a fresh process with the same seed and one thread reproduces it
bit for bit, so its probabilities are compared exactly. The detector resumes from ``last.pt``; ultralytics
does not restore its data loader's random state, so resumed weights differ from an uninterrupted run's:
there the test checks the record, the checkpoint (loadable, final, every epoch in results.csv) and
complete predictions (every image, the same columns), and exact rows where the fold restarted.
"""
from __future__ import annotations

import json
import random
import shutil
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.pipeline_procs import (assert_no_false_done, command, kill9, make_demo_data, overrides,
                                  parse_every_table, read_sorted, record, run, start, status, visible_files,
                                  wait_until)

CLS, DET = "densenet121", "yolov8n"


# --- fast: the mechanisms, in real processes ------------------------------------------------------

_HOLD_LOCK = """
import sys, time
from pathlib import Path
from pipeline.io import locked
with locked(Path(sys.argv[1])):
    Path(sys.argv[2]).write_text("held")
    time.sleep(120)
"""

_WRITE_FOREVER = """
import sys
import pandas as pd
from pipeline.io import write_csv_atomic
version = 0
while True:
    write_csv_atomic(pd.DataFrame({"version": version, "row": range(20000)}), sys.argv[1])
    version += 1
"""


def test_a_killed_lock_holder_never_blocks_the_next_job(tmp_path):
    from pipeline.errors import PipelineError
    from pipeline.io import lock_path, locked

    table, held = tmp_path / "predictions" / "cls_m_oof.csv", tmp_path / "held"
    proc = start([sys.executable, "-c", _HOLD_LOCK, str(table), str(held)], tmp_path / "holder.log")
    wait_until(held.exists, proc, timeout=60, what="the holder to take the lock")
    with pytest.raises(PipelineError, match=str(lock_path(table))):  # held: a clear error naming the lock file
        with locked(table, timeout=0.3):
            pass
    kill9(proc)
    t0 = time.monotonic()
    with locked(table, timeout=10):  # the OS released the dead holder's lock at once
        waited = time.monotonic() - t0
    assert waited < 2.0
    assert lock_path(table).exists() and lock_path(table).name.startswith(".")  # stays, hidden, means nothing


def test_a_killed_writer_never_leaves_part_of_a_table(tmp_path):
    """Three kills at random moments of a process that rewrites a 20,000-row CSV as fast as it can: the
    file under its final name is always one whole version; what a kill leaves is a hidden temporary."""
    target = tmp_path / "table.csv"
    rng = random.Random(0)
    for attempt in range(3):
        proc = start([sys.executable, "-c", _WRITE_FOREVER, str(target)], tmp_path / f"writer{attempt}.log")
        wait_until(target.exists, proc, timeout=60, what="the first version")
        time.sleep(rng.uniform(0.05, 0.4))
        kill9(proc)
        table = pd.read_csv(target)
        assert len(table) == 20000 and table["row"].tolist() == list(range(20000))
        assert table["version"].nunique() == 1
        target.unlink()  # the next writer starts from nothing: its first version is what must be whole
    assert [p.name for p in visible_files(tmp_path, "*.csv")] == []  # leftovers are hidden temporaries only
    for p in tmp_path.glob(".table.csv.*"):
        assert ".tmp" in p.name


# --- slow: the stages --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return make_demo_data(tmp_path_factory.mktemp("kill9") / "data")


@pytest.fixture(scope="module")
def prepared(demo, tmp_path_factory) -> Path:
    """A run directory after prepare and folds (copied by each test: prepare writes no absolute run paths)."""
    run_dir = tmp_path_factory.mktemp("kill9_base") / "base"
    for stage in ("prepare", "folds"):
        run(stage, overrides(run_dir, demo))
    return run_dir


def _copy(prepared: Path, dst: Path) -> Path:
    shutil.copytree(prepared, dst, ignore=shutil.ignore_patterns(".cache"))
    return dst


def _pngs(run_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in visible_files(run_dir / "images", "*.png")}


@pytest.mark.slow
def test_sigkill_mid_prepare_then_rerun_gives_the_same_images_and_folds(demo, tmp_path):
    ref, killed = tmp_path / "ref", tmp_path / "killed"
    for stage in ("prepare", "folds"):
        run(stage, overrides(ref, demo))
    reference = _pngs(ref)
    assert len(reference) == 16

    proc = start(command("prepare", overrides(killed, demo)), tmp_path / "killed.log")
    wait_until(lambda: len(_pngs(killed)) >= 1, proc, timeout=120, what="the first PNG")
    kill9(proc)
    partial = _pngs(killed)
    assert 1 <= len(partial) < len(reference), "the kill must land in the middle of the conversion"
    assert all(reference[name] == data for name, data in partial.items())  # a PNG there is a whole PNG
    assert not (killed / "meta.csv").exists()  # the table that says what is converted comes at the end

    again = run("prepare", overrides(killed, demo))
    run("folds", overrides(killed, demo))
    assert _pngs(killed) == reference
    assert not [p for p in (killed / "images").rglob(".*") if ".tmp" in p.name]  # the kill's temporaries went
    for table in ("meta.csv", "boxes.csv", "detection.csv", "folds.csv", "images.csv", "failures.csv"):
        assert (killed / table).read_bytes() == (ref / table).read_bytes(), table
    assert (killed / "dataset.yaml").read_bytes() == (ref / "dataset.yaml").read_bytes()
    labels = lambda d: {p.name: p.read_bytes() for p in (d / "labels" / "train").glob("*.txt")}
    assert labels(killed) == labels(ref)
    print(f"rerun after the kill: {[line for line in again.stdout.splitlines() if 'converting' in line]}")


@pytest.mark.slow
def test_sigkill_mid_train_cls_then_rerun_equals_an_uninterrupted_run(prepared, demo, tmp_path):
    import torch

    ref, killed = _copy(prepared, tmp_path / "ref"), _copy(prepared, tmp_path / "killed")
    run("train_cls", overrides(ref, demo))

    proc = start(command("train_cls", overrides(killed, demo)), tmp_path / "killed.log")
    log0 = killed / "cls" / CLS / "fold0" / "log.csv"
    wait_until(log0.exists, proc, what="fold 0's first epoch")
    kill9(proc)
    assert len(pd.read_csv(log0)) < 3, "the kill must land before fold 0's last epoch"
    assert status(killed / "cls" / CLS / "fold0" / "train.json") == "started"  # never done before it is
    assert not (killed / "predictions" / f"cls_{CLS}_oof.csv").exists()
    assert_no_false_done(killed)
    parse_every_table(killed)

    again = run("train_cls", overrides(killed, demo))
    assert "fold 0: train" in again.stdout and "(interrupted earlier)" in again.stdout  # restarted from scratch
    for split in ("oof", "test"):
        name = f"predictions/cls_{CLS}_{split}.csv"
        assert (killed / name).read_bytes() == (ref / name).read_bytes(), name
    for k in (0, 1):
        for rec in ("train.json", "predict.json"):
            assert status(killed / "cls" / CLS / f"fold{k}" / rec) == "done"
        a = torch.load(killed / "cls" / CLS / f"fold{k}" / "best.pt", weights_only=True)
        b = torch.load(ref / "cls" / CLS / f"fold{k}" / "best.pt", weights_only=True)
        assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
    metrics = lambda d: record(d / "cls" / CLS / "metrics.json")
    assert metrics(killed)["folds"] == [0, 1] and metrics(killed)["oof"] == metrics(ref)["oof"]
    assert_no_false_done(killed)
    parse_every_table(killed)


def _det_dir(run_dir: Path) -> Path:
    return run_dir / "det" / DET / "fold0"


def _check_final_checkpoint(run_dir: Path, epochs: int) -> None:
    from pipeline.detector import import_ultralytics

    YOLO = import_ultralytics(1)
    model = YOLO(str(_det_dir(run_dir) / "weights" / "last.pt"))  # loadable
    assert model.ckpt["epoch"] == -1  # ultralytics' end-of-training form: training finished
    assert len(pd.read_csv(_det_dir(run_dir) / "results.csv")) == epochs  # every epoch ran, none twice
    assert status(_det_dir(run_dir) / "train.json") == "done"


def _predictions(run_dir: Path, split: str) -> pd.DataFrame:
    return read_sorted(run_dir / "predictions" / f"det_{DET}_fold0_{split}.csv",
                       ["image_id", "tta", "class_id", "score", "x_min", "y_min"])


@pytest.mark.slow
def test_sigkill_mid_train_det_and_mid_predict_then_rerun(prepared, demo, tmp_path):
    ref, killed = _copy(prepared, tmp_path / "ref"), _copy(prepared, tmp_path / "killed")
    over = lambda d: overrides(d, demo, **{"det.folds": "[0]"})
    run("train_det", over(ref))
    run("predict", over(ref))

    # kill -9 after the first of 4 epochs
    last = _det_dir(killed) / "weights" / "last.pt"
    proc = start(command("train_det", over(killed)), tmp_path / "train.log")
    wait_until(last.exists, proc, what="last.pt after epoch 1")
    kill9(proc)
    assert status(_det_dir(killed) / "train.json") == "started"
    assert_no_false_done(killed)
    # the weights of a killed training are never predicted with
    refused = run("predict", over(killed), check=False)
    assert refused.returncode == 2 and "did not finish" in refused.stderr
    assert not list(killed.glob("predictions/det_*"))

    again = run("train_det", over(killed))
    resumed = "resuming" in again.stdout
    assert resumed or "cannot be read" in again.stdout  # cut short mid-write: trained from the start
    _check_final_checkpoint(killed, epochs=4)

    # kill -9 in the middle of predict (record started, predictions not written yet)
    proc = start(command("predict", over(killed)), tmp_path / "predict.log")
    wait_until(lambda: status(_det_dir(killed) / "predict.json") == "started", proc, what="predict to start")
    kill9(proc)
    assert status(_det_dir(killed) / "predict.json") == "started"  # its outputs are not taken for finished
    assert_no_false_done(killed)
    run("predict", over(killed))
    assert status(_det_dir(killed) / "predict.json") == "done"
    for split in ("oof", "test"):
        got, want = _predictions(killed, split), _predictions(ref, split)
        assert list(got.columns) == list(want.columns) and len(got)
        assert set(got["image_id"]) == set(want["image_id"])  # every image that has boxes in the reference
        if not resumed:  # a restart from scratch reproduces the uninterrupted run
            pd.testing.assert_frame_equal(got, want)
    assert pd.read_csv(killed / "predictions" / f"det_{DET}_fold0_failures.csv").empty
    parse_every_table(killed)
    print(f"train_det after the kill: {'resumed from last.pt' if resumed else 'restarted (last.pt cut short)'}")


@pytest.mark.slow
def test_train_det_after_a_kill_at_the_end_of_training(prepared, demo, tmp_path):
    """The two states a kill can leave after ultralytics' last epoch, before the record says done: a final
    last.pt (the record is finished without training again) and a last.pt cut short while ultralytics
    rewrites it in place at the end (trained again from the start, reproducing the uninterrupted run)."""
    run_dir = _copy(prepared, tmp_path / "run")
    over = overrides(run_dir, demo, **{"det.folds": "[0]", "det.epochs": 2})
    run("train_det", over)
    rec_path, last = _det_dir(run_dir) / "train.json", _det_dir(run_dir) / "weights" / "last.pt"
    final = last.read_bytes()

    def killed_before_the_record():
        rec = record(rec_path)
        rec["status"] = "started"  # what train_fold wrote before training; the kill came before finish()
        rec_path.write_text(json.dumps(rec))

    killed_before_the_record()
    again = run("train_det", over)
    assert "already holds the last epoch" in again.stdout and "completed" in again.stdout
    assert last.read_bytes() == final  # nothing trained
    _check_final_checkpoint(run_dir, epochs=2)

    killed_before_the_record()
    last.write_bytes(final[: len(final) // 2])  # cut short mid-write
    again = run("train_det", over)
    assert "cannot be read" in again.stdout and "trained" in again.stdout
    _check_final_checkpoint(run_dir, epochs=2)
    # from scratch, in a fresh process, one thread: the same weights as the first training
    import torch

    from pipeline.detector import import_ultralytics

    YOLO = import_ultralytics(1)
    first = tmp_path / "first.pt"
    first.write_bytes(final)
    a, b = YOLO(str(first)).model.state_dict(), YOLO(str(last)).model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
