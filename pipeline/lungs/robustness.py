"""Proxies for "other hospitals": the evaluation images under fixed synthetic domain shifts.

Each shift takes an ORIGINAL image (as [0, 1] display intensities) and its lung mask and returns the
shifted image and the mask in the shifted image's pixels (geometric shifts move the mask too). The
model then predicts on the shifted image exactly as on any other (:func:`pipeline.lungs.predict`),
and Dice/IoU are measured in the shifted image's pixels. Shifts are seeded per image, so every
model meets the same shifted images.

Linear intensity changes are not listed: the per-image percentile scaling undoes them exactly.
What is listed is what it cannot undo: non-linear tone curves, saturation (under- and over-exposure),
local processing (CLAHE, equalisation, edge enhancement), inversion, blur, noise, JPEG, resolution,
padding, aspect, zoom, crop, rotation, and lung opacities (drawn by
:func:`pipeline.lungs.augment.add_opacity`, the same generator training uses at random strengths:
so the ``opacity_*`` rows flatter a model trained with it; real opacities look different).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from pipeline.lungs.augment import add_opacity
from pipeline.lungs.preprocess import clahe, equalise


def _resize(img: np.ndarray, mask: np.ndarray, w: int, h: int):
    import cv2

    interp = cv2.INTER_AREA if w * h < img.size else cv2.INTER_LINEAR
    return (cv2.resize(img, (w, h), interpolation=interp),
            cv2.resize(mask.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR) > 0.5)


def _pad(img, mask, left, right, top, bottom, value=0.0):
    return (np.pad(img, ((top, bottom), (left, right)), constant_values=value),
            np.pad(mask, ((top, bottom), (left, right)), constant_values=False))


def _blur(img, sigma):
    import cv2

    return cv2.GaussianBlur(img, (0, 0), sigma)


def _jpeg(img, q):
    import cv2

    ok, buf = cv2.imencode(".jpg", np.clip(np.rint(img * 255), 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, q])
    return cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE).astype(np.float32) / 255.0


def _rotate(img, mask, deg):
    import cv2

    h, w = img.shape
    m = cv2.getRotationMatrix2D((w / 2, h / 2), deg, 1.0)
    return (cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderValue=0),
            cv2.warpAffine(mask.astype(np.float32), m, (w, h), flags=cv2.INTER_LINEAR) > 0.5)


def _mixed(img, mask, rng):
    """Several changes at once, as a different hospital would make them: tone curve, edge enhancement,
    noise, JPEG and a wider frame."""
    img = np.clip(img, 0, 1) ** rng.uniform(0.6, 1.7)
    img = np.clip(img + 0.8 * (img - _blur(img, 4.0)), 0, 1)
    img = np.clip(img + rng.normal(0, 0.02, img.shape).astype(np.float32), 0, 1)
    img = _jpeg(img, 40)
    w = img.shape[1]
    return _pad(img, mask, w // 8, w // 8, 0, 0)


def _u(f: Callable[[np.ndarray], np.ndarray]):
    """An intensity-only shift: the mask does not move."""
    return lambda img, mask, rng: (np.clip(f(img), 0, 1).astype(np.float32), mask)


SHIFTS: dict[str, Callable] = {
    "none": _u(lambda x: x),
    "gamma_0.5": _u(lambda x: x ** 0.5),
    "gamma_2.0": _u(lambda x: x ** 2.0),
    "underexposed": _u(lambda x: x * 1.5 + 0.25),          # dense parts saturate white
    "overexposed": _u(lambda x: x * 1.6 - 0.6),            # lungs burn out to black
    "clahe": _u(lambda x: clahe(x, clip=3.0)),
    "equalised": _u(equalise),
    "sharpened": _u(lambda x: x + 1.5 * (x - _blur(x, 5.0))),
    "inverted": _u(lambda x: 1.0 - x),
    "blur": _u(lambda x: _blur(x, 3.0)),
    "noise": lambda img, mask, rng: (np.clip(img + rng.normal(0, 0.06, img.shape).astype(np.float32), 0, 1), mask),
    "jpeg_q15": _u(lambda x: _jpeg(x, 15)),
    "downscale_128": lambda img, mask, rng: _resize(img, mask, 128 * img.shape[1] // max(img.shape),
                                                     128 * img.shape[0] // max(img.shape)),
    "upscale_2x": lambda img, mask, rng: _resize(img, mask, img.shape[1] * 2, img.shape[0] * 2),
    "wide_pad": lambda img, mask, rng: _pad(img, mask, img.shape[1] // 4, img.shape[1] // 4, 0, 0),
    "squashed_0.7": lambda img, mask, rng: _resize(img, mask, int(img.shape[1] * 0.7), img.shape[0]),
    "tall_0.7": lambda img, mask, rng: _resize(img, mask, img.shape[1], int(img.shape[0] * 0.7)),
    "zoom_out": lambda img, mask, rng: _pad(img, mask, *([img.shape[0] // 4] * 4)),
    "white_frame": lambda img, mask, rng: _pad(img, mask, *([img.shape[0] // 8] * 4), value=1.0),
    "crop_8pct": lambda img, mask, rng: (img[img.shape[0] * 8 // 100: img.shape[0] * 92 // 100,
                                             img.shape[1] * 8 // 100: img.shape[1] * 92 // 100],
                                         mask[mask.shape[0] * 8 // 100: mask.shape[0] * 92 // 100,
                                              mask.shape[1] * 8 // 100: mask.shape[1] * 92 // 100]),
    "rotate_10": lambda img, mask, rng: _rotate(img, mask, 10.0),
    "opacity_blob": lambda img, mask, rng: (add_opacity(img, mask, np.ones_like(mask), rng, "blob", 0.9), mask),
    "opacity_base": lambda img, mask, rng: (add_opacity(img, mask, np.ones_like(mask), rng, "base", 0.9), mask),
    "opacity_white": lambda img, mask, rng: (add_opacity(img, mask, np.ones_like(mask), rng, "diffuse", 0.7), mask),
    "mixed": _mixed,
}


def shifted(name: str, img01: np.ndarray, mask: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``img01`` (H, W) in [0, 1] and its boolean mask under shift ``name`` (seeded by ``seed``)."""
    rng = np.random.default_rng([seed, list(SHIFTS).index(name)])
    img, m = SHIFTS[name](img01.astype(np.float32), np.asarray(mask, bool), rng)
    return np.asarray(img, np.float32), np.asarray(m, bool)


