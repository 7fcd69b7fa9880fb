"""Stage ``predict``: each fold's detector on its validation images (oof) and on every test image.

Writes ``predictions/det_<det.name>_fold<k>_oof.csv`` and ``..._test.csv``: image_id, class_id,
score, x_min, y_min, x_max, y_max (ORIGINAL pixels, via meta.csv), tta (orig | hflip). The flipped
predictions are kept as separate rows; the fuse stage merges them with the other folds and models.
A fold is skipped unless forced when both files exist and its ``det/<name>/fold<k>/predict_done.json``
matches this run: the weights file (size, mtime), the prediction options (conf, iou, imgsz,
max_det, tta_flip) and the oof / test image id lists. Images that could not be predicted go to
``predictions/det_<name>_failures.csv`` (fold, image_id, path, error), rewritten every run: rows of
the folds predicted now are replaced, those of other folds kept (folds may run as separate jobs).
"""
from __future__ import annotations

import hashlib
import json

import pandas as pd

from pipeline.classes import NORMAL_ID
from pipeline.errors import ConfigError, DataError
from pipeline.io import write_csv_atomic, write_text_atomic
from pipeline.tables import read_table


def read_meta(paths) -> pd.DataFrame:
    return read_table(paths.meta_csv, "image meta table", ["image_id", "split", "height", "width"],
                      dtype={"split": str}, hint="run the prepare stage first (python -m pipeline prepare).")


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


FAILURE_COLUMNS = ["fold", "image_id", "path", "error"]


def _ids_hash(ids: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(map(str, ids))).encode("utf-8")).hexdigest()


def predict_signature(weights, opts: dict, oof_ids: list[str], test_ids: list[str]) -> dict:
    """What a fold's prediction files depend on: weights (size, mtime_ns), the options that change
    the boxes (conf, iou, imgsz, max_det, tta_flip; not batch or device) and the image id lists."""
    from pipeline.detector import file_stamp

    return {"weights": file_stamp(weights),
            "options": {k: opts[k] for k in ("conf", "iou", "imgsz", "max_det", "tta_flip")},
            "oof_ids": _ids_hash(oof_ids), "test_ids": _ids_hash(test_ids)}


def sidecar_path(paths, name: str, fold: int):
    """Marker of a fold's finished prediction, beside its weights (one per fold: jobs never collide)."""
    return paths.det_dir(name, fold) / "predict_done.json"


def _fresh(outputs: list, sidecar, signature: dict) -> bool:
    if not all(p.is_file() for p in outputs):
        return False
    try:
        return json.loads(sidecar.read_text()) == signature
    except (OSError, ValueError):
        return False


def merge_failures(path, folds_run: list[int], rows: list[dict]) -> pd.DataFrame:
    """The failures table after this run: earlier rows of ``folds_run`` (and rows of an old file
    without a ``fold`` column, which cannot be attributed) dropped, this run's ``rows`` appended.
    Written atomically even when empty, so a stale list never outlives the run that fixed it."""
    new = pd.DataFrame(rows, columns=FAILURE_COLUMNS)
    old = None
    if path.is_file():
        try:
            old = pd.read_csv(path, dtype={"image_id": str, "path": str, "error": str})
        except (OSError, ValueError, pd.errors.EmptyDataError):
            old = None
    if old is not None and "fold" in old.columns and len(old):
        old = old[~old["fold"].isin(folds_run)].reindex(columns=FAILURE_COLUMNS)
        merged = pd.concat([old, new], ignore_index=True) if len(old) else new
    else:
        merged = new
    merged = merged.astype({"fold": int}).sort_values(["fold", "image_id"], kind="stable").reset_index(drop=True)
    write_csv_atomic(merged, path)
    return merged


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
    from pipeline.tables import read_images
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
    folds_run: list[int] = []
    YOLO = None
    for k in folds:
        weights = paths.det_weights(cfg.det.name, k)
        if not weights.is_file():
            raise DataError(f"{weights} not found: train fold {k} first (python -m pipeline train_det det.folds=[{k}]).")
        out_oof = paths.det_predictions(cfg.det.name, k, "oof")
        out_test = paths.det_predictions(cfg.det.name, k, "test")
        _, val_ids = fold_split(cfg, paths, k)
        sidecar = sidecar_path(paths, cfg.det.name, k)
        signature = predict_signature(weights, opts, val_ids, test_ids)
        if not cfg.run.force and _fresh([out_oof, out_test], sidecar, signature):
            print(f"[predict] fold {k}: {out_oof.name} and {out_test.name} match the weights, options and "
                  f"images ({sidecar.name}): skipped")
            oof = pd.read_csv(out_oof, dtype={"image_id": str})
        else:
            sidecar.unlink(missing_ok=True)  # a crash below must not leave old files looking current
            folds_run.append(k)
            if YOLO is None:
                YOLO = import_ultralytics()
            model = YOLO(str(weights))
            val_items, fail_v = _items(paths, meta, "train", val_ids)
            test_items, fail_t = _items(paths, meta, "test", test_ids)
            oof, fail_v2 = predict_images(model, val_items, desc=f"fold{k} oof", **opts)
            test, fail_t2 = predict_images(model, test_items, desc=f"fold{k} test", **opts)
            write_csv_atomic(oof, out_oof)
            write_csv_atomic(test, out_test)
            write_text_atomic(sidecar, json.dumps(signature, indent=2))
            for f in fail_v + fail_v2 + fail_t + fail_t2:
                all_failures.append({"fold": k, **f})
            print(f"[predict] fold {k}: {len(oof)} oof boxes on {len(val_items)} images, "
                  f"{len(test)} test boxes on {len(test_items)} images -> {paths.predictions_dir}")
        score = oof_map(paths, val_ids, oof, float(cfg.evaluate.iou_thr))
        if score is not None:
            summary[f"fold{k}_oof_map_findings"] = score
    fail_path = paths.det_failures(cfg.det.name)
    merged = merge_failures(fail_path, folds_run, all_failures)
    if all_failures:
        print(f"[predict] {len(all_failures)} image(s) could not be predicted; listed in {fail_path}")
    summary["failures"] = len(all_failures)
    if len(merged) > len(all_failures):
        print(f"[predict] {fail_path} also lists {len(merged) - len(all_failures)} failure(s) of folds not predicted now")
    return summary
