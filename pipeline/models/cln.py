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

Decoding (:func:`decode`): a 3x3 max-pool keeps local maxima; the 20 highest per class become boxes
``centre +- exp(size) * stride / 2``, scored by the peak, and greedy NMS (IoU 0.5) keeps ``max_boxes``,
in INPUT (letterbox) pixels; map them to original pixels with
:meth:`pipeline.classifier.Letterbox.to_source`.
"""
from __future__ import annotations

import math

import numpy as np

STRIDE = 8
SIGMA_SCALE = 0.09
HEAT_PRIOR = 0.01          # initial heatmap probability (bias of the last conv), as CenterNet/RetinaNet
LOSS_WEIGHTS = {"cls": 1.0, "heat": 1.0, "size": 1.0, "offset": 1.0}


def build_cln(trunk, n_labels: int, n_box_classes: int = 8, width: int = 64):
    """CLN on ``trunk``; forward(x) -> dict ``logits`` (B, n_labels), ``heat`` (B, K, h, w) logits,
    ``size`` (B, 2K, h, w), ``offset`` (B, 2, h, w), with h, w = input size / 8."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    if not 1 <= n_box_classes <= n_labels:
        raise ValueError(f"n_box_classes must be in 1..n_labels ({n_labels}), got {n_box_classes}")

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
            self.size = head(2 * n_box_classes)
            self.offset = head(2)

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
            return {"logits": self.fc(feats[-1].mean((2, 3))), "heat": self.heat(p), "size": self.size(p),
                    "offset": torch.sigmoid(self.offset(p))}

    return CLN()


def encode_targets(boxes_xyxy, class_ids, label_state, imgsz: int, n_box_classes: int = 8,
                   stride: int = STRIDE) -> dict:
    """Training targets of one image for :func:`cln_loss` (numpy, float32).

    ``boxes_xyxy`` (n, 4) in input pixels, ``class_ids`` (n,) in 0..K-1, ``label_state`` (K,): 1 =
    present, 0 = absent, NaN = unknown (image-level labels of the boxed classes). Returns ``heat``
    (K, h, w) Gaussian centre targets (1 at each centre cell), ``heat_mask`` (K,) 1 where the channel
    is supervised (a box, or absent), ``size`` (2K, h, w) and ``offset`` (2, h, w) targets with
    ``reg_mask`` (K, h, w) 1 at the centre cells.
    """
    h = w = int(math.ceil(imgsz / stride))
    k_ = n_box_classes
    heat = np.zeros((k_, h, w), np.float32)
    size = np.zeros((2 * k_, h, w), np.float32)
    offset = np.zeros((2, h, w), np.float32)
    reg_mask = np.zeros((k_, h, w), np.float32)
    state = np.asarray(label_state, np.float64).reshape(k_)
    heat_mask = (state == 0).astype(np.float32)  # absent: all-zero target is known
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    for (x0, y0, x1, y1), c in zip(np.asarray(boxes_xyxy, np.float64).reshape(-1, 4), np.asarray(class_ids, int)):
        bw, bh = max(x1 - x0, 1.0) / stride, max(y1 - y0, 1.0) / stride
        cx, cy = (x0 + x1) / 2 / stride, (y0 + y1) / 2 / stride
        ix, iy = min(max(int(cx), 0), w - 1), min(max(int(cy), 0), h - 1)
        sx, sy = max(0.5, SIGMA_SCALE * bw), max(0.5, SIGMA_SCALE * bh)
        g = np.exp(-((xx - ix) ** 2) / (2 * sx * sx) - ((yy - iy) ** 2) / (2 * sy * sy))
        heat[c] = np.maximum(heat[c], g)
        heat[c, iy, ix] = 1.0
        size[2 * c:2 * c + 2, iy, ix] = (math.log(bw), math.log(bh))
        offset[:, iy, ix] = (min(max(cx - ix, 0.0), 1.0), min(max(cy - iy, 0.0), 1.0))
        reg_mask[c, iy, ix] = 1.0
        heat_mask[c] = 1.0
    return {"heat": heat, "heat_mask": heat_mask, "size": size, "offset": offset, "reg_mask": reg_mask}


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
        iy, ix = (idx // w).float(), (idx % w).float()
        size = out["size"].float().view(b, k, 2, h * w)
        bw = torch.exp(size[:, :, 0].gather(-1, idx)) * stride
        bh = torch.exp(size[:, :, 1].gather(-1, idx)) * stride
        off = out["offset"].float().view(b, 1, 2, h * w).expand(b, k, 2, h * w)
        cx = (ix + off[:, :, 0].gather(-1, idx)) * stride
        cy = (iy + off[:, :, 1].gather(-1, idx)) * stride
        boxes = torch.stack([scores, cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1).cpu().numpy()
    return [[_nms(boxes[i, c], max_boxes, nms_iou) for c in range(k)] for i in range(b)]


__all__ = ["LOSS_WEIGHTS", "STRIDE", "build_cln", "cln_loss", "decode", "encode_targets"]
