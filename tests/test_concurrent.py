"""Jobs of one run started at the same moment, each its own process (as fold jobs on a cluster), never
corrupt or lose a shared file.

What fold jobs share (docs/notes/robustness.md): the classifier's combined tables (rebuilt by every
train_cls job under :func:`pipeline.io.locked`), the digest cache (SQLite, WAL), ``config.yaml``
(atomic renames: the last job's), ultralytics' font and settings.json (placed under a lock). Fast
(default suite): the lock and the digest cache under several processes at once. Slow: two train_cls
fold jobs, then two train_det + predict fold jobs, started together on one prepared run, every result
checked.
"""
from __future__ import annotations

import hashlib
import json
import shlex
import shutil
import sqlite3
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import xxhash
import yaml

from pipeline.fingerprint import FILE_TABLE

from tests.pipeline_procs import (assert_no_false_done, command, make_demo_data, overrides,
                                  parse_every_table, read_sorted, run, start, status)

CLS, DET = "densenet121", "yolov8n"


def _start_together(scripts: list[list[str]], tmp_path: Path, go: Path, **env) -> list:
    """Start every process, then release them at once: each waits for ``go`` to exist (their imports
    are done by then, so their work overlaps)."""
    procs = [start(args, tmp_path / f"proc{i}.log", CXR_TEST_GO=str(go), **env) for i, args in enumerate(scripts)]
    time.sleep(0.5)
    go.write_text("go")
    return procs


def _wait_all(procs, tmp_path: Path, timeout: float) -> None:
    for i, p in enumerate(procs):
        p.wait(timeout=timeout)
        assert p.returncode == 0, (tmp_path / f"proc{i}.log").read_text()[-4000:]


# --- fast: the mechanisms ----------------------------------------------------------------------------

_APPEND = """
import os, sys, time
from pathlib import Path
import pandas as pd
from pipeline.io import locked, write_csv_atomic
table, me, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
while not Path(os.environ["CXR_TEST_GO"]).exists():
    time.sleep(0.001)
for i in range(n):
    with locked(table):  # read what the others wrote, add a row, write it all back
        rows = pd.read_csv(table, dtype=str) if table.exists() else pd.DataFrame(columns=["job", "i"])
        rows = pd.concat([rows, pd.DataFrame({"job": [me], "i": [str(i)]})], ignore_index=True)
        write_csv_atomic(rows, table)
"""


def test_jobs_rewriting_one_table_at_once_lose_nothing_under_the_lock(tmp_path):
    table = tmp_path / "predictions" / "combined.csv"
    jobs, n = 4, 25
    procs = _start_together([[sys.executable, "-c", _APPEND, str(table), f"job{j}", str(n)] for j in range(jobs)],
                            tmp_path, tmp_path / "go")
    _wait_all(procs, tmp_path, timeout=120)
    rows = pd.read_csv(table, dtype=str)
    assert len(rows) == jobs * n  # every job's every row, none twice
    assert set(zip(rows["job"], rows["i"])) == {(f"job{j}", str(i)) for j in range(jobs) for i in range(n)}


_DIGESTS = """
import json, os, sys, time
from pathlib import Path
from pipeline.fingerprint import file_digest, set_cache_dir
set_cache_dir(Path(sys.argv[1]))
files = sorted(Path(sys.argv[2]).glob("*.bin"))
while not Path(os.environ["CXR_TEST_GO"]).exists():
    time.sleep(0.001)
print(json.dumps({f.name: file_digest(f) for f in files}))
"""


def test_jobs_hashing_at_once_share_the_digest_cache(tmp_path):
    """Four processes open a new cache at once and fill it with the same 40 files: every digest is the
    file's XXH3-128, and the cache is a sound SQLite database holding each file once."""
    data, cache = tmp_path / "data", tmp_path / "run" / ".cache"
    data.mkdir()
    truth = {}
    for i in range(40):
        blob = hashlib.sha256(str(i).encode()).digest() * (1000 + i)
        (data / f"f{i:02d}.bin").write_bytes(blob)
        truth[f"f{i:02d}.bin"] = xxhash.xxh3_128(blob).hexdigest()[:16]
    env = {"CXR_HASH_CACHE": ""}  # the folder given to set_cache_dir, not a user's override
    procs = _start_together([[sys.executable, "-c", _DIGESTS, str(cache), str(data)] for _ in range(4)],
                            tmp_path, tmp_path / "go", **env)
    _wait_all(procs, tmp_path, timeout=120)
    for i in range(4):
        assert json.loads((tmp_path / f"proc{i}.log").read_text().strip().splitlines()[-1]) == truth
    con = sqlite3.connect(cache / "hashes.sqlite")
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert con.execute(f"SELECT COUNT(*), COUNT(DISTINCT path) FROM {FILE_TABLE}").fetchone() == (40, 40)
    assert {Path(p).name: d for p, d in con.execute(f"SELECT path, digest FROM {FILE_TABLE}")} == truth


# --- slow: fold jobs of one run ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("concurrent")
    data = make_demo_data(base / "data")
    run_dir = base / "base"
    for stage in ("prepare", "folds"):
        run(stage, overrides(run_dir, data))
    return run_dir, data


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".cache"))
    return dst


