"""A normal PA chest radiograph on the working canvas, and the lung-field mask of what was drawn.

:func:`render_chest` draws body, lungs, mediastinum, heart, spine, bones, vessel markings and exposure
variation; it returns a :class:`~pipeline.demo.geometry.Chest` that keeps the layers findings need.
:func:`lung_mask` is the truth a lung segmentation learns: the lung fields minus the heart shadow
(as in the Shenzhen, Montgomery and JSRT masks, which outline the visible lung, not the heart).
"""
from __future__ import annotations

import cv2
import numpy as np

from pipeline.demo.geometry import Chest, Geometry, blur, diaphragm, draw_curve, ellipse, lung_f, smoothstep


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
    half = geo.body_hw * (0.3 + 0.7 * smoothstep(geo.top - 0.1, geo.top + 0.05, yy))
    dx = np.abs(xx - geo.cx) / half
    body = smoothstep(1.03, 0.97, dx)
    img = 0.03 + body * (0.40 + 0.20 * np.clip(1.0 - dx * dx, 0.0, 1.0))

    # Lungs (air: much darker), cut by the domed hemidiaphragms.
    lungs = np.zeros((H, W), np.float32)
    for side in ("R", "L"):
        f = lung_f(geo, side, xx, yy)
        hard = ((f < 1.0) & (yy < diaphragm(geo, side, xx))).astype(np.float32)
        soft = blur(hard, 1.2)
        ch.lung[side], ch.lung_f[side] = soft, f
        lungs = np.maximum(lungs, soft)
    # Lungs are a little less dark at the bases (more tissue in the beam) than at the apices.
    img -= lungs * (0.34 - 0.05 * smoothstep(geo.top, geo.bot["L"], yy))

    # Mediastinum, heart and aortic knob: dense, on top of the medial lungs.
    hx, hy, hrx, hry = geo.heart
    heart = ellipse(ch, hx, hy, hrx, hry, 2.0)
    heart *= (yy < diaphragm(geo, "L", xx) + 0.02)
    ch.heart_mask = heart
    img += 0.30 * heart * lungs + 0.06 * heart
    kx, ky, kr = geo.knob
    img += 0.24 * ellipse(ch, kx, ky, kr, kr * W / H, 1.5) * lungs

    # Spine: a bright column with vertebral bodies (periodic) behind the mediastinum.
    period = (geo.bot["L"] - geo.top) / 9.0
    vert = 0.75 + 0.25 * smoothstep(-0.3, 0.3, np.cos(2 * np.pi * (yy - geo.top) / period))
    spine = smoothstep(0.045, 0.03, np.abs(xx - geo.cx)) * vert
    img += 0.10 * spine * body

    # Below the diaphragm: abdomen, denser; an air bubble in the stomach under the left dome.
    if geo.bubble:
        bx = geo.lx["L"] + rng.uniform(-0.02, 0.04)
        by = geo.bot["L"] + rng.uniform(0.03, 0.06)
        img -= 0.16 * ellipse(ch, bx, by, rng.uniform(0.025, 0.04), rng.uniform(0.015, 0.025), 2.0) * (1 - lungs)

    # Bones: clavicles and curved posterior ribs (bright arcs), drawn as lines then softened.
    bones = np.zeros((H, W), np.float32)
    s = np.linspace(0.0, 1.0, 28, dtype=np.float32)
    for side in ("R", "L"):
        sg = geo.sign(side)
        # Clavicle: from the sternal end near the midline out and up to the shoulder.
        x0, y0 = geo.cx + sg * 0.035, geo.top + rng.uniform(0.05, 0.075)
        x1, y1 = geo.cx + sg * (geo.body_hw - 0.01), geo.top - rng.uniform(0.0, 0.03)
        pts = np.stack([x0 + (x1 - x0) * s, y0 + (y1 - y0) * s - 0.02 * np.sin(np.pi * s)], axis=1)
        draw_curve(bones, pts, W, H, 0.022 * H, 1.3)
        n_ribs = 10
        gap = (geo.bot[side] - geo.top) / (n_ribs - 0.5)
        for k in range(n_ribs):
            # Posterior rib: leaves the spine rising, arches over and falls steeply at the chest wall.
            ry0 = geo.top - 0.02 + k * gap + rng.normal(0, 0.004)
            reach = 2 * geo.ax + 0.06
            xr = geo.cx + sg * (0.03 + reach * np.sin(0.5 * np.pi * s))
            yr = ry0 - 0.03 * np.sin(np.pi * s) + (0.06 + 0.04 * k / n_ribs) * s ** 3
            draw_curve(bones, np.stack([xr, yr], axis=1), W, H, 0.013 * H, 1.0)
            # Anterior rib (fainter): from the lateral wall sloping down towards the sternum.
            ya = geo.top + 0.04 + k * gap * 0.9
            xa = geo.cx + sg * (0.08 + (reach - 0.05) * (1 - s))
            draw_curve(bones, np.stack([xa, ya + 0.12 * s - 0.04 * (1 - s) ** 2], axis=1), W, H, 0.01 * H, 0.45)
    bones = blur(bones, 1.0) * body
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
            draw_curve(marks, pts[:14], W, H, 2.0, 0.6)
            draw_curve(marks, pts[13:], W, H, 1.0, 0.4)
    noise = rng.standard_normal((H, W), dtype=np.float32)
    marks = blur(marks, 0.8) + 0.5 * (blur(noise, 1.0) - blur(noise, 3.0))
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



def lung_mask(ch: Chest, rows: int | None = None, cols: int | None = None) -> np.ndarray:
    """Boolean lung-field mask of ``ch`` (both lungs, the heart shadow left out) at ``rows`` x ``cols``
    pixels (default: the working canvas). Scaled like the image (bilinear), then cut at one half."""
    soft = np.maximum(ch.lung["R"], ch.lung["L"]) * (1.0 - np.clip(ch.heart_mask, 0.0, 1.0))
    rows, cols = rows or ch.height, cols or ch.width
    if (rows, cols) != soft.shape:
        soft = cv2.resize(soft, (cols, rows), interpolation=cv2.INTER_LINEAR)
    return soft > 0.5
