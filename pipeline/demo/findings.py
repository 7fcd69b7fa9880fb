"""The findings the demo draws: one renderer per class, each an additive intensity change on a chest.

A renderer returns ``delta`` on the working canvas (see :mod:`pipeline.demo.geometry` for the
conventions). Its box is the bounding box of the pixels where ``|delta|`` is at least ``BOX_FRACTION``
of its peak, returned as normalised corners ``(x0, y0, x1, y1)`` with pixel *edges*
(``x1 = (last column + 1) / width``), so multiplying by the file's width/height gives absolute-pixel
corners that cover the change.
"""
from __future__ import annotations

import cv2
import numpy as np

from pipeline.demo.geometry import Chest, blur, diaphragm, draw_curve, ellipse, smoothstep

BOX_FRACTION = 0.12      # a pixel belongs to a finding's box where |delta| >= this share of its peak

# The 14 VinBigData findings plus three ChestX-ray14-only appearances (Edema, Emphysema, Hernia)
# and the large variant of Nodule/Mass ("Mass").
RENDERABLE = (
    "Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Consolidation", "ILD",
    "Infiltration", "Lung Opacity", "Nodule/Mass", "Other lesion", "Pleural effusion",
    "Pleural thickening", "Pneumothorax", "Pulmonary fibrosis", "Mass", "Edema", "Emphysema", "Hernia",
)


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
    big = ellipse(ch, kx + 0.7 * (r - kr), ky - 0.2 * (r - kr), r, r * ch.width / ch.height, 1.5)
    normal = ellipse(ch, kx, ky, kr, kr * ch.width / ch.height, 1.5)
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
    return 0.34 * blur(layer, 1.0) * np.clip(ch.lung[side] * 1.2, 0, 1)


def _calcification(ch, rng, side=None, **_):
    if rng.random() < 0.25:   # calcified aortic knob
        kx, ky, kr = ch.geo.knob
        x, y = kx + rng.uniform(-0.5, 0.5) * kr, ky - 0.6 * kr
    else:
        x, y = _lung_point(ch, rng, _pick_side(rng, side), margin=0.03)
    r = max(2.5 / ch.width, rng.uniform(0.008, 0.012))
    return 0.6 * ellipse(ch, x, y, r, r * ch.width / ch.height, 0.8)


def _cardiomegaly(ch, rng, side=None, **_):
    hx, hy, hrx, hry = ch.geo.heart
    k = rng.uniform(1.35, 1.6)
    rx, ry = hrx * k, hry * rng.uniform(1.05, 1.2)
    big = ellipse(ch, hx + 0.25 * (rx - hrx), hy - 0.3 * (ry - hry), rx, ry, 2.0)
    big *= (ch.yy < diaphragm(ch.geo, "L", ch.xx) + 0.02)
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
    region = smoothstep(1.05, 0.85, d) * ch.lung[side]
    # Air bronchograms: dark branching tubes inside the dense region.
    tubes = np.zeros((ch.height, ch.width), np.float32)
    s = np.linspace(0, 1, 12, dtype=np.float32)
    for _ in range(4):
        ang = rng.uniform(0, 2 * np.pi)
        pts = np.stack([x + np.cos(ang) * rx * 0.9 * s, y + np.sin(ang) * ry * 0.9 * s + 0.01 * s * s], axis=1)
        draw_curve(tubes, pts, ch.width, ch.height, 2, 1.0)
    return region * (0.36 - 0.2 * blur(tubes, 0.7))


def _bandpass(rng, shape, lo: float, hi: float) -> np.ndarray:
    n = rng.standard_normal(shape, dtype=np.float32)
    b = blur(n, lo) - blur(n, hi)
    return b / (b.std() + 1e-6)


def _ild(ch, rng, side=None, **_):
    """Reticular (net-like) texture in a lower zone."""
    side = _pick_side(rng, side)
    geo = ch.geo
    sg = geo.sign(side)
    x = geo.lx[side] + sg * rng.uniform(-0.1, 0.3) * geo.ax
    y = geo.ly + rng.uniform(0.25, 0.4) * geo.ay
    region = ellipse(ch, x, y, rng.uniform(0.08, 0.11), rng.uniform(0.08, 0.11), 3.0) * ch.lung[side]
    net = np.exp(-(_bandpass(rng, region.shape, 1.0, 3.5) / 0.45) ** 2)   # zero crossings form a network
    return region * (0.08 + 0.32 * net)


def _infiltration(ch, rng, side=None, **_):
    """Fluffy, mottled haze."""
    side = _pick_side(rng, side)
    x, y = _lung_point(ch, rng, side, margin=0.07, v_range=(-0.4, 0.3))
    region = ellipse(ch, x, y, rng.uniform(0.06, 0.09), rng.uniform(0.06, 0.09), 6.0) * ch.lung[side]
    blobs = blur(rng.standard_normal(region.shape, dtype=np.float32), 2.5)
    blobs = np.clip(0.55 + blobs / (blobs.std() + 1e-6) * 0.35, 0.0, 1.0)
    return 0.28 * region * blobs


