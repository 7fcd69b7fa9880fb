"""Folds of one stage trained side by side on one CPU machine (``run.parallel_folds``): train_det, train_cls
and localise (each fold process runs every localisation method of its fold).

A from-scratch YOLOv8n or DenseNet-121 step on a CPU does not keep every core busy (measured on the 2-core
development machine, 2026-12-01: YOLOv8n at 224 px ran at about 150 % CPU with 2 threads, 11.5 s per epoch,
and 17.9 s per epoch with 1 thread). Two fold processes of one thread each fill both cores. Each process is
the project's own command for one fold (``python -m pipeline train_det ... det.folds=[k]``), exactly a
cluster's fold job: the Work records make it safe (a fold finished by a process is skipped afterwards, files
that fold jobs share are locked, docs/notes/robustness.md), and the stage then runs in this process as usual:
it skips the folds the processes finished, trains any a process failed on (so its error shows here), and
combines the folds.

Only on the CPU: on a GPU a fold already has the device to itself.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from pipeline.errors import ConfigError

FOLD_KEYS = {"train_det": ("det", "folds"), "train_cls": ("cls", "folds"), "localise": ("localise", "folds")}


def _on_cpu(device) -> bool:
    if str(device).lower() == "cpu":
        return True
    if str(device).lower() != "auto":
        return False
    import torch

    return not torch.cuda.is_available()


def plan(cfg, stage: str) -> tuple[list[int], int, int]:
    """``(folds, processes at once, threads per process)``; no folds when the stage runs in this process."""
    from pipeline.device import resolve_threads

    n = int(cfg.run.parallel_folds)
    if n < 0:
        raise ConfigError(f"run.parallel_folds must be >= 0 (0 = one process per core, 1 = folds one after "
                          f"another), got {n}.")
    if stage not in FOLD_KEYS or n == 1:
        return [], 1, 0
    folds = _folds_of(cfg, stage)
    threads = resolve_threads(cfg.run.threads)
    at_once = min(n or threads, len(folds))
    if at_once < 2 or not _on_cpu(cfg.run.device):
        return [], 1, 0
    return folds, at_once, max(1, threads // at_once)


def _folds_of(cfg, stage: str) -> list[int]:
    """The stage's folds; ``localise.folds: null`` means every fold of the run's folds.csv (none while it
    does not exist: the stage itself then says what is missing)."""
    section, key = FOLD_KEYS[stage]
    value = cfg[section][key]
    if value is not None:
        return [int(k) for k in value]
    import pandas as pd

    from pipeline.paths import RunPaths

    try:
        return sorted(int(k) for k in pd.read_csv(RunPaths.from_config(cfg).folds_csv, usecols=["fold"])["fold"].unique())
    except (OSError, ValueError, KeyError):
        return []


def commands(cfg, stage: str, config: Path, folds: list[int], at_once: int, threads: int) -> list[list[str]]:
    """The command of each fold's process (the CLI, one fold, its share of threads and loader workers)."""
    from pipeline.config import resolve_workers

    section, key = FOLD_KEYS[stage]
    loaders = resolve_workers(cfg.run.workers) // at_once  # 0 = load in the process itself
    extra = [f"cls.workers={loaders}"] if stage == "train_cls" else []
    return [[sys.executable, "-m", "pipeline", stage, "--config", str(config), f"{section}.{key}=[{k}]",
             f"run.threads={threads}", "run.parallel_folds=1", *extra] for k in folds]


def run_folds(cfg, paths, stage: str) -> dict:
    """Train the stage's folds in ``run.parallel_folds`` processes at a time; returns what ran and how.

    The stage itself runs afterwards (the caller does that) and finishes or reports whatever is left."""
    from pipeline.config import save_config

    folds, at_once, threads = plan(cfg, stage)
    if not folds:
        return {}
    folder = paths.parallel_dir
    folder.mkdir(parents=True, exist_ok=True)
    config = save_config(cfg, folder / f"{stage}.yaml")
    cmds = commands(cfg, stage, config, folds, at_once, threads)
    print(f"[{stage}] folds {folds} in {at_once} processes at a time, {threads} thread(s) each (run.parallel_folds); "
          f"logs in {folder}")
    pending = list(zip(folds, cmds))
    running: list[tuple[int, subprocess.Popen, Path, float]] = []
    results: dict[int, int] = {}
    while pending or running:
        while pending and len(running) < at_once:
            k, cmd = pending.pop(0)
            log = folder / f"{stage}_fold{k}.log"
            with open(log, "w") as fh:
                proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
            running.append((k, proc, log, time.perf_counter()))
        time.sleep(0.5)
        for item in list(running):
            k, proc, log, t0 = item
            if proc.poll() is None:
                continue
            running.remove(item)
            results[k] = proc.returncode
            state = "done" if proc.returncode == 0 else f"FAILED (exit {proc.returncode}; log {log})"
            print(f"[{stage}] fold {k} process: {state} in {time.perf_counter() - t0:.1f} s")
    failed = sorted(k for k, rc in results.items() if rc != 0)
    # a process whose fold was finished already says so (runner.run_stage); any other one did the work
    redone = any("nothing to redo: finished earlier" not in (folder / f"{stage}_fold{k}.log").read_text()
                 for k in results)
    if failed:
        print(f"[{stage}] fold(s) {failed} failed in their process; this process trains them again and reports why")
    return {"parallel_folds": at_once, "parallel_failed": failed, "parallel_redone": redone}
