"""What every image goes through before the lung network, identically at training and at inference.

1. :func:`to_unit`: any grey image (uint8, uint16, float; colour is made grey) -> float32 [0, 1] by
   per-image percentile scaling (``PERCENTILES``): the stored range, bit depth and window of a file
   stop mattering.
2. letterbox to ``imgsz x imgsz`` (:class:`pipeline.classifier.Letterbox`: the longer side fits,
   aspect kept, centred, zero padding). ``valid`` marks the picture's pixels (not the padding).
3. :func:`normalise` over the ``valid`` pixels only: ``histeq`` (global histogram equalisation: the
   output is each pixel's rank, so any monotonic change of intensities (gamma, contrast, brightness,
   exposure, another scanner's look-up table) gives the same input), ``clahe`` (contrast-limited
   adaptive equalisation), ``histeq_clahe`` (both, as two channels) or ``percentile`` (step 1 only).
   Padding is set to 0 after normalisation.

Training augments between steps 2 and 3 (:mod:`pipeline.lungs.augment`), so the network sees
shifted raw intensities that step 3 then normalises, as a real shifted image would be.
Predicted probabilities go back to ORIGINAL pixels with :func:`unletterbox` (crop the padding,
bilinear resize to the original size).
"""
from __future__ import annotations

import numpy as np

from pipeline.classifier import Letterbox
from pipeline.errors import ConfigError

PERCENTILES = (0.5, 99.5)
INPUTS = {"histeq": 1, "clahe": 1, "histeq_clahe": 2, "percentile": 1}   # mode -> input channels
HIST_BINS = 1024


def in_channels(mode: str) -> int:
    if mode not in INPUTS:
        raise ConfigError(f"segment.input={mode!r}: use one of {', '.join(INPUTS)}.")
    return INPUTS[mode]


def to_unit(img: np.ndarray, percentiles: tuple[float, float] = PERCENTILES) -> np.ndarray:
    """Grey float32 in [0, 1]: the ``percentiles`` of the image's values map to 0 and 1 (clipped)."""
    import cv2

    a = np.asarray(img)
    if a.ndim == 3:
        a = cv2.cvtColor(a[:, :, :3].astype(np.float32), cv2.COLOR_BGR2GRAY) if a.shape[2] >= 3 else a[:, :, 0]
    if a.ndim != 2 or min(a.shape) < 2:
        raise ValueError(f"expected a 2-d grey image (or H x W x 3), got shape {np.shape(img)}")
    a = a.astype(np.float32, copy=False)
    step = max(1, int(np.sqrt(a.size / 65536)))   # percentiles from ~65k pixels: same values, much faster
    lo, hi = np.percentile(a[::step, ::step], percentiles)
    if hi <= lo:
        lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros(a.shape, np.float32)
    return np.clip((a - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def letterbox_arrays(arrays: list[np.ndarray], size: int) -> tuple[list[np.ndarray], np.ndarray, Letterbox]:
    """Letterbox same-shape float arrays to ``size`` (area when shrinking, bilinear when enlarging);
    returns them, the boolean ``valid`` map of the picture's pixels, and the :class:`Letterbox`."""
    import cv2

    h, w = arrays[0].shape[:2]
    lb = Letterbox.fit(w, h, size)
    interp = cv2.INTER_AREA if max(h, w) > size else cv2.INTER_LINEAR
    out = []
    for a in arrays:
        canvas = np.zeros((size, size), np.float32)
        canvas[lb.pad_y:lb.pad_y + lb.new_h, lb.pad_x:lb.pad_x + lb.new_w] = cv2.resize(
            a.astype(np.float32, copy=False), (lb.new_w, lb.new_h), interpolation=interp)
        out.append(canvas)
    valid = np.zeros((size, size), bool)
    valid[lb.pad_y:lb.pad_y + lb.new_h, lb.pad_x:lb.pad_x + lb.new_w] = True
    return out, valid, lb


def equalise(img01: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Global histogram equalisation over ``valid`` pixels: each pixel becomes the share of valid
    pixels at or below its value (mid-rank of its bin), in [0, 1].

    Pixels at the two ends of the range (black or white: padding, collimation, burned-out or
    saturated areas, which can cover half a picture) are left out of the histogram and map to 0 and
    1, so a black frame or an under-exposed, saturated mediastinum does not move every other pixel's
    rank (with them counted, a 25 % black frame dropped Shenzhen-valid IoU to 0.43: docs/notes/lungs.md)."""
    idx = np.clip((img01 * (HIST_BINS - 1)).astype(np.int32), 0, HIST_BINS - 1)
    sel = idx[valid] if valid is not None else idx.ravel()
    if sel.size == 0:
        return np.zeros_like(img01, np.float32)
    inner = sel[(sel > 0) & (sel < HIST_BINS - 1)]
    if inner.size >= 0.02 * sel.size:   # an image that is almost all black/white keeps its ends
        sel = inner
    hist = np.bincount(sel, minlength=HIST_BINS).astype(np.float64)
    cdf = np.cumsum(hist)
    lut = ((cdf - hist / 2) / cdf[-1]).astype(np.float32)
    if sel is inner:
        lut[0], lut[-1] = 0.0, 1.0
    return lut[idx]


def clahe(img01: np.ndarray, clip: float = 2.0, grid: int = 8) -> np.ndarray:
    import cv2

    u8 = np.clip(np.rint(img01 * 255.0), 0, 255).astype(np.uint8)
    return cv2.createCLAHE(clipLimit=clip, tileGridSize=(grid, grid)).apply(u8).astype(np.float32) / 255.0


def normalise(img01: np.ndarray, mode: str, valid: np.ndarray) -> np.ndarray:
    """(C, H, W) float32 network input from a letterboxed [0, 1] image; padding (``~valid``) is 0."""
    in_channels(mode)
    if mode == "percentile":
        chans = [img01]
    elif mode == "histeq":
        chans = [equalise(img01, valid)]
    elif mode == "clahe":
        chans = [clahe(img01)]
    else:
        eq = equalise(img01, valid)
        chans = [eq, clahe(eq)]
    out = np.stack(chans).astype(np.float32)
    out[:, ~valid] = 0.0
    return out


def prepare_input(img: np.ndarray, imgsz: int, mode: str) -> tuple[np.ndarray, Letterbox]:
    """Any image -> ((C, imgsz, imgsz) network input, its Letterbox): steps 1-3 of the module docstring."""
    (boxed,), valid, lb = letterbox_arrays([to_unit(img)], imgsz)
    return normalise(boxed, mode, valid), lb


def unletterbox(prob: np.ndarray, lb: Letterbox) -> np.ndarray:
    """A (size, size) map in letterbox pixels -> the ORIGINAL image's (src_h, src_w) pixels (bilinear)."""
    import cv2

    inner = prob[lb.pad_y:lb.pad_y + lb.new_h, lb.pad_x:lb.pad_x + lb.new_w].astype(np.float32)
    return cv2.resize(inner, (lb.src_w, lb.src_h), interpolation=cv2.INTER_LINEAR)