def _lung_opacity(ch, rng, side=None, **_):
    """Homogeneous hazy patch with soft edges."""
    side = _pick_side(rng, side)
    x, y = _lung_point(ch, rng, side, margin=0.07)
    rx, ry = rng.uniform(0.055, 0.085), rng.uniform(0.05, 0.08)
    d = np.sqrt(((ch.xx - x) / rx) ** 2 + ((ch.yy - y) / ry) ** 2)
    return 0.22 * smoothstep(1.0, 0.55, d) * ch.lung[side]


def _nodule(ch, rng, side=None, size: str = "nodule", **_):
    side = _pick_side(rng, side)
    r = rng.uniform(0.022, 0.035) if size == "nodule" else rng.uniform(0.05, 0.07)
    x, y = _lung_point(ch, rng, side, margin=r + 0.01)
    # Slightly lobulated round opacity, densest at its centre (a sphere seen in projection).
    ang = np.arctan2(ch.yy - y, (ch.xx - x) * ch.width / ch.height)
    rr = r * (1 + 0.08 * np.sin(3 * ang + rng.uniform(0, 6.3)))
    d = np.sqrt(((ch.xx - x) / rr) ** 2 + ((ch.yy - y) / (rr * ch.width / ch.height)) ** 2)
    sphere = np.sqrt(np.clip(1.0 - d * d, 0.0, 1.0))
    return (0.18 + 0.22 * sphere) * smoothstep(1.0, 0.9, d)


def _mass(ch, rng, side=None, **kw):
    return _nodule(ch, rng, side, size="mass")


def _other_lesion(ch, rng, side=None, **_):
    """Ring shadow (e.g. a cavity): bright wall, slightly dark centre."""
    side = _pick_side(rng, side)
    r = rng.uniform(0.03, 0.045)
    x, y = _lung_point(ch, rng, side, margin=r + 0.01)
    d = np.sqrt(((ch.xx - x) / r) ** 2 + ((ch.yy - y) / (r * ch.width / ch.height)) ** 2)
    ring = np.exp(-((d - 1.0) / 0.2) ** 2)
    return 0.36 * ring - 0.06 * smoothstep(0.8, 0.5, d)


def _pleural_effusion(ch, rng, side=None, **_):
    """Fluid at the costophrenic angle: dense, with a meniscus rising towards the chest wall."""
    side = _pick_side(rng, side)
    geo = ch.geo
    sg = geo.sign(side)
    t = np.clip((ch.xx - geo.lx[side]) * sg / geo.ax * 0.5 + 0.5, 0.0, 1.0)   # 0 medial .. 1 lateral
    level = geo.bot[side] - rng.uniform(0.09, 0.17)
    meniscus = level - rng.uniform(0.04, 0.08) * t ** 2
    hard = (ch.lung_f[side] < 1.0) & (ch.yy > meniscus) & (ch.yy < diaphragm(geo, side, ch.xx) + 0.01)
    region = blur(hard.astype(np.float32), 1.5)
    depth = smoothstep(level - 0.08, geo.bot[side], ch.yy)
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
    band = smoothstep(-0.004, 0.002, inward) * smoothstep(thick + 0.004, thick, inward)
    band *= smoothstep(y0 - 0.01, y0 + 0.01, ch.yy) * smoothstep(y1 + 0.01, y1 - 0.01, ch.yy)
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
    upper = smoothstep(geo.ly + 0.15 * geo.ay, geo.ly - 0.05 * geo.ay, ch.yy)
    region = ch.lung[side] * smoothstep(0.96, 1.06, fc) * upper
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
    region = ellipse(ch, x, y, rx, ry, 3.0) * ch.lung[side]
    streaks = np.zeros(region.shape, np.float32)
    for _ in range(14):
        ang = rng.uniform(-np.pi, 0)
        length = rng.uniform(0.5, 1.2)
        sx, sy = x + rng.uniform(-0.5, 0.5) * rx, y + rng.uniform(-0.3, 0.6) * ry
        p0 = ch.px(sx, sy)
        p1 = ch.px(sx + np.cos(ang) * rx * length, sy + np.sin(ang) * ry * length)
        cv2.line(streaks, p0, p1, 1.0, thickness=2)
    return region * (0.07 + 0.3 * blur(streaks, 0.7))


def _edema(ch, rng, side=None, **_):
    """Bilateral perihilar ("bat wing") haze."""
    geo = ch.geo
    out = np.zeros((ch.height, ch.width), np.float32)
    for s in ("R", "L"):
        x = geo.lx[s] - geo.sign(s) * 0.35 * geo.ax
        out += ellipse(ch, x, geo.ly - 0.02, rng.uniform(0.09, 0.12), rng.uniform(0.12, 0.16), 10.0) * ch.lung[s]
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
    disk = ellipse(ch, x, y, r, ry, 1.5)
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


def spurious_box(rng: np.random.Generator, ch: Chest, name: str) -> tuple[float, float, float, float]:
    """Where a reader who over-calls ``name`` would draw it on this chest (normalised corners): the box
    of a finding of that class placed as the renderer would, but never drawn into the image."""
    return render_finding(ch, name, rng)[1]

