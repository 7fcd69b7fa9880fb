"""Geometry of the synthetic chest and the small drawing helpers every renderer shares (pure numpy/OpenCV).

Conventions used throughout the demo renderers (:mod:`pipeline.demo.anatomy`, :mod:`pipeline.demo.findings`):

* Intensities are *display* values in [0, 1], bright = dense (bone, heart, fluid), dark = air,
  i.e. what a MONOCHROME2 viewer shows. Writers invert for MONOCHROME1 storage.
* Anatomy geometry (:class:`Geometry`) is in *normalised* coordinates: x = column / width,
  y = row / height, origin at the top-left corner, so one chest fits any aspect ratio.
* The image is a PA view: the patient's right side (``"R"``) is on the image's LEFT.
* A chest is drawn on a small *working canvas* (the longer side ``WORK_SIZE`` pixels, the final
  image's aspect ratio; :func:`work_shape`) and scaled up afterwards.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

WORK_SIZE = 384          # longer side of the working canvas (pixels)

@dataclass
class Geometry:
    """Where the anatomy of one chest lies, in normalised coordinates (see the module docstring).

    Each lung is a superellipse ``|(x-lx)/ax|^p + |(y-ly)/ay|^p < 1`` cut below by its
    hemidiaphragm ``y < dome_y(x)``. ``lx`` maps side ("R" = image left, "L" = image right) to the
    lung's centre column.
    """

    cx: float                 # midline
    top: float                # lung apices
    bot: dict                 # side -> lateral (costophrenic) level of the hemidiaphragm
    dome: float               # how far the diaphragm domes up at the lung's centre
    ax: float                 # lung half-width
    ay: float                 # lung half-height of the superellipse
    ly: float                 # lung centre row
    lx: dict                  # side -> lung centre column
    p: float                  # superellipse exponent (2 = ellipse; larger = boxier, sharper angles)
    body_hw: float            # body half-width at the chest
    heart: tuple              # (x, y, rx, ry) of the normal heart shadow
    knob: tuple               # (x, y, r) of the aortic knob
    bubble: bool              # gastric air bubble under the left hemidiaphragm
    tilt: tuple = (0.0, 0.0)  # smooth exposure gradient (per unit x, per unit y)

    @staticmethod
    def sample(rng: np.random.Generator) -> "Geometry":
        cx = 0.5 + rng.normal(0, 0.012)
        top = rng.uniform(0.08, 0.13)
        bot_l = rng.uniform(0.76, 0.84)
        # The right hemidiaphragm (image left) usually sits a little higher (the liver below it).
        bot = {"R": bot_l - rng.uniform(0.0, 0.035), "L": bot_l}
        ax = rng.uniform(0.150, 0.172)
        med = rng.uniform(0.04, 0.055)
        ly = (top + bot_l) / 2 + 0.06
        ay = ly - top
        lx = {"R": cx - med - ax, "L": cx + med + ax}
        body_hw = med + 2 * ax + rng.uniform(0.035, 0.07)
        heart = (cx + rng.uniform(0.04, 0.06), bot_l - rng.uniform(0.12, 0.15),
                 rng.uniform(0.125, 0.145), rng.uniform(0.12, 0.14))
        knob = (cx + med + rng.uniform(0.005, 0.015), top + rng.uniform(0.14, 0.17), rng.uniform(0.024, 0.03))
        return Geometry(cx=cx, top=top, bot=bot, dome=rng.uniform(0.03, 0.055), ax=ax, ay=ay, ly=ly, lx=lx,
                        p=rng.uniform(2.3, 2.8), body_hw=body_hw, heart=heart, knob=knob,
                        bubble=bool(rng.random() < 0.6), tilt=(rng.uniform(-0.06, 0.06), rng.uniform(-0.05, 0.05)))

    def sign(self, side: str) -> float:
        """+1 towards the lateral edge of the given side's lung on the image (x grows), -1 otherwise."""
        return -1.0 if side == "R" else 1.0


