"""Scores of a run's predictions: the VinBigData mAP of each variant (per class, per fold) and the
classifier's AUC against the image-level labels. Pure over tables; the evaluate stage reads the files."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.tables import read_table


def test_truth_path(cfg) -> Path:
    """Where a dataset with known test labels keeps them (the demo data writes this file)."""
    return Path(cfg.data.root) / "test_truth.csv"


def score(truth: pd.DataFrame, preds: pd.DataFrame, names: list[str], iou_thr: float,
          folds: pd.Series | None = None) -> dict:
    """mAP, per-class AP (keyed by class name) and, with ``folds`` (image_id -> fold), mAP per fold."""
    from pipeline.metrics import vinbigdata_map

    res = vinbigdata_map(truth, preds, iou_thr=iou_thr)
    out = {
        "map": float(res["map"]),
        "per_class": {names[c] if c < len(names) else str(c): float(ap) for c, ap in sorted(res["per_class"].items())},
        "n_truth": {names[c] if c < len(names) else str(c): int(n) for c, n in sorted(res["n_truth"].items())},
        "n_images": int(truth["image_id"].nunique()),
        "n_predictions": int(len(preds)),
    }
    if folds is not None:
        per_fold = {}
        tf = truth["image_id"].map(folds)
        pf = preds["image_id"].map(folds)
        for k in sorted(tf.dropna().unique()):
            t = truth[tf == k]
            if len(t):
                per_fold[str(int(k))] = float(vinbigdata_map(t, preds[pf == k], iou_thr=iou_thr)["map"])
        out["per_fold"] = per_fold
    out["_curves"] = res["curves"]  # for plots; not written to metrics.json
    out["_per_class_id"] = res["per_class"]
    return out


def _public(result: dict) -> dict:
    return {k: v for k, v in result.items() if not k.startswith("_")}


def classifier_metrics(cfg, paths, classes) -> tuple[dict, dict]:
    """AUC of the out-of-fold classifier file (binary: p_abnormal; multilabel: one per finding, + mean).
    Returns (metrics, roc curves for the plot)."""
    from pipeline.metrics import per_label_auc, roc_auc

    cls_name = cfg.filter.classifier or cfg.cls.name
    path = paths.cls_predictions(cls_name, "oof")
    if not path.is_file():
        return {"name": cls_name, "available": False, "note": f"{path.name} not found"}, {}
    df = read_table(path, "classifier predictions", ["image_id"])
    # image-level truth: images.csv labels (any reader, as cls.binary_source=radiologists), else boxes.csv
    labels = None
    if paths.images_csv.is_file() and cfg.cls.binary_source == "radiologists":
        im = read_table(paths.images_csv, "images table", ["image_id", "labels"])
        lab = im["labels"].astype("str").replace({"nan": "", "<NA>": ""}).fillna("")
        labels = pd.Series(lab.to_numpy(), index=im["image_id"].astype("str"))
        labels = labels[labels != ""]
    if labels is None or labels.empty:
        truth = read_table(paths.boxes_csv, "truth boxes", ["image_id", "class_id"])
        sets = truth.groupby(truth["image_id"].astype("str"))["class_id"].agg(
            lambda c: "|".join(str(int(v)) for v in sorted(set(c))))
        labels = sets
    df = df[df["image_id"].astype("str").isin(labels.index)].reset_index(drop=True)
    if df.empty:
        return {"name": cls_name, "available": False, "note": f"{path.name}: no image has a known label"}, {}
    lab_sets = [set(int(float(x)) for x in str(s).split("|") if x != "") for s in labels.reindex(df["image_id"].astype("str"))]
    out = {"name": cls_name, "available": True, "n_images": int(len(df))}
    curves = {}
    if "p_abnormal" in df.columns:
        y = np.array([int(any(c != classes.normal_id for c in s)) for s in lab_sets])
        s = pd.to_numeric(df["p_abnormal"], errors="coerce").to_numpy(float)
        ok = np.isfinite(s)
        auc = roc_auc(y[ok], s[ok])
        out.update(task="binary", auc=auc, n_abnormal=int(y.sum()))
        if not math.isnan(auc):
            curves["abnormal"] = (y[ok], s[ok], auc)
    else:
        names = list(classes.names)
        cols = [(i, f"p_{n}") for i, n in enumerate(classes.findings) if f"p_{n}" in df.columns]
        if not cols:
            return {"name": cls_name, "available": False,
                    "note": f"{path.name} has neither p_abnormal nor p_<class name> columns"}, {}
        y = np.array([[int(i in s) for i, _ in cols] for s in lab_sets])
        sc = df[[c for _, c in cols]].apply(pd.to_numeric, errors="coerce").fillna(0.0).to_numpy(float)
        aucs = per_label_auc(y, sc, [names[i] for i, _ in cols])
        out.update(task="multilabel", auc=aucs["mean"], per_label=aucs)
        for j, (i, _) in enumerate(cols):
            if not math.isnan(aucs[names[i]]):
                curves[names[i]] = (y[:, j], sc[:, j], aucs[names[i]])
    return out, curves
