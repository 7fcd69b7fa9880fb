"""The 2-class filter applied to a split of a run: which images it covers, with which thresholds.

Thresholds (``filter.tune``):

* ``none``: ``filter.low`` / ``filter.high`` as configured, everywhere;
* ``nested``: out-of-fold images of fold k use the (low, high) that maximise the mAP of the OTHER folds'
  out-of-fold images; test images use the pair chosen on all out-of-fold images;
* ``on_oof_optimistic``: one pair chosen on all out-of-fold images and scored on them (optimistic).

Images without a classifier probability (a fold the classifier did not predict, or no classifier) get
the detector's own class-14 box, 1 - (top finding score); the coverage says how many and which folds.
"""
from __future__ import annotations

import pandas as pd

from pipeline.fusion import add_normal_from_detections, apply_two_class_filter, sort_detections
from pipeline.tables import read_folds, read_table


def fold_of(paths) -> pd.Series:
    """image_id -> fold (empty when folds.csv is missing)."""
    if not paths.folds_csv.is_file():
        return pd.Series(dtype="int64")
    f = read_folds(paths.folds_csv)
    return pd.Series(f["fold"].to_numpy(), index=f["image_id"].astype(str))


def choose_thresholds(cfg, paths, oof_dets: pd.DataFrame, p_oof: pd.Series | None, folds: pd.Series,
                      tune_fn, normal_id: int) -> dict:
    """``{"rule", "all": (low, high), "per_fold": {k: (low, high)}}`` for the configured ``filter.tune``."""
    flt = cfg.filter
    given = (float(flt.low), float(flt.high))
    rule = str(flt.tune)
    if rule == "none" or p_oof is None or oof_dets is None:
        return {"rule": "as configured", "all": given, "per_fold": {}}
    truth = read_table(paths.boxes_csv, "truth boxes", ["image_id", "class_id", "x_min", "y_min", "x_max", "y_max"],
                       hint="run prepare first, or set filter.tune=none.")
    truth["image_id"] = truth["image_id"].astype(str)

    def tune(ids: set) -> tuple[float, float]:
        d = oof_dets[oof_dets["image_id"].isin(ids)]
        p = p_oof[p_oof.index.isin(ids)]
        t = truth[truth["image_id"].isin(set(p.index))]
        if p.empty or t.empty:
            return given
        low, high, _, _ = tune_fn(d, p, t, multiply=bool(flt.multiply), iou_thr=float(cfg.evaluate.iou_thr),
                                  normal_id=normal_id)
        return float(low), float(high)

    covered = set(p_oof.index)
    everything = tune(covered)
    if rule == "on_oof_optimistic":
        return {"rule": "chosen on the out-of-fold images it is scored on (optimistic)", "all": everything,
                "per_fold": {}}
    per_fold = {}
    for k in sorted(set(folds.reindex(list(covered)).dropna().astype(int))):
        others = {i for i in covered if folds.get(i) != k}
        per_fold[int(k)] = tune(others)
    return {"rule": "nested: fold k's thresholds chosen on the other folds' out-of-fold images; test on all",
            "all": everything, "per_fold": per_fold}


def apply_filter(split: str, dets: pd.DataFrame, ids: list[str], p: pd.Series | None, folds: pd.Series,
                 thresholds: dict, multiply: bool, normal_id: int) -> tuple[pd.DataFrame, dict]:
    """The final table of a split and its coverage record (n_images, n_filtered, folds lacking p, warning)."""
    ids = list(dict.fromkeys(ids))
    cover = {"n_images": len(ids), "n_filtered": 0, "thresholds": thresholds["rule"], "folds_without_classifier": [],
             "warning": None}
    dets = dets[dets["image_id"].isin(set(ids))]
    if p is None:
        return add_normal_from_detections(dets, ids, normal_id), cover
    p = p[p.index.isin(set(ids))]
    covered = set(p.index)
    rest = [i for i in ids if i not in covered]
    parts = []
    if split == "oof" and thresholds["per_fold"]:
        for k, (low, high) in thresholds["per_fold"].items():
            sel = {i for i in covered if folds.get(i) == k}
            parts.append(apply_two_class_filter(dets[dets["image_id"].isin(sel)], p[p.index.isin(sel)], low, high,
                                                multiply=multiply, normal_id=normal_id))
        cover["per_fold_thresholds"] = {str(k): list(v) for k, v in thresholds["per_fold"].items()}
    else:
        low, high = thresholds["all"]
        parts.append(apply_two_class_filter(dets[dets["image_id"].isin(covered)], p, low, high, multiply=multiply,
                                            normal_id=normal_id))
        cover["low"], cover["high"] = low, high
    parts.append(add_normal_from_detections(dets[dets["image_id"].isin(set(rest))], rest, normal_id))
    final = sort_detections(pd.concat([x for x in parts if len(x)] or [parts[-1]], ignore_index=True))
    cover["n_filtered"] = len(covered)
    if rest:
        lacking = sorted({int(folds[i]) for i in rest if i in folds.index}) if split == "oof" else []
        cover["folds_without_classifier"] = lacking
        where = f" (folds {lacking})" if lacking else ""
        cover["warning"] = (f"{len(rest)} of {len(ids)} {split} images{where} have no classifier probability: the "
                            "2-class filter covers the others; these get the detector's 1 - top score normal box")
    return final, cover
