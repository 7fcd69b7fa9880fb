"""Competition metrics. Pure numpy/pandas, no config.

* :func:`voc_ap` -- PASCAL VOC 2010+ all-point interpolated average precision of one PR curve.
* :func:`vinbigdata_map` -- the VinBigData Kaggle metric: per-class VOC AP at IoU 0.4, mean over classes.
* :func:`roc_auc`, :func:`per_label_auc` -- rank-based ROC AUC for the image classifiers.

Conventions of :func:`vinbigdata_map` (chosen to reproduce the Kaggle metric; each is tested):

* Boxes are ``x_min, y_min, x_max, y_max`` in ORIGINAL image pixels (any one consistent unit works).
  IoU is the plain continuous ratio ``inter / union`` with width ``x_max - x_min`` -- NO "+1 pixel"
  convention, as in the VinBigData metric (and ``map_boxes``). An IoU exactly equal to ``iou_thr`` matches.
* A truth row whose four box values are all empty (NaN) -- the "No finding" rows of ``train.csv`` --
  is the box ``0, 0, 1, 1``; a prediction ``14 p 0 0 1 1`` on such an image therefore matches it with
  IoU 1, so class 14's AP ranks p(normal) across images.
* Every truth row is one box; the three radiologists' boxes of ``train.csv`` are three boxes.
* Per class, predictions are ranked by score, descending, with a STABLE sort: equal scores keep
  their row order in the predictions table (file order). Ties therefore have one documented outcome.
* Matching (VOC rule): a prediction's candidate is the truth box of the same image and class with the
  highest IoU (the first such box in truth row order when several tie). It is a true positive when
  that IoU is >= ``iou_thr`` and the candidate has not been matched by a higher-ranked prediction;
  otherwise (no truth box, IoU too low, or candidate already taken) a false positive. A duplicate
  detection is thus a false positive even when a second, less-overlapping truth box is free.
* mAP is the mean AP over the classes that have truth boxes. Classes that only appear in the
  predictions are ignored (reported in ``n_pred``). Predictions for images that are not in the truth
  are ignored (the ``score`` tool rejects such submissions before calling this).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from pipeline.errors import DataError

BOX_COLUMNS = ["x_min", "y_min", "x_max", "y_max"]
TRUTH_COLUMNS = ["image_id", "class_id", *BOX_COLUMNS]
PREDICTION_COLUMNS = ["image_id", "class_id", "score", *BOX_COLUMNS]

# The box that stands for a whole-image label ("No finding"), in the Kaggle convention.
NORMAL_BOX = (0.0, 0.0, 1.0, 1.0)


# --------------------------------------------------------------------------------------------------
# average precision
# --------------------------------------------------------------------------------------------------
def voc_ap(recall, precision) -> float:
    """PASCAL VOC 2010+ all-point interpolated average precision.

    ``recall``/``precision`` are the curve at each rank (same length, recall non-decreasing).
    Sentinels are appended (recall 0 and 1, precision 0 and 0), precision is made monotonically
    decreasing from the right (the interpolated envelope), and the area is summed over the points
    where recall changes: ``sum((r[i+1] - r[i]) * p[i+1])``. An empty curve has AP 0.
    """
    r = np.asarray(recall, dtype=np.float64).ravel()
    p = np.asarray(precision, dtype=np.float64).ravel()
    if r.shape != p.shape:
        raise ValueError(f"recall and precision differ in length: {r.size} vs {p.size}")
    mrec = np.concatenate(([0.0], r, [1.0]))
    mpre = np.concatenate(([0.0], p, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


# --------------------------------------------------------------------------------------------------
# VinBigData mAP
# --------------------------------------------------------------------------------------------------
def _require_columns(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"{what} lacks column(s) {missing}; it has {list(df.columns)} "
                        f"(expected {list(columns)})")


def _class_ids(values, what: str) -> np.ndarray:
    arr = pd.to_numeric(pd.Series(values), errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(arr) | (arr != np.round(arr))
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise DataError(f"{what}: class_id must be an integer; row {row} has {pd.Series(values).iloc[row]!r}")
    return arr.astype(np.int64)


def _boxes(df: pd.DataFrame, what: str, fill_empty: bool) -> np.ndarray:
    # copy: under pandas copy-on-write to_numpy() may hand back a read-only view
    boxes = df[BOX_COLUMNS].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan).copy()
    nan = np.isnan(boxes)
    if fill_empty:
        empty = nan.all(axis=1)
        boxes[empty] = NORMAL_BOX
        nan = np.isnan(boxes)
    bad = nan.any(axis=1) | np.isinf(boxes).any(axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        hint = "all four empty (a whole-image label) or all four numbers" if fill_empty else "four numbers"
        raise DataError(f"{what}: {int(bad.sum())} row(s) have a missing or non-numeric box value, "
                        f"first row {row}: {df[BOX_COLUMNS].iloc[row].tolist()}; a box must be {hint}")
    return boxes


def _pair_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise IoU of two (N, 4) xyxy arrays; continuous (no +1), 0 where the union is empty."""
    iw = np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0])
    ih = np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    union = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def vinbigdata_map(truth: pd.DataFrame, predictions: pd.DataFrame, iou_thr: float = 0.4) -> dict:
    """The VinBigData metric: VOC 2010 AP per class at ``iou_thr``, averaged over classes with truth.

    ``truth``: ``train.csv`` form, one row per truth box: ``image_id, class_id, x_min, y_min, x_max,
    y_max`` (other columns ignored); a row with an all-empty box is the box 0,0,1,1.
    ``predictions``: ``image_id, class_id, score, x_min, y_min, x_max, y_max``, original pixels.
    See the module docstring for the exact ranking, matching and averaging rules.

    Returns ``{"map": float, "per_class": {class_id: AP}, "n_truth": {class_id: n boxes},
    "n_pred": {class_id: n predictions on truth images}, "curves": {class_id: (recall, precision)}}``;
    ``per_class``/``n_truth``/``curves`` hold the classes with truth, ``n_pred`` every predicted class.

    Vectorised: predictions are joined to the truth boxes of their (class, image) with one sorted
    search, every (prediction, candidate) IoU is computed in one numpy pass, and the first-come
    matching is a ``unique`` over the ranked candidates, so 15,000 images score in about a second.
    """
    _require_columns(truth, TRUTH_COLUMNS, "truth")
    _require_columns(predictions, PREDICTION_COLUMNS, "predictions")
    if not 0.0 < iou_thr <= 1.0:
        raise ValueError(f"iou_thr must be in (0, 1], got {iou_thr}")
    if len(truth) == 0:
        raise DataError("truth has no rows: there is nothing to score against")

    # --- truth, keyed by (class, image) and sorted stably so ties keep truth row order
    img_codes, images = pd.factorize(truth["image_id"].astype(str), sort=False)
    n_img = len(images)
    t_cls = _class_ids(truth["class_id"], "truth")
    t_box = _boxes(truth, "truth", fill_empty=True)
    t_key = t_cls * n_img + img_codes
    t_order = np.argsort(t_key, kind="stable")
    t_key, t_box, t_cls = t_key[t_order], t_box[t_order], t_cls[t_order]
    classes, n_truth = np.unique(t_cls, return_counts=True)

    # --- predictions on truth images (others are ignored, see module docstring)
    p_img = pd.Index(images).get_indexer(predictions["image_id"].astype(str))
    keep = p_img >= 0
    preds = predictions[keep]
    p_img = p_img[keep]
    p_cls = _class_ids(preds["class_id"], "predictions")
    p_box = _boxes(preds, "predictions", fill_empty=False)
    p_score = pd.to_numeric(preds["score"], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    if not np.isfinite(p_score).all():
        row = int(np.flatnonzero(~np.isfinite(p_score))[0])
        raise DataError(f"predictions: score must be a finite number; row {row} has {preds['score'].iloc[row]!r}")
    n_p = len(p_cls)

    # --- candidate truth boxes of each prediction: the contiguous run of its (class, image) key
    p_key = p_cls * n_img + p_img
    start = np.searchsorted(t_key, p_key, side="left")
    count = np.searchsorted(t_key, p_key, side="right") - start
    has = count > 0
    target = np.full(n_p, -1, dtype=np.int64)  # index into the sorted truth, -1 = no match possible
    if has.any():
        cnt = count[has]
        seg = np.concatenate(([0], np.cumsum(cnt)[:-1]))  # first pair of each prediction with candidates
        total = int(cnt.sum())
        pair_pred = np.repeat(np.flatnonzero(has), cnt)
        pair_truth = np.repeat(start[has], cnt) + (np.arange(total) - np.repeat(seg, cnt))
        iou = _pair_iou(p_box[pair_pred], t_box[pair_truth])
        best = np.maximum.reduceat(iou, seg)
        # argmax with ties to the first candidate (truth row order), like np.argmax
        pos = np.where(iou == np.repeat(best, cnt), np.arange(total), total)
        first = np.minimum.reduceat(pos, seg)
        ok = best >= iou_thr
        target[np.flatnonzero(has)[ok]] = pair_truth[first[ok]]

    # --- rank: class, then score descending; stable, so equal scores keep row order
    order = np.argsort(-p_score, kind="stable")
    order = order[np.argsort(p_cls[order], kind="stable")]
    ranked_cls = p_cls[order]
    ranked_target = target[order]
    tp = np.zeros(n_p, dtype=np.int64)
    cand = np.flatnonzero(ranked_target >= 0)
    # a truth box (unique across classes) goes to the first ranked prediction that claims it
    _, first_claim = np.unique(ranked_target[cand], return_index=True)
    tp[cand[first_claim]] = 1

    pred_classes, pred_counts = np.unique(ranked_cls, return_counts=True)
    per_class: dict[int, float] = {}
    curves: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for cls, n_t in zip(classes.tolist(), n_truth.tolist()):
        lo, hi = np.searchsorted(ranked_cls, [cls, cls + 1])
        ctp = np.cumsum(tp[lo:hi])
        recall = ctp / n_t
        precision = ctp / np.arange(1, hi - lo + 1)
        per_class[cls] = voc_ap(recall, precision)
        curves[cls] = (recall, precision)
    return {
        "map": float(np.mean(list(per_class.values()))),
        "per_class": per_class,
        "n_truth": dict(zip(classes.tolist(), n_truth.tolist())),
        "n_pred": dict(zip(pred_classes.tolist(), pred_counts.tolist())),
        "curves": curves,
    }


# --------------------------------------------------------------------------------------------------
# ROC AUC
# --------------------------------------------------------------------------------------------------
def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x``, tied values sharing the mean of their ranks."""
    order = np.argsort(x, kind="stable")
    xs = x[order]
    # boundaries of runs of equal values
    new = np.concatenate(([True], xs[1:] != xs[:-1]))
    run_id = np.cumsum(new) - 1
    run_start = np.flatnonzero(new)
    run_end = np.concatenate((run_start[1:], [len(xs)]))
    mean_rank = (run_start + run_end + 1) / 2.0  # mean of ranks start+1 .. end
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = mean_rank[run_id]
    return ranks


def roc_auc(y_true, y_score) -> float:
    """Area under the ROC curve by the Mann-Whitney U statistic; ties in score count one half.

    ``y_true`` is 0/1 (bool or numbers), ``y_score`` any finite numbers, higher = more positive.
    Returns NaN when only one class is present (AUC is undefined there).
    """
    y = np.asarray(y_true, dtype=np.float64).ravel()
    s = np.asarray(y_score, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"y_true and y_score differ in length: {y.size} vs {s.size}")
    if not np.isin(y, (0.0, 1.0)).all():
        raise ValueError("y_true must hold only 0 and 1 (found other values or NaN)")
    if not np.isfinite(s).all():
        raise ValueError("y_score must be finite (found NaN or inf)")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(s)
    u = ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def per_label_auc(y_true, y_score, names: Sequence[str]) -> dict[str, float]:
    """ROC AUC of each column of the (N, L) arrays, keyed by ``names``, plus ``"mean"``.

    ``"mean"`` averages the labels whose AUC is defined (both classes present); NaN when none is.
    """
    y = np.asarray(y_true, dtype=np.float64)
    s = np.asarray(y_score, dtype=np.float64)
    if y.ndim != 2 or y.shape != s.shape:
        raise ValueError(f"y_true and y_score must be 2-d arrays of one shape, got {y.shape} and {s.shape}")
    if len(names) != y.shape[1]:
        raise ValueError(f"{len(names)} names for {y.shape[1]} label columns")
    if "mean" in names:
        raise ValueError("'mean' is reserved for the average; rename that label")
    out = {str(name): roc_auc(y[:, j], s[:, j]) for j, name in enumerate(names)}
    defined = [v for v in out.values() if not np.isnan(v)]
    out["mean"] = float(np.mean(defined)) if defined else float("nan")
    return out


def roc_points(y_true, y_score) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ROC curve: false- and true-positive rates at every distinct score (descending), from (0, 0)
    to (1, 1), and the score at each point (``inf`` for the first: nothing predicted positive).
    The one ROC helper of the project: plots, Youden thresholds and reports all use it."""
    y = np.asarray(y_true, float).ravel()
    s = np.asarray(y_score, float).ravel()
    order = np.argsort(-s, kind="stable")
    y, s = y[order], s[order]
    last = np.r_[s[1:] != s[:-1], True] if len(s) else np.zeros(0, bool)  # the end of each run of equal scores
    tp = np.cumsum(y)[last]
    fp = np.cumsum(1 - y)[last]
    n_pos, n_neg = max(y.sum(), 1), max((1 - y).sum(), 1)
    return np.r_[0.0, fp / n_neg], np.r_[0.0, tp / n_pos], np.r_[np.inf, s[last]]


def youden_threshold(y_true, y_score) -> float:
    """Threshold maximising Youden's J = TPR - FPR; 0.5 when only one class is present.

    Youden's J weights sensitivity and specificity equally, so it does not depend on prevalence
    (F1 would push the threshold towards the majority class on imbalanced labels).
    """
    y = np.asarray(y_true).astype(int).ravel()
    if len(y) == 0 or y.min() == y.max():
        return 0.5
    fpr, tpr, thr = roc_points(y, y_score)
    t = float(thr[int(np.argmax(tpr - fpr))])
    return min(t, 1.0)  # the first point's threshold is +inf


def metrics_at_threshold(y_true, y_score, threshold: float) -> dict:
    """Accuracy, precision, recall (sensitivity), specificity, F1 of ``score >= threshold`` (0 where undefined)."""
    y = np.asarray(y_true).astype(bool)
    pred = np.asarray(y_score) >= threshold
    tp = int((pred & y).sum())
    fp = int((pred & ~y).sum())
    fn = int((~pred & y).sum())
    tn = int((~pred & ~y).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    specificity = tn / (tn + fp) if tn + fp else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"threshold": float(threshold), "accuracy": (tp + tn) / max(len(y), 1), "precision": precision,
            "recall": recall, "specificity": specificity, "f1": f1, "tp": tp, "fp": fp, "fn": fn, "tn": tn}