def _released(stage_args: list[str]) -> list[str]:
    """``python -m pipeline ...`` that waits for the go file first, with torch already imported (so the
    jobs' work, not their start-up, overlaps). Ultralytics is not imported before the pipeline sets it up."""
    wait = ("import os, sys, time, runpy\n"
            "from pathlib import Path\n"
            "import torch, pipeline.runner\n"
            "while not Path(os.environ['CXR_TEST_GO']).exists(): time.sleep(0.001)\n"
            "sys.argv = ['pipeline', *sys.argv[1:]]\n"
            "runpy.run_module('pipeline', run_name='__main__')\n")
    return [sys.executable, "-c", wait, *stage_args]


@pytest.mark.slow
def test_two_train_cls_fold_jobs_at_once_combine_every_fold(prepared, tmp_path):
    """Run twice (the second with --force, so both folds finish training at about the same time again):
    after both jobs exit 0, the combined tables cover every fold's images exactly once, metrics.json lists
    both folds, and the combined oof table is exactly the two folds' own tables."""
    base, data = prepared
    run_dir = _copy(base, tmp_path / "run")
    folds = pd.read_csv(run_dir / "folds.csv", dtype={"image_id": str})
    for attempt in range(2):
        extra = ["run.force=true"] if attempt else []
        jobs = [_released(["train_cls", *overrides(run_dir, data, **{"cls.folds": f"[{k}]"}), *extra]) for k in (0, 1)]
        procs = _start_together(jobs, tmp_path, tmp_path / f"go{attempt}")
        _wait_all(procs, tmp_path, timeout=900)

        for k in (0, 1):
            for rec in ("train.json", "predict.json"):
                assert status(run_dir / "cls" / CLS / f"fold{k}" / rec) == "done", (attempt, k, rec)
        oof = read_sorted(run_dir / "predictions" / f"cls_{CLS}_oof.csv", ["image_id"])
        assert not oof["image_id"].duplicated().any()
        assert sorted(oof["image_id"]) == sorted(folds["image_id"])  # every fold's images, once
        assert dict(zip(oof["image_id"], oof["fold"])) == dict(zip(folds["image_id"], folds["fold"]))
        per_fold = pd.concat([pd.read_csv(run_dir / "cls" / CLS / f"fold{k}" / "oof.csv", dtype={"image_id": str})
                              for k in (0, 1)]).sort_values("image_id", ignore_index=True)
        pd.testing.assert_frame_equal(oof, per_fold)
        test = pd.read_csv(run_dir / "predictions" / f"cls_{CLS}_test.csv", dtype={"image_id": str})
        assert len(test) == 4 and test["p_abnormal"].notna().all()
        metrics = json.loads((run_dir / "cls" / CLS / "metrics.json").read_text())
        assert metrics["folds"] == [0, 1] and metrics["folds_without_predictions"] == [] and metrics["n_oof"] == 12
        config = yaml.safe_load((run_dir / "config.yaml").read_text())  # one job's whole config, never a mix
        assert config["cls"]["folds"] in ([0], [1])
        assert_no_false_done(run_dir)
        parse_every_table(run_dir)


@pytest.mark.slow
def test_two_detector_fold_jobs_at_once(prepared, tmp_path):
    """train_det then predict for fold 0 and fold 1 in two processes started together, with a new
    ultralytics config folder (both place the font and write settings.json at the same moment)."""
    base, data = prepared
    run_dir = _copy(base, tmp_path / "run")
    yolo_dir = tmp_path / "ultralytics"
    jobs = []
    for k in (0, 1):
        over = overrides(run_dir, data, **{"det.folds": f"[{k}]", "det.epochs": 2})
        script = f"{shlex.join(_released(['train_det', *over]))} && {shlex.join(command('predict', over))}"
        jobs.append(["bash", "-c", script])
    procs = _start_together(jobs, tmp_path, tmp_path / "go", YOLO_CONFIG_DIR=str(yolo_dir))
    _wait_all(procs, tmp_path, timeout=900)

    import matplotlib

    font = (Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf").read_bytes()
    assert (yolo_dir / "Ultralytics" / "Arial.ttf").read_bytes() == font
    assert json.loads((yolo_dir / "Ultralytics" / "settings.json").read_text())["sync"] is False
    folds = pd.read_csv(run_dir / "folds.csv", dtype={"image_id": str})
    for k in (0, 1):
        fold_dir = run_dir / "det" / DET / f"fold{k}"
        assert status(fold_dir / "train.json") == "done" and status(fold_dir / "predict.json") == "done"
        val = {Path(p).stem for p in (fold_dir / "val.txt").read_text().split()}
        assert val == set(folds.loc[folds["fold"] == k, "image_id"])
        oof = pd.read_csv(run_dir / "predictions" / f"det_{DET}_fold{k}_oof.csv", dtype={"image_id": str})
        assert len(oof) and set(oof["image_id"]) <= val  # out-of-fold: its own fold's images only
        assert pd.read_csv(run_dir / "predictions" / f"det_{DET}_fold{k}_failures.csv").empty
    assert_no_false_done(run_dir)
    parse_every_table(run_dir)

