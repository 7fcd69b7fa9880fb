"""Stage ``train_det``: one ultralytics detector per fold in ``det.folds``.

Per fold k: ``det/<det.name>/fold<k>/{train.txt,val.txt,data.yaml}`` (lists of the PNGs written by
prepare: images are never copied), then ``YOLO(det.model).train(...)`` into that same folder. The
images are the train images whose detection role (``detection.csv``) is truth or negative; fold k's
are its validation images, every other fold's its training images.

A fold is one unit of work (:mod:`pipeline.work`, record ``train.json``): skipped when ``last.pt`` exists
and the fingerprint of what it read is unchanged: the model (a local .pt by content), the training
arguments that change the weights, the class names, and for every train and validation image its id,
its conversion fingerprint (meta.csv: source content and pixel options) and its YOLO label's content.
Never paths or mtimes. Interrupted with the same fingerprint: resumed from ``weights/last.pt``.
Folds are independent: ``det.folds=[2]`` trains fold 2 alone (one job per fold on a cluster).
"""
from __future__ import annotations

import yaml

from pipeline.config import resolve_workers
from pipeline.errors import ConfigError, DataError

SELECT = ("last", "best_on_fold_optimistic")


def dataset_names(paths) -> dict[int, str]:
    """Finding class names from prepare's dataset.yaml (``names``: a mapping id -> name, or a list)."""
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


def check_select(cfg) -> str:
    select = str(cfg.det.select)
    if select not in SELECT:
        raise ConfigError(f"det.select: {select!r} is not one of {list(SELECT)}.")
    return select


def fold_split(paths, fold: int, key: str = "det.folds") -> tuple[list[str], list[str]]:
    """(train ids, val ids) of ``fold`` among the detector's images (detection.csv roles truth/negative)."""
    from pipeline.tables import detector_images, read_folds

    folds = read_folds(paths.folds_csv)
    present = sorted(folds["fold"].unique().tolist())
    if fold not in present:
        raise ConfigError(f"{key}: fold {fold} is not in {paths.folds_csv} (folds there: {present}). "
                          "Use fold numbers from 0 to folds.n_splits-1.")
    usable = set(detector_images(paths.detection_csv, "train"))
    folds = folds[folds["image_id"].isin(usable)]
    val = folds.loc[folds["fold"] == fold, "image_id"].tolist()
    train = folds.loc[folds["fold"] != fold, "image_id"].tolist()
    return train, val


def images_digest(paths, ids: list[str], fingerprints: dict[str, str], with_labels: bool) -> str:
    """Digest of what a list of train images IS: id, conversion fingerprint and (optionally) the content
    of its YOLO label file, in sorted id order. A missing PNG is an error naming it."""
    from pipeline.fingerprint import digest, file_digest

    missing = [i for i in ids if i not in fingerprints or not paths.image("train", i).is_file()]
    if missing:
        raise DataError(f"{len(missing)} image(s) of folds.csv have no converted PNG (or no meta.csv row), e.g. "
                        f"{paths.image('train', missing[0])}. Rerun prepare (its failures.csv says why).")
    rows = [[i, fingerprints[i], file_digest(paths.label("train", i)) if with_labels else None] for i in sorted(ids)]
    return digest(rows)


def run(cfg, paths) -> dict:
    from pipeline.detector import (build_train_args, check_model_spec, resolve_detector_device, train_fold,
                                   training_inputs, write_fold_lists)
    from pipeline.tables import image_fingerprints, read_meta
    from pipeline.work import Work

    model_spec = check_model_spec(cfg.det.model)
    select = check_select(cfg)
    device = resolve_detector_device(cfg.run.device)
    names = dataset_names(paths)
    folds = [int(k) for k in cfg.det.folds]
    if not folds:
        raise ConfigError("det.folds is empty; list the folds to train, e.g. det.folds=[0,1,2,3,4].")
    workers = resolve_workers(cfg.run.workers)
    fps = image_fingerprints(read_meta(paths.meta_csv), "train")
    name = cfg.det.name
    summary: dict = {"device": str(device), "model": cfg.det.model, "select": select}
    statuses = []
    for k in folds:
        train_ids, val_ids = fold_split(paths, k)
        if not train_ids or not val_ids:
            raise DataError(f"fold {k}: {len(train_ids)} training and {len(val_ids)} validation images for the "
                            f"detector (see {paths.detection_csv}); use fewer folds or more images.")
        det_dir = paths.det_dir(name, k)
        data_yaml = write_fold_lists(paths, name, k, [paths.image("train", i) for i in train_ids],
                                     [paths.image("train", i) for i in val_ids], names)
        args = build_train_args(data_yaml=data_yaml, det_dir=det_dir, epochs=cfg.det.epochs, imgsz=cfg.det.imgsz,
                                batch=cfg.det.batch, device=device, seed=cfg.run.seed, workers=workers,
                                extra=cfg.det.train_args, select=select)
        inputs = {**training_inputs(model_spec, args), "names": names,
                  "train": images_digest(paths, train_ids, fps, with_labels=True),
                  "val": images_digest(paths, val_ids, fps, with_labels=True)}
        work = Work(f"train_det {name} fold {k}", paths.det_train_record(name, k), inputs,
                    outputs=[paths.det_last_weights(name, k)])
        if work.state(bool(cfg.run.force)) != "done":
            print(f"[train_det] fold {k}: {len(train_ids)} train / {len(val_ids)} val images, {cfg.det.model} at "
                  f"{cfg.det.imgsz} px on {device} -> {det_dir} ({work.why_not_done()})")
        result = train_fold(model_spec, work, det_dir, args, force=bool(cfg.run.force), threads=cfg.run.threads)
        if result["status"] == "skipped":
            print(f"[train_det] fold {k}: finished earlier with the same inputs: skipped")
        else:
            print(f"[train_det] fold {k}: {result['status']} in {result.get('seconds')} s -> {result['weights']}")
        summary[f"fold{k}"] = result["status"]
        statuses.append(result["status"])
    summary["skipped"] = all(s == "skipped" for s in statuses)
    return summary

