"""Stage ``folds``: images.csv -> folds.csv (image_id, fold) for every train image.

Multilabel-stratified, patient-grouped folds (see :mod:`pipeline.folds`), seeded by ``run.seed``.
An existing folds.csv that covers exactly the current train images with ``folds.n_splits`` folds
is kept (models may already be trained on it; hand-made folds are respected) unless forced.
"""
from __future__ import annotations

from pipeline.classes import class_names
from pipeline.errors import DataError
from pipeline.folds import fold_balance, format_balance, make_folds, max_share_deviation
from pipeline.io import write_csv_atomic
from pipeline.tables import read_folds, read_images


def _existing_matches(path, train_ids: set[str], n_splits: int) -> bool:
    try:
        old = read_folds(path)
    except DataError:
        return False
    return (set(old["image_id"]) == train_ids and len(old) == len(train_ids)
            and sorted(old["fold"].unique().tolist()) == list(range(n_splits)))


def run(cfg, paths) -> dict:
    images = read_images(paths.images_csv)
    n_splits = int(cfg.folds.n_splits)
    folds = make_folds(images, n_splits, int(cfg.run.seed), bool(cfg.folds.group_by_patient),
                       source=str(paths.images_csv))
    train_ids = set(folds["image_id"])

    kept = False
    if paths.folds_csv.is_file() and not cfg.run.force and _existing_matches(paths.folds_csv, train_ids, n_splits):
        old = read_folds(paths.folds_csv)
        same = old.set_index("image_id")["fold"].reindex(folds["image_id"]).to_numpy()
        if (same == folds["fold"].to_numpy()).all():
            print(f"[folds] {paths.folds_csv} already holds these folds: kept")
        else:
            print(f"[folds] {paths.folds_csv} exists, covers every train image with {n_splits} folds, but differs "
                  "from what this config gives: kept (models may be trained on it); --force rewrites it")
        folds, kept = old, True
    else:
        write_csv_atomic(folds, paths.folds_csv)

    balance = fold_balance(images, folds)
    try:
        names = class_names(cfg.data.format)
    except ValueError:
        names = None
    print("[folds] images and images per class in each fold:")
    print(format_balance(balance, names))
    deviation = max_share_deviation(balance)
    print(f"[folds] largest gap between a fold's class share and the overall share: {deviation:.4f}")
    n_patients = 0
    if "patient_id" in images.columns:
        n_patients = int(images.loc[(images["split"] == "train") & (images["patient_id"] != ""), "patient_id"].nunique())
    return {"folds_csv": str(paths.folds_csv), "n_images": int(len(folds)), "n_splits": n_splits,
            "n_patients": n_patients, "max_share_deviation": round(deviation, 4), "kept_existing": kept}
