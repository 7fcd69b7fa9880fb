"""Evaluate stage: out-of-fold VinBigData mAP of every step, classifier AUC, plots and one report page.

Scored against ``boxes.csv`` (the fused truth) on the detector's images (``detection.csv`` roles truth and
negative) of the folds in ``det.folds``, at ``evaluate.iou_thr``:

* ``det_<name>``: each fused detector alone (its folds' oof files, un-flipped predictions only);
* ``no_filter``: the fused boxes (models x flips) without the classifier;
* ``final``: ``final_oof.csv``: with the 2-class filter on the images it covered (``fuse.json`` says how many);
* ``baseline_no_finding``: every image "14 1 0 0 1 1" (what the sample submission scores).

Variants without a classifier get a class-14 box scored 1 - (top finding score) on every image, so the
normal class is ranked in all of them and ``final`` - ``no_filter`` is the classifier's contribution.
With ``<data.root>/test_truth.csv`` (the demo writes one) ``final_test.csv`` is scored too.
Out-of-fold rule (stated in the report and metrics.json): nothing reported for fold k was chosen by
looking at fold k, unless an option whose name says ``optimistic`` was set (listed then).
"""
from __future__ import annotations

import json

import pandas as pd

from pipeline.classes import run_classes
from pipeline.errors import PipelineError
from pipeline.evaluation import _public, classifier_metrics, score, test_truth_path
from pipeline.fusion import DET_COLUMNS, add_normal_from_detections, normal_rows
from pipeline.metrics import TRUTH_COLUMNS
from pipeline.paths import RunPaths
from pipeline.stages.fuse import model_files, read_detections, split_image_ids
from pipeline.tables import read_table


def oof_rule(cfg) -> dict:
    """Which selection rules applied, in words, and the optimistic options that were set."""
    stages = list(cfg.run.stages)
    uses_cls = "train_cls" in stages
    uses_filter = uses_cls and bool(cfg.filter.enabled)
    chosen = [("det.select", cfg.det.select, "train_det" in stages), ("cls.select", cfg.cls.select, uses_cls),
              ("filter.tune", cfg.filter.tune, uses_filter)]
    optimistic = [f"{k}={v}" for k, v, used in chosen if used and "optimistic" in str(v)]
    rules = [f"detector: {'the last epoch of each fold' if cfg.det.select == 'last' else 'best.pt chosen on the fold itself'}",
             {"inner": f"classifier: epoch and early stop chosen on an inner holdout ({cfg.cls.inner_holdout:g}) of the "
                       "training folds", "last": "classifier: the last epoch of each fold",
              "best_on_fold_optimistic": "classifier: epoch chosen on the fold itself"}.get(str(cfg.cls.select), ""),
             {"none": f"2-class filter thresholds as configured ({cfg.filter.low:g} / {cfg.filter.high:g})",
              "nested": "2-class filter thresholds nested: fold k's chosen on the other folds",
              "on_oof_optimistic": "2-class filter thresholds chosen on the scored out-of-fold data"}.get(str(cfg.filter.tune), "")]
    if not uses_cls:
        rules[1] = ""
    if not uses_filter:
        rules[2] = ""
    text = ("Honest out-of-fold: nothing reported for fold k was chosen by looking at fold k." if not optimistic else
            f"OPTIMISTIC out-of-fold figures: {', '.join(optimistic)} chose on the folds that are reported.")
    return {"honest": not optimistic, "statement": text, "rules": rules, "optimistic_options": optimistic,
            "oof_vs_test": "An out-of-fold image's boxes fuse its one fold's detector (with and without flip: 2 "
                           "sources); a test image's fuse every fold's (folds x flips). WBF's average confidence "
                           "divides by the number of sources, so test scores sit on another scale: thresholds "
                           "and 'No finding' scores chosen out of fold mean something else on test."}


