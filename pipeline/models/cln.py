"""CLN: one network that classifies chest X-rays and localises the boxed findings (after Okolo et al. 2025).

Architecture (:func:`build_cln`): a :mod:`pipeline.models.trunks` trunk (DenseNet-121 by default),
and two heads trained jointly:

* **classification**: global average pooling of the last stage + Linear -> ``n_labels`` logits (the 8
  boxed classes, or all 14 ChestX-ray14 findings with the boxed ones first), on every image;
* **localisation**: a small feature pyramid (1x1 lateral convolutions to ``width`` channels, top-down
  upsampling and sum, 3x3 smoothing) gives one map at stride 8; on it, per boxed class k, a centre
  heatmap ``heat[k]`` and a box size ``size[2k:2k+2]`` (log width, log height in cells), plus one
  sub-cell centre offset shared by the classes. This is the anchor-free "objects as points" head
  (CenterNet, Zhou et al. 2019). Two coordinate channels (x, y in [-1, 1], CoordConv) join the
  pyramid map before the heads: a convolution cannot otherwise tell where in the chest it is, and
  the site of a finding (the heart, the costophrenic angles, the apices) is a large part of locating it.

Why this head, not a box regression per class or a thresholded CAM-like mask:
  * several boxes per class come for free (the k highest local maxima of the class's heatmap), which
    the protocol allows (3 per image and class) and which a fixed (x, y, w, h) regression per class
    cannot give (and a single regressed box averages two plausible sites, e.g. left and right lung,
    into the mediastinum);
  * box extents are regressed, not read off a thresholded map, so IoU at 0.5+ does not hinge on one
    threshold that trades small against large findings;
  * no anchors to tune on 880 images; one 3x3 head per output, cheap on a CPU;
  * the heatmap is supervised only where supervision exists: a class with a box gets its Gaussian
    centre target, a class the image-level labels call absent gets an all-zero target, and a class
    present without a box (no box drawn, or an image without boxes added as classification data) is
    masked out of the heatmap loss.

Targets (:func:`encode_targets`) and the loss (:func:`cln_loss`): penalty-reduced focal loss on the
heatmaps (CenterNet's, alpha 2, beta 4) normalised by the number of centres, L1 on log size and offset
at the centre cells, BCE on the image labels. Gaussian sigma per axis = max(0.5, 0.09 * box side in
cells) (TTFNet's elliptical Gaussians; 0.09 = 0.54 / 6).

Two box regressions (``box_mode``):

* ``centre`` (CenterNet): ``size`` (2K channels) = log width, log height in cells and a shared sub-cell
  ``offset``, supervised by L1 at the ONE cell under each box centre;
* ``dense`` (TTFNet, Liu et al. 2020, "Training-Time-Friendly Network"): ``size`` (4K channels) = log of
  the distances from the cell's centre to the box's left, top, right and bottom edges, supervised at
  every cell of the box's elliptical Gaussian core (the heatmap's Gaussian, cells whose centre lies in
  the box), each cell weighted by its Gaussian value and each box's weights summing to 1, with a GIoU
  loss (weight ``LOSS_WEIGHTS["box"]`` = 5, TTFNet's). Why: with a few hundred boxed images the centre
  form sees about one size sample per box and epoch; the dense form sees a few for a small box and
  dozens for a large one (8 for a 48 x 40 px box at stride 8) and optimises overlap itself, which is
  what IoU > 0.5 counts. Where two boxes of a class overlap, a cell regresses the smaller (TTFNet's
  rule). No offset head: the distances place the box exactly.

Decoding (:func:`decode`): a 3x3 max-pool keeps local maxima; the 20 highest per class become boxes
(``centre +- exp(size) * stride / 2``, or the cell centre minus / plus the four distances), scored by
the peak, and greedy NMS (IoU 0.5) keeps ``max_boxes``, in INPUT (letterbox) pixels; map them to
original pixels with :meth:`pipeline.classifier.Letterbox.to_source`.
"""
from __future__ import annotations

import math

import numpy as np

