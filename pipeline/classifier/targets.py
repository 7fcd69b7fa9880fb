"""What the classifier learns: label names, per-image targets, and the checked ``cls`` settings.

Labels: ``binary`` -> ``p_abnormal``: abnormal when the image-level label set of ``images.csv`` (the union
of what the radiologists marked) holds a finding (``binary_source=radiologists``), or when ``boxes.csv``
has a fused finding box for it (``fused``). ``multilabel`` -> ``p_<finding name>`` for the findings.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.classes import NORMAL_ID, ClassList
from pipeline.errors import ConfigError, DataError
from pipeline.folds import parse_labels

TASKS = ("binary", "multilabel")
SELECT = ("inner", "last", "best_on_fold_optimistic")


def label_names(cfg, classes: ClassList) -> list[str]:
    """Output names: ``["abnormal"]`` (binary) or the run's finding names (multilabel)."""
    if cfg.cls.task == "binary":
        return ["abnormal"]
    return classes.findings


def prob_columns(names) -> list[str]:
    return [f"p_{n}" for n in names]


def build_targets(images: pd.DataFrame, cfg, boxes: pd.DataFrame | None, source: Path,
                  normal_id: int = NORMAL_ID) -> tuple[np.ndarray, np.ndarray]:
    """Targets (N, L) for the rows of ``images`` and a mask of rows whose labels are known.

    Raises DataError naming the row of ``source`` (images.csv) whose labels cannot be parsed.
    """
    n_labels = 1 if cfg.cls.task == "binary" else normal_id
    targets = np.zeros((len(images), n_labels), dtype=np.float32)
    known = np.zeros(len(images), dtype=bool)
    fused_abnormal = None
    if cfg.cls.task == "binary" and cfg.cls.binary_source == "fused":
        cid = pd.to_numeric(boxes["class_id"], errors="coerce")
        fused_abnormal = set(boxes.loc[cid.notna() & (cid != normal_id), "image_id"].astype(str))
        fused_ids = set(boxes["image_id"].astype(str))
    for i, (image_id, text) in enumerate(zip(images["image_id"], images["labels"])):
        try:
            ids = parse_labels(text)
        except ValueError as exc:
            raise DataError(f"{source}: row {i + 2} (image {image_id}): {exc}; labels must be '|'-joined class "
                            f"ids like 0|3, or {normal_id} for normal. Run the prepare stage again.") from None
        bad = [c for c in ids if not 0 <= c <= normal_id]
        if bad:
            raise DataError(f"{source}: row {i + 2} (image {image_id}): class ids {bad} outside 0..{normal_id}.")
        if fused_abnormal is not None:
            # the fused table decides for the images it covers (or that have labels: a labelled image
            # without a fused finding box is normal); images it does not know stay unknown (test images)
            known[i] = bool(ids) or str(image_id) in fused_ids
            targets[i, 0] = float(str(image_id) in fused_abnormal)
            continue
        if not ids:
            continue  # unknown label set (e.g. an unlabelled test image)
        known[i] = True
        findings = [c for c in ids if c != normal_id]
        if cfg.cls.task == "binary":
            targets[i, 0] = float(bool(findings))
        else:
            targets[i, findings] = 1.0
    return targets, known


def check_cls_config(cfg) -> None:
    c = cfg.cls
    if c.task not in TASKS:
        raise ConfigError(f"cls.task: {c.task!r} is not one of {list(TASKS)}")
    if c.binary_source not in ("radiologists", "fused"):
        raise ConfigError(f"cls.binary_source: {c.binary_source!r} is not radiologists or fused")
    if c.balance not in ("pos_weight", "sampler", "none"):
        raise ConfigError(f"cls.balance: {c.balance!r} is not one of pos_weight, sampler, none")
    if c.optimizer not in ("adamw", "radam"):
        raise ConfigError(f"cls.optimizer: {c.optimizer!r} is not one of adamw, radam")
    if c.imgsz < 32:
        raise ConfigError(f"cls.imgsz: {c.imgsz} is too small for DenseNet-121 (5 downsamplings); use >= 32")
    if int(c.epochs) < 1:
        raise ConfigError(f"cls.epochs: {c.epochs} trains nothing; use >= 1")
    if not c.folds:
        raise ConfigError("cls.folds is empty; name at least one fold, e.g. cls.folds=[0]")
    if c.select not in SELECT:
        raise ConfigError(f"cls.select: {c.select!r} is not one of {list(SELECT)}")
    if c.select == "inner" and not 0 < float(c.inner_holdout) < 0.5:
        raise ConfigError(f"cls.inner_holdout must be in (0, 0.5) (a share of a fold's training images), got {c.inner_holdout}")
    if not 0 < c.cam_threshold <= 1:
        raise ConfigError(f"cls.cam_threshold must be in (0, 1], got {c.cam_threshold}")


def settings_from_cfg(cfg):
    from pipeline.classifier.train import TrainSettings, env_workers

    c = cfg.cls
    return TrainSettings(
        imgsz=c.imgsz, epochs=c.epochs, batch=c.batch, lr=c.lr, optimizer=c.optimizer,
        weight_decay=c.weight_decay, patience=c.patience, balance=c.balance, augment=dict(c.augment or {}),
        warmup_epochs=c.warmup_epochs, workers=env_workers(c.workers, cfg.run.workers), device=cfg.run.device,
        amp=c.amp, seed=cfg.run.seed, weights=c.weights)
