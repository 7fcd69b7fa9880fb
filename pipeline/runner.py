"""Run stages with a resolved config: save the config, skip finished stages, time and summarise them.

A stage is a module ``pipeline.stages.<name>`` with ``run(cfg, paths) -> dict | None``; the dict
(if any) is a short summary (figures, output paths) printed at the end of ``run``/``demo``.
A stage counts as finished when its marker ``.done/<stage>.json`` holds the hash of the config
sections it depends on; change one of those keys, or pass ``--force``, and it runs again.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import time
from typing import Any

from pipeline.config import Config, save_config
from pipeline.io import write_text_atomic
from pipeline.paths import RunPaths

STAGES = ["prepare", "folds", "train_det", "predict", "train_cls", "fuse", "evaluate", "submit"]

_BASE = ["data", "image", "labels", "run.seed"]
# Config sections each stage's result depends on (its inputs' sections included).
DEPENDS = {
    "prepare": _BASE,
    "folds": _BASE + ["folds"],
    "train_det": _BASE + ["folds", "det"],
    "predict": _BASE + ["folds", "det"],
    "train_cls": _BASE + ["folds", "cls"],
    "fuse": _BASE + ["folds", "det", "cls", "fuse", "filter", "evaluate"],  # filter tuning scores at evaluate.iou_thr
    "evaluate": _BASE + ["folds", "det", "cls", "fuse", "filter", "evaluate"],
    "submit": _BASE + ["folds", "det", "cls", "fuse", "filter", "evaluate", "submit"],
}


# Stages whose outputs a stage reads. When one of them runs again (forced, or its inputs changed), the
# stages downstream of it are stale too: their hash includes the upstream markers' run ids.
UPSTREAM = {
    "prepare": [],
    "folds": ["prepare"],
    "train_det": ["prepare", "folds"],
    "predict": ["train_det"],
    "train_cls": ["prepare", "folds"],
    "fuse": ["predict", "train_cls"],
    "evaluate": ["fuse"],
    "submit": ["fuse"],
}


def stage_exists(name: str) -> bool:
    return importlib.util.find_spec(f"pipeline.stages.{name}") is not None


def data_fingerprint(cfg: Config) -> list:
    """Name, size and mtime of the dataset's top-level files (train.csv, Data_Entry, ...):
    new or edited annotations make every stage stale, as a changed config key does."""
    from pathlib import Path

    root = Path(cfg.data.root)
    if not root.is_dir():
        return []
    files = sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
    return [(p.name, p.stat().st_size, int(p.stat().st_mtime)) for p in files]


def _run_id(paths: RunPaths, stage: str) -> str | None:
    try:
        return json.loads(paths.done_marker(stage).read_text()).get("run_id")
    except (OSError, ValueError):
        return None


def config_hash(cfg: Config, stage: str) -> str:
    paths = RunPaths.from_config(cfg)
    parts = {key: cfg.get_path(key) for key in DEPENDS.get(stage, _BASE)}
    parts["data_files"] = data_fingerprint(cfg)
    parts["upstream"] = {up: _run_id(paths, up) for up in UPSTREAM.get(stage, [])}
    blob = json.dumps(Config(parts).to_dict(), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def is_done(cfg: Config, paths: RunPaths, stage: str) -> bool:
    marker = paths.done_marker(stage)
    if not marker.is_file():
        return False
    try:
        return json.loads(marker.read_text()).get("config_hash") == config_hash(cfg, stage)
    except (ValueError, OSError):
        return False


def run_stage(stage: str, cfg: Config, *, force: bool | None = None) -> dict[str, Any]:
    """Run one stage (or skip it when finished with the same config). Returns its summary."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages are {STAGES}")
    paths = RunPaths.from_config(cfg)
    force = cfg.run.force if force is None else force
    paths.run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, paths.config)
    if not force and is_done(cfg, paths, stage):
        prev = json.loads(paths.done_marker(stage).read_text())
        summary = prev.get("summary") or {}
        print(f"[{stage}] finished earlier with the same config: skipped (--force or run.force=true redoes it)")
        return {"skipped": True, "seconds": 0.0, **summary}
    module = importlib.import_module(f"pipeline.stages.{stage}")
    print(f"[{stage}] running")
    start = time.perf_counter()
    summary = module.run(cfg, paths) or {}
    seconds = time.perf_counter() - start
    write_text_atomic(
        paths.done_marker(stage),
        json.dumps({"config_hash": config_hash(cfg, stage), "run_id": f"{time.time():.6f}", "seconds": seconds,
                    "summary": summary}, indent=2, default=str),
    )
    print(f"[{stage}] done in {seconds:.1f} s")
    return {"skipped": False, "seconds": seconds, **summary}


def run_all(cfg: Config, stages: list[str] | None = None) -> dict[str, dict]:
    """Run the configured stages in order; stages not built yet are reported and passed over."""
    stages = list(stages or cfg.run.stages)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        from pipeline.errors import ConfigError

        raise ConfigError(f"run.stages: unknown stage(s) {unknown}; stages are {STAGES}")
    results: dict[str, dict] = {}
    for stage in stages:
        if not stage_exists(stage):
            print(f"[{stage}] not available in this version: passed over")
            continue
        results[stage] = run_stage(stage, cfg)
    print_summary(cfg, results)
    return results


# Figures worth a line at the end of a run, in this order, from whichever stage reported them.
HEADLINE = [
    ("submission", "submission"),
    ("report", "report"),
    ("oof_map", "out-of-fold mAP@0.4 (with the 2-class filter)"),
    ("oof_map_no_filter", "out-of-fold mAP@0.4 (without the filter)"),
    ("baseline_map", "out-of-fold mAP@0.4 of 'No finding' everywhere"),
    ("test_map", "test mAP@0.4 against the demo truth"),
    ("cls_oof_auc", "classifier out-of-fold AUC"),
]


def print_summary(cfg: Config, results: dict[str, dict]) -> None:
    paths = RunPaths.from_config(cfg)
    print(f"\n=== summary of {paths.run_dir} ===")
    total = 0.0
    for stage, res in results.items():
        secs = res.get("seconds", 0.0)
        total += secs
        state = "skipped (finished earlier)" if res.get("skipped") else f"{secs:7.1f} s"
        print(f"  {stage:<10} {state}")
    print(f"  {'total':<10} {total:7.1f} s")
    merged: dict[str, Any] = {}
    for res in results.values():
        merged.update({k: v for k, v in res.items() if v is not None})
    lines = [(label, merged[key]) for key, label in HEADLINE if key in merged]
    if lines:
        width = max(len(label) for label, _ in lines)
        for label, value in lines:
            print(f"  {label:<{width}}  {_fmt(value)}")


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)
