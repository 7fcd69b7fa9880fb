"""Stage ``predict``: each fold's detector on its validation images (oof) and on every test image.

Writes ``predictions/det_<det.name>_fold<k>_oof.csv`` and ``..._test.csv``: image_id, class_id,
score, x_min, y_min, x_max, y_max (ORIGINAL pixels, via meta.csv), tta (orig | hflip). The flipped
predictions are kept as separate rows; the fuse stage merges them with the other folds and models.
A fold whose two files are newer than its weights is skipped unless forced (resume after a crash).
"""
from __future__ import annotations

import pandas as pd

from pipeline.classes import NORMAL_ID
from pipeline.errors import ConfigError, DataError
from pipeline.io import write_csv_atomic


def read_meta(paths) -> pd.DataFrame:
    path = paths.meta_csv
    if not path.is_file():
        raise DataError(f"{path} not found: run the prepare stage first (python -m pipeline prepare).")
    meta = pd.read_csv(path, dtype={"image_id": str, "split": str})
    need = ["image_id", "split", "height", "width"]
    missing = [c for c in need if c not in meta.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; rerun prepare with --force.")
    return meta


def _items(paths, meta: pd.DataFrame, split: str, ids: list[str]) -> tuple[list[tuple], list[dict]]:
    """(image_id, png, original width, original height) for ids; ids without meta rows are failures."""
    sizes = meta[meta["split"] == split].drop_duplicates("image_id").set_index("image_id")[["width", "height"]]
    items, failures = [], []
    for i in ids:
        if i not in sizes.index or pd.isna(sizes.at[i, "width"]) or pd.isna(sizes.at[i, "height"]):
            failures.append({"image_id": i, "path": str(paths.image(split, i)),
                             "error": f"no original size in {paths.meta_csv}"})
            continue
        items.append((i, paths.image(split, i), float(sizes.at[i, "width"]), float(sizes.at[i, "height"])))
    return items, failures


def _fresh(outputs: list, weights) -> bool:
    return all(p.is_file() and p.stat().st_mtime >= weights.stat().st_mtime for p in outputs)


def oof_map(paths, val_ids: list[str], oof: pd.DataFrame, iou_thr: float) -> float | None:
    """VinBigData mAP (findings 0..13) of the un-flipped oof predictions against boxes.csv.

    None when pipeline.metrics or boxes.csv is absent, or the fold has no finding boxes."""
    try:
        from pipeline.metrics import vinbigdata_map
    except ImportError:
        return None
    if not paths.boxes_csv.is_file():
        return None
    truth = pd.read_csv(paths.boxes_csv, dtype={"image_id": str})
    # Findings only: the detector never predicts class 14 (normal); that class is scored after the
    # 2-class filter in the evaluate stage, and counting it here would halve every fold's figure.
    truth = truth[truth["image_id"].isin(set(val_ids)) & (truth["class_id"] != NORMAL_ID)]
    if truth.empty:
        return None
    pred = oof[oof["tta"] == "orig"].drop(columns=["tta"])
    return round(float(vinbigdata_map(truth, pred, iou_thr=iou_thr)["map"]), 4)


def run(cfg, paths) -> dict:
    from pipeline.detector import import_ultralytics, predict_images, resolve_device
    from pipeline.stages.folds import read_images
    from pipeline.stages.train_det import fold_split

    device = resolve_device(cfg.run.device)
    meta = read_meta(paths)
    images = read_images(paths.images_csv)
    test_ids = images.loc[images["split"] == "test", "image_id"].tolist()
    folds = [int(k) for k in cfg.det.folds]
    if not folds:
        raise ConfigError("det.folds is empty; list the folds to predict, e.g. det.folds=[0,1,2,3,4].")
    opts = dict(imgsz=int(cfg.det.imgsz), conf=float(cfg.det.conf), iou=float(cfg.det.iou),
                max_det=int(cfg.det.max_det), batch=int(cfg.det.predict_batch), device=device,
                tta_flip=bool(cfg.det.tta_flip))
    summary: dict = {}
    all_failures: list[dict] = []
    YOLO = None
    for k in folds:
        weights = paths.det_weights(cfg.det.name, k)
        if not weights.is_file():
            raise DataError(f"{weights} not found: train fold {k} first (python -m pipeline train_det det.folds=[{k}]).")
        out_oof = paths.det_predictions(cfg.det.name, k, "oof")
        out_test = paths.det_predictions(cfg.det.name, k, "test")
        _, val_ids = fold_split(cfg, paths, k)
        if not cfg.run.force and _fresh([out_oof, out_test], weights):
            print(f"[predict] fold {k}: {out_oof.name} and {out_test.name} are newer than the weights: skipped")
            oof = pd.read_csv(out_oof, dtype={"image_id": str})
        else:
            if YOLO is None:
                YOLO = import_ultralytics()
            model = YOLO(str(weights))
            val_items, fail_v = _items(paths, meta, "train", val_ids)
            test_items, fail_t = _items(paths, meta, "test", test_ids)
            oof, fail_v2 = predict_images(model, val_items, desc=f"fold{k} oof", **opts)
            test, fail_t2 = predict_images(model, test_items, desc=f"fold{k} test", **opts)
            write_csv_atomic(oof, out_oof)
            write_csv_atomic(test, out_test)
            for f in fail_v + fail_v2 + fail_t + fail_t2:
                all_failures.append({"fold": k, **f})
            print(f"[predict] fold {k}: {len(oof)} oof boxes on {len(val_items)} images, "
                  f"{len(test)} test boxes on {len(test_items)} images -> {paths.predictions_dir}")
        score = oof_map(paths, val_ids, oof, float(cfg.evaluate.iou_thr))
        if score is not None:
            summary[f"fold{k}_oof_map_findings"] = score
    if all_failures:
        fail_path = paths.det_failures(cfg.det.name)
        write_csv_atomic(pd.DataFrame(all_failures), fail_path)
        print(f"[predict] {len(all_failures)} image(s) could not be predicted; listed in {fail_path}")
        summary["failures"] = len(all_failures)
    return summary
