"""Scores of a classifier's combined out-of-fold (and known-label test) probabilities.

AUC per label and mean, and accuracy / precision / recall / specificity / F1 at a per-label threshold
that maximises Youden's J. Out-of-fold the threshold is NESTED: fold k's images are judged at the
threshold chosen on the other folds' out-of-fold probabilities, so no figure for fold k is chosen by
looking at fold k. The test split uses the threshold chosen on all out-of-fold probabilities.
"""
from __future__ import annotations

import math

import numpy as np

from pipeline.metrics import metrics_at_threshold, per_label_auc, youden_threshold

_KEYS = ("accuracy", "precision", "recall", "specificity", "f1")


def _nan_to_none(x):
    return None if isinstance(x, float) and math.isnan(x) else x


def nested_thresholds(y: np.ndarray, p: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """(N, L) thresholds: row i gets the Youden threshold of the rows of the other folds."""
    out = np.zeros_like(p, dtype=np.float64)
    for k in np.unique(folds):
        rest = folds != k
        for j in range(y.shape[1]):
            out[folds == k, j] = youden_threshold(y[rest, j], p[rest, j]) if rest.any() else 0.5
    return out


def score_probabilities(y: np.ndarray, p: np.ndarray, names, *, folds: np.ndarray | None = None,
                        thresholds: dict | None = None) -> dict:
    """AUC per label and mean; metrics at Youden thresholds: nested over ``folds`` (out-of-fold), or the
    given ``thresholds`` per label (test). Also the threshold a new image would get (all rows)."""
    auc = {k: _nan_to_none(v) for k, v in per_label_auc(y, p, names).items()}
    at, chosen = {}, {}
    nested = nested_thresholds(y, p, folds) if folds is not None and thresholds is None else None
    for j, n in enumerate(names):
        chosen[n] = thresholds[n] if thresholds else youden_threshold(y[:, j], p[:, j])
        if nested is not None:
            pred = p[:, j] >= nested[:, j]
            m = metrics_at_threshold(y[:, j], pred.astype(float), 0.5)
            m["threshold"] = chosen[n]
            m["threshold_rule"] = "per fold, chosen on the other folds (nested)"
        else:
            m = metrics_at_threshold(y[:, j], p[:, j], chosen[n])
            m["threshold_rule"] = "chosen on the out-of-fold predictions" if thresholds else "chosen on these data"
        m["n_pos"] = int(y[:, j].sum())
        at[n] = m
    macro = {k: float(np.mean([at[n][k] for n in names])) for k in _KEYS}
    return {"auc": auc, "at_threshold": at, "macro": macro, "thresholds": chosen, "n": int(len(y))}


def roc_curves(y: np.ndarray, p: np.ndarray, names, aucs: dict) -> dict:
    """``{label: (y, p, auc)}`` for :func:`pipeline.report.plot_roc` (labels with one class left out)."""
    return {n: (y[:, j], p[:, j], aucs[n]) for j, n in enumerate(names)
            if y[:, j].min() != y[:, j].max() and aucs.get(n) is not None}
