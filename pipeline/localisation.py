"""ChestX-ray14 localisation scores, one protocol for every method that yields boxes (Wang et al. 2017).

A truth box (one row of ``BBox_List_2017.csv``) counts as **found at T** when one of the (at most
:data:`MAX_BOXES`) highest-scoring predicted boxes of the same image and the same class overlaps it with

* **IoU** > T: intersection / union, or
* **IoBB** > T: intersection / area of the *predicted* box (Wang et al.'s "intersection over the
  detected B-Box area"; it rewards small boxes inside the truth, so read it beside IoU),

for T = 0.1, 0.2, ... 0.7 (strictly above, as Wang's table). A predicted box of another class never
counts; predicted boxes beyond the 3 best of an image and class are ignored (as Wang's "1 to 3 boxes per
heatmap"). Shares are per class and ``"mean"`` is the unweighted mean over the classes that have truth
boxes (Wang's mean row is this mean: 0.568 at T = 0.1). Where a class has no truth box its share is
None (JSON null).

The result block of one method, the CONTRACT other checks read (``metrics.json["localisation"]``)::

    {"<method>": {"iou":  {"0.1": {"Atelectasis": x, ..., "Pneumothorax": x, "mean": x}, ..., "0.7": {...}},
                  "iobb": {same},
                  "auc":  {"Atelectasis": x, ..., "Pneumothorax": x, "mean": x}}}

with the 8 class names of :data:`BOX_CLASSES`; :func:`check_block` enforces it.

Box convention: ``x_min, y_min, x_max, y_max`` in one pixel space for truth and predictions (original
pixels in the pipeline; the NIH box list's 1024 space), pixel-edge coordinates, no "+1" in areas (as
:func:`pipeline.boxes.iou_matrix`). Pure numpy/pandas: no torch.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from pipeline.boxes import BOX_COLUMNS
from pipeline.classes import CHESTXRAY14

THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
MAX_BOXES = 3
MEASURES = ("iou", "iobb")
# The 8 classes of BBox_List_2017.csv, class ids 0..7 of pipeline.classes.CHESTXRAY14.
BOX_CLASSES = tuple(CHESTXRAY14[:8])

# Wang et al. 2017 (ChestX-ray8, arXiv 1705.02315), Table 7, share of truth boxes found with IoU > T,
# per class, T = 0.1 .. 0.7 (as quoted in the project's GUIDE.md section 1).
_WANG_ROWS = {
    0.1: (0.6888, 0.9383, 0.6601, 0.7073, 0.4000, 0.1392, 0.6333, 0.3775),
    0.2: (0.4722, 0.6849, 0.4509, 0.4796, 0.2588, 0.0506, 0.3500, 0.2346),
    0.3: (0.2444, 0.4589, 0.3006, 0.2764, 0.1529, 0.0379, 0.1666, 0.1326),
    0.4: (0.0944, 0.2808, 0.2026, 0.1219, 0.0705, 0.0126, 0.0750, 0.0714),
    0.5: (0.0500, 0.1780, 0.1111, 0.0650, 0.0117, 0.0126, 0.0333, 0.0306),
    0.6: (0.0222, 0.0753, 0.0457, 0.0243, 0.0000, 0.0126, 0.0166, 0.0306),
    0.7: (0.0055, 0.0273, 0.0196, 0.0000, 0.0000, 0.0000, 0.0083, 0.0204),
}
WANG2017_TABLE7_IOU = {f"{t:g}": {**dict(zip(BOX_CLASSES, row)), "mean": float(np.mean(row))}
                       for t, row in _WANG_ROWS.items()}
# CLN (Okolo, Katsigiannis, Ramzan 2025), trained and evaluated on the boxed subset; protocol details
# (folds, T of the "IoU accuracy") unpublished.
CLN2025 = {"auc_mean": 0.918, "iou_accuracy_mean": 0.855}
# Column heads of the printed tables (Wang et al.'s abbreviations; Pneumonia and Pneumothorax differ).
SHORT = {"Atelectasis": "Atel", "Cardiomegaly": "Card", "Effusion": "Effu", "Infiltration": "Infi", "Mass": "Mass",
         "Nodule": "Nodu", "Pneumonia": "Pneu", "Pneumothorax": "Pnth"}


def key(t: float) -> str:
    """The threshold's key in the tables: ``0.1 -> "0.1"``."""
    return f"{t:g}"


