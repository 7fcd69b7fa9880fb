"""Box conventions and conversions. Pure numpy, no config.

Names carry their convention:
  * ``xyxy_abs``  x_min, y_min, x_max, y_max in pixels of the ORIGINAL image (the annotation table)
  * ``xyxy_norm`` the same divided by width/height, in [0, 1] (what ensemble-boxes wants)
  * ``yolo``      x_center, y_center, width, height divided by the image size (YOLO label files)
  * ``xywh_abs``  x, y (top-left), width, height in pixels (ChestX-ray14's BBox_List_2017.csv)
All functions take and return float arrays of shape (N, 4).
"""
from __future__ import annotations

import numpy as np

BOX_COLUMNS = ["x_min", "y_min", "x_max", "y_max"]


def _as_boxes(boxes) -> np.ndarray:
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.size == 0:
        return arr.reshape(0, 4)
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4), got {arr.shape}")
    return arr


def xywh_abs_to_xyxy_abs(boxes) -> np.ndarray:
    b = _as_boxes(boxes).copy()
    b[:, 2] += b[:, 0]
    b[:, 3] += b[:, 1]
    return b


def xyxy_abs_to_norm(boxes, width, height) -> np.ndarray:
    """Divide by the image size; ``width``/``height`` may be scalars or per-box arrays."""
    b = _as_boxes(boxes)
    scale = np.stack([np.broadcast_to(np.asarray(width, float), len(b)),
                      np.broadcast_to(np.asarray(height, float), len(b))] * 2, axis=1)[:, [0, 1, 2, 3]]
    return b / scale


def xyxy_norm_to_abs(boxes, width, height) -> np.ndarray:
    b = _as_boxes(boxes)
    scale = np.stack([np.broadcast_to(np.asarray(width, float), len(b)),
                      np.broadcast_to(np.asarray(height, float), len(b))] * 2, axis=1)
    return b * scale


def xyxy_abs_to_yolo(boxes, width, height) -> np.ndarray:
    n = xyxy_abs_to_norm(boxes, width, height)
    return np.stack([(n[:, 0] + n[:, 2]) / 2, (n[:, 1] + n[:, 3]) / 2,
                     n[:, 2] - n[:, 0], n[:, 3] - n[:, 1]], axis=1)


def yolo_to_xyxy_abs(boxes, width, height) -> np.ndarray:
    y = _as_boxes(boxes)
    norm = np.stack([y[:, 0] - y[:, 2] / 2, y[:, 1] - y[:, 3] / 2,
                     y[:, 0] + y[:, 2] / 2, y[:, 1] + y[:, 3] / 2], axis=1)
    return xyxy_norm_to_abs(norm, width, height)


def clip_xyxy(boxes, width, height) -> np.ndarray:
    b = _as_boxes(boxes).copy()
    b[:, [0, 2]] = np.clip(b[:, [0, 2]], 0, np.asarray(width, float)[..., None] if np.ndim(width) else width)
    b[:, [1, 3]] = np.clip(b[:, [1, 3]], 0, np.asarray(height, float)[..., None] if np.ndim(height) else height)
    return b


def hflip_xyxy(boxes, width) -> np.ndarray:
    """Boxes of a horizontally flipped image of the given width, mapped back (or forth)."""
    b = _as_boxes(boxes).copy()
    w = np.asarray(width, float)
    x_min = w - b[:, 2]
    x_max = w - b[:, 0]
    b[:, 0], b[:, 2] = x_min, x_max
    return b


def iou_matrix(a, b) -> np.ndarray:
    """Pairwise IoU of boxes ``a`` (N, 4) and ``b`` (M, 4), xyxy in any one convention -> (N, M)."""
    a, b = _as_boxes(a), _as_boxes(b)
    ix1 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy1 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix2 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)
