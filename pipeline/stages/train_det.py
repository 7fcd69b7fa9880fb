"""Stage ``train_det``: one ultralytics detector per fold in ``det.folds``.

Per fold k: ``det/<det.name>/fold<k>/{train.txt,val.txt,data.yaml}`` (lists of the PNGs written by
prepare: images are never copied), then ``YOLO(det.model).train(...)`` into that same folder.
A finished fold is skipped, an interrupted one resumes from ``weights/last.pt`` (see
:func:`pipeline.detector.train_fold`). Folds are independent: ``det.folds=[2]`` trains fold 2
alone, so several machines (or a SLURM job array) can each train one fold of the same run dir.
"""
from __future__ import annotations

import pandas as pd
import yaml

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
    from pipeline.stages.folds import read_folds

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


def run(cfg, paths) -> dict:
    from pipeline.detector import build_train_args, check_model_spec, resolve_device, train_fold, write_fold_lists

    model_spec = check_model_spec(cfg.det.model)
    device = resolve_device(cfg.run.device)
    names = dataset_names(paths)
    folds = [int(k) for k in cfg.det.folds]
    if not folds:
        raise ConfigError("det.folds is empty; list the folds to train, e.g. det.folds=[0,1,2,3,4].")
    workers = int(cfg.run.workers)
    if workers <= 0:
        import os

        workers = os.cpu_count() or 1
    summary: dict = {"device": str(device), "model": cfg.det.model}
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
        result = train_fold(model_spec, det_dir, args, force=bool(cfg.run.force))
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