def overlaps(truth_xyxy, pred_xyxy) -> tuple[np.ndarray, np.ndarray]:
    """IoU and IoBB (intersection / predicted area) of each truth box (N, 4) with each predicted box
    (M, 4): two arrays (N, M). A degenerate predicted box (zero area) has IoBB 0."""
    a = np.asarray(truth_xyxy, float).reshape(-1, 4)
    b = np.asarray(pred_xyxy, float).reshape(-1, 4)
    iw = (np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])).clip(min=0)
    ih = (np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])).clip(min=0)
    inter = iw * ih
    area_a = ((a[:, 2] - a[:, 0]).clip(min=0) * (a[:, 3] - a[:, 1]).clip(min=0))[:, None]
    area_b = ((b[:, 2] - b[:, 0]).clip(min=0) * (b[:, 3] - b[:, 1]).clip(min=0))[None, :]
    union = area_a + area_b - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
        iobb = np.where(area_b > 0, inter / area_b, 0.0)
    return iou, iobb


def _require(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what} lack column(s) {missing}; need {list(columns)}")


def top_boxes(predicted: pd.DataFrame, max_boxes: int = MAX_BOXES) -> pd.DataFrame:
    """The ``max_boxes`` highest-scoring rows of each (image_id, class_id); ties keep table order."""
    _require(predicted, ["image_id", "class_id", "score", *BOX_COLUMNS], "predicted boxes")
    p = predicted.dropna(subset=BOX_COLUMNS).copy()
    p["image_id"] = p["image_id"].astype(str)
    p["class_id"] = p["class_id"].astype(int)
    p["_order"] = np.arange(len(p))
    p = p.sort_values(["score", "_order"], ascending=[False, True], kind="stable")
    return p.groupby(["image_id", "class_id"], sort=False).head(max_boxes).drop(columns="_order")


def best_overlaps(predicted: pd.DataFrame, truth: pd.DataFrame, max_boxes: int = MAX_BOXES) -> pd.DataFrame:
    """``truth`` (rows with a box) with two new columns: the best ``iou`` and the best ``iobb`` over
    the top ``max_boxes`` predicted boxes of its image and class (0 when there is none). The two maxima
    are taken separately (a small box inside the truth may give the best IoBB, a larger one the best
    IoU), as each is its own table in Wang et al."""
    _require(truth, ["image_id", "class_id", *BOX_COLUMNS], "truth boxes")
    t = truth.dropna(subset=BOX_COLUMNS).reset_index(drop=True).copy()
    t["image_id"] = t["image_id"].astype(str)
    t["class_id"] = t["class_id"].astype(int)
    top = top_boxes(predicted, max_boxes)
    groups = {k: g[BOX_COLUMNS].to_numpy(float) for k, g in top.groupby(["image_id", "class_id"])}
    best_iou, best_iobb = np.zeros(len(t)), np.zeros(len(t))
    for i, (iid, cid, *box) in enumerate(t[["image_id", "class_id", *BOX_COLUMNS]].itertuples(index=False)):
        boxes = groups.get((iid, cid))
        if boxes is not None and len(boxes):
            iou, iobb = overlaps([box], boxes)
            best_iou[i], best_iobb[i] = iou.max(), iobb.max()
    t["iou"], t["iobb"] = best_iou, best_iobb
    return t


def _mean(values) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def found_shares(best: pd.DataFrame, thresholds: Sequence[float] = THRESHOLDS,
                 classes: Sequence[str] = BOX_CLASSES) -> dict:
    """``{"iou": {"0.1": {class: share, ..., "mean": x}, ...}, "iobb": {...}}`` from
    :func:`best_overlaps`; ``classes[i]`` is class id i."""
    cid = best["class_id"].astype(int).to_numpy()
    out = {}
    for measure in MEASURES:
        vals = best[measure].to_numpy(float)
        per_t = {}
        for t in thresholds:
            row = {}
            for c, name in enumerate(classes):
                sel = cid == c
                row[name] = float((vals[sel] > t).mean()) if sel.any() else None
            row["mean"] = _mean(row[n] for n in classes)
            per_t[key(t)] = row
        out[measure] = per_t
    return out


def auc_table(y_true, y_score, classes: Sequence[str] = BOX_CLASSES) -> dict:
    """Per-class ROC AUC of the (N, len(classes)) arrays and their ``"mean"``; None where a class has
    only one label value (AUC undefined). A constant score has AUC 0.5 (ties count half)."""
    from pipeline.metrics import per_label_auc

    aucs = per_label_auc(np.asarray(y_true, float), np.asarray(y_score, float), list(classes))
    return {k: (None if v is None or math.isnan(v) else float(v)) for k, v in aucs.items()}


