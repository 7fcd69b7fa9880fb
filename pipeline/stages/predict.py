"""Stage ``predict``: each fold's detector on its validation images (oof) and on every test image.

Writes ``predictions/det_<det.name>_fold<k>_oof.csv`` and ``..._test.csv``: image_id, class_id,
score, x_min, y_min, x_max, y_max (ORIGINAL pixels, via meta.csv), tta (orig | hflip). The flipped
predictions are kept as separate rows; the fuse stage merges them with the other folds and models.
Images that could not be predicted go to ``predictions/det_<name>_fold<k>_failures.csv`` (one file per
fold, so fold jobs never write the same file).

A fold's prediction is one unit of work (:mod:`pipeline.work`, record ``predict.json``): skipped when its
three files exist and the fingerprint of what it read is unchanged: the weights' content (``det.select``
names which: ``last.pt`` by default, never a checkpoint chosen on the fold), the options that change
boxes (conf, iou, imgsz, max_det, tta_flip), and the oof and test images (id, conversion fingerprint,
original size).
"""
from __future__ import annotations

import pandas as pd

from pipeline.classes import run_classes
from pipeline.errors import ConfigError, DataError
from pipeline.io import write_csv_atomic
from pipeline.tables import read_table

FAILURE_COLUMNS = ["fold", "image_id", "path", "error"]


def _items(paths, meta: pd.DataFrame, split: str, ids: list[str]) -> tuple[list[tuple], list[dict]]:
    """(image_id, png, original width, original height, frame) for ids (the frame: the part of the original
    the PNG shows, the lung crop or the whole image); ids without meta rows are failures."""
    from pipeline.frames import frame_table

    rows = meta[meta["split"] == split].drop_duplicates("image_id")
    frames = frame_table(rows)
    sizes = rows.set_index("image_id")[["width", "height"]].apply(pd.to_numeric, errors="coerce")
    items, failures = [], []
    for i in ids:
        if i not in sizes.index or pd.isna(sizes.at[i, "width"]) or pd.isna(sizes.at[i, "height"]):
            failures.append({"image_id": i, "path": str(paths.image(split, i)),
                             "error": f"no original size in {paths.meta_csv}"})
            continue
        items.append((i, paths.image(split, i), float(sizes.at[i, "width"]), float(sizes.at[i, "height"]),
                      tuple(frames.loc[i, ["x0", "y0", "x1", "y1"]])))
    return items, failures


def _items_digest(items: list[tuple], fps: dict[str, str]) -> str:
    from pipeline.fingerprint import digest

    return digest(sorted([i, fps.get(i), w, h, list(frame)] for i, _, w, h, frame in items))


def oof_map(paths, val_ids: list[str], oof: pd.DataFrame, iou_thr: float) -> float | None:
    """VinBigData mAP (findings only) of the un-flipped oof predictions against boxes.csv; None when the
    fold has no finding boxes."""
    from pipeline.metrics import vinbigdata_map

    if not paths.boxes_csv.is_file():
        return None
    truth = pd.read_csv(paths.boxes_csv, dtype={"image_id": str})
    # Findings only: the detector never predicts the normal class; that class is scored after the
    # 2-class filter in the evaluate stage, and counting it here would halve every fold's figure.
    truth = truth[truth["image_id"].isin(set(val_ids)) & (truth["class_id"] != run_classes(paths).normal_id)]
    if truth.empty:
        return None
    pred = oof[oof["tta"] == "orig"].drop(columns=["tta"])
    return round(float(vinbigdata_map(truth, pred, iou_thr=iou_thr)["map"]), 4)


