"""Stage ``train_det``: one ultralytics detector per fold in ``det.folds``.

Per fold k: ``det/<det.name>/fold<k>/{train.txt,val.txt,data.yaml}`` (lists of the PNGs written by
prepare: images are never copied), then ``YOLO(det.model).train(...)`` into that same folder.
A finished fold is skipped when its model, arguments (batch included), train/val lists and images
(meta.csv ``fingerprint``, else each PNG's size and mtime) are unchanged; an interrupted one resumes
from ``weights/last.pt`` (see :func:`pipeline.detector.train_fold`). Folds are independent: ``det.folds=[2]`` trains fold 2
alone, so several machines (or a SLURM job array) can each train one fold of the same run dir.
"""
from __future__ import annotations

import pandas as pd
import yaml

from pipeline.config import resolve_workers
from pipeline.errors import ConfigError, DataError


def dataset_names(paths) -> dict[int, str]:
    """Class names from prepare's dataset.yaml (``names``: a mapping id -> name, or a list)."""
    path = paths.dataset_yaml
    if not path.is_file():
        raise DataError(f"{path} not found: run the prepare stage first (python -m pipeline prepare).")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise DataError(f"{path}: not valid YAML ({exc}); rerun prepare with --force.") from None
    names = data.get("names")
    if isinstance(names, list):
        names = dict(enumerate(names))
    if not isinstance(names, dict) or not names:
        raise DataError(f"{path}: 'names' must be a non-empty mapping of class id -> name; rerun prepare.")
    return {int(k): str(v) for k, v in names.items()}


def fold_split(cfg, paths, fold: int) -> tuple[list[str], list[str]]:
    """(train ids, val ids) of ``fold``: train = every other fold's images, val = this fold's."""
    from pipeline.tables import read_folds

    folds = read_folds(paths.folds_csv)
    present = sorted(folds["fold"].unique().tolist())
    if fold not in present:
        raise ConfigError(f"det.folds: fold {fold} is not in {paths.folds_csv} (folds there: {present}). "
                          "Use fold numbers from 0 to folds.n_splits-1.")
    val = folds.loc[folds["fold"] == fold, "image_id"].tolist()
    train = folds.loc[folds["fold"] != fold, "image_id"].tolist()
    return train, val


def _check_images(paths, ids: list[str], what: str) -> None:
    missing = [i for i in ids if not paths.image("train", i).is_file()]
    if missing:
        raise DataError(f"{len(missing)} {what} image(s) of folds.csv have no PNG, e.g. {paths.image('train', missing[0])}. "
                        "Rerun prepare (its failures.csv says why), or rerun folds with --force after removing them.")


def image_fingerprints(paths) -> dict[str, str] | None:
    """Resolved train PNG path -> meta.csv ``fingerprint`` (prepare's record of what it converted),
    or None when meta.csv has no such column (the training fingerprint then uses each PNG's size
    and mtime instead: see :func:`pipeline.detector.fold_data_fingerprint`)."""
    path = paths.meta_csv
    if not path.is_file():
        return None
    try:
        head = pd.read_csv(path, nrows=0)
    except (OSError, ValueError, pd.errors.EmptyDataError):
        return None
    if "fingerprint" not in head.columns or "image_id" not in head.columns:
        return None
    meta = pd.read_csv(path, dtype=str, keep_default_na=False, usecols=lambda c: c in ("image_id", "split", "fingerprint"))
    if "split" in meta.columns:
        meta = meta[meta["split"] == "train"]
    return {str(paths.image("train", i).resolve()): f for i, f in zip(meta["image_id"], meta["fingerprint"]) if f}


def run(cfg, paths) -> dict:
    from pipeline.detector import (build_train_args, check_model_spec, fold_data_fingerprint, resolve_device,
                                   train_fold, write_fold_lists)

    model_spec = check_model_spec(cfg.det.model)
    device = resolve_device(cfg.run.device)
    names = dataset_names(paths)
    folds = [int(k) for k in cfg.det.folds]
    if not folds:
        raise ConfigError("det.folds is empty; list the folds to train, e.g. det.folds=[0,1,2,3,4].")
    workers = resolve_workers(cfg.run.workers)
    summary: dict = {"device": str(device), "model": cfg.det.model}
    image_fps = image_fingerprints(paths)
    for k in folds:
        train_ids, val_ids = fold_split(cfg, paths, k)
        _check_images(paths, train_ids, "train")
        _check_images(paths, val_ids, "validation")
        det_dir = paths.det_dir(cfg.det.name, k)
        data_yaml = write_fold_lists(det_dir, [paths.image("train", i) for i in train_ids],
                                     [paths.image("train", i) for i in val_ids], names)
        args = build_train_args(data_yaml=data_yaml, det_dir=det_dir, epochs=cfg.det.epochs, imgsz=cfg.det.imgsz,
                                batch=cfg.det.batch, device=device, seed=cfg.run.seed, workers=workers,
                                extra=cfg.det.train_args)
        print(f"[train_det] fold {k}: {len(train_ids)} train / {len(val_ids)} val images, "
              f"{cfg.det.model} at {cfg.det.imgsz} px on {device} -> {det_dir}")
        data = fold_data_fingerprint(det_dir, image_fps)  # which images (lists) and what they contain
        result = train_fold(model_spec, det_dir, args, force=bool(cfg.run.force), data=data)
        print(f"[train_det] fold {k}: {result['status']} -> {result['best']}")
        summary[f"fold{k}"] = result["status"]
        summary[f"fold{k}_map50"] = _best_map50(det_dir)
    return summary


def _best_map50(det_dir) -> float | None:
    """Best validation mAP@0.5 that ultralytics logged for the fold (its own metric, not VinBigData's)."""
    path = det_dir / "results.csv"
    try:
        res = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.EmptyDataError):
        return None
    res.columns = [c.strip() for c in res.columns]
    col = "metrics/mAP50(B)"
    return round(float(res[col].max()), 4) if col in res.columns and len(res) else None
