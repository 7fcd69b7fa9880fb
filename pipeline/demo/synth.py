"""Synthetic chest radiographs and the findings drawn on them (pure numpy/OpenCV, no I/O).

A chest is rendered on a small *working canvas* (the longer side is ``WORK_SIZE`` pixels; the
aspect ratio is that of the final image) and scaled up to the file's size afterwards, so a
2000-pixel DICOM costs little more than a 500-pixel one.

Conventions used throughout:

* Intensities are *display* values in [0, 1], bright = dense (bone, heart, fluid), dark = air,
  i.e. what a MONOCHROME2 viewer shows. Writers invert for MONOCHROME1 storage.
* Anatomy geometry (:class:`Geometry`) is in *normalised* coordinates: x = column / width,
  y = row / height, origin at the top-left corner, so one chest fits any aspect ratio.
* The image is a PA view: the patient's right side (``"R"``) is on the image's LEFT.
* A finding renderer returns an additive intensity change (``delta``) on the working canvas.
  Its box is the bounding box of the pixels where ``|delta|`` is at least ``BOX_FRACTION`` of
  its peak, returned as normalised corners ``(x0, y0, x1, y1)`` with pixel *edges*
  (``x1 = (last column + 1) / width``), so multiplying by the file's width/height gives
  absolute-pixel corners that cover the change.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

WORK_SIZE = 384          # longer side of the working canvas (pixels)
BOX_FRACTION = 0.12      # a pixel belongs to a finding's box where |delta| >= this share of its peak

# The 14 VinBigData findings plus three ChestX-ray14-only appearances (Edema, Emphysema, Hernia)
# and the large variant of Nodule/Mass ("Mass").
RENDERABLE = (
    "Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Consolidation", "ILD",
    "Infiltration", "Lung Opacity", "Nodule/Mass", "Other lesion", "Pleural effusion",
    "Pleural thickening", "Pneumothorax", "Pulmonary fibrosis", "Mass", "Edema", "Emphysema", "Hernia",
)


# --------------------------------------------------------------------------------------------------
# geometry
# --------------------------------------------------------------------------------------------------
@dataclass
class Geometry:
    """Where the anatomy of one chest lies, in normalised coordinates (see module docstring).

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


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _blur(a: np.ndarray, sigma_px: float) -> np.ndarray:
    if sigma_px <= 0:
        return a
    return cv2.GaussianBlur(a, (0, 0), sigmaX=float(sigma_px), borderType=cv2.BORDER_REPLICATE)


def _ellipse(ch: Chest, x: float, y: float, rx: float, ry: float, soft_px: float = 1.5) -> np.ndarray:
    """Soft-edged filled ellipse (1 inside, 0 outside); radii normalised like x and y."""
    d = np.sqrt(((ch.xx - x) / rx) ** 2 + ((ch.yy - y) / ry) ** 2)
    edge = soft_px / (min(rx * ch.width, ry * ch.height) + 1e-6)
    return _smoothstep(1.0 + edge, 1.0 - edge, d)