def run(cfg, paths) -> dict:
    from pipeline.detector import import_ultralytics, predict_images, predict_imgsz, resolve_detector_device
    from pipeline.fingerprint import file_digest
    from pipeline.stages.train_det import check_select, fold_split
    from pipeline.tables import image_fingerprints, read_images, read_meta
    from pipeline.work import Work

    device = resolve_detector_device(cfg.run.device)
    select = check_select(cfg)
    meta = read_meta(paths.meta_csv)
    images = read_images(paths.images_csv)
    test_ids = images.loc[images["split"] == "test", "image_id"].tolist()
    fps = {**image_fingerprints(meta, "train"), **image_fingerprints(meta, "test")}
    folds = [int(k) for k in cfg.det.folds]
    if not folds:
        raise ConfigError("det.folds is empty; list the folds to predict, e.g. det.folds=[0,1,2,3,4].")
    opts = dict(imgsz=predict_imgsz(cfg.det), conf=float(cfg.det.conf), iou=float(cfg.det.iou),
                max_det=int(cfg.det.max_det), batch=int(cfg.det.predict_batch), device=device,
                tta_flip=bool(cfg.det.tta_flip))
    name = cfg.det.name
    summary: dict = {"weights": select}
    n_failures, statuses, YOLO = 0, [], None
    for k in folds:
        weights = paths.det_weights(name, k, select)
        if not weights.is_file():
            raise DataError(f"{weights} not found: train fold {k} first (python -m pipeline train_det det.folds=[{k}]).")
        trained = Work("", paths.det_train_record(name, k), {}).read()
        if trained is not None and trained.get("status") != "done":  # weights of a killed or running training
            raise DataError(f"{paths.det_train_record(name, k)} says fold {k}'s training did not finish (killed, failed "
                            f"or still running), so {weights} is not its final weights: run train_det det.folds=[{k}] "
                            "again (it resumes), then predict.")
        out_oof, out_test = paths.det_predictions(name, k, "oof"), paths.det_predictions(name, k, "test")
        fail_path = paths.det_failures(name, k)
        _, val_ids = fold_split(paths, k)
        val_items, fail_v = _items(paths, meta, "train", val_ids)
        test_items, fail_t = _items(paths, meta, "test", test_ids)
        inputs = {"weights": file_digest(weights), "select": select,
                  "options": {o: opts[o] for o in ("conf", "iou", "imgsz", "max_det", "tta_flip")},
                  "oof": _items_digest(val_items, fps), "test": _items_digest(test_items, fps)}
        work = Work(f"predict {name} fold {k}", paths.det_predict_record(name, k), inputs,
                    outputs=[out_oof, out_test, fail_path])
        if work.state(bool(cfg.run.force)) == "done":
            print(f"[predict] fold {k}: finished earlier with the same weights, options and images: skipped")
            statuses.append("skipped")
            oof = pd.read_csv(out_oof, dtype={"image_id": str})
            n_failures += len(read_table(fail_path, "prediction failures"))
        else:
            print(f"[predict] fold {k}: predicting ({work.why_not_done()})")
            work.start()
            if YOLO is None:
                YOLO = import_ultralytics(cfg.run.threads)
            model = YOLO(str(weights))
            oof, fail_v2 = predict_images(model, val_items, desc=f"fold{k} oof", **opts)
            test, fail_t2 = predict_images(model, test_items, desc=f"fold{k} test", **opts)
            failures = [{"fold": k, **f} for f in fail_v + fail_v2 + fail_t + fail_t2]
            write_csv_atomic(oof, out_oof)
            write_csv_atomic(test, out_test)
            write_csv_atomic(pd.DataFrame(failures, columns=FAILURE_COLUMNS), fail_path)
            work.finish({"oof_boxes": len(oof), "test_boxes": len(test), "failures": len(failures)})
            statuses.append("predicted")
            n_failures += len(failures)
            print(f"[predict] fold {k}: {len(oof)} oof boxes on {len(val_items)} images, "
                  f"{len(test)} test boxes on {len(test_items)} images -> {paths.predictions_dir}")
            if failures:
                print(f"[predict] fold {k}: {len(failures)} image(s) could not be predicted; listed in {fail_path}")
        score = oof_map(paths, val_ids, oof, float(cfg.evaluate.iou_thr))
        if score is not None:
            summary[f"fold{k}_oof_map_findings"] = score
    summary["failures"] = n_failures
    summary["skipped"] = all(s == "skipped" for s in statuses)
    return summary