STRIDE = 8
SIGMA_SCALE = 0.09
HEAT_PRIOR = 0.01          # initial heatmap probability (bias of the last conv), as CenterNet/RetinaNet
LOSS_WEIGHTS = {"cls": 1.0, "heat": 1.0, "size": 1.0, "offset": 1.0, "box": 5.0}
BOX_MODES = ("centre", "dense")
MAX_LOG_DIST = 6.0         # dense: log-distance clamp (e^6 cells = 3,200 px at stride 8) against overflow


def _check_mode(box_mode: str) -> str:
    if box_mode not in BOX_MODES:
        raise ValueError(f"box_mode must be one of {list(BOX_MODES)}, got {box_mode!r}")
    return box_mode


def build_cln(trunk, n_labels: int, n_box_classes: int = 8, width: int = 64, box_mode: str = "centre"):
    """CLN on ``trunk``; forward(x) -> dict ``logits`` (B, n_labels), ``heat`` (B, K, h, w) logits,
    ``size`` (B, 2K, h, w) and ``offset`` (B, 2, h, w) (``box_mode="centre"``) or ``size`` (B, 4K, h, w)
    log edge distances (``"dense"``), with h, w = input size / 8."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    if not 1 <= n_box_classes <= n_labels:
        raise ValueError(f"n_box_classes must be in 1..n_labels ({n_labels}), got {n_box_classes}")
    dense = _check_mode(box_mode) == "dense"

    def head(out_ch: int, bias: float = 0.0):
        last = nn.Conv2d(width, out_ch, 1)
        nn.init.constant_(last.bias, bias)
        return nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.ReLU(inplace=True), last)

    class CLN(nn.Module):
        def __init__(self):
            super().__init__()
            self.trunk = trunk
            self.n_box_classes = n_box_classes
            self.fc = nn.Linear(trunk.channels[-1], n_labels)
            self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in trunk.channels)
            # + 2 coordinate channels (CoordConv): where a finding sits is half of what is localised
            self.smooth = nn.Sequential(nn.Conv2d(width + 2, width, 3, padding=1), nn.BatchNorm2d(width),
                                        nn.ReLU(inplace=True))
            self.heat = head(n_box_classes, -math.log((1 - HEAT_PRIOR) / HEAT_PRIOR))
            self.size = head((4 if dense else 2) * n_box_classes)
            self.offset = None if dense else head(2)

        @property
        def n_outputs(self) -> int:
            return self.fc.out_features

        def forward(self, x):
            feats = self.trunk(x)
            p = self.lateral[-1](feats[-1])
            for lat, f in zip(reversed(self.lateral[:-1]), reversed(feats[:-1])):
                p = lat(f) + F.interpolate(p, size=f.shape[-2:], mode="nearest")
            b, _, h, w = p.shape
            ys = torch.linspace(-1, 1, h, device=p.device, dtype=p.dtype).view(1, 1, h, 1).expand(b, 1, h, w)
            xs = torch.linspace(-1, 1, w, device=p.device, dtype=p.dtype).view(1, 1, 1, w).expand(b, 1, h, w)
            p = self.smooth(torch.cat([p, xs, ys], 1))
            out = {"logits": self.fc(feats[-1].mean((2, 3))), "heat": self.heat(p), "size": self.size(p)}
            if self.offset is not None:
                out["offset"] = torch.sigmoid(self.offset(p))
            return out

    return CLN()


def encode_targets(boxes_xyxy, class_ids, label_state, imgsz: int, n_box_classes: int = 8,
                   stride: int = STRIDE, box_mode: str = "centre") -> dict:
    """Training targets of one image for :func:`cln_loss` (numpy, float32).

    ``boxes_xyxy`` (n, 4) in input pixels, ``class_ids`` (n,) in 0..K-1, ``label_state`` (K,): 1 =
    present, 0 = absent, NaN = unknown (image-level labels of the boxed classes). Returns ``heat``
    (K, h, w) Gaussian centre targets (1 at each centre cell), ``heat_mask`` (K,) 1 where the channel
    is supervised (a box, or absent), ``size`` (2K, h, w) and ``offset`` (2, h, w) targets with
    ``reg_mask`` (K, h, w) 1 at the centre cells; with ``box_mode="dense"`` instead ``box`` (4K, h, w):
    the target box (x0, y0, x1, y1 in cells) of each regressing cell, and ``box_weight`` (K, h, w)
    (see the module's text).
    """
    if _check_mode(box_mode) == "dense":
        return _encode_dense(boxes_xyxy, class_ids, label_state, imgsz, n_box_classes, stride)
    h = w = int(math.ceil(imgsz / stride))
    k_ = n_box_classes
    heat = np.zeros((k_, h, w), np.float32)
    size = np.zeros((2 * k_, h, w), np.float32)
    offset = np.zeros((2, h, w), np.float32)
    reg_mask = np.zeros((k_, h, w), np.float32)
    state = np.asarray(label_state, np.float64).reshape(k_)
    heat_mask = (state == 0).astype(np.float32)  # absent: all-zero target is known
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    for box, c in zip(np.asarray(boxes_xyxy, np.float64).reshape(-1, 4), np.asarray(class_ids, int)):
        bw, bh, cx, cy, ix, iy = _in_cells(box, stride, w, h)
        _paint_heat(heat[c], xx, yy, ix, iy, bw, bh)
        size[2 * c:2 * c + 2, iy, ix] = (math.log(bw), math.log(bh))
        offset[:, iy, ix] = (min(max(cx - ix, 0.0), 1.0), min(max(cy - iy, 0.0), 1.0))
        reg_mask[c, iy, ix] = 1.0
        heat_mask[c] = 1.0
    return {"heat": heat, "heat_mask": heat_mask, "size": size, "offset": offset, "reg_mask": reg_mask}


DENSE_BETA = 0.54          # TTFNet: cells regress inside the box's central beta x beta part


def _in_cells(box_px, stride: int, w: int, h: int) -> tuple:
    """``(bw, bh, cx, cy, ix, iy)`` of a box in input pixels: side lengths (at least one pixel) and centre
    in cells, and the cell holding the centre (clipped to the map)."""
    x0, y0, x1, y1 = map(float, box_px)
    bw, bh = max(x1 - x0, 1.0) / stride, max(y1 - y0, 1.0) / stride
    cx, cy = (x0 + x1) / 2 / stride, (y0 + y1) / 2 / stride
    return bw, bh, cx, cy, min(max(int(cx), 0), w - 1), min(max(int(cy), 0), h - 1)


def _gaussian(xx, yy, ix: int, iy: int, bw: float, bh: float) -> np.ndarray:
    sx, sy = max(0.5, SIGMA_SCALE * bw), max(0.5, SIGMA_SCALE * bh)
    return np.exp(-((xx - ix) ** 2) / (2 * sx * sx) - ((yy - iy) ** 2) / (2 * sy * sy))


def _paint_heat(heat_c: np.ndarray, xx, yy, ix: int, iy: int, bw: float, bh: float) -> np.ndarray:
    """Draw one box's Gaussian into its class's heatmap (in place: the maximum where boxes meet, 1 at the
    centre cell); returns the Gaussian."""
    g = _gaussian(xx, yy, ix, iy, bw, bh)
    np.maximum(heat_c, g, out=heat_c)
    heat_c[iy, ix] = 1.0
    return g


def _encode_dense(boxes_xyxy, class_ids, label_state, imgsz: int, k_: int, stride: int) -> dict:
    h = w = int(math.ceil(imgsz / stride))
    heat = np.zeros((k_, h, w), np.float32)
    target = np.zeros((4 * k_, h, w), np.float32)
    weight = np.zeros((k_, h, w), np.float32)
    heat_mask = (np.asarray(label_state, np.float64).reshape(k_) == 0).astype(np.float32)
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    b = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4)
    cids = np.asarray(class_ids, int).reshape(-1)
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    for j in np.argsort(-area, kind="stable"):       # large first: a smaller box's cells overwrite
        c = cids[j]
        bw, bh, cx, cy, ix, iy = _in_cells(b[j], stride, w, h)
        g = _paint_heat(heat[c], xx, yy, ix, iy, bw, bh)
        heat_mask[c] = 1.0
        core = ((np.abs(xx + 0.5 - cx) <= DENSE_BETA * bw / 2) & (np.abs(yy + 0.5 - cy) <= DENSE_BETA * bh / 2))
        core[iy, ix] = True
        wts = np.where(core, g, 0.0)
        wts /= wts.sum()
        target[4 * c:4 * c + 4, core] = (b[j] / stride).astype(np.float32)[:, None]
        weight[c, core] = wts[core]
    return {"heat": heat, "heat_mask": heat_mask, "box": target, "box_weight": weight}


def dense_boxes(size, stride: float = 1.0):
    """Boxes (B, K, 4, h, w) ``x0, y0, x1, y1`` from the dense head's log distances ``size`` (B, 4K, h, w):
    each cell's centre minus / plus its four distances, times ``stride`` (1 = cells)."""
    import torch

    b, c4, h, w = size.shape
    d = size.float().clamp(-MAX_LOG_DIST, MAX_LOG_DIST).exp().view(b, c4 // 4, 4, h, w)
    cx = (torch.arange(w, device=size.device, dtype=d.dtype) + 0.5).view(1, 1, 1, w)
    cy = (torch.arange(h, device=size.device, dtype=d.dtype) + 0.5).view(1, 1, h, 1)
    return torch.stack([cx - d[:, :, 0], cy - d[:, :, 1], cx + d[:, :, 2], cy + d[:, :, 3]], 2) * stride


def giou(a, b):
    """Generalised IoU of boxes ``a`` and ``b`` (..., 4, h, w) along dim -3 (x0, y0, x1, y1), elementwise."""
    import torch

    ax0, ay0, ax1, ay1 = a.unbind(-3)
    bx0, by0, bx1, by1 = b.unbind(-3)
    iw = (torch.minimum(ax1, bx1) - torch.maximum(ax0, bx0)).clamp_min(0)
    ih = (torch.minimum(ay1, by1) - torch.maximum(ay0, by0)).clamp_min(0)
    inter = iw * ih
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    hull = (torch.maximum(ax1, bx1) - torch.minimum(ax0, bx0)) * (torch.maximum(ay1, by1) - torch.minimum(ay0, by0))
    return inter / union.clamp_min(1e-6) - (hull - union) / hull.clamp_min(1e-6)


def cln_loss(out: dict, batch: dict, weights: dict | None = None, pos_weight=None) -> tuple:
    """``(total, parts)``: the weighted sum and a dict of the parts (floats) for logging.

    ``batch``: ``labels`` (B, L) in {0, 1} with ``label_mask`` (B, L) (1 = known), and the stacked
    :func:`encode_targets` arrays as tensors; ``pos_weight`` (L,) as in BCEWithLogitsLoss, or None.
    """
    import torch

    from pipeline.models.fit import masked_bce

    wts = {**LOSS_WEIGHTS, **(weights or {})}
    l_cls = masked_bce(out["logits"], batch, pos_weight)

    # CenterNet focal loss on supervised channels
    p = torch.sigmoid(out["heat"]).clamp(1e-4, 1 - 1e-4)
    gt, m = batch["heat"], batch["heat_mask"][:, :, None, None]
    pos = (gt >= 1.0).float()
    pos_loss = -torch.log(p) * (1 - p) ** 2 * pos
    neg_loss = -torch.log(1 - p) * p ** 2 * (1 - gt) ** 4 * (1 - pos)
    n_pos = (pos * m).sum().clamp_min(1.0)
    l_heat = ((pos_loss + neg_loss) * m).sum() / n_pos

    if "box_weight" in batch:                                  # dense (TTFNet): GIoU at the Gaussian cores
        bw_ = batch["box_weight"]
        b, k, hh, ww = bw_.shape
        target = batch["box"].view(b, k, 4, hh, ww)
        l_box = ((1 - giou(dense_boxes(out["size"]), target)) * bw_).sum() / bw_.sum().clamp_min(1.0)
        total = wts["cls"] * l_cls + wts["heat"] * l_heat + wts["box"] * l_box
        return total, {"cls": float(l_cls.detach()), "heat": float(l_heat.detach()), "box": float(l_box.detach())}

    rm = batch["reg_mask"]                                    # (B, K, h, w)
    n_reg = rm.sum().clamp_min(1.0)
    b, k, hh, ww = rm.shape
    size_err = (out["size"] - batch["size"]).abs().view(b, k, 2, hh, ww).sum(2)
    l_size = (size_err * rm).sum() / n_reg
    centre = rm.amax(1, keepdim=True)                          # (B, 1, h, w)
    l_off = ((out["offset"] - batch["offset"]).abs().sum(1, keepdim=True) * centre).sum() / centre.sum().clamp_min(1.0)

    total = wts["cls"] * l_cls + wts["heat"] * l_heat + wts["size"] * l_size + wts["offset"] * l_off
    return total, {"cls": float(l_cls.detach()), "heat": float(l_heat.detach()),
                   "size": float(l_size.detach()), "offset": float(l_off.detach())}


def _nms(cands: np.ndarray, max_boxes: int, iou_thr: float) -> np.ndarray:
    """Greedy: candidates (n, 5) sorted by score; keep those overlapping no kept box above iou_thr."""
    from pipeline.boxes import iou_matrix

    kept: list[int] = []
    for j in range(len(cands)):
        if len(kept) == max_boxes:
            break
        if cands[j, 0] <= 0:
            break  # not a local maximum
        if not kept or iou_matrix(cands[j:j + 1, 1:], cands[kept, 1:]).max() <= iou_thr:
            kept.append(j)
    return cands[kept]


def decode(out: dict, max_boxes: int = 3, stride: int = STRIDE, n_candidates: int = 20,
           nms_iou: float = 0.5) -> list[list[np.ndarray]]:
    """Boxes per image and class: ``result[i][k]`` is an array (n <= max_boxes, 5) of
    ``score, x_min, y_min, x_max, y_max`` in input pixels, highest score first.

    The ``n_candidates`` highest local maxima (3x3) of each class's heatmap are decoded, then greedy
    NMS at ``nms_iou`` keeps at most ``max_boxes``: the protocol's 3 boxes are spent on different
    sites, not on neighbouring cells of one blob."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        heat = torch.sigmoid(out["heat"].float())
        peaks = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat).float()
        b, k, h, w = heat.shape
        n = min(max(n_candidates, max_boxes), h * w)
        scores, idx = peaks.view(b, k, -1).topk(n, dim=-1)      # (B, K, n), sorted
        if "offset" not in out:                                  # dense: each cell's own box
            xyxy = dense_boxes(out["size"], stride).view(b, k, 4, h * w)
            boxes = torch.stack([scores] + [xyxy[:, :, j].gather(-1, idx) for j in range(4)], -1).cpu().numpy()
            return [[_nms(boxes[i, c], max_boxes, nms_iou) for c in range(k)] for i in range(b)]
        iy, ix = (idx // w).float(), (idx % w).float()
        size = out["size"].float().view(b, k, 2, h * w)
        bw = torch.exp(size[:, :, 0].gather(-1, idx)) * stride
        bh = torch.exp(size[:, :, 1].gather(-1, idx)) * stride
        off = out["offset"].float().view(b, 1, 2, h * w).expand(b, k, 2, h * w)
        cx = (ix + off[:, :, 0].gather(-1, idx)) * stride
        cy = (iy + off[:, :, 1].gather(-1, idx)) * stride
        boxes = torch.stack([scores, cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1).cpu().numpy()
    return [[_nms(boxes[i, c], max_boxes, nms_iou) for c in range(k)] for i in range(b)]


__all__ = ["BOX_MODES", "LOSS_WEIGHTS", "STRIDE", "build_cln", "cln_loss", "decode", "dense_boxes", "encode_targets",
           "giou"]
