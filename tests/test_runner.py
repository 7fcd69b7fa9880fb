"""The stage runner: config saved, finished stages skipped, re-run on a config or data change or --force."""
from __future__ import annotations

import os

import pytest
import yaml

from pipeline.__main__ import main
from pipeline.config import load_config
from pipeline.paths import RunPaths
from pipeline.runner import run_stage
from tests.test_folds import _images


@pytest.fixture
def run_cfg(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "train.csv").write_text("image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max\n")
    cfg = load_config(None, {"run.root": str(tmp_path / "runs"), "run.name": "r", "data.root": str(data),
                             "folds.n_splits": 3})
    paths = RunPaths.from_config(cfg)
    paths.run_dir.mkdir(parents=True)
    _images().to_csv(paths.images_csv, index=False)
    return cfg, paths


def test_finished_stage_is_skipped_until_config_or_data_change(run_cfg, capsys):
    cfg, paths = run_cfg
    first = run_stage("folds", cfg)
    assert not first["skipped"] and paths.folds_csv.is_file() and paths.done_marker("folds").is_file()
    assert yaml.safe_load(paths.config.read_text())["folds"]["n_splits"] == 3
    assert run_stage("folds", cfg)["skipped"]
    assert not run_stage("folds", cfg, force=True)["skipped"]
    # a key the stage depends on changes -> it runs again
    cfg2 = load_config(None, {**{k: v for k, v in _flat(cfg).items()}, "folds.n_splits": 4})
    assert not run_stage("folds", cfg2)["skipped"]
    # a key it does not depend on -> still skipped
    cfg3 = load_config(None, {**_flat(cfg2), "det.epochs": 1})
    assert run_stage("folds", cfg3)["skipped"]
    # the dataset's annotation file changes -> every stage is stale
    train_csv = os.path.join(cfg.data.root, "train.csv")
    with open(train_csv, "a") as fh:
        fh.write("x,No finding,14,R1,,,,\n")
    assert not run_stage("folds", cfg3)["skipped"]


def _flat(cfg):
    return {"run.root": cfg.run.root, "run.name": cfg.run.name, "data.root": cfg.data.root,
            "folds.n_splits": cfg.folds.n_splits}


def test_cli_errors_are_one_line_without_traceback(capsys):
    assert main(["folds", "det.epoch=3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "det.epochs" in err and "Traceback" not in err
    assert main(["no-such-command"]) == 2
    assert main(["--help"]) == 0
    assert "demo-data" in capsys.readouterr().out


def test_a_rerun_upstream_stage_makes_downstream_stale(run_cfg):
    cfg, paths = run_cfg
    run_stage("folds", cfg)
    # a downstream stage's hash includes the upstream marker's run id
    from pipeline.runner import config_hash, is_done

    before = config_hash(cfg, "train_cls")
    run_stage("folds", cfg, force=True)
    assert config_hash(cfg, "train_cls") != before
    assert is_done(cfg, paths, "folds")


def test_filter_settings_are_part_of_the_fuse_hash():
    from pipeline.runner import config_hash

    a = load_config(None, {"run.root": "/nonexistent", "filter.low": 0.08})
    b = load_config(None, {"run.root": "/nonexistent", "filter.low": 0.3})
    assert config_hash(a, "fuse") != config_hash(b, "fuse")
    assert config_hash(a, "train_det") == config_hash(b, "train_det")