def evaluate_shifts(model, images: list[np.ndarray], masks: list[np.ndarray], ids: list[str], *,
                    shifts: list[str] | None = None, threshold: float = 0.5, clean: bool = True,
                    tta_flip: bool = False) -> list[dict]:
    """Rows ``shift, image_id, dice, iou`` for every image under every shift."""
    from pipeline.lungs.metrics import dice_iou
    from pipeline.lungs.predict import predict_masks
    from pipeline.lungs.preprocess import to_unit

    rows = []
    units = [to_unit(img) for img in images]
    for name in shifts or list(SHIFTS):
        pairs = [shifted(name, u, m, k) for k, (u, m) in enumerate(zip(units, masks))]
        preds = predict_masks(model, [p for p, _ in pairs], threshold=threshold, clean=clean, tta_flip=tta_flip)
        for iid, (_, truth), pred in zip(ids, pairs, preds):
            d, j = dice_iou(pred, truth)
            rows.append({"shift": name, "image_id": iid, "dice": d, "iou": j})
    return rows


def summarise_shifts(rows: list[dict]) -> dict:
    """Per shift: mean Dice and IoU; plus the mean and worst over all shifts but ``none``."""
    import pandas as pd

    df = pd.DataFrame(rows)
    per = df.groupby("shift", sort=False)[["dice", "iou"]].mean()
    out = {name: {"dice": float(r.dice), "iou": float(r.iou)} for name, r in per.iterrows()}
    shifted_only = per.drop(index="none", errors="ignore")
    if len(shifted_only):
        out["_mean_over_shifts"] = {"dice": float(shifted_only.dice.mean()), "iou": float(shifted_only.iou.mean())}
        worst = shifted_only.iou.idxmin()
        out["_worst"] = {"shift": worst, "iou": float(shifted_only.iou.min())}
    return out