def lung_f(geo: Geometry, side: str, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Superellipse value of a lung (< 1 inside): elliptic above its centre (rounded apex), exponent
    ``geo.p`` below it (sharp costophrenic angle)."""
    u = np.abs((xx - geo.lx[side]) / geo.ax)
    v = (yy - geo.ly) / geo.ay
    return np.where(v < 0, u ** 2.0 + v * v, u ** geo.p + np.abs(v) ** geo.p)


def _diaphragm(geo: Geometry, side: str, xx: np.ndarray) -> np.ndarray:
    u = np.clip((xx - geo.lx[side]) / geo.ax, -1.0, 1.0)
    return geo.bot[side] - geo.dome * (1.0 - u * u)


def _draw_curve(layer: np.ndarray, pts_norm: np.ndarray, width: int, height: int, thick_px: float,
                value: float = 1.0) -> None:
    pts = np.stack([pts_norm[:, 0] * width, pts_norm[:, 1] * height], axis=1)
    cv2.polylines(layer, [np.round(pts).astype(np.int32)], False, float(value),
                  thickness=max(1, int(round(thick_px))), lineType=cv2.LINE_8)


def work_shape(rows: int, cols: int, work: int = WORK_SIZE) -> tuple[int, int]:
    """Working-canvas (height, width) with the file's aspect ratio and the longer side ``work``."""
    s = work / max(rows, cols)
    return max(16, int(round(rows * s))), max(16, int(round(cols * s)))


def render_chest(rng: np.random.Generator, height: int, width: int, geo: Geometry | None = None) -> Chest:
    """Render a normal PA chest radiograph on a ``height`` x ``width`` working canvas."""
    geo = geo or Geometry.sample(rng)
    H, W = height, width
    ys = (np.arange(H, dtype=np.float32) + 0.5) / H
    xs = (np.arange(W, dtype=np.float32) + 0.5) / W
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    ch = Chest(geo=geo, height=H, width=W, xx=xx, yy=yy, base=np.zeros((H, W), np.float32), lung={}, lung_f={},
               markings=np.zeros((H, W), np.float32), heart_mask=np.zeros((H, W), np.float32))

    # Body: soft tissue thicker (brighter) at the midline, a narrower neck above the shoulders.
    half = geo.body_hw * (0.3 + 0.7 * _smoothstep(geo.top - 0.1, geo.top + 0.05, yy))
    dx = np.abs(xx - geo.cx) / half
    body = _smoothstep(1.03, 0.97, dx)
    img = 0.03 + body * (0.40 + 0.20 * np.clip(1.0 - dx * dx, 0.0, 1.0))

    # Lungs (air: much darker), cut by the domed hemidiaphragms.
    lungs = np.zeros((H, W), np.float32)
    for side in ("R", "L"):
        f = lung_f(geo, side, xx, yy)
        hard = ((f < 1.0) & (yy < _diaphragm(geo, side, xx))).astype(np.float32)
        soft = _blur(hard, 1.2)
        ch.lung[side], ch.lung_f[side] = soft, f
        lungs = np.maximum(lungs, soft)
    # Lungs are a little less dark at the bases (more tissue in the beam) than at the apices.
    img -= lungs * (0.34 - 0.05 * _smoothstep(geo.top, geo.bot["L"], yy))

    # Mediastinum, heart and aortic knob: dense, on top of the medial lungs.
    hx, hy, hrx, hry = geo.heart
    heart = _ellipse(ch, hx, hy, hrx, hry, 2.0)
    heart *= (yy < _diaphragm(geo, "L", xx) + 0.02)
    ch.heart_mask = heart
    img += 0.30 * heart * lungs + 0.06 * heart
    kx, ky, kr = geo.knob
    img += 0.24 * _ellipse(ch, kx, ky, kr, kr * W / H, 1.5) * lungs

    # Spine: a bright column with vertebral bodies (periodic) behind the mediastinum.
    period = (geo.bot["L"] - geo.top) / 9.0
    vert = 0.75 + 0.25 * _smoothstep(-0.3, 0.3, np.cos(2 * np.pi * (yy - geo.top) / period))
    spine = _smoothstep(0.045, 0.03, np.abs(xx - geo.cx)) * vert
    img += 0.10 * spine * body

    # Below the diaphragm: abdomen, denser; an air bubble in the stomach under the left dome.
    if geo.bubble:
        bx = geo.lx["L"] + rng.uniform(-0.02, 0.04)
        by = geo.bot["L"] + rng.uniform(0.03, 0.06)
        img -= 0.16 * _ellipse(ch, bx, by, rng.uniform(0.025, 0.04), rng.uniform(0.015, 0.025), 2.0) * (1 - lungs)

    # Bones: clavicles and curved posterior ribs (bright arcs), drawn as lines then softened.
    bones = np.zeros((H, W), np.float32)
    s = np.linspace(0.0, 1.0, 28, dtype=np.float32)
    for side in ("R", "L"):
        sg = geo.sign(side)
        # Clavicle: from the sternal end near the midline out and up to the shoulder.
        x0, y0 = geo.cx + sg * 0.035, geo.top + rng.uniform(0.05, 0.075)
        x1, y1 = geo.cx + sg * (geo.body_hw - 0.01), geo.top - rng.uniform(0.0, 0.03)
        pts = np.stack([x0 + (x1 - x0) * s, y0 + (y1 - y0) * s - 0.02 * np.sin(np.pi * s)], axis=1)
        _draw_curve(bones, pts, W, H, 0.022 * H, 1.3)
        n_ribs = 10
        gap = (geo.bot[side] - geo.top) / (n_ribs - 0.5)
        for k in range(n_ribs):
            # Posterior rib: leaves the spine rising, arches over and falls steeply at the chest wall.
            ry0 = geo.top - 0.02 + k * gap + rng.normal(0, 0.004)
            reach = 2 * geo.ax + 0.06
            xr = geo.cx + sg * (0.03 + reach * np.sin(0.5 * np.pi * s))
            yr = ry0 - 0.03 * np.sin(np.pi * s) + (0.06 + 0.04 * k / n_ribs) * s ** 3
            _draw_curve(bones, np.stack([xr, yr], axis=1), W, H, 0.013 * H, 1.0)
            # Anterior rib (fainter): from the lateral wall sloping down towards the sternum.
            ya = geo.top + 0.04 + k * gap * 0.9
            xa = geo.cx + sg * (0.08 + (reach - 0.05) * (1 - s))
            _draw_curve(bones, np.stack([xa, ya + 0.12 * s - 0.04 * (1 - s) ** 2], axis=1), W, H, 0.01 * H, 0.45)
    bones = _blur(bones, 1.0) * body
    img += 0.085 * bones * (0.45 + 0.55 * lungs)

    # Lung markings: vessels branching out of the hila, thinning towards the periphery.
    marks = np.zeros((H, W), np.float32)
    for side in ("R", "L"):
        sg = geo.sign(side)
        hxl, hyl = geo.lx[side] - sg * 0.55 * geo.ax, geo.ly - 0.04
        for _ in range(16):
            ang = rng.uniform(-0.75, 0.75) * np.pi + (0 if sg > 0 else np.pi)
            length = rng.uniform(0.10, 0.26)
            pts = np.stack([hxl + np.cos(ang) * length * s * (1 + 0.1 * np.sin(5 * s)),
                            hyl + np.sin(ang) * length * s * 1.2 + 0.02 * s * s], axis=1)
            _draw_curve(marks, pts[:14], W, H, 2.0, 0.6)
            _draw_curve(marks, pts[13:], W, H, 1.0, 0.4)
    noise = rng.standard_normal((H, W), dtype=np.float32)
    marks = _blur(marks, 0.8) + 0.5 * (_blur(noise, 1.0) - _blur(noise, 3.0))
    marks = 0.08 * marks * lungs
    ch.markings = marks
    img += marks

    # Exposure: a smooth gradient and broad low-frequency variation, then quantum grain.
    tx, ty = geo.tilt
    img += tx * (xx - 0.5) + ty * (yy - 0.5)
    low = cv2.resize(rng.normal(0, 0.02, (4, 4)).astype(np.float32), (W, H), interpolation=cv2.INTER_CUBIC)
    img += low
    img += rng.normal(0, 0.008, (H, W)).astype(np.float32)
    ch.base = img.astype(np.float32)
    return ch


# --------------------------------------------------------------------------------------------------
# findings
# --------------------------------------------------------------------------------------------------
def _pick_side(rng: np.random.Generator, side: str | None) -> str:
    return side if side in ("R", "L") else ("R" if rng.random() < 0.5 else "L")


def _lung_point(ch: Chest, rng: np.random.Generator, side: str, margin: float = 0.0,
                v_range: tuple[float, float] = (-0.6, 0.4), u_range: tuple[float, float] = (-0.65, 0.65),
                avoid_heart: bool = True) -> tuple[float, float]:
    """A random point well inside a lung (normalised x, y). ``u`` runs medial (-1) to lateral (+1),
    ``v`` apex (-1) to base (+1); ``margin`` keeps that much (normalised x) from the lung edge."""
    geo = ch.geo
    sg = geo.sign(side)
    best = None
    for _ in range(60):
        u, v = rng.uniform(*u_range), rng.uniform(*v_range)
        x, y = geo.lx[side] + sg * u * geo.ax, geo.ly + v * geo.ay
        c, r = int(min(ch.width - 1, max(0, x * ch.width))), int(min(ch.height - 1, max(0, y * ch.height)))
        inside = ch.lung[side][r, c] > 0.99
        mx = int(margin * ch.width) + 1
        ok = inside and all(ch.lung[side][r, min(ch.width - 1, max(0, c + d))] > 0.5 for d in (-mx, mx))
        ok = ok and all(ch.lung[side][min(ch.height - 1, max(0, r + d)), c] > 0.5 for d in (-mx, mx))
        if avoid_heart:
            ok = ok and ch.heart_mask[r, c] < 0.05
        if ok:
            return x, y
        if inside and best is None:
            best = (x, y)
    return best if best is not None else (geo.lx[side], geo.ly)


def _aortic_enlargement(ch, rng, side=None, **_):
    kx, ky, kr = ch.geo.knob
    r = kr * rng.uniform(1.8, 2.3)
    big = _ellipse(ch, kx + 0.7 * (r - kr), ky - 0.2 * (r - kr), r, r * ch.width / ch.height, 1.5)
    normal = _ellipse(ch, kx, ky, kr, kr * ch.width / ch.height, 1.5)
    return 0.32 * np.clip(big - normal, 0.0, 1.0)


def _atelectasis(ch, rng, side=None, **_):
    side = _pick_side(rng, side)
    x, y = _lung_point(ch, rng, side, margin=0.08, v_range=(0.0, 0.45), u_range=(-0.3, 0.5))
    ang = rng.uniform(-0.35, 0.35)
    half = rng.uniform(0.06, 0.10)
    layer = np.zeros((ch.height, ch.width), np.float32)
    p0 = ch.px(x - np.cos(ang) * half, y - np.sin(ang) * half * ch.width / ch.height)
    p1 = ch.px(x + np.cos(ang) * half, y + np.sin(ang) * half * ch.width / ch.height)
    cv2.line(layer, p0, p1, 1.0, thickness=max(3, int(round(rng.uniform(0.014, 0.022) * ch.height))))
    return 0.34 * _blur(layer, 1.0) * np.clip(ch.lung[side] * 1.2, 0, 1)


def _calcification(ch, rng, side=None, **_):
    if rng.random() < 0.25:   # calcified aortic knob
        kx, ky, kr = ch.geo.knob
        x, y = kx + rng.uniform(-0.5, 0.5) * kr, ky - 0.6 * kr
    else:
        x, y = _lung_point(ch, rng, _pick_side(rng, side), margin=0.03)
    r = max(2.5 / ch.width, rng.uniform(0.008, 0.012))
    return 0.6 * _ellipse(ch, x, y, r, r * ch.width / ch.height, 0.8)


def _cardiomegaly(ch, rng, side=None, **_):
    hx, hy, hrx, hry = ch.geo.heart
    k = rng.uniform(1.35, 1.6)
    rx, ry = hrx * k, hry * rng.uniform(1.05, 1.2)
    big = _ellipse(ch, hx + 0.25 * (rx - hrx), hy - 0.3 * (ry - hry), rx, ry, 2.0)
    big *= (ch.yy < _diaphragm(ch.geo, "L", ch.xx) + 0.02)
    lungs = np.maximum(ch.lung["R"], ch.lung["L"])
    return 0.34 * np.clip(big - ch.heart_mask, 0.0, 1.0) * lungs


def _consolidation(ch, rng, side=None, **_):
    side = _pick_side(rng, side)
    x, y = _lung_point(ch, rng, side, margin=0.07, v_range=(-0.1, 0.45))
    rx, ry = rng.uniform(0.06, 0.09), rng.uniform(0.05, 0.08)
    # Irregular lobar outline: the radial distance is warped by low-frequency noise.
    warp = cv2.resize(rng.normal(0, 0.18, (5, 5)).astype(np.float32), (ch.width, ch.height),
                      interpolation=cv2.INTER_CUBIC)
    d = np.sqrt(((ch.xx - x) / rx) ** 2 + ((ch.yy - y) / ry) ** 2) + warp
    region = _smoothstep(1.05, 0.85, d) * ch.lung[side]
    # Air bronchograms: dark branching tubes inside the dense region.
    tubes = np.zeros((ch.height, ch.width), np.float32)
    s = np.linspace(0, 1, 12, dtype=np.float32)
    for _ in range(4):
        ang = rng.uniform(0, 2 * np.pi)
        pts = np.stack([x + np.cos(ang) * rx * 0.9 * s, y + np.sin(ang) * ry * 0.9 * s + 0.01 * s * s], axis=1)
        _draw_curve(tubes, pts, ch.width, ch.height, 2, 1.0)
    return region * (0.36 - 0.2 * _blur(tubes, 0.7))


def _bandpass(rng, shape, lo: float, hi: float) -> np.ndarray:
    n = rng.standard_normal(shape, dtype=np.float32)
    b = _blur(n, lo) - _blur(n, hi)
    return b / (b.std() + 1e-6)


def _ild(ch, rng, side=None, **_):
    """Reticular (net-like) texture in a lower zone."""
    side = _pick_side(rng, side)
    geo = ch.geo
    sg = geo.sign(side)
    x = geo.lx[side] + sg * rng.uniform(-0.1, 0.3) * geo.ax
    y = geo.ly + rng.uniform(0.25, 0.4) * geo.ay
    region = _ellipse(ch, x, y, rng.uniform(0.08, 0.11), rng.uniform(0.08, 0.11), 3.0) * ch.lung[side]
    net = np.exp(-(_bandpass(rng, region.shape, 1.0, 3.5) / 0.45) ** 2)   # zero crossings form a network
    return region * (0.08 + 0.32 * net)


def _infiltration(ch, rng, side=None, **_):
    """Fluffy, mottled haze."""
    side = _pick_side(rng, side)
    x, y = _lung_point(ch, rng, side, margin=0.07, v_range=(-0.4, 0.3))
    region = _ellipse(ch, x, y, rng.uniform(0.06, 0.09), rng.uniform(0.06, 0.09), 6.0) * ch.lung[side]
    blobs = _blur(rng.standard_normal(region.shape, dtype=np.float32), 2.5)
    blobs = np.clip(0.55 + blobs / (blobs.std() + 1e-6) * 0.35, 0.0, 1.0)
    return 0.28 * region * blobs


def _lung_opacity(ch, rng, side=None, **_):
    """Homogeneous hazy patch with soft edges."""
    side = _pick_side(rng, side)
    x, y = _lung_point(ch, rng, side, margin=0.07)
    rx, ry = rng.uniform(0.055, 0.085), rng.uniform(0.05, 0.08)
    d = np.sqrt(((ch.xx - x) / rx) ** 2 + ((ch.yy - y) / ry) ** 2)
    return 0.22 * _smoothstep(1.0, 0.55, d) * ch.lung[side]


def _nodule(ch, rng, side=None, size: str = "nodule", **_):
    side = _pick_side(rng, side)
    r = rng.uniform(0.022, 0.035) if size == "nodule" else rng.uniform(0.05, 0.07)
    x, y = _lung_point(ch, rng, side, margin=r + 0.01)
    # Slightly lobulated round opacity, densest at its centre (a sphere seen in projection).
    ang = np.arctan2(ch.yy - y, (ch.xx - x) * ch.width / ch.height)
    rr = r * (1 + 0.08 * np.sin(3 * ang + rng.uniform(0, 6.3)))
    d = np.sqrt(((ch.xx - x) / rr) ** 2 + ((ch.yy - y) / (rr * ch.width / ch.height)) ** 2)
    sphere = np.sqrt(np.clip(1.0 - d * d, 0.0, 1.0))
    return (0.18 + 0.22 * sphere) * _smoothstep(1.0, 0.9, d)


def _mass(ch, rng, side=None, **kw):
    return _nodule(ch, rng, side, size="mass")


def _other_lesion(ch, rng, side=None, **_):
    """Ring shadow (e.g. a cavity): bright wall, slightly dark centre."""
    side = _pick_side(rng, side)
    r = rng.uniform(0.03, 0.045)
    x, y = _lung_point(ch, rng, side, margin=r + 0.01)
    d = np.sqrt(((ch.xx - x) / r) ** 2 + ((ch.yy - y) / (r * ch.width / ch.height)) ** 2)
    ring = np.exp(-((d - 1.0) / 0.2) ** 2)
    return 0.36 * ring - 0.06 * _smoothstep(0.8, 0.5, d)


def _pleural_effusion(ch, rng, side=None, **_):
    """Fluid at the costophrenic angle: dense, with a meniscus rising towards the chest wall."""
    side = _pick_side(rng, side)
    geo = ch.geo
    sg = geo.sign(side)
    t = np.clip((ch.xx - geo.lx[side]) * sg / geo.ax * 0.5 + 0.5, 0.0, 1.0)   # 0 medial .. 1 lateral
    level = geo.bot[side] - rng.uniform(0.09, 0.17)
    meniscus = level - rng.uniform(0.04, 0.08) * t ** 2
    hard = (ch.lung_f[side] < 1.0) & (ch.yy > meniscus) & (ch.yy < _diaphragm(geo, side, ch.xx) + 0.01)
    region = _blur(hard.astype(np.float32), 1.5)
    depth = _smoothstep(level - 0.08, geo.bot[side], ch.yy)
    return region * (0.26 + 0.12 * depth)


def _lateral_edge(ch: Chest, side: str, yy: np.ndarray) -> np.ndarray:
    geo = ch.geo
    v = np.clip(np.abs((yy - geo.ly) / geo.ay), 0.0, 1.0)
    q = np.where(yy < geo.ly, np.float32(2.0), np.float32(geo.p))   # the exponents of lung_f
    u = (1.0 - v ** q) ** (1.0 / q)
    return geo.lx[side] + geo.sign(side) * geo.ax * u


def _pleural_thickening(ch, rng, side=None, **_):
    """Bright band along the lateral chest wall, inside the lung edge."""
    side = _pick_side(rng, side)
    geo = ch.geo
    y0 = geo.ly + rng.uniform(-0.7, -0.1) * geo.ay
    y1 = y0 + rng.uniform(0.14, 0.24)
    thick = rng.uniform(0.016, 0.026)
    edge = _lateral_edge(ch, side, ch.yy)
    inward = (edge - ch.xx) * geo.sign(side)                    # distance inside the lung from its lateral edge
    band = _smoothstep(-0.004, 0.002, inward) * _smoothstep(thick + 0.004, thick, inward)
    band *= _smoothstep(y0 - 0.01, y0 + 0.01, ch.yy) * _smoothstep(y1 + 0.01, y1 - 0.01, ch.yy)
    return 0.34 * band


def _pneumothorax(ch, rng, side=None, **_):
    """Air between lung and chest wall at the apex: dark, no lung markings, a thin visceral pleural line."""
    side = _pick_side(rng, side)
    geo = ch.geo
    sg = geo.sign(side)
    k = rng.uniform(0.62, 0.75)
    cxl = geo.lx[side] - sg * (1 - k) * geo.ax * 0.8
    cyl = geo.ly + (1 - k) * geo.ay * 0.9
    fc = np.abs((ch.xx - cxl) / (k * geo.ax)) ** geo.p + np.abs((ch.yy - cyl) / (k * geo.ay)) ** geo.p
    upper = _smoothstep(geo.ly + 0.15 * geo.ay, geo.ly - 0.05 * geo.ay, ch.yy)
    region = ch.lung[side] * _smoothstep(0.96, 1.06, fc) * upper
    line = np.exp(-((fc - 1.0) / 0.035) ** 2) * ch.lung[side] * upper
    return -ch.markings * region - 0.13 * region + 0.24 * line


def _pulmonary_fibrosis(ch, rng, side=None, **_):
    """Coarse streaks radiating towards an upper zone, with some haze."""
    side = _pick_side(rng, side)
    geo = ch.geo
    sg = geo.sign(side)
    x = geo.lx[side] + sg * rng.uniform(-0.2, 0.3) * geo.ax
    y = geo.ly - rng.uniform(0.4, 0.55) * geo.ay
    rx, ry = rng.uniform(0.08, 0.11), rng.uniform(0.07, 0.1)
    region = _ellipse(ch, x, y, rx, ry, 3.0) * ch.lung[side]
    streaks = np.zeros(region.shape, np.float32)
    for _ in range(14):
        ang = rng.uniform(-np.pi, 0)
        length = rng.uniform(0.5, 1.2)
        sx, sy = x + rng.uniform(-0.5, 0.5) * rx, y + rng.uniform(-0.3, 0.6) * ry
        p0 = ch.px(sx, sy)
        p1 = ch.px(sx + np.cos(ang) * rx * length, sy + np.sin(ang) * ry * length)
        cv2.line(streaks, p0, p1, 1.0, thickness=2)
    return region * (0.07 + 0.3 * _blur(streaks, 0.7))


def _edema(ch, rng, side=None, **_):
    """Bilateral perihilar ("bat wing") haze."""
    geo = ch.geo
    out = np.zeros((ch.height, ch.width), np.float32)
    for s in ("R", "L"):
        x = geo.lx[s] - geo.sign(s) * 0.35 * geo.ax
        out += _ellipse(ch, x, geo.ly - 0.02, rng.uniform(0.09, 0.12), rng.uniform(0.12, 0.16), 10.0) * ch.lung[s]
    tex = np.clip(0.7 + 0.3 * _bandpass(rng, out.shape, 1.5, 4.0), 0.0, 1.0)
    return 0.22 * out * tex


def _emphysema(ch, rng, side=None, **_):
    """Hyperlucent lungs (darker, markings thinned) with a few thin-walled bullae."""
    lungs = np.maximum(ch.lung["R"], ch.lung["L"])
    out = -0.12 * lungs - 0.6 * ch.markings
    for _ in range(int(rng.integers(2, 4))):
        sd = _pick_side(rng, None)
        r = rng.uniform(0.03, 0.05)
        x, y = _lung_point(ch, rng, sd, margin=r, v_range=(-0.7, 0.0))
        d = np.sqrt(((ch.xx - x) / r) ** 2 + ((ch.yy - y) / (r * ch.width / ch.height)) ** 2)
        out += 0.12 * np.exp(-((d - 1.0) / 0.12) ** 2) * lungs
    return out


def _hernia(ch, rng, side=None, **_):
    """Hiatal hernia: a round retrocardiac opacity with an air-fluid level."""
    hx, hy, hrx, hry = ch.geo.heart
    r = rng.uniform(0.045, 0.06)
    x, y = ch.geo.cx + rng.uniform(0.0, 0.03), hy + 0.2 * hry
    ry = r * ch.width / ch.height
    disk = _ellipse(ch, x, y, r, ry, 1.5)
    air = disk * (ch.yy < y - 0.1 * ry)
    d = np.sqrt(((ch.xx - x) / r) ** 2 + ((ch.yy - y) / ry) ** 2)
    wall = np.exp(-((d - 1.0) / 0.12) ** 2)
    return 0.2 * disk - 0.32 * air + 0.12 * wall


RENDERERS = {
    "Aortic enlargement": _aortic_enlargement, "Atelectasis": _atelectasis, "Calcification": _calcification,
    "Cardiomegaly": _cardiomegaly, "Consolidation": _consolidation, "ILD": _ild, "Infiltration": _infiltration,
    "Lung Opacity": _lung_opacity, "Nodule/Mass": _nodule, "Other lesion": _other_lesion,
    "Pleural effusion": _pleural_effusion, "Pleural thickening": _pleural_thickening, "Pneumothorax": _pneumothorax,
    "Pulmonary fibrosis": _pulmonary_fibrosis, "Mass": _mass, "Edema": _edema, "Emphysema": _emphysema,
    "Hernia": _hernia,
}
assert set(RENDERERS) == set(RENDERABLE)


def box_of(delta: np.ndarray, fraction: float = BOX_FRACTION) -> tuple[float, float, float, float] | None:
    """Normalised corners (x0, y0, x1, y1), pixel edges, of where ``|delta| >= fraction * max|delta|``;
    None if the delta is zero everywhere."""
    a = np.abs(delta)
    peak = float(a.max())
    if peak <= 0:
        return None
    m = a >= fraction * peak
    rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
    h, w = delta.shape
    return cols[0] / w, rows[0] / h, (cols[-1] + 1) / w, (rows[-1] + 1) / h


def render_finding(ch: Chest, name: str, rng: np.random.Generator, side: str | None = None
                   ) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """The intensity change (working canvas) of one finding on ``ch`` and its normalised box."""
    try:
        fn = RENDERERS[name]
    except KeyError:
        raise ValueError(f"no renderer for finding {name!r}; known: {', '.join(RENDERABLE)}") from None
    delta = fn(ch, rng, side=side).astype(np.float32)
    box = box_of(delta)
    if box is None:   # cannot happen for the renderers above; guard so a box never goes missing silently
        raise RuntimeError(f"renderer for {name!r} drew nothing")
    return delta, box


@dataclass
class Rendered:
    """A rendered radiograph at its final size and the boxes of what was drawn on it."""

    image: np.ndarray                   # float32 display intensities in [0, 1], shape (rows, cols)
    findings: list                      # [(name, (x0, y0, x1, y1) normalised corners)]
    chest: Chest


def render_image(rng: np.random.Generator, rows: int, cols: int, findings: list[str],
                 work: int = WORK_SIZE) -> Rendered:
    """A chest radiograph of ``rows`` x ``cols`` pixels with the named findings drawn in.

    Rendered on the working canvas, scaled up with bilinear interpolation, then a fine grain at the
    final resolution (so the file does not look upsampled). A random gamma varies the contrast
    between "machines".
    """
    h, w = work_shape(rows, cols, work)
    ch = render_chest(rng, h, w)
    img = ch.base.copy()
    out = []
    for name in findings:
        delta, box = render_finding(ch, name, rng)
        img += delta
        out.append((name, box))
    img = np.clip(img, 0.0, 1.0)
    img = img ** np.float32(rng.uniform(0.85, 1.15))
    big = cv2.resize(img, (cols, rows), interpolation=cv2.INTER_LINEAR)
    big += rng.standard_normal((rows, cols), dtype=np.float32) * np.float32(0.006)
    np.clip(big, 0.0, 1.0, out=big)
    return Rendered(image=big, findings=out, chest=ch)


def spurious_box(rng: np.random.Generator, ch: Chest, name: str) -> tuple[float, float, float, float]:
    """Where a reader who over-calls ``name`` would draw it on this chest (normalised corners): the box
    of a finding of that class placed as the renderer would, but never drawn into the image."""
    return render_finding(ch, name, rng)[1]


def to_pixels(box: tuple[float, float, float, float], width: int, height: int) -> tuple[float, float, float, float]:
    """Normalised corners -> absolute-pixel corners of a ``width`` x ``height`` image, rounded to whole
    pixels (like the real annotations), clipped to the image and at least one pixel wide."""
    x0, y0, x1, y1 = box
    a = min(max(math.floor(x0 * width + 1e-9), 0), width - 1)   # 1e-9: 0.55 * 200 is 110.00000000000001
    b = min(max(math.floor(y0 * height + 1e-9), 0), height - 1)
    c = max(min(math.ceil(x1 * width - 1e-9), width), a + 1)
    d = max(min(math.ceil(y1 * height - 1e-9), height), b + 1)
    return float(a), float(b), float(c), float(d)
