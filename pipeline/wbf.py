"""Weighted-box fusion of many images at once, with the output of ensemble-boxes' ``weighted_boxes_fusion``.

Coordinates: boxes are ``x1, y1, x2, y2`` NORMALISED to [0, 1] (corners, x to the right, y down), as
ensemble-boxes wants them; the caller divides by the image size and multiplies back.

ensemble-boxes (``ensemble_boxes_wbf.py``, v1.0.9) fuses one image per call and, inside it, one box per
Python step: for each class, boxes sorted by ``score * weight`` (descending, numpy's ``argsort()[::-1]``)
join the first cluster whose current fused box they overlap most with IoU > ``iou_thr``, or open a new
cluster. A cluster's fused box is the score-weighted mean of its members, recomputed in float32 after
every join. At 10 sources x 100 boxes that costs tens of milliseconds per image.

:func:`weighted_boxes_fusion_batched` runs the same greedy algorithm for every (image, class) group of a
batch in lock step: step ``j`` takes the ``j``-th box of every group that has one and compares it with
that group's clusters in one numpy expression. It reproduces ensemble-boxes bit for bit, which
tests/test_wbf.py checks against the library itself:

* the same processing order, also for equal scores (groups with a tie are re-sorted with the library's
  own ``argsort()[::-1]`` on the same values; the final per-image order likewise);
* the same arithmetic: float64 IoU, float32 rounding of the accumulated sum after each join and of the
  fused box, score and weight of clusters with two or more boxes (a single-box cluster keeps its float64
  row), the same operation order in the confidence rescaling of every ``conf_type``;
* the same input checks: boxes with score < ``skip_box_thr`` dropped, corners swapped and clipped to
  [0, 1], zero-area boxes dropped.

``allows_overflow`` is not offered (the pipeline never sets it); NMS and soft-NMS stay on ensemble-boxes.
"""
from __future__ import annotations

import numpy as np

CONF_TYPES = ("avg", "max", "box_and_model_avg", "absent_model_aware_avg")


def _f32(x: np.ndarray) -> np.ndarray:
    """Round float64 values to float32 and back (what storing into ensemble-boxes' float32 box does)."""
    return np.asarray(x, dtype=np.float64).astype(np.float32).astype(np.float64)


