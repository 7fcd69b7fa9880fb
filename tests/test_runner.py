"""The one skip rule (pipeline.work + pipeline.fingerprint), the stage runner and the CLI."""
from __future__ import annotations

import json
import os
import shutil

import pandas as pd
import pytest
import yaml

from pipeline.__main__ import main
from pipeline.config import load_config
from pipeline.paths import RunPaths
from pipeline.runner import run_stage
from tests.test_folds import _images


# --- fingerprints -----------------------------------------------------------------------------------

def test_file_digest_is_content_only_and_cached(tmp_path, monkeypatch):
    from pipeline import fingerprint as F

    F.set_cache_dir(tmp_path / "cache")
    a = tmp_path / "a.bin"
    a.write_bytes(b"pixels" * 1000)
    d = F.file_digest(a)
    copy = tmp_path / "elsewhere" / "a.bin"
    copy.parent.mkdir()
    shutil.copy(a, copy)  # new path, inode and mtime
    os.utime(a, ns=(0, 123456789))
    assert F.file_digest(copy) == d and F.file_digest(a) == d
    calls = []
    real = F._hash_file
    monkeypatch.setattr(F, "_hash_file", lambda p: calls.append(p) or real(p))
    assert F.file_digest(a) == d and not calls  # unchanged since last read: from the cache
    a.write_bytes(b"other pixels")
    assert F.file_digest(a) != d and len(calls) == 1  # changed: read again, another digest
    assert F.file_digest(tmp_path / "missing") is None
    F.set_cache_dir(None)
    assert F.digest({"b": 1, "a": [1, 2]}) == F.digest({"a": [1, 2], "b": 1})
    assert F.digest({"a": 1}) != F.digest({"a": 1.5})


# --- units of work ----------------------------------------------------------------------------------

def test_work_is_done_only_with_its_outputs_and_the_same_fingerprint(tmp_path):
    from pipeline.work import DONE, NEW, STARTED, Work

    out = tmp_path / "model.pt"
    rec = tmp_path / "train.json"
    w = Work("train", rec, {"epochs": 3, "images": "abc"}, outputs=[out])
    assert w.state() == NEW and w.why_not_done() == "never finished"
    w.start()
    assert w.state() == STARTED  # killed after start: same inputs, resumable
    out.write_bytes(b"w")
    w.finish({"seconds": 1})
    assert w.state() == DONE and w.summary() == {"seconds": 1} and w.state(force=True) == NEW
    changed = Work("train", rec, {"epochs": 4, "images": "abc"}, outputs=[out])
    assert changed.state() == NEW and "epochs" in changed.why_not_done()
    out.unlink()  # a deleted output: not done, and the log says which
    assert w.state() == STARTED and "model.pt" in w.why_not_done()
    rec.write_text("{half a rec")  # a record torn by a crash never counts as finished
    assert w.state() == NEW
    with pytest.raises(RuntimeError, match="without its outputs"):
        w.finish()


# --- the runner and stages -------------------------------------------------------------------------

@pytest.fixture
def run_cfg(tmp_path):
    cfg = load_config(None, {"run.root": str(tmp_path / "runs"), "run.name": "r", "data.root": str(tmp_path / "d"),
                             "folds.n_splits": 3})
    paths = RunPaths.from_config(cfg)
    paths.run_dir.mkdir(parents=True)
    _images().to_csv(paths.images_csv, index=False)
    return cfg, paths


def test_folds_follow_the_config_every_time(run_cfg, capsys):
    cfg, paths = run_cfg
    first = run_stage("folds", cfg)
    assert first["seconds"] >= 0 and yaml.safe_load(paths.config.read_text())["folds"]["n_splits"] == 3
    a = pd.read_csv(paths.folds_csv)
    run_stage("folds", cfg)
    assert "unchanged" in capsys.readouterr().out
    for key, value in (("folds.n_splits", 4), ("run.seed", 7), ("folds.group_by_patient", False)):
        other = load_config(None, {"run.root": cfg.run.root, "run.name": "r", "folds.n_splits": 3, key: value})
        run_stage("folds", other)
        assert "changed" in capsys.readouterr().out and not pd.read_csv(paths.folds_csv).equals(a)
    run_stage("folds", cfg)
    assert pd.read_csv(paths.folds_csv).equals(a)  # back to the first settings: the first folds


def test_folds_from_a_file_are_checked(run_cfg, tmp_path):
    from pipeline.errors import DataError

    cfg, paths = run_cfg
    run_stage("folds", cfg)
    mine = pd.read_csv(paths.folds_csv)
    mine["fold"] = range(len(mine))
    mine["fold"] %= 3
    mine.to_csv(tmp_path / "team.csv", index=False)
    given = load_config(None, {"run.root": cfg.run.root, "run.name": "r", "folds.n_splits": 3,
                               "folds.file": str(tmp_path / "team.csv")})
    run_stage("folds", given)
    assert pd.read_csv(paths.folds_csv)["fold"].tolist() == mine["fold"].tolist()
    mine.iloc[1:].to_csv(tmp_path / "short.csv", index=False)
    short = load_config(None, {"run.root": cfg.run.root, "run.name": "r", "folds.n_splits": 3,
                               "folds.file": str(tmp_path / "short.csv")})
    with pytest.raises(DataError, match="1 train image"):
        run_stage("folds", short)


def test_cli_errors_are_one_line_without_traceback(capsys):
    assert main(["folds", "det.epoch=3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "det.epochs" in err and "Traceback" not in err
    assert main(["no-such-command"]) == 2
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    from pipeline.stages import STAGES

    for name in [*STAGES, "demo", "run", "test", "demo-data", "score", "dicom2png"]:
        assert f"  {name} " in out or f"./run.sh {name}" in out, name


def test_stage_help_says_what_it_reads_writes_and_uses(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["predict", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "reads:" in out and "writes:" in out and "det.conf" in out and "example:" in out


def test_record_files_are_json(tmp_path):
    from pipeline.work import Work

    w = Work("x", tmp_path / "r.json", {"big": list(range(1000))})
    w.start()
    rec = json.loads((tmp_path / "r.json").read_text())
    assert rec["inputs"]["big"] == {"digest": rec["inputs"]["big"]["digest"]}  # big inputs stored as a digest
