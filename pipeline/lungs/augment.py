"""Training augmentation that moves image and lung mask together, aimed at other hospitals' images.

Works on a letterboxed image in [0, 1] (before :func:`pipeline.lungs.preprocess.normalise`), its
soft mask and its ``valid`` map (picture vs padding), all ``S x S`` float32 / bool. Each operation
runs with its probability (``AUGMENT_DEFAULTS``, overridden by ``segment.augment``, all multiplied by
``segment.augment_strength`` and capped at 1):

geometry (image, mask and valid warped by ONE matrix, so they stay aligned):
  ``affine``: zoom 0.55-1.3 (a smaller or larger chest in the frame, crops at the edges), aspect
  0.8-1.25 (squashed files such as TBX11K's), rotation +-12 degrees, shift +-8 %; ``hflip``;
  ``frame``: what the warp left empty becomes part of the picture, black, white or grey (a padded
  or collimated file), instead of letterbox padding.
what other images contain:
  ``opacity``: the lung field partly or wholly as dense as soft tissue (a blob: consolidation or a
  mass; the base of one lung: effusion; both lungs hazy or white: oedema, ARDS); the mask stays the
  lung field, as radiologists outline it. ``devices``: bright tubes, wires, electrodes, a label.
  ``bars``: a dark or bright collimation band along one edge.
intensity (another scanner, exposure or processing):
  ``gamma`` 0.5-2; ``window`` (contrast stretched, or compressed and shifted: under/over-exposure);
  ``clahe``; ``equalise`` (a histogram-equalised source); ``sharpen`` (edge enhancement); ``invert``
  (a MONOCHROME1 image shown without inversion).
degradation: ``blur``, ``downscale`` (a low-resolution source enlarged), ``noise``, ``jpeg``.
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from pipeline.errors import ConfigError

AUGMENT_DEFAULTS = {
    "affine": 0.8, "hflip": 0.0, "frame": 0.25, "opacity": 0.35, "devices": 0.2, "bars": 0.1,
    "gamma": 0.5, "window": 0.5, "clahe": 0.15, "equalise": 0.1, "sharpen": 0.15, "invert": 0.1,
    "blur": 0.2, "downscale": 0.2, "noise": 0.25, "jpeg": 0.2,
}


def augment_probs(overrides: Mapping | None, strength: float) -> dict[str, float]:
    """Probabilities after ``segment.augment`` overrides and ``segment.augment_strength``."""
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(AUGMENT_DEFAULTS))
    if unknown:
        raise ConfigError(f"segment.augment: unknown key(s) {unknown}; known: {sorted(AUGMENT_DEFAULTS)}")
    if not isinstance(strength, (int, float)) or strength < 0:
        raise ConfigError(f"segment.augment_strength must be a number >= 0, got {strength!r}")
    out = {}
    for key, default in AUGMENT_DEFAULTS.items():
        p = overrides.get(key, default)
        if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0 <= p <= 1:
            raise ConfigError(f"segment.augment.{key} must be a probability in [0, 1], got {p!r}")
        out[key] = min(1.0, float(p) * float(strength))
    return out


def _log_uniform(rng, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def affine_matrix(rng: np.random.Generator, size: int, hflip: bool) -> np.ndarray:
    """2x3 matrix (output <- input) of a random zoom, aspect change, rotation and shift about the centre."""
    s = _log_uniform(rng, 0.55, 1.3)
    a = _log_uniform(rng, 0.8, 1.25)
    th = math.radians(rng.uniform(-12, 12))
    sx, sy = s * math.sqrt(a), s / math.sqrt(a)
    c, si = math.cos(th), math.sin(th)
    m = np.array([[c * sx, -si * sy], [si * sx, c * sy]])
    if hflip:
        m = m @ np.array([[-1.0, 0.0], [0.0, 1.0]])
    centre = np.array([size / 2, size / 2])
    shift = rng.uniform(-0.08, 0.08, 2) * size
    t = centre + shift - m @ centre
    return np.hstack([m, t[:, None]]).astype(np.float64)


def warp(img: np.ndarray, mask: np.ndarray, valid: np.ndarray, matrix: np.ndarray):
    """Apply one affine matrix to image, mask and valid map (outside the source: padding)."""
    import cv2

    size = img.shape[0]
    stack = np.dstack([img, mask, valid.astype(np.float32)])
    out = cv2.warpAffine(stack, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                         borderValue=(0, 0, 0, 0))
    return out[:, :, 0], out[:, :, 1], out[:, :, 2] > 0.5


def _blur(a: np.ndarray, sigma: float) -> np.ndarray:
    import cv2

    return cv2.GaussianBlur(a, (0, 0), sigmaX=float(sigma), borderType=cv2.BORDER_REPLICATE)


def _tissue_level(img: np.ndarray, valid: np.ndarray, rng) -> float:
    """An intensity like dense soft tissue in this image (a high percentile of its picture)."""
    v = img[valid]
    return float(np.percentile(v, rng.uniform(70, 95))) if v.size else 0.7


def add_opacity(img: np.ndarray, mask: np.ndarray, valid: np.ndarray, rng, kind: str | None = None,
                alpha: float | None = None) -> np.ndarray:
    """Make part of the lung field as dense as soft tissue (the mask does not change). ``kind``: blob |
    base | diffuse (None: drawn at random); ``alpha``: opacity strength in [0, 1] (None: drawn)."""
    h, w_ = img.shape
    size = max(h, w_)
    lung = mask > 0.5
    ys, xs = np.nonzero(lung)
    if len(ys) < 20:
        return img
    target = _tissue_level(img, valid, rng)
    kind = kind or rng.choice(["blob", "base", "diffuse"], p=[0.5, 0.3, 0.2])
    yy, xx = np.mgrid[0:h, 0:w_].astype(np.float32)
    if kind == "blob":
        w = np.zeros_like(img)
        for _ in range(int(rng.integers(1, 4))):
            k = int(rng.integers(len(ys)))
            r = rng.uniform(0.04, 0.16) * size
            w = np.maximum(w, np.exp(-((yy - ys[k]) ** 2 + (xx - xs[k]) ** 2) / (2 * r * r)))
        noise = _blur(rng.standard_normal(img.shape).astype(np.float32), size * 0.03)
        w = np.clip(w * (1.0 + 2.0 * noise / (noise.std() + 1e-6) * 0.25), 0, 1)
        alpha = rng.uniform(0.4, 1.0) if alpha is None else alpha
    elif kind == "base":
        left = xs < np.median(xs) if rng.random() < 0.5 else xs >= np.median(xs)
        if rng.random() < 0.25:
            left = np.ones_like(left)   # both bases
        y0, y1 = ys[left].min(), ys[left].max()
        level = y0 + rng.uniform(0.45, 0.9) * (y1 - y0)
        x_lo, x_hi = xs[left].min(), xs[left].max()
        side = ((xx >= x_lo - 3) & (xx <= x_hi + 3)).astype(np.float32)
        w = side / (1.0 + np.exp(-(yy - level) / (0.02 * size)))
        alpha = rng.uniform(0.6, 1.0) if alpha is None else alpha
    else:
        w = np.ones_like(img)
        alpha = rng.uniform(0.25, 0.9) if alpha is None else alpha
    region = _blur(lung.astype(np.float32), size * 0.01)
    w = _blur(w * region, size * 0.01) * alpha
    return img * (1 - w) + target * w


def add_devices(img: np.ndarray, rng) -> np.ndarray:
    """Bright lines (tubes, wires), small discs (electrodes) and a bright label anywhere."""
    import cv2

    size = img.shape[0]
    out = img.copy()
    for _ in range(int(rng.integers(1, 4))):
        pts = np.cumsum(rng.normal(0, size * 0.12, (int(rng.integers(3, 7)), 2)), axis=0) + rng.uniform(0, size, 2)
        cv2.polylines(out, [pts.astype(np.int32)], False, float(rng.uniform(0.75, 1.0)),
                      thickness=int(rng.integers(1, 4)), lineType=cv2.LINE_AA)
    for _ in range(int(rng.integers(0, 4))):
        c = tuple(int(v) for v in rng.uniform(0, size, 2))
        cv2.circle(out, c, int(rng.integers(2, max(3, size // 40))), float(rng.uniform(0.8, 1.0)), -1)
    if rng.random() < 0.5:
        x, y = (int(v) for v in rng.uniform(0, size * 0.85, 2))
        cv2.rectangle(out, (x, y), (x + int(size * rng.uniform(0.03, 0.12)), y + int(size * 0.04)), 1.0, -1)
    return out


def add_bar(img: np.ndarray, rng) -> np.ndarray:
    size = img.shape[0]
    width = int(rng.uniform(0.03, 0.15) * size)
    value = 0.0 if rng.random() < 0.5 else 1.0
    out = img.copy()
    edge = int(rng.integers(4))
    sl = [(slice(None), slice(0, width)), (slice(None), slice(size - width, size)),
          (slice(0, width), slice(None)), (slice(size - width, size), slice(None))][edge]
    out[sl] = value
    return out


def _intensity(img: np.ndarray, valid: np.ndarray, p: dict, rng) -> np.ndarray:
    import cv2

    from pipeline.lungs.preprocess import clahe, equalise

    if rng.random() < p["window"]:
        if rng.random() < 0.5:   # stretched: part of the range clipped (down to half of it: saturation)
            lo, hi = rng.uniform(0.0, 0.3), rng.uniform(0.5, 1.0)
            img = np.clip((img - lo) / (hi - lo), 0, 1)
        else:                    # compressed and shifted: flat, washed-out or dark
            width = rng.uniform(0.35, 0.9)
            img = rng.uniform(0, 1 - width) + img * width
    if rng.random() < p["gamma"]:
        img = np.clip(img, 0, 1) ** _log_uniform(rng, 0.5, 2.0)
    if rng.random() < p["clahe"]:
        img = clahe(np.clip(img, 0, 1), clip=rng.uniform(1.0, 4.0))
    if rng.random() < p["equalise"]:
        img = equalise(np.clip(img, 0, 1), valid)
    if rng.random() < p["sharpen"]:
        img = img + rng.uniform(0.5, 1.5) * (img - _blur(img, rng.uniform(2.0, 6.0)))
    if rng.random() < p["invert"]:
        img = 1.0 - img
    if rng.random() < p["blur"]:
        img = _blur(img, rng.uniform(0.5, 2.0))
    if rng.random() < p["downscale"]:
        size = img.shape[0]
        small = max(16, int(size * rng.uniform(0.25, 0.6)))
        img = cv2.resize(cv2.resize(img, (small, small), interpolation=cv2.INTER_AREA), (size, size),
                         interpolation=cv2.INTER_LINEAR)
    if rng.random() < p["noise"]:
        img = img + rng.normal(0, rng.uniform(0.01, 0.06), img.shape).astype(np.float32)
    if rng.random() < p["jpeg"]:
        u8 = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
        ok, buf = cv2.imencode(".jpg", u8, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(15, 61))])
        if ok:
            img = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255.0
    return np.clip(img, 0, 1).astype(np.float32)


def augment(img: np.ndarray, mask: np.ndarray, valid: np.ndarray, probs: dict, rng: np.random.Generator):
    """One random augmentation of (image [0, 1], soft mask, valid map), all S x S; returns the three."""
    if not any(probs.values()):
        return img, mask, valid
    flip = rng.random() < probs["hflip"]
    if rng.random() < probs["affine"] or flip:
        m = affine_matrix(rng, img.shape[0], flip) if rng.random() < probs["affine"] else \
            np.array([[-1.0, 0, img.shape[0]], [0, 1.0, 0]])
        img, mask, valid = warp(img, mask, valid, m)
    if rng.random() < probs["frame"]:
        img[~valid] = rng.choice([0.0, 1.0, float(rng.uniform(0.2, 0.8))], p=[0.5, 0.3, 0.2])
        valid = np.ones_like(valid)
    if rng.random() < probs["opacity"]:
        img = add_opacity(img, mask, valid, rng)
    if rng.random() < probs["devices"]:
        img = add_devices(img, rng)
    if rng.random() < probs["bars"]:
        img = add_bar(img, rng)
    img = _intensity(img, valid, probs, rng)
    img[~valid] = 0.0
    return img, mask, valid
