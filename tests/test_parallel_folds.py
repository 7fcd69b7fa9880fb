"""run.parallel_folds: the folds of train_det / train_cls in their own processes, then the stage as usual."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from pipeline.config import load_config
from pipeline.errors import ConfigError
from tests.pipeline_procs import make_demo_data, overrides, run


def _cfg(**over):
    return load_config(None, {"run.device": "cpu", "det.folds": [0, 1, 2], "cls.folds": [0, 1], **over})


def test_plan_splits_the_threads_and_stays_in_process_where_it_should(tmp_path):
    from pipeline.parallel_folds import commands, plan

    assert plan(_cfg(), "train_det") == ([], 1, 0)                                   # default: one after another
    assert plan(_cfg(**{"run.parallel_folds": 2, "run.threads": 4}), "train_det") == ([0, 1, 2], 2, 2)
    assert plan(_cfg(**{"run.parallel_folds": 0, "run.threads": 2}), "train_cls") == ([0, 1], 2, 1)
    assert plan(_cfg(**{"run.parallel_folds": 2, "cls.folds": [1]}), "train_cls") == ([], 1, 0)  # one fold
    assert plan(_cfg(**{"run.parallel_folds": 2, "run.device": "0"}), "train_det") == ([], 1, 0)  # a GPU
    assert plan(_cfg(**{"run.parallel_folds": 2}), "predict") == ([], 1, 0)
    with pytest.raises(ConfigError, match="run.parallel_folds"):
        plan(_cfg(**{"run.parallel_folds": -1}), "train_det")
    # localise: its folds, or (localise.folds null) every fold of the run's folds.csv; none before it exists
    assert plan(_cfg(**{"run.parallel_folds": 2, "localise.folds": [0, 1]}), "localise") == ([0, 1], 2, 1)
    assert plan(_cfg(**{"run.parallel_folds": 2, "run.root": str(tmp_path), "run.name": "r"}), "localise") == ([], 1, 0)
    (tmp_path / "r").mkdir()
    pd.DataFrame({"image_id": list("abcdef"), "fold": [2, 0, 1, 0, 1, 2]}).to_csv(tmp_path / "r" / "folds.csv",
                                                                                  index=False)
    assert plan(_cfg(**{"run.parallel_folds": 0, "run.threads": 2, "run.root": str(tmp_path), "run.name": "r"}),
                "localise") == ([0, 1, 2], 2, 1)
    cfg = _cfg(**{"run.parallel_folds": 2, "run.threads": 2, "run.workers": 2})
    cmd = commands(cfg, "train_cls", "c.yaml", [0, 1], 2, 1)[1]
    assert cmd[-5:] == ["c.yaml", "cls.folds=[1]", "run.threads=1", "run.parallel_folds=1", "cls.workers=1"]


def test_two_detector_folds_in_their_own_processes(tmp_path):
    data = make_demo_data(tmp_path / "data")
    run_dir = tmp_path / "par"
    over = overrides(run_dir, data, **{"det.epochs": 1, "run.threads": 2, "run.parallel_folds": 2})
    for stage in ("prepare", "folds"):
        run(stage, over)
    out = run("train_det", over).stdout
    assert "folds [0, 1] in 2 processes at a time, 1 thread(s) each" in out
    for k in (0, 1):
        log = (run_dir / "parallel" / f"train_det_fold{k}.log").read_text()
        assert f"fold {k}: " in log and "done in" in log, log[-2000:]
        assert f"fold {k} process: done" in out
        assert f"fold {k}: finished earlier with the same inputs: skipped" in out  # this process: nothing left
        assert json.loads((run_dir / "det" / "yolov8n" / f"fold{k}" / "train.json").read_text())["status"] == "done"
    assert "[train_det] done in" in out and "nothing to redo" not in out.split("train_det] folds")[1]
    again = run("train_det", over).stdout  # every fold finished: the processes skip, and so does the stage
    assert "[train_det] nothing to redo: finished earlier" in again
    # the run's config.yaml is the run's own again (each fold process saved its one-fold config)
    assert "parallel_folds: 2" in (run_dir / "config.yaml").read_text()
    run("predict", over)
    oof = pd.read_csv(run_dir / "predictions" / "det_yolov8n_fold1_oof.csv")
    assert set(oof.columns) >= {"image_id", "class_id", "score"}
