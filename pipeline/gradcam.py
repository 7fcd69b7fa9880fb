"""Grad-CAM heatmaps of the DenseNet-121 classifier and weakly supervised localisation.

* :func:`grad_cam` -- Grad-CAM (Selvaraju et al. 2017) on ``model.net.features``: the output of
  DenseNet-121's last dense block after its final BatchNorm (``norm5``), before the ReLU and global
  pooling of the head. Channel weights are the spatial mean of d(logit)/d(features); the map is
  ReLU(sum of weighted channels), upsampled to the input size and divided by its maximum.
* :func:`grad_cams` -- the same for several classes at once (one forward pass, one cheap gradient per
  class), on any layer (``layer``; default ``model.cam_layer`` or ``model.net.features``).
* :func:`heatmap_to_box` -- threshold at a share of the maximum, keep the largest connected region,
  return its bounding box; :func:`heatmap_to_boxes` -- up to 3 regions with scores (Wang et al.'s
  "1 to 3 boxes per heatmap"), scored with :mod:`pipeline.localisation`.
* :func:`localization_accuracy` -- the ChestX-ray14 weak-localisation score: the share of truth boxes
  found by a predicted box of the same image and class with IoU above T, for T = 0.1 .. 0.7.
* :func:`overlay` -- heatmap over the image with truth (green) and predicted (red) boxes, for PNGs.

Box convention everywhere: ``x_min, y_min, x_max, y_max`` with pixel-edge coordinates (pixel
column c spans [c, c+1)), so a region covering columns 3..5 has x_min 3 and x_max 6. IoU is the
continuous ratio without "+1" (as :func:`pipeline.boxes.iou_matrix`).
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from pipeline.boxes import BOX_COLUMNS, iou_matrix

IOU_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)

# Reference: Wang et al. 2017, "ChestX-ray8: Hospital-scale Chest X-ray Database and Benchmarks on
# Weakly-Supervised Classification and Localization of Common Thorax Diseases" (CVPR 2017), the
# localisation table with T(IoU), mean over the 8 BBox_List classes. Only the two values quoted in this
# project's brief are listed; they were not re-checked against the paper here (no access offline), so
# verify them there before citing. The per-class Table 7 is pipeline.localisation.WANG2017_TABLE7_IOU
# (whose class means are these two values).
WANG2017_MEAN_IOU_ACCURACY = {0.1: 0.568, 0.7: 0.010}


def grad_cam(model, x, target, layer=None) -> np.ndarray:
    """Grad-CAM maps for a batch.

    ``model``: a :class:`pipeline.classifier` ChestClassifier (has ``net.features``) or a model with
    ``cam_layer`` (``layer`` overrides either, see :func:`grad_cams`); ``x``: tensor
    (B, 1, H, W) in [0, 1]; ``target``: output index (int) or one index per image. Returns float32
    (B, H, W) in [0, 1] in input (letterbox) pixels; an all-zero map when nothing contributes
    positively. The model is put in eval mode; parameter gradients are not touched (autograd.grad).
    """
    import torch
    import torch.nn.functional as F

    model.eval()
    device = next(model.parameters()).device
    x = x.to(device).float()
    targets = torch.as_tensor(np.broadcast_to(np.asarray(target), (x.shape[0],)).copy(), device=device).long()
    store = {}
    handle = _cam_layer(model, layer).register_forward_hook(lambda _m, _i, out: store.__setitem__("a", out))
    try:
        with torch.enable_grad():
            logits = model(x)
            score = logits.gather(1, targets[:, None]).sum()
            acts = store["a"]
            grads = torch.autograd.grad(score, acts)[0]
    finally:
        handle.remove()
    weights = grads.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * acts).sum(1, keepdim=True)).detach()
    cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).max(1).values.clamp_min(1e-12)[:, None, None]
    cam = torch.where(peak > 1e-12, cam / peak, torch.zeros_like(cam))
    return cam.cpu().numpy().astype(np.float32)


def _cam_layer(model, layer):
    if layer is not None:
        return layer
    if hasattr(model, "cam_layer"):
        return model.cam_layer
    return model.net.features


def grad_cams(model, x, classes, layer=None) -> np.ndarray:
    """Grad-CAM maps of several output indices for a batch: float32 (B, len(classes), H, W) in [0, 1],
    each map divided by its own maximum (all-zero when nothing contributes positively).

    ``layer``: the module whose output is explained (default ``model.cam_layer`` when the model has
    one, as the :mod:`pipeline.models` classifiers, else ``model.net.features`` as :func:`grad_cam`).
    One forward pass; per class one gradient of the summed logit w.r.t. that layer's output (images of
    a batch do not interact in eval mode, so the sum gives each image its own gradient).
    """
    import torch
    import torch.nn.functional as F

    model.eval()
    device = next(model.parameters()).device
    x = x.to(device).float()
    store = {}
    handle = _cam_layer(model, layer).register_forward_hook(lambda _m, _i, out: store.__setitem__("a", out))
    maps = []
    try:
        with torch.enable_grad():
            logits = model(x)
            acts = store["a"]
            for j, c in enumerate(classes):
                grads = torch.autograd.grad(logits[:, int(c)].sum(), acts, retain_graph=j < len(classes) - 1)[0]
                weights = grads.mean(dim=(2, 3), keepdim=True)
                maps.append(F.relu((weights * acts).sum(1)).detach())
    finally:
        handle.remove()
    cam = F.interpolate(torch.stack(maps, 1), size=x.shape[-2:], mode="bilinear", align_corners=False)
    peak = cam.flatten(2).max(2).values.clamp_min(1e-12)[..., None, None]
    cam = torch.where(peak > 1e-12, cam / peak, torch.zeros_like(cam))
    return cam.cpu().numpy().astype(np.float32)


def heatmap_to_boxes(heatmap: np.ndarray, threshold: float = 0.5, max_boxes: int = 3) -> list[tuple]:
    """Up to ``max_boxes`` boxes of the connected regions where ``heatmap >= threshold * max``.

    Regions are ranked by their heat mass (sum of the map over the region: large and hot first); each
    comes as ``(score, x_min, y_min, x_max, y_max)`` with score = the region's share of the thresholded
    mass (so scores fall along the list and sum to at most 1), boxes in heatmap pixels, pixel-edge
    convention, 8-connectivity. Empty list for an empty (max <= 0) or non-finite map.
    """
    from scipy import ndimage

    h = np.asarray(heatmap, dtype=np.float64)
    if h.ndim != 2:
        raise ValueError(f"heatmap must be 2-d, got shape {h.shape}")
    if not h.size or not np.isfinite(h).all() or h.max() <= 0:
        return []
    labels, n = ndimage.label(h >= threshold * h.max(), structure=np.ones((3, 3), dtype=int))
    if n == 0:
        return []
    ids = np.arange(1, n + 1)
    mass = np.asarray(ndimage.sum_labels(h, labels, ids), dtype=np.float64)
    slices = ndimage.find_objects(labels)
    out = []
    for j in np.argsort(-mass, kind="stable")[:max_boxes]:
        ys, xs = slices[j]
        out.append((float(mass[j] / mass.sum()), float(xs.start), float(ys.start), float(xs.stop), float(ys.stop)))
    return out


def heatmap_to_box(heatmap: np.ndarray, threshold: float = 0.5) -> tuple[float, float, float, float] | None:
    """Bounding box of the largest connected region where ``heatmap >= threshold * max``.

    8-connectivity; among regions of equal size the one with the highest peak wins. Returns
    ``(x_min, y_min, x_max, y_max)`` in heatmap pixels, pixel-edge convention (see module doc), or
    None when the map is empty (max <= 0) or not finite.
    """
    from scipy import ndimage

    h = np.asarray(heatmap, dtype=np.float64)
    if h.ndim != 2:
        raise ValueError(f"heatmap must be 2-d, got shape {h.shape}")
    if not np.isfinite(h).all():
        return None
    peak = h.max() if h.size else 0.0
    if peak <= 0:
        return None
    mask = h >= threshold * peak
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=int))
    if n == 0:
        return None
    ids = np.arange(1, n + 1)
    sizes = ndimage.sum_labels(np.ones_like(h), labels, ids)
    peaks = ndimage.maximum(h, labels, ids)
    best = ids[np.lexsort((-np.asarray(peaks), -np.asarray(sizes)))[0]]
    ys, xs = ndimage.find_objects(labels)[best - 1]
    return float(xs.start), float(ys.start), float(xs.stop), float(ys.stop)


def localization_accuracy(predicted: pd.DataFrame, truth: pd.DataFrame,
                          thresholds: Sequence[float] = IOU_THRESHOLDS,
                          class_names: Mapping[int, str] | None = None) -> dict:
    """Share of truth boxes found by a predicted box of the same image and class with IoU > T.

    ``predicted`` and ``truth``: tables with ``image_id, class_id, x_min, y_min, x_max, y_max`` in one
    pixel space (original pixels in the pipeline). A truth box with no predicted box of its image and
    class counts as missed (IoU 0); with several, the best IoU counts. Returns
    ``{"n_boxes": N, "overall": {"0.1": share, ...}, "per_class": {name: {"n_boxes": n, "0.1": ...}}}``;
    shares are None where there are no boxes.
    """
    need = ["image_id", "class_id", *BOX_COLUMNS]
    for name, df in (("predicted", predicted), ("truth", truth)):
        missing = [c for c in need if c not in df.columns]
        if missing:
            raise ValueError(f"{name} boxes lack columns {missing}")
    truth = truth.dropna(subset=BOX_COLUMNS).reset_index(drop=True)
    predicted = predicted.dropna(subset=BOX_COLUMNS)
    best = np.zeros(len(truth))
    groups = {k: g[BOX_COLUMNS].to_numpy(float)
              for k, g in predicted.groupby([predicted["image_id"].astype(str), predicted["class_id"].astype(int)])}
    for i, row in truth.iterrows():
        boxes = groups.get((str(row["image_id"]), int(row["class_id"])))
        if boxes is not None and len(boxes):
            best[i] = iou_matrix(np.array([[row[c] for c in BOX_COLUMNS]], float), boxes).max()

    def shares(mask: np.ndarray) -> dict:
        n = int(mask.sum())
        out = {"n_boxes": n}
        for t in thresholds:
            out[f"{t:g}"] = float((best[mask] > t).mean()) if n else None
        return out

    overall = shares(np.ones(len(truth), bool))
    per_class = {}
    for cid in sorted(truth["class_id"].astype(int).unique()):
        name = (class_names or {}).get(cid, str(cid))
        per_class[name] = shares(truth["class_id"].astype(int).to_numpy() == cid)
    n = overall.pop("n_boxes")
    return {"n_boxes": n, "overall": overall, "per_class": per_class, "ious": best.tolist()}


def overlay(image: np.ndarray, heatmap: np.ndarray, truth_boxes=(), pred_box=None, alpha: float = 0.4) -> np.ndarray:
    """BGR uint8 picture: ``image`` (H, W) in [0, 1] under a JET ``heatmap`` (H, W) in [0, 1], truth
    boxes in green, the predicted box in red (boxes in this picture's pixels)."""
    import cv2

    gray = (np.clip(image, 0, 1) * 255).astype(np.uint8)
    base = cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    heat = cv2.applyColorMap((np.clip(heatmap, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    out = cv2.addWeighted(base, 1 - alpha, heat, alpha, 0)
    thick = max(1, round(max(image.shape) / 256))
    for b in np.asarray(truth_boxes, float).reshape(-1, 4):
        cv2.rectangle(out, (int(b[0]), int(b[1])), (int(b[2]) - 1, int(b[3]) - 1), (0, 255, 0), thick)
    if pred_box is not None:
        b = pred_box
        cv2.rectangle(out, (int(b[0]), int(b[1])), (int(b[2]) - 1, int(b[3]) - 1), (0, 0, 255), thick)
    return out


def encode_png(img: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()
