"""NMS inside each (image, source, class) group of a whole batch at once: ``fuse.source_nms``, and across
the classes of each image after fusion: ``fuse.across_classes``.

Why: WBF averages the scores of every box that joins a cluster. A detector's own NMS (``det.iou``, usually
above the fusion's ``iou_thr``) leaves weaker boxes around an object that overlap the best one by less than
its threshold but more than WBF's; they join the object's cluster and pull its score down (measured on the
demo's out-of-fold Cardiomegaly boxes: 0.372 and 0.337 from the two flips fused to 0.109 with four weak
neighbours; the class's AP fell from 0.62 to 0.42; docs/notes/fusion.md). After this NMS a source gives one
box per object, as WBF assumes for each model.

Greedy NMS as torchvision's ``batched_nms`` computes it (boxes by descending score; a box is dropped when its
IoU with a kept box of its group is above ``iou_thr``), run for every group in lock step, as
:mod:`pipeline.wbf` runs WBF: step ``j`` compares the ``j``-th box of every group that has one with that
group's earlier boxes in one numpy expression. torchvision itself loops over the groups in Python above
4,000 boxes on a CPU: 47 s for 300 images x 10 sources x 100 boxes, where the fusion takes 1.2 s.
"""
from __future__ import annotations

import numpy as np


def _group_codes(*columns: np.ndarray) -> np.ndarray:
    """One int64 per distinct row of the given columns (any dtypes)."""
    code = np.zeros(len(columns[0]), dtype=np.int64)
    for col in columns:
        values, inv = np.unique(col, return_inverse=True)
        code = code * len(values) + inv.reshape(-1)
    return code


def source_nms_keep(boxes: np.ndarray, scores: np.ndarray, image: np.ndarray, source: np.ndarray,
                    label: np.ndarray, iou_thr: float) -> np.ndarray:
    """Which rows survive NMS at ``iou_thr`` inside each (image, source, label) group (a boolean mask).

    ``boxes``: (n, 4) corners ``x1, y1, x2, y2``; boxes of other sources or labels never suppress each other,
    and zero-area boxes are not kept. IoU does not change under per-axis scaling, so normalised boxes do."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    keep = np.zeros(len(boxes), dtype=bool)
    valid = np.flatnonzero((boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1]))
    if not len(valid):
        return keep
    group = _group_codes(np.asarray(image)[valid], np.asarray(source)[valid], np.asarray(label)[valid])
    order = np.lexsort((-np.asarray(scores, dtype=np.float64)[valid], group))  # by group, best score first
    b, g = boxes[valid[order]], group[order]
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    length = np.diff(np.r_[starts, len(g)])
    by_length = np.argsort(-length, kind="stable")  # groups still busy at step j are a prefix
    off, length = starts[by_length], length[by_length]
    kept = np.zeros(len(g), dtype=bool)
    kept[off] = True  # each group's best box
    busy = len(off)
    for j in range(1, int(length[0])):
        while length[busy - 1] <= j:
            busy -= 1
        rows = off[:busy] + j
        prev = off[:busy, None] + np.arange(j)
        pb, rb = b[prev], b[rows][:, None, :]
        w = np.minimum(pb[..., 2], rb[..., 2]) - np.maximum(pb[..., 0], rb[..., 0])
        h = np.minimum(pb[..., 3], rb[..., 3]) - np.maximum(pb[..., 1], rb[..., 1])
        inter = np.maximum(w, 0) * np.maximum(h, 0)
        iou = inter / (area[prev] + area[rows][:, None] - inter)
        kept[rows] = ~((iou > iou_thr) & kept[prev]).any(axis=1)
    keep[valid[order[kept]]] = True
    return keep


def across_classes_keep(boxes: np.ndarray, scores: np.ndarray, image: np.ndarray, iou_thr: float) -> np.ndarray:
    """Which fused boxes survive NMS at ``iou_thr`` among ALL boxes of their image, whatever their class.

    ``fuse.across_classes``: WBF fuses each class apart, so one object the detector half-calls two classes
    (TBX11K: active and obsolete tuberculosis) keeps a box of each; a class-agnostic metric (TBX11K's "CA TB")
    then counts the weaker one as a false positive. Here the weaker is dropped and the stronger keeps its class.
    """
    zeros = np.zeros(len(boxes), dtype=np.int64)
    return source_nms_keep(boxes, scores, image, zeros, zeros, iou_thr)
