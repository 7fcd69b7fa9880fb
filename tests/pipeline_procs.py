"""Real ``python -m pipeline`` processes on a tiny demo run, for the kill -9 and concurrency tests
(tests/test_kill9.py, tests/test_concurrent.py): started the way users start them (``sys.executable -m
pipeline``, cwd = the project root), killed with SIGKILL, and the run directory read back strictly."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]

# A run small enough for 2 shared CPU cores: 12 train / 4 test demo images at 64 px, 2 folds, one torch
# thread (CPU training is only reproducible from process to process with a fixed thread count).
TINY = {
    "image.size": 64, "folds.n_splits": 2, "run.threads": 1, "run.workers": 1, "run.device": "cpu",
    "det.folds": "[0, 1]", "det.imgsz": 64, "det.epochs": 4, "det.batch": 4, "det.predict_batch": 4,
    "det.conf": "0.00001", "det.max_det": 10,  # conf as text: YAML reads 1e-05 as a string
    "det.train_args": "{mosaic: 0.0, warmup_epochs: 0, val: false}",
    # cls.batch 3: 5 fit images per fold (one is the inner holdout) never leave a batch of one, which
    # BatchNorm refuses at 32 px (DenseNet-121's last feature map is 1x1 there).
    "cls.folds": "[0, 1]", "cls.imgsz": 32, "cls.epochs": 3, "cls.batch": 3, "cls.workers": 0, "cls.gradcam_n": 2,
}


def make_demo_data(folder: Path, n_train: int = 12, n_test: int = 4) -> Path:
    subprocess.run([sys.executable, "-m", "pipeline", "demo-data", str(folder), "--n-train", str(n_train),
                    "--n-test", str(n_test)], cwd=ROOT, check=True, capture_output=True)
    return folder


def overrides(run_dir: Path, data: Path, **extra) -> list[str]:
    values = {"run.root": str(run_dir.parent), "run.name": run_dir.name, "data.root": str(data), **TINY, **extra}
    return [f"{k}={v}" for k, v in values.items()]


def command(stage: str, over: list[str]) -> list[str]:
    return [sys.executable, "-m", "pipeline", stage, *over]


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", **extra}


def run(stage: str, over: list[str], check: bool = True, **env_extra: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(command(stage, over), cwd=ROOT, capture_output=True, text=True, env=env(**env_extra))
    if check:
        assert proc.returncode == 0, f"{stage} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def start(args: list[str], log: Path, **env_extra: str) -> subprocess.Popen:
    """A process whose stdout and stderr go to ``log`` (a pipe nobody reads could fill and stall it)."""
    fh = open(log, "w")
    proc = subprocess.Popen(args, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, env=env(**env_extra))
    fh.close()
    return proc


def wait_until(condition: Callable[[], bool], proc: subprocess.Popen, timeout: float = 300, what: str = "") -> None:
    """Poll ``condition`` every 5 ms while ``proc`` runs; fail when it exits or times out first."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the process exited ({proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.005)


def kill9(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.returncode


def record(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def status(path: Path) -> str | None:
    rec = record(path)
    return rec.get("status") if rec else None


def records(run_dir: Path) -> dict[Path, dict]:
    """Every Work record (train.json / predict.json) under det/ and cls/, parsed (a record that does not
    parse is an error: records are written atomically)."""
    out = {}
    for p in sorted(run_dir.glob("*/*/fold*/*.json")):
        if p.name in ("train.json", "predict.json"):
            rec = record(p)
            assert rec is not None, f"{p} is not valid JSON"
            out[p] = rec
    return out


def assert_no_false_done(run_dir: Path) -> None:
    """A record that says done names outputs that all exist and none of them is a temporary file."""
    for p, rec in records(run_dir).items():
        if rec["status"] == "done":
            for out in rec["outputs"]:
                assert Path(out).is_file(), f"{p} says done but {out} is missing"
                assert ".tmp" not in Path(out).name, f"{p} names a temporary file {out}"


def visible_files(folder: Path, pattern: str) -> list[Path]:
    """Files a reader of the run could take for finished (temporaries are hidden: '.<name>.<random>.tmp')."""
    return sorted(p for p in folder.rglob(pattern) if p.is_file() and not p.name.startswith("."))


def parse_every_table(run_dir: Path) -> None:
    """Every visible CSV and JSON of the run directory parses (nothing half-written under a final name)."""
    for p in visible_files(run_dir, "*.csv"):
        try:
            pd.read_csv(p)
        except pd.errors.EmptyDataError:
            assert p.stat().st_size == 0 or p.read_text().strip() == "", p  # a header-less empty table
    for p in visible_files(run_dir, "*.json"):
        json.loads(p.read_text())


def read_sorted(path: Path, by: list[str]) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"image_id": str}).sort_values(by, kind="stable", ignore_index=True)
