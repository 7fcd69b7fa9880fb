"""Scoring a lung model on a split: per-image Dice/IoU in ORIGINAL pixels, predicted mask files, the
head's metrics, overlays, and the synthetic-shift proxies. Used by :mod:`pipeline.stages.segment`."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from pipeline.lungs.data import MaskItem, read_image, read_mask
from pipeline.lungs.metrics import dice_iou, head_metrics, summarise
from pipeline.lungs.predict import lung_crop_box, predict_lungs

OVERLAY_SIDE = 512   # overlays are drawn at most this many pixels on the longer side


def load_items(items: Sequence[MaskItem], on_error: Callable[[MaskItem, Exception], None]):
    """(item, image, mask) of the items that read; the others go to ``on_error``."""
    from pipeline.errors import DataError

    out = []
    for it in items:
        try:
            img = read_image(it.image)
            out.append((it, img, read_mask(it.masks, img.shape[:2])))
        except DataError as exc:
            on_error(it, exc)
    return out


def score_items(model, loaded, *, threshold: float, clean: bool, tta_flip: bool, margin: float = 0.05,
                mask_path: Callable[[str], Path] | None = None) -> tuple[list[dict], list]:
    """Per-image rows (``image_id, split, width, height, dice, iou, label, p_label, lung_share, crop_*``)
    and the predictions; each predicted mask is written as a PNG (original pixels) when ``mask_path``."""
    from pipeline.io import write_bytes_atomic

    import cv2

    preds = predict_lungs(model, [img for _, img, _ in loaded], threshold=threshold, clean=clean, tta_flip=tta_flip)
    rows = []
    for (it, img, truth), p in zip(loaded, preds):
        d, j = dice_iou(p.mask, truth)
        box = lung_crop_box(p.mask, margin)
        h, w = truth.shape
        rows.append({"image_id": it.image_id, "split": it.split, "width": w, "height": h, "dice": d, "iou": j,
                     "label": it.label, "p_label": p.p_label, "lung_share": float(p.mask.mean()),
                     **dict(zip(("crop_x0", "crop_y0", "crop_x1", "crop_y1"), box or (None,) * 4))})
        if mask_path is not None:
            ok, buf = cv2.imencode(".png", p.mask.astype(np.uint8) * 255)
            write_bytes_atomic(mask_path(it.image_id), buf.tobytes())
    return rows, preds


def summary_of(rows: list[dict]) -> dict:
    return {"n": len(rows), "dice": summarise(r["dice"] for r in rows), "iou": summarise(r["iou"] for r in rows),
            "head": head_metrics([r["label"] for r in rows], [r["p_label"] for r in rows])}


def overlay(img: np.ndarray, truth: np.ndarray, pred: np.ndarray, box=None) -> np.ndarray:
    """BGR picture: truth outlined green, prediction red, crop box yellow (at most OVERLAY_SIDE px)."""
    import cv2

    from pipeline.lungs.preprocess import to_unit

    h, w = truth.shape
    s = min(1.0, OVERLAY_SIDE / max(h, w))
    size = (max(1, int(w * s)), max(1, int(h * s)))
    grey = cv2.resize((to_unit(img) * 255).astype(np.uint8), size, interpolation=cv2.INTER_AREA)
    out = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    for m, colour in ((truth, (0, 200, 0)), (pred, (0, 0, 255))):
        small = cv2.resize(m.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(small, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, colour, 1)
    if box is not None:
        x0, y0, x1, y1 = (int(round(v * s)) for v in box)
        cv2.rectangle(out, (x0, y0), (max(x0, x1 - 1), max(y0, y1 - 1)), (0, 220, 220), 1)
    return out


def write_overlays(loaded, preds, rows, n: int, path: Callable[[str], Path]) -> list[str]:
    """Overlays of the ``n`` images spread over the IoU ranking (worst first), so failures are seen."""
    import cv2

    from pipeline.io import write_bytes_atomic

    if n <= 0 or not rows:
        return []
    order = np.argsort([r["iou"] for r in rows])
    pick = sorted(set(order[np.linspace(0, len(order) - 1, min(n, len(order))).round().astype(int)].tolist()))
    written = []
    for k in pick:
        it, img, truth = loaded[k]
        box = None if rows[k]["crop_x0"] is None else [rows[k][c] for c in ("crop_x0", "crop_y0", "crop_x1", "crop_y1")]
        ok, buf = cv2.imencode(".png", overlay(img, truth, preds[k].mask, box))
        write_bytes_atomic(path(it.image_id), buf.tobytes())
        written.append(it.image_id)
    return written
