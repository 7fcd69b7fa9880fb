"""Segmentation and head metrics: per-image Dice and IoU (original pixels), their summaries, and the
classification head's AUC, accuracy, sensitivity and specificity."""
from __future__ import annotations

import numpy as np


def dice_iou(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Dice and IoU of two boolean masks of one shape; both empty counts as a perfect match (1, 1)."""
    p, t = np.asarray(pred, bool), np.asarray(truth, bool)
    if p.shape != t.shape:
        raise ValueError(f"mask shapes differ: {p.shape} vs {t.shape}")
    inter = int(np.count_nonzero(p & t))
    union = int(np.count_nonzero(p | t))
    total = int(np.count_nonzero(p)) + int(np.count_nonzero(t))
    if union == 0:
        return 1.0, 1.0
    return 2.0 * inter / total, inter / union


def summarise(values) -> dict:
    """Mean, median, 10th percentile and minimum of per-image figures (NaN-free), plus their count."""
    v = np.asarray(list(values), float)
    if v.size == 0:
        return {"n": 0, "mean": float("nan"), "median": float("nan"), "p10": float("nan"), "min": float("nan")}
    return {"n": int(v.size), "mean": float(v.mean()), "median": float(np.median(v)),
            "p10": float(np.percentile(v, 10)), "min": float(v.min())}


def head_metrics(labels, probs, threshold: float = 0.5) -> dict:
    """AUC and accuracy / sensitivity / specificity at ``threshold`` of the images with a known label."""
    from pipeline.metrics import metrics_at_threshold, roc_auc

    y = np.asarray([np.nan if v is None else v for v in labels], float)
    p = np.asarray([np.nan if v is None else v for v in probs], float)
    ok = ~np.isnan(y) & ~np.isnan(p)
    if not ok.any():
        return {"n": 0}
    y, p = y[ok].astype(int), p[ok]
    at = metrics_at_threshold(y, p, threshold)
    auc = roc_auc(y, p)
    return {"n": int(ok.sum()), "positives": int(y.sum()), "auc": None if np.isnan(auc) else auc,
            "threshold": float(threshold), "accuracy": at["accuracy"], "sensitivity": at["recall"],
            "specificity": at["specificity"]}