def _f(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def _fuse_info(paths: RunPaths) -> dict:
    try:
        return json.loads(paths.fuse_summary.read_text())
    except (OSError, ValueError):
        return {}


def _headline(cfg, fuse_info: dict) -> str:
    cover = fuse_info.get("filter_oof") or {}
    n, m = cover.get("n_filtered", 0), cover.get("n_images", 0)
    if not n:
        why = cover.get("why_not") or "no classifier probabilities"
        return f"final = fused detections + the detector's own normal box (2-class filter not applied: {why})"
    part = "" if n == m else f" (the other {m - n}: the detector's own normal box)"
    return f"final = fused detections with the 2-class filter on {n} of {m} out-of-fold images{part}"


def run(cfg, paths: RunPaths) -> dict:
    from pipeline.report_page import classifier_only_page, detection_page, detection_figures

    iou = float(cfg.evaluate.iou_thr)
    classes = run_classes(paths)
    names = list(classes.names)
    rule = oof_rule(cfg)
    cls_name = cfg.filter.classifier or cfg.cls.name
    if not paths.filtered_predictions("oof").is_file() and paths.cls_predictions(cls_name, "oof").is_file():
        return classifier_only_page(cfg, paths, classes, rule)
    if not paths.filtered_predictions("oof").is_file() and paths.localisation_json.is_file():
        from pipeline.localise_report import localisation_page

        return localisation_page(cfg, paths, rule)
    if not paths.filtered_predictions("oof").is_file():
        raise PipelineError(f"{paths.filtered_predictions('oof')}: out-of-fold final predictions not found. "
                            "Run the fuse stage first (it needs out-of-fold detector predictions).")
    eval_ids = split_image_ids(cfg, paths, "oof")
    id_set = set(eval_ids)
    final = read_detections(paths.filtered_predictions("oof"), "final out-of-fold predictions")
    final = final[final["image_id"].isin(id_set)]
    truth = read_table(paths.boxes_csv, "truth boxes (fused, train.csv form)", TRUTH_COLUMNS)
    truth["image_id"] = truth["image_id"].astype("str")
    truth = truth[truth["image_id"].isin(id_set)].reset_index(drop=True)
    from pipeline.filtering import fold_of

    folds = fold_of(paths)
    scores: dict[str, dict] = {"final": score(truth, final, names, iou, folds)}
    fused = read_detections(paths.fused_predictions("oof"), "fused out-of-fold predictions")
    fused = fused[fused["image_id"].isin(id_set)]
    nid = classes.normal_id
    scores["no_filter"] = score(truth, add_normal_from_detections(fused, eval_ids, nid), names, iou, folds)
    scores["baseline_no_finding"] = score(truth, normal_rows(eval_ids, 1.0, nid), names, iou, folds)
    for name, by_split in model_files(cfg, paths).items():
        det = pd.concat([read_detections(p, f"{name} fold {k} oof predictions") for k, p in sorted(by_split["oof"].items())],
                        ignore_index=True)
        det = det[(det["tta"] == "orig") & det["image_id"].isin(id_set)][DET_COLUMNS] if len(det) else det[DET_COLUMNS]
        scores[f"det_{name}"] = score(truth, add_normal_from_detections(det, eval_ids, nid), names, iou, folds)

    cls_metrics, roc_curves = classifier_metrics(cfg, paths, classes)
    from pipeline.coco_metrics import check_headline_metric, coco_scores, headline_value

    metric = check_headline_metric(str(cfg.evaluate.metric))
    coco = {k: coco_scores(truth, preds, names, nid, eval_ids, backend=str(cfg.evaluate.coco_backend))
            for k, preds in (("final", final), ("no_filter", fused))}
    coco["final"]["per_fold"] = coco_per_fold(truth, final, names, nid, eval_ids, folds, str(cfg.evaluate.coco_backend))
    fuse_info = _fuse_info(paths)
    test = _test_scores(cfg, paths, classes, iou)
    summary = {"headline": _headline(cfg, fuse_info), "headline_metric": metric,
               "headline_value": headline_value(metric, coco["final"], scores["final"]["map"]),
               "oof_coco_ap50": coco["final"]["ap50"], "oof_coco_ap": coco["final"]["ap"],
               "oof_coco_ap50_agnostic": coco["final"]["agnostic"]["ap50"], "oof_map": scores["final"]["map"],
               "oof_map_no_filter": scores["no_filter"]["map"], "baseline_map": scores["baseline_no_finding"]["map"],
               "cls_auc": cls_metrics.get("auc")}
    if test is not None:
        summary["test_map"] = test["final"]["map"]
        summary["test_map_no_filter"] = test.get("no_filter", {}).get("map")
    metrics = {"run": paths.name, "dataset": cfg.data.format, "iou_thr": iou, "class_names": names,
               "n_oof_images": len(eval_ids), "summary": summary, "out_of_fold_rule": rule,
               "fusion": {"models": fuse_info.get("models"), "folds": fuse_info.get("folds"),
                          "sources": fuse_info.get("sources"), "warnings": fuse_info.get("warnings", [])},
               "filter": {"configured": {"enabled": bool(cfg.filter.enabled), "low": cfg.filter.low,
                                         "high": cfg.filter.high, "multiply": bool(cfg.filter.multiply),
                                         "tune": cfg.filter.tune},
                          "oof": fuse_info.get("filter_oof"), "test": fuse_info.get("filter_test")},
               "oof": {k: _public(v) for k, v in scores.items()}, "coco": coco, "classifier": cls_metrics}
    if test is not None:
        metrics["test"] = test
    from pipeline.localise_report import print_tables, write_metrics

    write_metrics(paths, metrics)  # with the localise stage's comparison, when the run has one
    out = {k: v for k, v in summary.items() if v is not None}
    out["metrics"] = str(paths.metrics_json)
    if cfg.evaluate.plots:
        figures = detection_figures(paths, scores, truth, final, eval_ids, classes, iou, roc_curves)
        detection_page(paths, metrics, scores, figures)
        out["report"] = str(paths.report)
    print(f"[evaluate] {summary['headline']}")
    print(f"[evaluate] oof mAP@{iou:g}: final {summary['oof_map']:.4f}, detector alone {summary['oof_map_no_filter']:.4f}, "
          f"'No finding' baseline {summary['baseline_map']:.4f}" + (f", test {summary['test_map']:.4f}" if test else ""))
    print(f"[evaluate] out-of-fold COCO AP50 {_f(coco['final']['ap50'])}, AP {_f(coco['final']['ap'])}, class-agnostic "
          f"AP50 {_f(coco['final']['agnostic']['ap50'])}; headline ({metric}): {_f(summary['headline_value'])}")
    spread = coco["final"]["per_fold"]
    if len(spread) > 1:
        print("[evaluate] per fold, COCO AP50 / class-agnostic AP50: " + ", ".join(
            f"fold {k} {_f(v['ap50'])} / {_f(v['ap50_agnostic'])}" for k, v in spread.items()))
    print(f"[evaluate] {rule['statement']}")
    print_tables(metrics)
    if fuse_info.get("warnings"):
        out["warnings"] = fuse_info["warnings"]
    return out


def coco_per_fold(truth: pd.DataFrame, preds: pd.DataFrame, names: list[str], normal_id: int, eval_ids: list[str],
                  folds: pd.Series, backend: str) -> dict[str, dict]:
    """The spread across folds: ``{fold: {"ap50", "ap", "ap50_agnostic", "n_images"}}``, each fold's images
    scored alone (COCO AP is not the mean of its folds': the ranking pools every image)."""
    from pipeline.coco_metrics import coco_scores

    out = {}
    of = pd.Series(eval_ids, dtype=str).map(folds)
    for k in sorted(of.dropna().unique()):
        ids = [i for i, f in zip(eval_ids, of) if f == k]
        keep = set(ids)
        res = coco_scores(truth[truth["image_id"].isin(keep)], preds[preds["image_id"].isin(keep)], names, normal_id,
                          ids, backend=backend)
        out[str(int(k))] = {"ap50": res["ap50"], "ap": res["ap"], "ap50_agnostic": res["agnostic"]["ap50"],
                            "n_images": len(ids)}
    return out


def _test_scores(cfg, paths: RunPaths, classes, iou: float) -> dict | None:
    """Scores of the final and fused test predictions against ``test_truth.csv`` when the data has one;
    every test image with truth counts, predicted or not (an unpredicted image only lowers recall)."""
    tpath = test_truth_path(cfg)
    if not (tpath.is_file() and paths.filtered_predictions("test").is_file()):
        return None
    ttruth = read_table(tpath, "test truth", TRUTH_COLUMNS)
    ttruth["image_id"] = ttruth["image_id"].astype("str")
    ids = split_image_ids(cfg, paths, "test")
    ttruth = ttruth[ttruth["image_id"].isin(set(ids))]
    if not len(ttruth):
        return None
    tfinal = read_detections(paths.filtered_predictions("test"), "final test predictions")
    names = list(classes.names)
    test = {"truth_file": str(tpath), "final": _public(score(ttruth, tfinal, names, iou))}
    tf = read_detections(paths.fused_predictions("test"), "fused test predictions")
    truth_ids = list(pd.unique(ttruth["image_id"]))
    tf = tf[tf["image_id"].isin(set(truth_ids))]
    test["no_filter"] = _public(score(ttruth, add_normal_from_detections(tf, truth_ids, classes.normal_id), names, iou))
    return test

