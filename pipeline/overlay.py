"""Pictures of predictions: boxes with class and score drawn on an image, an outline of the lungs, a
probability in the corner, and a one-page HTML gallery. Used by ``infer`` and the report page.

Boxes come in ORIGINAL pixels with the original size; they are scaled to the picture drawn on.
"""
from __future__ import annotations

import html
from pathlib import Path
from typing import Sequence

import numpy as np

from pipeline.io import write_bytes_atomic, write_text_atomic

PRED_COLOUR = (0, 200, 255)   # BGR: orange-yellow for predictions
TRUTH_COLOUR = (80, 220, 80)  # green for truth
LUNG_COLOUR = (255, 160, 60)


def _bgr(grey: np.ndarray) -> np.ndarray:
    import cv2

    img = grey
    if img.dtype != np.uint8:
        img = (img.astype(np.float64) / max(float(img.max()), 1.0) * 255).astype(np.uint8)
    return cv2.cvtColor(img, cv2.COLOR_GRAY2BGR) if img.ndim == 2 else img.copy()


def draw(grey: np.ndarray, original_size: tuple[float, float], boxes: Sequence[tuple] = (),
         truth: Sequence[tuple] = (), corner: str | None = None, lungs: np.ndarray | None = None,
         max_side: int = 768) -> np.ndarray:
    """A BGR picture: ``grey`` (any size) with ``boxes`` = [(label, score, x_min, y_min, x_max, y_max)] and
    ``truth`` = [(label, x_min, ...)] in ORIGINAL pixels of ``original_size`` = (width, height)."""
    import cv2

    img = _bgr(grey)
    scale = min(1.0, max_side / max(img.shape[:2]))
    if scale < 1.0:
        img = cv2.resize(img, (round(img.shape[1] * scale), round(img.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    sx, sy = img.shape[1] / float(original_size[0]), img.shape[0] / float(original_size[1])
    thick = max(1, round(max(img.shape[:2]) / 400))
    if lungs is not None and lungs.any():
        m = cv2.resize(lungs.astype(np.uint8), (img.shape[1], img.shape[0]), interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(img, contours, -1, LUNG_COLOUR, thick)
    for label, *xyxy in truth:
        x0, y0, x1, y1 = (int(round(v * s)) for v, s in zip(xyxy, (sx, sy, sx, sy)))
        cv2.rectangle(img, (x0, y0), (x1, y1), TRUTH_COLOUR, thick)
        _text(img, f"truth {label}", (x0, y1 + 12 * thick), TRUTH_COLOUR, thick)
    for label, score, *xyxy in boxes:
        x0, y0, x1, y1 = (int(round(v * s)) for v, s in zip(xyxy, (sx, sy, sx, sy)))
        cv2.rectangle(img, (x0, y0), (x1, y1), PRED_COLOUR, thick)
        _text(img, f"{label} {score:.2f}", (x0, max(12 * thick, y0 - 3)), PRED_COLOUR, thick)
    if corner:
        _text(img, corner, (5, 14 * thick + 2), (255, 255, 255), thick)
    return img


def _text(img, text: str, org, colour, thick: int) -> None:
    import cv2

    scale = 0.4 * thick
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick + 2, cv2.LINE_AA)
    cv2.putText(img, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, thick, cv2.LINE_AA)


def write_png(path: Path, img: np.ndarray) -> Path:
    import cv2

    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise RuntimeError(f"could not encode {path}")
    return write_bytes_atomic(Path(path), buf.tobytes())


def gallery(path: Path, title: str, items: Sequence[tuple[str, str, str]]) -> Path:
    """An HTML page of thumbnails: ``items`` = [(image file relative to the page, caption, details)]."""
    cards = "".join(
        f"<figure><a href='{html.escape(src)}'><img src='{html.escape(src)}' loading='lazy'></a>"
        f"<figcaption><b>{html.escape(cap)}</b><br>{html.escape(det)}</figcaption></figure>" for src, cap, det in items)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
            "body{font-family:system-ui,sans-serif;margin:1.5em}figure{display:inline-block;width:300px;margin:6px;"
            "vertical-align:top}img{width:300px}figcaption{font-size:0.85em}</style></head><body>"
            f"<h1>{html.escape(title)}</h1>{cards}</body></html>")
    return write_text_atomic(Path(path), page)
