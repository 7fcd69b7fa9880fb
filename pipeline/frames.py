"""The part of the ORIGINAL image a converted PNG shows (its "frame"), and boxes mapped between them.

Without a lung crop the frame is the whole image ``(0, 0, width, height)``. With ``image.lung_crop``
prepare crops each image to the smallest square around the predicted lungs (meta.csv ``crop_x0, crop_y0,
crop_x1, crop_y1``, ORIGINAL pixels, pixel edges), and the PNG shows that square only. Every table of the
run keeps ORIGINAL pixels; these functions are the one place the offset and scale are applied:

* detector output on a PNG -> original pixels: :func:`png_to_original`;
* truth boxes (original) -> the frame (YOLO labels, overlays): :func:`original_to_frame`, which also says
  which boxes lie partly or wholly outside the crop (counted and reported, never dropped silently).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

CROP_COLUMNS = ["crop_x0", "crop_y0", "crop_x1", "crop_y1"]


def frame_table(meta: pd.DataFrame) -> pd.DataFrame:
    """``image_id -> x0, y0, x1, y1`` (ORIGINAL pixels) for every meta.csv row: the crop, or the whole image."""
    width = pd.to_numeric(meta["width"], errors="coerce")
    height = pd.to_numeric(meta["height"], errors="coerce")
    out = pd.DataFrame({"x0": 0.0, "y0": 0.0, "x1": width.astype(float), "y1": height.astype(float)})
    if all(c in meta.columns for c in CROP_COLUMNS):
        crop = meta[CROP_COLUMNS].apply(pd.to_numeric, errors="coerce")
        has = crop.notna().all(axis=1)
        for c, k in zip(CROP_COLUMNS, ("x0", "y0", "x1", "y1")):
            out.loc[has, k] = crop.loc[has, c].astype(float)
    out.index = meta["image_id"].astype(str).to_numpy()
    return out


def png_to_original(boxes, png_w: float, png_h: float, frame: tuple[float, float, float, float],
                    width: float, height: float) -> np.ndarray:
    """Boxes in PNG pixels -> ORIGINAL pixels: scaled by the frame's size over the PNG's, shifted by the
    frame's corner, clipped to the image ``width x height``."""
    x0, y0, x1, y1 = (float(v) for v in frame)
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    b[:, [0, 2]] = np.clip(x0 + b[:, [0, 2]] * ((x1 - x0) / float(png_w)), 0.0, float(width))
    b[:, [1, 3]] = np.clip(y0 + b[:, [1, 3]] * ((y1 - y0) / float(png_h)), 0.0, float(height))
    return b


def original_to_frame(boxes, frame: tuple[float, float, float, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ORIGINAL-pixel boxes -> pixels of the frame (origin at its corner), clipped to it.

    Returns (boxes, inside, cut): ``inside`` marks boxes that keep any area in the frame, ``cut`` those
    that lose part of their area to the clip (both reported by prepare).
    """
    x0, y0, x1, y1 = (float(v) for v in frame)
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) - np.array([x0, y0, x0, y0])
    w, h = x1 - x0, y1 - y0
    clipped = b.copy()
    clipped[:, [0, 2]] = clipped[:, [0, 2]].clip(0.0, w)
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clip(0.0, h)
    inside = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    cut = inside & ~np.isclose(clipped, b).all(axis=1)
    return clipped, inside, cut


def frame_to_original(boxes, frame: tuple[float, float, float, float]) -> np.ndarray:
    """The inverse of :func:`original_to_frame` (for boxes inside the frame)."""
    x0, y0 = float(frame[0]), float(frame[1])
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4) + np.array([x0, y0, x0, y0])


def boxes_in_frames(boxes: pd.DataFrame, frames: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """A boxes table (ORIGINAL pixels) moved into each image's frame, the frames' sizes
    (``image_id, width, height``) for label writing, and counts of boxes cut by or outside the crop:
    ``{"outside": n, "cut": n, "outside_ids": [...]}``. Boxes wholly outside are left out of the labels
    (they are not in the picture) and counted; rows without a box (normal) pass unchanged."""
    from pipeline.boxes import BOX_COLUMNS

    out = boxes.copy()
    has_box = out[BOX_COLUMNS].notna().all(axis=1) & out["image_id"].astype(str).isin(frames.index)
    f = frames.reindex(out.loc[has_box, "image_id"].astype(str))
    keep = np.ones(len(out), dtype=bool)
    outside = cut = 0
    outside_ids: list[str] = []
    if has_box.any():
        b = out.loc[has_box, BOX_COLUMNS].to_numpy(float) - f[["x0", "y0", "x0", "y0"]].to_numpy()
        w, h = (f["x1"] - f["x0"]).to_numpy(), (f["y1"] - f["y0"]).to_numpy()
        clipped = b.copy()
        clipped[:, [0, 2]] = np.clip(clipped[:, [0, 2]], 0, w[:, None])
        clipped[:, [1, 3]] = np.clip(clipped[:, [1, 3]], 0, h[:, None])
        inside = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
        cut = int((inside & ~np.isclose(clipped, b).all(axis=1)).sum())
        outside = int((~inside).sum())
        outside_ids = out.loc[has_box, "image_id"].astype(str)[~inside].tolist()
        out.loc[has_box, BOX_COLUMNS] = clipped
        keep[np.flatnonzero(has_box.to_numpy())[~inside]] = False
    sizes = pd.DataFrame({"image_id": frames.index, "width": (frames["x1"] - frames["x0"]).to_numpy(),
                          "height": (frames["y1"] - frames["y0"]).to_numpy()})
    return out[keep].reset_index(drop=True), sizes, {"outside": outside, "cut": cut, "outside_ids": outside_ids}
