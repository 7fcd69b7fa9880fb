"""A few images that are NOT chest X-rays, for the input gate ("is this a chest radiograph?").

``<root>/other/<kind>_<k>.png`` and ``<root>/other/labels.csv`` (``file, kind, chest`` with chest = 0).
Kinds cover what a gate must refuse even when it is grey: an X-ray of a hand (a radiograph, not of
the chest), a page of text, a grey photograph-like scene, a colour one, a flat image and noise.
Deterministic: each image draws from its own generator seeded by ``(seed, kind, k)``.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from pipeline.io import write_bytes_atomic, write_text_atomic

OTHER_DIR = "other"
KINDS = ("hand_xray", "text_page", "grey_scene", "colour_scene", "flat", "noise")


def _hand_xray(rng: np.random.Generator, size: int) -> np.ndarray:
    """Bright bones inside a softer hand silhouette on a dark background (display intensities)."""
    img = np.full((size, size), 0.05, np.float32)
    soft = np.zeros_like(img)
    bones = np.zeros_like(img)
    cx, palm_y = size * rng.uniform(0.45, 0.55), size * rng.uniform(0.62, 0.7)
    cv2.ellipse(soft, (int(cx), int(palm_y)), (int(size * 0.2), int(size * 0.17)), 0, 0, 360, 1.0, -1)
    cv2.rectangle(soft, (int(cx - size * 0.13), int(palm_y)), (int(cx + size * 0.13), size), 1.0, -1)   # wrist
    for f in range(5):
        ang = np.deg2rad(-60 + 30 * f + rng.normal(0, 4)) if f else np.deg2rad(-75)
        length = size * (0.22 if f == 0 else rng.uniform(0.3, 0.38))
        x0 = cx + size * (-0.16 + 0.08 * f)
        y0 = palm_y - size * (0.05 if f == 0 else 0.13)
        x1, y1 = x0 + np.sin(ang + np.pi / 2.4 if f == 0 else ang * 0.15) * length, y0 - np.cos(ang * 0.15) * length
        cv2.line(soft, (int(x0), int(y0)), (int(x1), int(y1)), 1.0, int(size * 0.07))
        for s in range(3):   # phalanges: three segments with gaps (joints)
            a, b = s / 3 + 0.03, (s + 1) / 3 - 0.03
            p = (int(x0 + (x1 - x0) * a), int(y0 + (y1 - y0) * a))
            q = (int(x0 + (x1 - x0) * b), int(y0 + (y1 - y0) * b))
            cv2.line(bones, p, q, 1.0, max(2, int(size * 0.03)))
        cv2.line(bones, (int(x0), int(y0)), (int(cx + (x0 - cx) * 0.4), int(palm_y + size * 0.12)), 1.0,
                 max(2, int(size * 0.03)))   # metacarpal
    soft = cv2.GaussianBlur(soft, (0, 0), size * 0.01)
    bones = cv2.GaussianBlur(bones, (0, 0), size * 0.004)
    img += 0.35 * soft + 0.45 * bones * soft
    return img


def _text_page(rng: np.random.Generator, size: int) -> np.ndarray:
    img = np.full((size, size), 0.95, np.float32)
    y = int(size * 0.08)
    while y < size * 0.92:
        x = int(size * 0.08)
        while x < size * 0.9:
            w = int(rng.integers(2, 9)) * max(2, size // 80)
            cv2.rectangle(img, (x, y), (min(x + w, int(size * 0.92)), y + max(2, size // 60)), 0.1, -1)
            x += w + max(2, size // 60)
        y += max(6, size // 22)
    return img


def _scene(rng: np.random.Generator, size: int, colour: bool) -> np.ndarray:
    """Sky gradient, a horizon, and a few filled shapes: a crude photograph."""
    ch = 3 if colour else 1
    yy = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
    sky = rng.uniform(0.5, 0.9, ch).astype(np.float32)
    ground = rng.uniform(0.1, 0.5, ch).astype(np.float32)
    horizon = rng.uniform(0.4, 0.7)
    img = np.where(yy < horizon, sky * (1 - 0.3 * yy), ground * (0.8 + 0.2 * yy)) * np.ones((1, size, ch), np.float32)
    img = np.ascontiguousarray(img)
    for _ in range(int(rng.integers(3, 7))):
        colour_ = tuple(float(v) for v in rng.uniform(0, 1, ch))
        c = (int(rng.integers(0, size)), int(rng.integers(0, size)))
        if rng.random() < 0.5:
            cv2.circle(img, c, int(rng.integers(size // 20, size // 5)), colour_, -1)
        else:
            cv2.rectangle(img, c, (c[0] + int(rng.integers(size // 10, size // 3)),
                                   c[1] + int(rng.integers(size // 10, size // 3))), colour_, -1)
    img += rng.normal(0, 0.02, img.shape).astype(np.float32)
    return img if colour else img[:, :, 0]


def render_other(kind: str, rng: np.random.Generator, size: int = 256) -> np.ndarray:
    """One non-chest image: float32 in [0, 1], (size, size) grey or (size, size, 3) BGR colour."""
    if kind == "hand_xray":
        img = _hand_xray(rng, size)
    elif kind == "text_page":
        img = _text_page(rng, size)
    elif kind in ("grey_scene", "colour_scene"):
        img = _scene(rng, size, colour=kind == "colour_scene")
    elif kind == "flat":
        img = np.full((size, size), rng.uniform(0.2, 0.8), np.float32) + rng.normal(0, 0.01, (size, size)).astype(np.float32)
    elif kind == "noise":
        img = rng.uniform(0, 1, (size, size)).astype(np.float32)
    else:
        raise ValueError(f"unknown non-chest kind {kind!r}; known: {', '.join(KINDS)}")
    return np.clip(img, 0.0, 1.0)


def write_other(root: Path, seed: int, per_kind: int = 2, size: int = 256) -> int:
    """Write ``per_kind`` images of every kind and ``labels.csv``; returns the number of images."""
    base = Path(root) / OTHER_DIR
    rows = []
    for kind in KINDS:
        for k in range(per_kind):
            img = render_other(kind, np.random.default_rng([seed, KINDS.index(kind), k, 61]), size)
            ok, buf = cv2.imencode(".png", np.rint(img * 255).astype(np.uint8))
            if not ok:
                raise RuntimeError("PNG encoding failed")
            name = f"{kind}_{k}.png"
            write_bytes_atomic(base / name, buf.tobytes())
            rows.append(f"{name},{kind},0\n")
    write_text_atomic(base / "labels.csv", "file,kind,chest\n" + "".join(rows))
    return len(rows)


def clean(root: Path) -> None:
    base = Path(root) / OTHER_DIR
    for p in base.glob("*.png"):
        p.unlink()
    (base / "labels.csv").unlink(missing_ok=True)