def _descending_order(values: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Order of ``values`` by ``group`` ascending, then value descending, as ``argsort()[::-1]`` orders
    each group's values (in their given order). Without ties any sort agrees with numpy's; groups with
    a tie are re-sorted with exactly the library's call."""
    order = np.lexsort((-values, group))
    v, g = values[order], group[order]
    tie = np.flatnonzero((v[1:] == v[:-1]) & (g[1:] == g[:-1]))
    if len(tie):
        starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
        ends = np.r_[starts[1:], len(g)]
        which = np.searchsorted(starts, tie, side="right") - 1
        for a, b in zip(starts[np.unique(which)], ends[np.unique(which)]):
            members = np.sort(order[a:b])  # the group's rows in input order
            order[a:b] = members[np.argsort(values[members])[::-1]]
    return order


def _prefilter(boxes, scores, labels, weight_of_row, skip_box_thr):
    """ensemble-boxes' ``prefilter_boxes`` on flat arrays: the kept rows, their clean boxes, weighted
    scores (``score * weight``) and integer labels."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    below = np.asarray(scores) < skip_box_thr  # in the scores' own dtype, as the library compares
    scores = np.asarray(scores, dtype=np.float64)
    x1, x2 = np.minimum(boxes[:, 0], boxes[:, 2]), np.maximum(boxes[:, 0], boxes[:, 2])
    y1, y2 = np.minimum(boxes[:, 1], boxes[:, 3]), np.maximum(boxes[:, 1], boxes[:, 3])
    clean = np.clip(np.stack([x1, y1, x2, y2], axis=1), 0.0, 1.0)
    area = (clean[:, 2] - clean[:, 0]) * (clean[:, 3] - clean[:, 1])
    keep = ~below & (area != 0.0)
    lab = np.asarray(labels, dtype=np.float64)[keep].astype(np.int64)  # int() truncation, as the library
    return keep, clean[keep], scores[keep] * weight_of_row[keep], lab


class _Clusters:
    """Per-group cluster state, padded to ``cap`` clusters per group (grown on demand)."""

    def __init__(self, n_groups: int, cap: int = 16):
        self.n = np.zeros(n_groups, dtype=np.int64)  # clusters per group
        self.cap = 0
        self.box = np.zeros((n_groups, 0, 4))      # current fused box (what IoU is computed against)
        self.area = np.zeros((n_groups, 0))
        self.acc = np.zeros((n_groups, 0, 4))      # running sum of score * box, float32 values
        self.conf = np.zeros((n_groups, 0))        # running sum of score (float64)
        self.wsum = np.zeros((n_groups, 0))        # running sum of weights (float64)
        self.cmax = np.zeros((n_groups, 0))
        self.count = np.zeros((n_groups, 0), dtype=np.int64)
        self._grow(cap)

    def _grow(self, cap: int) -> None:
        extra = cap - self.cap
        pad = lambda a, fill=0.0: np.concatenate(  # noqa: E731
            [a, np.full((a.shape[0], extra, *a.shape[2:]), fill, dtype=a.dtype)], axis=1)
        # Empty slots: box 0 and area -inf give IoU -0.0, never above a valid IoU (>= 0) nor above iou_thr.
        self.box, self.area = pad(self.box), pad(self.area, -np.inf)
        self.acc, self.conf, self.wsum, self.cmax, self.count = (
            pad(self.acc), pad(self.conf), pad(self.wsum), pad(self.cmax), pad(self.count, 0))
        self.cap = cap

    def best_match(self, g_count: int, box: np.ndarray, box_area: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Index and IoU of the cluster of groups ``0 .. g_count-1`` that each box overlaps most (the
        first of equal ones), as ensemble-boxes' ``find_matching_box_fast`` computes it."""
        k = int(self.n[:g_count].max())
        fb = self.box[:g_count, :k]
        x_a = np.maximum(fb[:, :, 0], box[:, None, 0])
        y_a = np.maximum(fb[:, :, 1], box[:, None, 1])
        x_b = np.minimum(fb[:, :, 2], box[:, None, 2])
        y_b = np.minimum(fb[:, :, 3], box[:, None, 3])
        inter = np.maximum(x_b - x_a, 0) * np.maximum(y_b - y_a, 0)
        iou = inter / (self.area[:g_count, :k] + box_area[:, None] - inter)
        best = np.argmax(iou, axis=1)
        return best, iou[np.arange(g_count), best]

    def open(self, g: np.ndarray, box: np.ndarray, box_area: np.ndarray, s: np.ndarray, w: np.ndarray) -> np.ndarray:
        """A new cluster per group ``g`` holding one box; returns the new clusters' indices."""
        k = self.n[g].copy()
        if len(k) and k.max() >= self.cap:
            self._grow(max(2 * self.cap, int(k.max()) + 1))
        self.n[g] += 1
        self.box[g, k], self.area[g, k] = box, box_area
        self.acc[g, k] = _f32(0.0 + s[:, None] * box)
        self.conf[g, k], self.wsum[g, k], self.cmax[g, k], self.count[g, k] = 0.0 + s, 0.0 + w, s, 1
        return k

    def join(self, g: np.ndarray, k: np.ndarray, box: np.ndarray, s: np.ndarray, w: np.ndarray) -> None:
        """Add one box to cluster ``k`` of each group ``g`` and recompute its fused box (float32)."""
        acc = _f32(self.acc[g, k] + s[:, None] * box)
        conf = self.conf[g, k] + s
        self.acc[g, k], self.conf[g, k] = acc, conf
        self.wsum[g, k] += w
        self.cmax[g, k] = np.maximum(self.cmax[g, k], s)
        self.count[g, k] += 1
        fused = _f32(acc / conf[:, None])
        self.box[g, k] = fused
        self.area[g, k] = (fused[:, 2] - fused[:, 0]) * (fused[:, 3] - fused[:, 1])


def _cluster(off: np.ndarray, length: np.ndarray, box: np.ndarray, s: np.ndarray, w: np.ndarray,
             iou_thr: float) -> tuple[_Clusters, np.ndarray]:
    """Greedy clustering of every group at once. Group ``g`` owns rows ``off[g] .. off[g]+length[g]-1``
    of ``box``/``s``/``w``, already in processing order; groups are sorted by length, longest first,
    so the groups still busy at step ``j`` are a prefix. Returns the clusters and each row's cluster."""
    area = (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])
    cl = _Clusters(len(off))
    member_k = np.zeros(len(box), dtype=np.int64)
    busy = len(off)
    for j in range(int(length[0]) if len(length) else 0):
        while length[busy - 1] <= j:
            busy -= 1
        rows = off[:busy] + j
        b, a, sj, wj = box[rows], area[rows], s[rows], w[rows]
        if j == 0:
            member_k[rows] = cl.open(np.arange(busy), b, a, sj, wj)
            continue
        best, best_iou = cl.best_match(busy, b, a)
        hit = ~(best_iou <= iou_thr) & (best < cl.n[:busy])  # NaN (zero-score cluster) joins, as in the library
        g = np.flatnonzero(hit)
        cl.join(g, best[g], b[g], sj[g], wj[g])
        member_k[rows[g]] = best[g]
        g = np.flatnonzero(~hit)
        member_k[rows[g]] = cl.open(g, b[g], a[g], sj[g], wj[g])
    return cl, member_k


