"""The evaluate stage's report page: which tables and figures, in which order, from the metrics.

Plots and the HTML writer are :mod:`pipeline.report`; this module only arranges them.
"""
from __future__ import annotations

import html
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.report import (label_distribution, normal_confusion, plot_confusion, plot_label_distribution,
                             plot_per_class_ap, plot_pr_curves, plot_roc, table_html, write_report)


def _f(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def _rule_section(rule: dict) -> tuple[str, str]:
    items = "".join(f"<li>{html.escape(r)}</li>" for r in rule["rules"] if r)
    return ("Out-of-fold rule", f"<p><b>{html.escape(rule['statement'])}</b></p><ul>{items}</ul>"
                                f"<p class='note'>{html.escape(rule['oof_vs_test'])}</p>")


def detection_figures(paths, scores: dict, truth, final, eval_ids, classes, iou: float, roc_curves: dict) -> list[Path]:
    names = list(classes.names)
    shown = {k: scores[k]["per_class"] for k in ("final", "no_filter", "baseline_no_finding") if k in scores}
    figs = [plot_per_class_ap(shown, [n for n in names if n in scores["final"]["per_class"]], paths.plot("per_class_ap"),
                              title=f"Out-of-fold AP per class (IoU {iou:g})"),
            plot_pr_curves(scores["final"]["_curves"], scores["final"]["_per_class_id"], names,
                           paths.plot("precision_recall")),
            plot_label_distribution(label_distribution(truth, final, len(names)), names, paths.plot("label_distribution")),
            plot_confusion(normal_confusion(truth, final, eval_ids, classes.normal_id), paths.plot("normal_confusion"))]
    if roc_curves:
        figs.append(plot_roc(roc_curves, paths.plot("classifier_roc")))
    return figs + oof_examples(paths, truth, final, classes)


def oof_examples(paths, truth, final, classes, per_fold: int = 2, min_score: float = 0.2) -> list[Path]:
    """A few out-of-fold images of each fold with their truth (green) and final predictions (orange,
    score >= ``min_score``, at most 8) drawn, as the report's last figures."""
    import cv2

    from pipeline.filtering import fold_of
    from pipeline.frames import frame_table
    from pipeline.overlay import draw, write_png
    from pipeline.tables import read_meta

    folds = fold_of(paths)
    frames = frame_table(read_meta(paths.meta_csv))
    boxed = truth[(truth["class_id"] != classes.normal_id) & truth["x_min"].notna()]
    out = []
    for k in sorted(set(folds.reindex(boxed["image_id"].unique()).dropna().astype(int))):
        ids = [i for i in boxed["image_id"].unique() if folds.get(i) == k][:per_fold]
        for image_id in ids:
            png = paths.image("train", image_id)
            if not png.is_file() or image_id not in frames.index:
                continue
            x0, y0, x1, y1 = frames.loc[image_id, ["x0", "y0", "x1", "y1"]]  # boxes drawn in the PNG's frame
            t = boxed[boxed["image_id"] == image_id]
            p = final[(final["image_id"] == image_id) & (final["class_id"] != classes.normal_id)
                      & (final["score"] >= min_score)].sort_values("score", ascending=False).head(8)
            name = lambda c: classes.names[int(c)] if 0 <= int(c) < len(classes.names) else str(c)
            pic = draw(cv2.imread(str(png), cv2.IMREAD_UNCHANGED), (x1 - x0, y1 - y0),
                       [(name(r.class_id), r.score, r.x_min - x0, r.y_min - y0, r.x_max - x0, r.y_max - y0)
                        for r in p.itertuples()],
                       [(name(r.class_id), r.x_min - x0, r.y_min - y0, r.x_max - x0, r.y_max - y0) for r in t.itertuples()],
                       corner=f"fold {k} (out of fold): {image_id}", max_side=512)
            out.append(write_png(paths.plot(f"oof_example_fold{k}_{image_id}"), pic))
    return out


def detection_page(paths, metrics: dict, scores: dict, figures: list[Path]) -> Path:
    s = metrics["summary"]
    rows = [("out-of-fold mAP, final", s["oof_map"]), ("out-of-fold mAP, fused detector alone", s["oof_map_no_filter"]),
            ("out-of-fold mAP, 'No finding' everywhere", s["baseline_map"]),
            ("classifier AUC (out-of-fold)", s["cls_auc"])]
    if "test_map" in s:
        rows += [("test mAP, final", s["test_map"]), ("test mAP, detector alone", s.get("test_map_no_filter"))]
    summ = pd.DataFrame({"value": [np.nan if v is None else float(v) for _, v in rows]},
                        index=pd.Index([r for r, _ in rows], name="metric"))
    variants = pd.DataFrame({k: {"mAP": v["map"], "images": v["n_images"], "predictions": v["n_predictions"],
                                 **{f"fold {f}": m for f, m in v.get("per_fold", {}).items()},
                                 "fold spread (sd)": float(np.std(list(v["per_fold"].values()), ddof=1))
                                 if len(v.get("per_fold", {})) > 1 else np.nan}
                             for k, v in scores.items()}).T
    variants.index.name = "variant"
    per_class = pd.DataFrame({k: v["per_class"] for k, v in scores.items()})
    per_class.insert(0, "truth boxes", pd.Series(scores["final"]["n_truth"]))
    per_class.index.name = "class"
    fus, flt = metrics["fusion"], metrics["filter"]
    src = "".join(f"<li>{html.escape(sp)}: {html.escape(', '.join(v))}</li>" for sp, v in (fus.get("sources") or {}).items())
    cover = []
    for sp in ("oof", "test"):
        c = flt.get(sp) or {}
        if c:
            lacking = c.get("folds_without_classifier") or []
            cover.append(f"<li>{sp}: filter applied to {c.get('n_filtered', 0)} of {c.get('n_images', 0)} images"
                         f"{' (classifier: ' + html.escape(str(c.get('classifier'))) + ')' if c.get('classifier') else ''}"
                         f"{'; folds without classifier probabilities: ' + str(lacking) if lacking else ''}"
                         f"{'; not applied: ' + html.escape(str(c.get('why_not'))) if c.get('why_not') else ''}"
                         f"; thresholds: {html.escape(str(c.get('thresholds')))}</li>")
    warn = "".join(f"<li>{html.escape(w)}</li>" for w in fus.get("warnings") or [])
    sections = [("Summary", f"<p>{html.escape(s['headline'])}</p>" + table_html(summ)),
                _rule_section(metrics["out_of_fold_rule"]),
                ("Fusion and the 2-class filter", f"<p>Models fused: {html.escape(str(fus.get('models')))}, folds "
                 f"{fus.get('folds')}.</p><ul>{src}</ul><ul>{''.join(cover)}</ul>"
                 + (f"<p><b>Warnings</b></p><ul>{warn}</ul>" if warn else "")
                 + "<p class='note'>Variants without a classifier carry a class-14 box scored 1 - (top finding score) "
                   "on every image, so 'final' vs 'no_filter' isolates the classifier's contribution.</p>"),
                (f"Variants (IoU {metrics['iou_thr']:g}, {metrics['n_oof_images']} out-of-fold images)", table_html(variants)),
                ("AP per class", table_html(per_class))]
    coco = (metrics.get("coco") or {}).get("final")
    if coco:
        rows = {n: {"COCO AP50": v.get("ap50"), "COCO AP": v.get("ap"), "truth boxes": v.get("n_truth"),
                    "predictions": v.get("n_pred")} for n, v in coco["per_class"].items()}
        rows["mean over classes"] = {"COCO AP50": coco["ap50"], "COCO AP": coco["ap"], "truth boxes": coco["n_truth"],
                                     "predictions": coco["n_predictions"]}
        rows["class-agnostic"] = {"COCO AP50": coco["agnostic"]["ap50"], "COCO AP": coco["agnostic"]["ap"],
                                  "class-agnostic AP50": coco["agnostic"]["ap50"]}
        for k, v in (coco.get("per_fold") or {}).items():  # each fold's images alone: the spread
            rows[f"fold {k} alone (mean over classes)"] = {"COCO AP50": v["ap50"], "COCO AP": v["ap"],
                                                            "class-agnostic AP50": v.get("ap50_agnostic")}
        table = pd.DataFrame(rows).T.apply(pd.to_numeric, errors="coerce")
        table.index.name = "class"
        sections.append((f"COCO AP (out-of-fold, final; max {coco['max_dets']} boxes per image; the headline "
                         f"metric is {metrics['summary'].get('headline_metric')})", table_html(table)))
    c = metrics["classifier"]
    if c.get("per_label"):
        pl = pd.DataFrame({"AUC": c["per_label"]})
        pl.index.name = "label"
        sections.append(("Classifier AUC per label", table_html(pl)))
    if "test" in metrics:
        tp = pd.DataFrame({k: v["per_class"] for k, v in metrics["test"].items() if isinstance(v, dict)})
        tp.index.name = "class"
        sections.append(("Test set (known labels) AP per class", table_html(tp)))
    from pipeline.localise_report import sections as localisation_sections

    sections += localisation_sections(metrics)
    return write_report(paths.report, f"Run {metrics['run']}: evaluation", sections, figures)


def classifier_only_page(cfg, paths, classes, rule: dict) -> dict:
    """A run without detector predictions (e.g. ChestX-ray14 classification): classifier metrics only,
    plus the weak-localisation table train_cls wrote, in the same metrics.json / report.html."""
    from pipeline.evaluation import classifier_metrics

    cls_metrics, roc_curves = classifier_metrics(cfg, paths, classes)
    cls_json = paths.cls_metrics(cfg.cls.name)
    extra = json.loads(cls_json.read_text()) if cls_json.is_file() else {}
    metrics = {"run": paths.name, "dataset": cfg.data.format, "detector": None,
               "note": "no detector predictions in this run: classifier metrics only", "out_of_fold_rule": rule,
               "summary": {"cls_auc": cls_metrics.get("auc")}, "classifier": cls_metrics,
               "classifier_details": extra}
    from pipeline.localise_report import print_tables, sections as localisation_sections, write_metrics

    write_metrics(paths, metrics)  # with the localise stage's comparison, when the run has one
    out = {"cls_auc": cls_metrics.get("auc"), "metrics": str(paths.metrics_json)}
    if cfg.evaluate.plots:
        figures = [plot_roc(roc_curves, paths.plot("classifier_roc"))] if roc_curves else []
        sections = [("Summary", f"<p>No detector predictions in this run; classifier AUC (out-of-fold): "
                                f"{_f(cls_metrics.get('auc'))}</p>"), _rule_section(rule)]
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
            sections.append(("Weak localisation (Grad-CAM boxes): share of boxes found at IoU > T", table_html(table)))
        sections += localisation_sections(metrics)
        write_report(paths.report, f"Run {paths.name}: evaluation (classifier only)", sections, figures)
        out["report"] = str(paths.report)
    print_tables(metrics)
    print(f"[evaluate] no detector predictions: classifier out-of-fold AUC {_f(cls_metrics.get('auc'))}")
    return {k: v for k, v in out.items() if v is not None}