@dataclass
class Chest:
    """One rendered normal chest on the working canvas, with the layers findings need."""

    geo: Geometry
    height: int
    width: int
    xx: np.ndarray            # normalised column of every pixel (float32, HxW)
    yy: np.ndarray            # normalised row of every pixel
    base: np.ndarray          # the normal radiograph (display intensities)
    lung: dict                # side -> soft lung mask (0..1)
    lung_f: dict              # side -> superellipse value f (f < 1 inside, before the diaphragm cut)
    markings: np.ndarray      # vessel markings layer already contained in base (pneumothorax removes it)
    heart_mask: np.ndarray    # soft mask of the normal heart
    extra: dict = field(default_factory=dict)

    def px(self, x: float, y: float) -> tuple[int, int]:
        return int(round(x * self.width)), int(round(y * self.height))


def smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def blur(a: np.ndarray, sigma_px: float) -> np.ndarray:
    if sigma_px <= 0:
        return a
    return cv2.GaussianBlur(a, (0, 0), sigmaX=float(sigma_px), borderType=cv2.BORDER_REPLICATE)


def ellipse(ch: Chest, x: float, y: float, rx: float, ry: float, soft_px: float = 1.5) -> np.ndarray:
    """Soft-edged filled ellipse (1 inside, 0 outside); radii normalised like x and y."""
    d = np.sqrt(((ch.xx - x) / rx) ** 2 + ((ch.yy - y) / ry) ** 2)
    edge = soft_px / (min(rx * ch.width, ry * ch.height) + 1e-6)
    return smoothstep(1.0 + edge, 1.0 - edge, d)


def lung_f(geo: Geometry, side: str, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Superellipse value of a lung (< 1 inside): elliptic above its centre (rounded apex), exponent
    ``geo.p`` below it (sharp costophrenic angle)."""
    u = np.abs((xx - geo.lx[side]) / geo.ax)
    v = (yy - geo.ly) / geo.ay
    return np.where(v < 0, u ** 2.0 + v * v, u ** geo.p + np.abs(v) ** geo.p)


def diaphragm(geo: Geometry, side: str, xx: np.ndarray) -> np.ndarray:
    u = np.clip((xx - geo.lx[side]) / geo.ax, -1.0, 1.0)
    return geo.bot[side] - geo.dome * (1.0 - u * u)


def draw_curve(layer: np.ndarray, pts_norm: np.ndarray, width: int, height: int, thick_px: float,
                value: float = 1.0) -> None:
    pts = np.stack([pts_norm[:, 0] * width, pts_norm[:, 1] * height], axis=1)
    cv2.polylines(layer, [np.round(pts).astype(np.int32)], False, float(value),
                  thickness=max(1, int(round(thick_px))), lineType=cv2.LINE_8)


def work_shape(rows: int, cols: int, work: int = WORK_SIZE) -> tuple[int, int]:
    """Working-canvas (height, width) with the file's aspect ratio and the longer side ``work``."""
    s = work / max(rows, cols)
    return max(16, int(round(rows * s))), max(16, int(round(cols * s)))




def to_pixels(box: tuple[float, float, float, float], width: int, height: int) -> tuple[float, float, float, float]:
    """Normalised corners -> absolute-pixel corners of a ``width`` x ``height`` image, rounded to whole
    pixels (like the real annotations), clipped to the image and at least one pixel wide."""
    x0, y0, x1, y1 = box
    a = min(max(math.floor(x0 * width + 1e-9), 0), width - 1)   # 1e-9: 0.55 * 200 is 110.00000000000001
    b = min(max(math.floor(y0 * height + 1e-9), 0), height - 1)
    c = max(min(math.ceil(x1 * width - 1e-9), width), a + 1)
    d = max(min(math.ceil(y1 * height - 1e-9), height), b + 1)
    return float(a), float(b), float(c), float(d)
