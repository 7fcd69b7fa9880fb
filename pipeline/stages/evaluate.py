"""Evaluate stage: out-of-fold VinBigData mAP of every step, classifier AUC, plots and one report page.

Scored against ``boxes.csv`` (the fused truth, train images), on the images of the folds that have
out-of-fold predictions, at ``evaluate.iou_thr``:

* ``det_<name>``: each detector alone (its folds' oof files, un-flipped predictions only);
* ``no_filter``: the fused boxes (models x flips) without the classifier;
* ``final``: ``final_oof.csv``, i.e. with the 2-class filter when it was applied;
* ``baseline_no_finding``: every image "14 1 0 0 1 1" (what the sample submission scores).

Variants without a classifier get a class-14 box scored 1 - (top finding score) on every image
(:func:`pipeline.fusion.add_normal_from_detections`), so the normal class is ranked in all of them and
the difference between ``no_filter`` and ``final`` is the classifier's contribution alone.
With ``<data.root>/test_truth.csv`` (the demo writes one) ``final_test.csv`` is scored too.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.classes import NORMAL_ID, class_names
from pipeline.errors import DataError, PipelineError
from pipeline.fusion import DET_COLUMNS, add_normal_from_detections, normal_rows
from pipeline.io import write_text_atomic
from pipeline.paths import RunPaths
from pipeline.tables import read_folds, read_table
from pipeline.stages.fuse import (find_det_files, read_detections,
                                  split_ids)

TRUTH_COLUMNS = ["image_id", "class_id", "x_min", "y_min", "x_max", "y_max"]


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


def _json_safe(obj):
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return None if math.isnan(float(obj)) else float(obj)
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _fold_map(paths: RunPaths) -> pd.Series | None:
    if not paths.folds_csv.is_file():
        return None
    f = read_folds(paths.folds_csv)
    return pd.Series(f["fold"].to_numpy(), index=f["image_id"])


def classifier_metrics(cfg, paths: RunPaths, names: list[str]) -> tuple[dict, dict]:
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
        y = np.array([int(any(c != NORMAL_ID for c in s)) for s in lab_sets])
        s = pd.to_numeric(df["p_abnormal"], errors="coerce").to_numpy(float)
        ok = np.isfinite(s)
        auc = roc_auc(y[ok], s[ok])
        out.update(task="binary", auc=auc, n_abnormal=int(y.sum()))
        if not math.isnan(auc):
            curves["abnormal"] = (y[ok], s[ok], auc)
    else:
        cols = [(i, f"p_{n}") for i, n in enumerate(names[:NORMAL_ID]) if f"p_{n}" in df.columns]
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


def _filter_info(cfg, paths: RunPaths) -> dict:
    """What the fuse stage did with the filter (its marker's summary), else the configured values."""
    info = {"enabled": bool(cfg.filter.enabled), "low": cfg.filter.low, "high": cfg.filter.high,
            "multiply": bool(cfg.filter.multiply), "tune": bool(cfg.filter.tune), "applied": None}
    marker = paths.done_marker("fuse")
    if marker.is_file():
        try:
            s = json.loads(marker.read_text()).get("summary") or {}
        except ValueError:
            s = {}
        if "filter_applied" in s:
            info.update(applied=s["filter_applied"], classifier=s.get("filter_classifier"),
                        low=s.get("filter_low"), high=s.get("filter_high"))
    return info


def run(cfg, paths: RunPaths) -> dict:
    from pipeline.report import (label_distribution, normal_confusion, plot_confusion, plot_label_distribution,
                                 plot_per_class_ap, plot_pr_curves, plot_roc, table_html, write_report)

    iou = float(cfg.evaluate.iou_thr)
    names = class_names(cfg.data.format)
    if not paths.filtered_predictions("oof").is_file() and _classifier_file(cfg, paths).is_file():
        return _classifier_only(cfg, paths, names, plot_roc, table_html, write_report)
    if not paths.filtered_predictions("oof").is_file():
        raise PipelineError(f"{paths.filtered_predictions('oof')}: out-of-fold final predictions not found. "
                            "Run the fuse stage first (it needs out-of-fold detector predictions).")
    final = read_detections(paths.filtered_predictions("oof"), "final out-of-fold predictions")
    truth_all = read_table(paths.boxes_csv, "truth boxes (fused, train.csv form)", TRUTH_COLUMNS)
    truth_all["image_id"] = truth_all["image_id"].astype("str")
    try:
        train_ids = set(split_ids(paths, "train"))
    except DataError:
        train_ids = set(truth_all["image_id"])
    eval_ids = [i for i in pd.unique(final["image_id"]) if i in train_ids]
    unknown = sorted(set(final["image_id"]) - train_ids)
    if unknown:
        raise DataError(f"{paths.filtered_predictions('oof')}: {len(unknown)} image(s) that are not train images, "
                        f"e.g. {unknown[:5]}. Out-of-fold predictions must be on train images; re-run predict and fuse.")
    truth = truth_all[truth_all["image_id"].isin(set(eval_ids))].reset_index(drop=True)
    no_truth = sorted(set(eval_ids) - set(truth["image_id"]))
    if no_truth and cfg.data.format == "chestxray14":
        # NIH boxes cover 880 images; the others have image-level labels but no localisation truth
        print(f"[evaluate] {len(no_truth)} image(s) without box truth (ChestX-ray14 boxes cover few images) "
              "are left out of the detection scores")
        eval_ids = [i for i in eval_ids if i not in set(no_truth)]
        final = final[final["image_id"].isin(set(eval_ids))]
    elif no_truth:
        raise DataError(f"{paths.boxes_csv}: {len(no_truth)} train image(s) with predictions have no truth row "
                        f"(a normal image has one class-14 row), e.g. {no_truth[:5]}. Re-run prepare.")
    folds = _fold_map(paths)
    scores: dict[str, dict] = {}
    scores["final"] = score(truth, final, names, iou, folds)
    if paths.fused_predictions("oof").is_file():
        fused = read_detections(paths.fused_predictions("oof"), "fused out-of-fold predictions")
        fused = fused[fused["image_id"].isin(set(eval_ids))]
        scores["no_filter"] = score(truth, add_normal_from_detections(fused, eval_ids), names, iou, folds)
    scores["baseline_no_finding"] = score(truth, normal_rows(eval_ids, 1.0), names, iou, folds)
    models = list(cfg.fuse.models) if cfg.fuse.models is not None else None
    for name, by_split in find_det_files(paths, models).items():
        if not by_split["oof"]:
            continue
        det = pd.concat([read_detections(p, f"{name} fold {k} oof predictions") for k, p in sorted(by_split["oof"].items())],
                        ignore_index=True)
        if "tta" in det.columns:
            det = det[det["tta"] == "orig"]
        det = det[det["image_id"].isin(set(eval_ids))][DET_COLUMNS]
        scores[f"det_{name}"] = score(truth, add_normal_from_detections(det, eval_ids), names, iou, folds)

    cls_metrics, roc_curves = classifier_metrics(cfg, paths, names)
    filt = _filter_info(cfg, paths)
    if filt["applied"] is None:
        filt["applied"] = bool(cfg.filter.enabled and cls_metrics.get("available") and cls_metrics.get("task") == "binary")

    test = None
    tpath = test_truth_path(cfg)
    if tpath.is_file() and paths.filtered_predictions("test").is_file():
        ttruth = read_table(tpath, "test truth", TRUTH_COLUMNS)
        ttruth["image_id"] = ttruth["image_id"].astype("str")
        tfinal = read_detections(paths.filtered_predictions("test"), "final test predictions")
        # every test image with truth counts, predicted or not (an unpredicted image only lowers recall)
        ttruth = ttruth[ttruth["image_id"].isin(set(split_ids(paths, "test")))]
        if len(ttruth):
            test = {"truth_file": str(tpath), "final": _public(score(ttruth, tfinal, names, iou))}
            if paths.fused_predictions("test").is_file():
                tf = read_detections(paths.fused_predictions("test"), "fused test predictions")
                ids = list(pd.unique(ttruth["image_id"]))
                tf = tf[tf["image_id"].isin(set(ids))]
                test["no_filter"] = _public(score(ttruth, add_normal_from_detections(tf, ids), names, iou))

    summary = {
        "oof_map": scores["final"]["map"],
        "oof_map_no_filter": scores.get("no_filter", {}).get("map"),
        "baseline_map": scores["baseline_no_finding"]["map"],
        "cls_auc": cls_metrics.get("auc"),
    }
    if test is not None:
        summary["test_map"] = test["final"]["map"]
        summary["test_map_no_filter"] = test.get("no_filter", {}).get("map")
    metrics = {
        "run": paths.name, "dataset": cfg.data.format, "iou_thr": iou, "class_names": names,
        "n_oof_images": len(eval_ids), "summary": summary, "filter": filt,
        "oof": {k: _public(v) for k, v in scores.items()}, "classifier": cls_metrics,
    }
    if test is not None:
        metrics["test"] = test
    write_text_atomic(paths.metrics_json, json.dumps(_json_safe(metrics), indent=2))

    figures: list[Path] = []
    if cfg.evaluate.plots:
        pdir = paths.plots_dir
        shown = {k: scores[k]["per_class"] for k in ("final", "no_filter", "baseline_no_finding") if k in scores}
        figures.append(plot_per_class_ap(shown, [n for n in names if n in scores["final"]["per_class"]],
                                         pdir / "per_class_ap.png", title=f"Out-of-fold AP per class (IoU {iou:g})"))
        figures.append(plot_pr_curves(scores["final"]["_curves"], scores["final"]["_per_class_id"], names,
                                      pdir / "precision_recall.png"))
        figures.append(plot_label_distribution(label_distribution(truth, final, len(names)), names,
                                               pdir / "label_distribution.png"))
        figures.append(plot_confusion(normal_confusion(truth, final, eval_ids), pdir / "normal_confusion.png"))
        if roc_curves:
            figures.append(plot_roc(roc_curves, pdir / "classifier_roc.png"))
    if cfg.evaluate.plots:
        _report(paths, metrics, scores, figures, table_html, write_report)
    print(f"[evaluate] oof mAP@{iou:g}: final {summary['oof_map']:.4f}, no filter "
          f"{_f(summary['oof_map_no_filter'])}, 'No finding' baseline {summary['baseline_map']:.4f}"
          + (f", test {summary['test_map']:.4f}" if test else "") + f"; classifier AUC {_f(summary['cls_auc'])}")
    out = {k: v for k, v in summary.items() if v is not None}
    out["metrics"] = str(paths.metrics_json)
    if cfg.evaluate.plots:
        out["report"] = str(paths.report)
    return out


def _classifier_file(cfg, paths: RunPaths) -> Path:
    return paths.cls_predictions(cfg.filter.classifier or cfg.cls.name, "oof")


def _classifier_only(cfg, paths: RunPaths, names, plot_roc, table_html, write_report) -> dict:
    """A run without detector predictions (e.g. ChestX-ray14 classification): classifier metrics only,
    plus the weak-localisation table train_cls wrote, in the same metrics.json / report.html."""
    cls_metrics, roc_curves = classifier_metrics(cfg, paths, names)
    cls_json = paths.cls_metrics(cfg.cls.name)
    extra = json.loads(cls_json.read_text()) if cls_json.is_file() else {}
    metrics = {"run": paths.name, "dataset": cfg.data.format, "detector": None,
               "note": "no detector predictions in this run: classifier metrics only",
               "summary": {"cls_auc": cls_metrics.get("auc")}, "classifier": cls_metrics,
               "classifier_details": extra}
    write_text_atomic(paths.metrics_json, json.dumps(_json_safe(metrics), indent=2))
    figures: list[Path] = []
    if cfg.evaluate.plots:
        if roc_curves:
            figures.append(plot_roc(roc_curves, paths.plots_dir / "classifier_roc.png"))
        sections = [("Summary", f"<p>No detector predictions in this run; classifier AUC (out-of-fold): "
                                f"{_f(cls_metrics.get('auc'))}</p>")]
        if cls_metrics.get("per_label"):
            pl = pd.DataFrame({"AUC": cls_metrics["per_label"]})
            pl.index.name = "label"
            sections.append(("Classifier AUC per label", table_html(pl)))
        loc = extra.get("localization") or extra.get("localisation")
        if isinstance(loc, dict) and isinstance(loc.get("overall"), dict):
            rows = {"all boxes": loc["overall"], **(loc.get("per_class") or {})}
            if loc.get("reference_wang2017_mean"):
                rows["Wang et al. 2017 (mean)"] = loc["reference_wang2017_mean"]
            table = pd.DataFrame({k: {t: v for t, v in r.items() if t != "n_boxes"} for k, r in rows.items()}).T
            table.index.name = f"T (IoU threshold); {loc.get('n_boxes', '?')} boxes"
            sections.append(("Weak localisation (Grad-CAM boxes): share of boxes found at IoU > T",
                             table_html(table)))
        write_report(paths.report, f"Run {paths.name}: evaluation (classifier only)", sections, figures)
    print(f"[evaluate] no detector predictions: classifier out-of-fold AUC {_f(cls_metrics.get('auc'))}")
    out = {"cls_auc": cls_metrics.get("auc"), "metrics": str(paths.metrics_json)}
    if cfg.evaluate.plots:
        out["report"] = str(paths.report)
    return {k: v for k, v in out.items() if v is not None}


def _f(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def _report(paths, metrics, scores, figures, table_html, write_report) -> None:
    s = metrics["summary"]
    rows = [("out-of-fold mAP, final (2-class filter)" if metrics["filter"]["applied"] else
             "out-of-fold mAP, final (no classifier: detector p(normal))", s["oof_map"]),
            ("out-of-fold mAP, fused, no filter", s["oof_map_no_filter"]),
            ("out-of-fold mAP, 'No finding' everywhere", s["baseline_map"]),
            ("classifier AUC (out-of-fold)", s["cls_auc"])]
    if "test_map" in s:
        rows += [("test mAP, final", s["test_map"]), ("test mAP, no filter", s.get("test_map_no_filter"))]
    summ = pd.DataFrame({"value": [np.nan if v is None else float(v) for _, v in rows]},
                        index=pd.Index([r for r, _ in rows], name="metric"))
    variants = pd.DataFrame({k: {"mAP": v["map"], "images": v["n_images"], "predictions": v["n_predictions"],
                                 **{f"fold {f}": m for f, m in v.get("per_fold", {}).items()}}
                             for k, v in scores.items()}).T
    variants.index.name = "variant"
    per_class = pd.DataFrame({k: v["per_class"] for k, v in scores.items()})
    per_class.insert(0, "truth boxes", pd.Series(scores["final"]["n_truth"]))
    per_class.index.name = "class"
    f = metrics["filter"]
    filt = (f"<p>2-class filter: enabled={f['enabled']}, applied={f['applied']}, classifier={f.get('classifier')}, "
            f"low={f['low']}, high={f['high']}, multiply={f['multiply']}, tuned={f['tune']}.</p>"
            "<p class='note'>Variants without a classifier carry a class-14 box scored 1 - (top finding score) "
            "on every image, so 'final' vs 'no_filter' isolates the classifier's contribution.</p>")
    sections = [("Summary", table_html(summ)), ("2-class filter", filt),
                (f"Variants (IoU {metrics['iou_thr']:g}, {metrics['n_oof_images']} out-of-fold images)",
                 table_html(variants)),
                ("AP per class", table_html(per_class))]
    c = metrics["classifier"]
    if c.get("per_label"):
        pl = pd.DataFrame({"AUC": c["per_label"]})
        pl.index.name = "label"
        sections.append(("Classifier AUC per label", table_html(pl)))
    if "test" in metrics:
        tp = pd.DataFrame({k: v["per_class"] for k, v in metrics["test"].items() if isinstance(v, dict)})
        tp.index.name = "class"
        sections.append(("Test set (known labels) AP per class", table_html(tp)))
    write_report(paths.report, f"Run {metrics['run']}: evaluation", sections, figures)