def method_block(predicted: pd.DataFrame, truth: pd.DataFrame, y_true=None, y_score=None,
                 max_boxes: int = MAX_BOXES, classes: Sequence[str] = BOX_CLASSES) -> dict:
    """One method's block of the contract: found shares by IoU and IoBB, and AUC (all None when the
    method gives no image-level scores, ``y_score`` None)."""
    block = found_shares(best_overlaps(predicted, truth, max_boxes), THRESHOLDS, classes)
    if y_score is None:
        block["auc"] = {**{n: None for n in classes}, "mean": None}
    else:
        block["auc"] = auc_table(y_true, y_score, classes)
    return block


def check_block(localisation: Mapping, classes: Sequence[str] = BOX_CLASSES) -> None:
    """Raise ValueError naming the first key that breaks the contract form (see module doc)."""
    names = [*classes, "mean"]

    def row_ok(row, where):
        if not isinstance(row, Mapping) or list(row) != names:
            got = list(row) if isinstance(row, Mapping) else row
            raise ValueError(f"localisation{where}: keys must be {names}, got {got!r}")
        for n, v in row.items():
            if v is not None and not (isinstance(v, (int, float)) and 0 <= v <= 1):
                raise ValueError(f"localisation{where}[{n!r}]: {v!r} is not a share in [0, 1] or null")

    if not isinstance(localisation, Mapping) or not localisation:
        raise ValueError("localisation: must be a non-empty mapping of method name -> block")
    for method, block in localisation.items():
        if not isinstance(block, Mapping) or sorted(block) != ["auc", "iobb", "iou"]:
            raise ValueError(f"localisation[{method!r}]: keys must be auc, iobb, iou")
        for measure in MEASURES:
            if list(block[measure]) != [key(t) for t in THRESHOLDS]:
                raise ValueError(f"localisation[{method!r}][{measure!r}]: thresholds must be "
                                 f"{[key(t) for t in THRESHOLDS]}")
            for t, row in block[measure].items():
                row_ok(row, f"[{method!r}][{measure!r}][{t!r}]")
        row_ok(block["auc"], f"[{method!r}]['auc']")


def references() -> dict:
    """The published figures the table is read beside (for ``metrics.json["localisation_reference"]``)."""
    return {"wang2017_table7": {"iou": WANG2017_TABLE7_IOU,
                                "source": "Wang et al. 2017, arXiv 1705.02315, Table 7 "
                                          "(official test boxes, weakly supervised)"},
            "cln2025": {**CLN2025, "source": "Okolo, Katsigiannis, Ramzan 2025 (boxed subset; protocol unpublished)"}}


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def format_table(localisation: Mapping, measure: str = "iou", classes: Sequence[str] = BOX_CLASSES,
                 with_wang: bool = True) -> str:
    """Markdown: one row per method and threshold (share of truth boxes found), Wang 2017 Table 7
    beside (IoU only), and a last column pair of mean AUC and CLN's figures in the header note."""
    short = [SHORT.get(c, c) for c in classes]
    lines = [f"| method | T | {' | '.join(short)} | mean |", "|---|---|" + "---|" * (len(classes) + 1)]
    sources = dict(localisation)
    if with_wang and measure == "iou":
        sources["Wang 2017 (Table 7)"] = {"iou": WANG2017_TABLE7_IOU}
    for t in THRESHOLDS:
        for method, block in sources.items():
            row = block[measure][key(t)]
            lines.append(f"| {method} | {key(t)} | {' | '.join(_fmt(row[c]) for c in classes)} | {_fmt(row['mean'])} |")
    return "\n".join(lines)


def format_auc(localisation: Mapping, classes: Sequence[str] = BOX_CLASSES) -> str:
    """Markdown: per-class and mean AUC of each method, CLN 2025's mean beside."""
    short = [SHORT.get(c, c) for c in classes]
    lines = [f"| method | {' | '.join(short)} | mean |", "|---|" + "---|" * (len(classes) + 1)]
    for method, block in localisation.items():
        auc = block["auc"]
        lines.append(f"| {method} | {' | '.join(_fmt(auc[c]) for c in classes)} | {_fmt(auc['mean'])} |")
    lines.append(f"| CLN 2025 (published) | {' | '.join('-' for _ in classes)} | {CLN2025['auc_mean']:.3f} |")
    return "\n".join(lines)


__all__ = [
    "BOX_CLASSES", "CLN2025", "MAX_BOXES", "MEASURES", "THRESHOLDS", "WANG2017_TABLE7_IOU", "auc_table",
    "best_overlaps", "check_block", "format_auc", "format_table", "found_shares", "key", "method_block",
    "overlaps", "references", "top_boxes",
]
