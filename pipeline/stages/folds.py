"""Stage ``folds``: images.csv -> folds.csv (image_id, fold) for every train image.

Multilabel-stratified, patient-grouped folds (see :mod:`pipeline.folds`), seeded by ``run.seed``, or
the folds of ``folds.file`` (a CSV ``image_id,fold``). Cheap and deterministic, so it always runs:
the folds follow ``run.seed``, ``folds.n_splits``, ``folds.group_by_patient`` and the images every
time. The models of a fold depend on its images (their ids and content), so changed folds retrain
exactly the folds whose images changed; the log says when the folds differ from the file on disk.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.classes import run_classes
from pipeline.errors import DataError
from pipeline.folds import fold_balance, format_balance, make_folds, max_share_deviation
from pipeline.io import write_csv_atomic
from pipeline.tables import read_folds, read_images


def given_folds(path: Path, images: pd.DataFrame, n_splits: int) -> pd.DataFrame:
    """``folds.file``: every train image exactly once, folds 0..n_splits-1; errors name the file."""
    folds = read_folds(path)
    train_ids = images.loc[images["split"] == "train", "image_id"].astype(str)
    dup = folds["image_id"][folds["image_id"].duplicated()]
    missing = sorted(set(train_ids) - set(folds["image_id"]))
    extra = sorted(set(folds["image_id"]) - set(train_ids))
    bad = sorted(set(folds["fold"]) - set(range(n_splits)))
    problems = []
    if len(dup):
        problems.append(f"image {dup.iloc[0]!r} has more than one row")
    if missing:
        problems.append(f"{len(missing)} train image(s) have no fold, e.g. {missing[:3]}")
    if extra:
        problems.append(f"{len(extra)} id(s) are not train images, e.g. {extra[:3]}")
    if bad:
        problems.append(f"fold numbers {bad[:5]} are outside 0..{n_splits - 1} (folds.n_splits={n_splits})")
    if problems:
        raise DataError(f"folds.file {path}: " + "; ".join(problems) + ". Give every train image of images.csv "
                        "one fold, or set folds.file=null to compute the folds.")
    order = {i: n for n, i in enumerate(train_ids)}
    return folds.sort_values("image_id", key=lambda s: s.map(order)).reset_index(drop=True)


def run(cfg, paths) -> dict:
    images = read_images(paths.images_csv)
    n_splits = int(cfg.folds.n_splits)
    if cfg.folds.file:
        folds = given_folds(Path(cfg.folds.file), images, n_splits)
        source = f"from {cfg.folds.file}"
    else:
        folds = make_folds(images, n_splits, int(cfg.run.seed), bool(cfg.folds.group_by_patient),
                           source=str(paths.images_csv))
        source = (f"computed: seed {cfg.run.seed}, {n_splits} folds, "
                  f"{'grouped by patient' if cfg.folds.group_by_patient else 'not grouped'}")
    changed = _changed_folds(paths.folds_csv, folds)
    write_csv_atomic(folds, paths.folds_csv)
    if changed is None:
        print(f"[folds] {paths.folds_csv}: written ({source})")
    elif changed:
        print(f"[folds] {paths.folds_csv}: rewritten ({source}); fold(s) {changed} changed, so their models "
              "will be trained again")
    else:
        print(f"[folds] {paths.folds_csv}: unchanged ({source})")

    balance = fold_balance(images, folds)
    try:
        names = list(run_classes(paths).names)
    except DataError:  # folds before prepare (hand-made images.csv): ids only
        names = None
    print("[folds] images and images per class in each fold:")
    print(format_balance(balance, names))
    deviation = max_share_deviation(balance)
    print(f"[folds] largest gap between a fold's class share and the overall share: {deviation:.4f}")
    n_patients = 0
    if "patient_id" in images.columns:
        n_patients = int(images.loc[(images["split"] == "train") & (images["patient_id"] != ""), "patient_id"].nunique())
    return {"folds_csv": str(paths.folds_csv), "n_images": int(len(folds)), "n_splits": n_splits,
            "n_patients": n_patients, "max_share_deviation": round(deviation, 4), "folds_source": source}


def _changed_folds(path: Path, folds: pd.DataFrame) -> list[int] | None:
    """Folds whose image sets differ from the folds.csv on disk (None when there is none)."""
    try:
        old = read_folds(path)
    except DataError:
        return None
    def sets(df):
        return {int(k): set(g["image_id"]) for k, g in df.groupby("fold")}
    a, b = sets(old), sets(folds)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
