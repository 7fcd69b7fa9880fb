"""Run stages with a resolved config: save it, run each stage, time and summarise what happened.

A stage is a module ``pipeline.stages.<name>`` with ``run(cfg, paths) -> dict | None`` (the registry is
:data:`pipeline.stages.STAGES`). Stages always run; inside, every expensive unit of work (a fold's
training or prediction, an image's conversion) is skipped by the one rule of :mod:`pipeline.work`:
its outputs exist and the content fingerprint of what it read is unchanged. A stage's summary says
what it skipped (``skipped: True`` when it redid nothing); ``--force`` (``run.force``) redoes all.
"""
from __future__ import annotations

import copy
import importlib
import importlib.util
import time
from typing import Any

from pipeline.config import Config, save_config
from pipeline.paths import RunPaths
from pipeline.stages import STAGES


def stage_exists(name: str) -> bool:
    return importlib.util.find_spec(f"pipeline.stages.{name}") is not None


def run_stage(stage: str, cfg: Config, *, force: bool | None = None) -> dict[str, Any]:
    """Run one stage (its finished units are skipped inside). Returns its summary plus ``seconds``."""
    from pipeline.fingerprint import set_cache_dir

    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages are {list(STAGES)}")
    if force is not None:
        cfg = copy.deepcopy(cfg)
        cfg.run.force = bool(force)
    paths = RunPaths.from_config(cfg)
    paths.run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, paths.config)
    set_cache_dir(paths.cache_dir)
    module = importlib.import_module(f"pipeline.stages.{stage}")
    print(f"[{stage}] running")
    start = time.perf_counter()
    from pipeline.parallel_folds import run_folds

    parallel = run_folds(cfg, paths, stage)  # run.parallel_folds: folds in their own processes first
    if parallel:
        save_config(cfg, paths.config)  # the fold processes each saved their own
        if cfg.run.force:  # the processes forced their folds; here they are finished work
            cfg = copy.deepcopy(cfg)
            cfg.run.force = False
    summary = {**parallel, **(module.run(cfg, paths) or {})}
    if parallel.get("parallel_redone"):
        summary["skipped"] = False  # the fold processes did the work this process then found finished
    seconds = time.perf_counter() - start
    state = "nothing to redo: finished earlier" if summary.get("skipped") else "done"
    print(f"[{stage}] {state} in {seconds:.1f} s")
    return {"skipped": False, **summary, "seconds": seconds}


def run_all(cfg: Config, stages: list[str] | None = None) -> dict[str, dict]:
    """Run the configured stages in order; stages not built yet are reported and passed over."""
    stages = list(stages or cfg.run.stages)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        from pipeline.errors import ConfigError

        raise ConfigError(f"run.stages: unknown stage(s) {unknown}; stages are {list(STAGES)}")
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
    ("headline", "headline"),
    ("headline_value", "out-of-fold {metric} (evaluate.metric)"),
    ("oof_coco_ap50", "out-of-fold COCO AP50 (findings)"),
    ("oof_coco_ap50_agnostic", "out-of-fold COCO AP50, class-agnostic"),
    ("oof_map", "out-of-fold mAP@{iou} (final)"),
    ("oof_map_no_filter", "out-of-fold mAP@{iou} (detector alone, no classifier)"),
    ("baseline_map", "out-of-fold mAP@{iou} of 'No finding' everywhere"),
    ("test_map", "test mAP@{iou} against the demo truth"),
    ("cls_oof_auc", "classifier out-of-fold AUC"),
    ("lung_iou", "lung IoU, mean over segment.eval_split"),
    ("lung_dice", "lung Dice, mean over segment.eval_split"),
    ("lung_head_auc", "lung model's classification head AUC"),
    ("lung_iou_shifted", "lung IoU under synthetic domain shifts (mean)"),
    ("gate_heldout_accuracy", "input gate held-out accuracy (real pictures)"),
    ("filter_coverage", "2-class filter"),
    ("warnings", "warnings"),
]


def print_summary(cfg: Config, results: dict[str, dict]) -> None:
    paths = RunPaths.from_config(cfg)
    print(f"\n=== summary of {paths.run_dir} ===")
    total = 0.0
    for stage, res in results.items():
        secs = res.get("seconds", 0.0)
        total += secs
        note = "  (finished earlier: nothing redone)" if res.get("skipped") else ""
        print(f"  {stage:<10} {secs:7.1f} s{note}")
    print(f"  {'total':<10} {total:7.1f} s")
    merged: dict[str, Any] = {}
    for res in results.values():
        merged.update({k: v for k, v in res.items() if v is not None})
    iou = f"{float(cfg.evaluate.iou_thr):g}"
    lines = [(label.format(iou=iou, metric=cfg.evaluate.metric), merged[key]) for key, label in HEADLINE if key in merged]
    if lines:
        width = max(len(label) for label, _ in lines)
        for label, value in lines:
            print(f"  {label:<{width}}  {_fmt(value)}")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, (list, tuple)):
        return "; ".join(str(x) for x in v)
    return str(v)
