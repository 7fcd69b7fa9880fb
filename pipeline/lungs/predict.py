"""Lung masks for images of ANY size, in their ORIGINAL pixels, and the lung crop box.

The API other stages use (prepare's lung crop, ``infer``)::

    from pipeline.lungs import load_lung_model, predict_masks, lung_crop_box
    model = load_lung_model("runs/lungs_shenzhen/segment/model.pt", "cpu")
    masks = predict_masks(model, [img])          # img: (H, W) uint8/uint16/float grey (or H x W x 3)
    box = lung_crop_box(masks[0], margin=0.05)   # (x0, y0, x1, y1) pixel edges, or None

Each image is prepared by :func:`pipeline.lungs.preprocess.prepare_input` (percentile scaling,
letterbox, normalisation), the network's probabilities are mapped back to the original pixels
(:func:`~pipeline.lungs.preprocess.unletterbox`), thresholded, then post-processed
(:func:`clean_mask`: the two largest connected parts kept, holes filled).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from pipeline.lungs.model import LungModel
from pipeline.lungs.preprocess import prepare_input, unletterbox

MIN_PART_SHARE = 0.1   # a second connected part is kept when at least this share of the largest


@dataclass
class LungPrediction:
    prob: np.ndarray          # float32 (H, W) lung probability, original pixels
    mask: np.ndarray          # bool (H, W) after threshold and clean-up
    p_label: float | None     # the classification head's probability (None without a head)


def _forward(model: LungModel, batch: np.ndarray, tta_flip: bool):
    import torch

    x = torch.from_numpy(batch).to(model.device)
    with torch.no_grad():
        out = model.net(x)
        seg, cls = out if isinstance(out, tuple) else (out, None)
        prob = torch.sigmoid(seg)[:, 0]
        p_cls = torch.sigmoid(cls)[:, 0] if cls is not None else None
        if tta_flip:
            out_f = model.net(torch.flip(x, dims=[3]))
            seg_f, cls_f = out_f if isinstance(out_f, tuple) else (out_f, None)
            prob = (prob + torch.flip(torch.sigmoid(seg_f)[:, 0], dims=[2])) / 2
            if p_cls is not None:
                p_cls = (p_cls + torch.sigmoid(cls_f)[:, 0]) / 2
    return prob.cpu().numpy(), (None if p_cls is None else p_cls.cpu().numpy())


def predict_lungs(model: LungModel, images: Sequence[np.ndarray], *, threshold: float = 0.5, clean: bool = True,
                  tta_flip: bool = False, batch: int = 8) -> list[LungPrediction]:
    """Probabilities, masks (original pixels) and head probabilities for ``images`` (any sizes)."""
    out: list[LungPrediction] = []
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch]
        prepared = [prepare_input(img, model.imgsz, model.input) for img in chunk]
        probs, p_cls = _forward(model, np.stack([x for x, _ in prepared]), tta_flip)
        for k, (_, lb) in enumerate(prepared):
            prob = unletterbox(probs[k], lb)
            mask = prob > threshold
            out.append(LungPrediction(prob=prob, mask=clean_mask(mask) if clean else mask,
                                      p_label=None if p_cls is None else float(p_cls[k])))
    return out


def predict_masks(model: LungModel, images: Sequence[np.ndarray], *, threshold: float = 0.5, clean: bool = True,
                  tta_flip: bool = False, batch: int = 8) -> list[np.ndarray]:
    """Boolean lung masks, each the shape of its input image (original pixels)."""
    return [p.mask for p in predict_lungs(model, images, threshold=threshold, clean=clean, tta_flip=tta_flip,
                                          batch=batch)]


def clean_mask(mask: np.ndarray, keep: int = 2, min_share: float = MIN_PART_SHARE) -> np.ndarray:
    """Keep the ``keep`` largest connected parts (a smaller one only when at least ``min_share`` of the
    largest: two lungs, not a lung and a speck), then fill the holes inside what is kept."""
    import cv2

    m = np.ascontiguousarray(mask, dtype=np.uint8)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    if n <= 1:
        return np.zeros(mask.shape, bool)
    areas = stats[1:, cv2.CC_STAT_AREA]
    order = np.argsort(-areas)[:keep]
    kept = [i + 1 for i in order if areas[i] >= min_share * areas[order[0]]]
    out = np.isin(labels, kept)
    # Holes: background parts that do not touch the border.
    bg = (~out).astype(np.uint8)
    nb, blabels, bstats, _ = cv2.connectedComponentsWithStats(bg, connectivity=4)
    h, w = mask.shape
    for j in range(1, nb):
        x, y, bw, bh = bstats[j, :4]
        if x > 0 and y > 0 and x + bw < w and y + bh < h:
            out[blabels == j] = True
    return out


def lung_crop_box(mask: np.ndarray, margin: float = 0.05) -> tuple[int, int, int, int] | None:
    """The smallest square enclosing the mask's pixels, grown by ``margin`` (a share of its side) on
    every side, moved inside the image where it fits and clipped to it otherwise.

    Returns ``(x0, y0, x1, y1)`` in pixel edges of the mask's image (columns x0..x1-1, rows y0..y1-1:
    ``img[y0:y1, x0:x1]`` is the crop), or None when the mask is empty.
    """
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    m = np.asarray(mask, bool)
    rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
    if rows.size == 0:
        return None
    h, w = m.shape
    bx0, bx1, by0, by1 = cols[0], cols[-1] + 1, rows[0], rows[-1] + 1
    side = max(bx1 - bx0, by1 - by0) * (1.0 + 2.0 * margin)
    cx, cy = (bx0 + bx1) / 2.0, (by0 + by1) / 2.0

    def place(c: float, limit: int) -> tuple[int, int]:
        a, b = c - side / 2.0, c + side / 2.0
        if side <= limit:   # slide inside the image, keeping the side
            shift = max(0.0, -a) - max(0.0, b - limit)
            a, b = a + shift, b + shift
        return max(0, int(np.floor(a + 1e-9))), min(limit, int(np.ceil(b - 1e-9)))

    x0, x1 = place(cx, w)
    y0, y1 = place(cy, h)
    return x0, y0, x1, y1