def _weight_sums(present: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``weights[present_row].sum()`` per row of a boolean matrix, with numpy's own summation (computed
    once per distinct row, so the float64 result is the library's whatever the weights)."""
    if not len(present):
        return np.zeros(0)
    if present.shape[1] <= 62:  # one integer per row: a much faster unique than rows of booleans
        _, first, inverse = np.unique(present @ (1 << np.arange(present.shape[1], dtype=np.int64)),
                                      return_index=True, return_inverse=True)
        rows = present[first]
    else:
        rows, inverse = np.unique(present, axis=0, return_inverse=True)
    return np.array([weights[r].sum() for r in rows])[inverse.reshape(-1)]


def _groups(image: np.ndarray, lab: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, label) group of each row, each group's first row (the library handles labels in order
    of first appearance), and the processing order: by group, then descending weighted score."""
    span = int(lab.max()) - int(lab.min()) + 1
    _, group = np.unique((image - image.min()) * span + (lab - lab.min()), return_inverse=True)
    first_row = np.full(group.max() + 1, len(group))
    np.minimum.at(first_row, group, np.arange(len(group)))
    return group, first_row, _descending_order(s, group)


def _cluster_scores(cl: _Clusters, slots, ks, present, weights: np.ndarray, conf_type: str) -> np.ndarray:
    """Each cluster's confidence: the library's fused-box score (float32 once two boxes joined; the
    box's own float64 score otherwise), rescaled by the number of models and boxes as it does."""
    count = cl.count[slots, ks]
    multi = count > 1
    conf = cl.conf[slots, ks]
    if conf_type == "max":
        score = np.where(multi, _f32(cl.cmax[slots, ks]), conf)
    else:
        score = np.where(multi, _f32(conf / count), conf)
    wbox = np.where(multi, _f32(cl.wsum[slots, ks]), cl.wsum[slots, ks])
    n = count.astype(np.float64)
    if conf_type == "box_and_model_avg":
        return score * n / wbox * _weight_sums(present, weights) / weights.sum()
    if conf_type == "absent_model_aware_avg":
        return score * n / (wbox + _weight_sums(~present, weights))
    if conf_type == "max":
        return score / weights.max()
    return score * np.minimum(len(weights), count).astype(np.float64) / weights.sum()


def weighted_boxes_fusion_batched(image: np.ndarray, source: np.ndarray, boxes: np.ndarray, scores: np.ndarray,
                                  labels: np.ndarray, n_sources: int, weights=None, iou_thr: float = 0.55,
                                  skip_box_thr: float = 0.0, conf_type: str = "avg"
                                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """WBF of many images in one call; per image the result of ``ensemble_boxes.weighted_boxes_fusion``.

    Input rows are boxes: ``image`` (integer image index), ``source`` (model index ``0 .. n_sources-1``,
    the position of the box's list in ensemble-boxes' ``boxes_list``), ``boxes`` (n, 4) normalised xyxy,
    ``scores``, ``labels``. Within an image and source, row order is the order of that source's list.
    ``weights``: one per source (None = all 1).

    Returns ``(image, boxes, scores, labels)`` of the fused boxes: images in ascending index order, each
    image's boxes in the library's order (descending score), values equal to the library's float64
    arrays. Images whose boxes were all dropped are absent.
    """
    if conf_type not in CONF_TYPES:
        raise ValueError(f"conf_type {conf_type!r} is not one of {CONF_TYPES}")
    weights = np.ones(n_sources) if weights is None else np.array(weights, dtype=np.float64)
    if len(weights) != n_sources:
        raise ValueError(f"{len(weights)} weights for {n_sources} sources; give one weight per source")
    image, source = np.asarray(image, dtype=np.int64), np.asarray(source, dtype=np.int64)
    if len(source) and (source.min() < 0 or source.max() >= n_sources):
        raise ValueError(f"source indices must lie in 0 .. {n_sources - 1}")
    # the library's view of each image: source lists one after the other (stable: list order kept)
    order = np.lexsort((source, image))
    image, source = image[order], source[order]
    keep, box, s, lab = _prefilter(np.asarray(boxes).reshape(-1, 4)[order], np.asarray(scores)[order],
                                   np.asarray(labels)[order], weights[source], float(skip_box_thr))
    image, source = image[keep], source[keep]
    if not len(s):
        return np.zeros(0, dtype=np.int64), np.zeros((0, 4)), np.zeros(0), np.zeros(0)

    group, first_row, order = _groups(image, lab, s)
    group, box, s, source = group[order], box[order], s[order], source[order]
    start = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    length = np.diff(np.r_[start, len(group)])
    by_len = np.argsort(-length, kind="stable")  # cluster slot g holds group by_len[g]: longest first
    cl, member_k = _cluster(start[by_len], length[by_len], box, s, weights[source], float(iou_thr))

    # one row per cluster, ordered as the library concatenates them: by label first appearance (so
    # image by image), then by creation
    slots, ks = np.nonzero(np.arange(cl.cap)[None, :] < cl.n[:, None])
    cl_order = np.lexsort((ks, first_row[by_len[slots]]))
    slots, ks = slots[cl_order], ks[cl_order]
    present = None
    if conf_type in ("box_and_model_avg", "absent_model_aware_avg"):  # which sources each cluster holds
        slot_of_group = np.empty_like(by_len)
        slot_of_group[by_len] = np.arange(len(by_len))
        cluster_id = np.full((len(cl.n), cl.cap), -1, dtype=np.int64)
        cluster_id[slots, ks] = np.arange(len(slots))
        present = np.zeros((len(slots), n_sources), dtype=bool)
        present[cluster_id[slot_of_group[group], member_k], source] = True
    score = _cluster_scores(cl, slots, ks, present, weights, conf_type)
    of_group = np.zeros((group.max() + 1, 2), dtype=np.int64)
    of_group[group] = np.stack([image[order], lab[order]], axis=1)
    img, label = of_group[by_len[slots]].T
    final = _descending_order(score, img)  # per image, the library's final argsort()[::-1]
    return img[final], cl.box[slots, ks][final], score[final], label[final].astype(np.float64)
