"""``image.lung_crop``: crop a radiograph to the smallest square around its predicted lungs (the VinBigData
paper's preprocessing), before it is resized and written by prepare / infer.

The lung model is a ``segment`` stage model (``image.lung_model``, or the run's own ``segment/model.pt``);
it predicts on the decoded picture (any size). The square (:func:`pipeline.lungs.lung_crop_box`, grown by
``image.lung_crop_margin``) is returned in ORIGINAL pixels and recorded in meta.csv; when no lungs are
found the whole image is kept and the row says so.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from pipeline.errors import ConfigError

_MODELS: dict[str, object] = {}  # per process: workers load the model once


def _model(path: str):
    if path not in _MODELS:
        from pipeline.lungs import load_lung_model

        _MODELS[path] = load_lung_model(path, "cpu")
    return _MODELS[path]


def check_model(path: str | None) -> str:
    if not path:
        raise ConfigError("image.lung_crop needs a lung model: set image.lung_model to a segment/model.pt, or put "
                          "the segment stage before prepare in run.stages so the run trains its own.")
    if not Path(path).is_file():
        raise ConfigError(f"image.lung_model: {path} not found; train one with ./run.sh segment (e.g. --config "
                          "configs/lungs_shenzhen.yaml) and give its segment/model.pt.")
    return str(path)


def lung_square(pixels: np.ndarray, width: int, height: int, model_path: str, margin: float
                ) -> tuple[tuple[int, int, int, int] | None, str]:
    """((x0, y0, x1, y1) in ORIGINAL pixels, or None; a note). ``pixels``: the decoded picture, which
    may be smaller than the original (reduced JPEG 2000 decode)."""
    from pipeline.lungs import lung_crop_box, predict_masks

    mask = predict_masks(_model(model_path), [pixels])[0]
    box = lung_crop_box(mask, margin)
    if box is None:
        return None, "no lungs found: whole image kept"
    sx, sy = width / pixels.shape[1], height / pixels.shape[0]
    x0, y0 = max(0, math.floor(box[0] * sx)), max(0, math.floor(box[1] * sy))
    x1, y1 = min(width, math.ceil(box[2] * sx)), min(height, math.ceil(box[3] * sy))
    if x1 - x0 < 16 or y1 - y0 < 16:
        return None, "lungs too small to crop to: whole image kept"
    return (x0, y0, x1, y1), f"lung crop {x1 - x0}x{y1 - y0} of {width}x{height}"


def crop_pixels(pixels: np.ndarray, box: tuple[int, int, int, int], width: int, height: int) -> np.ndarray:
    """The decoded pixels inside ``box`` (ORIGINAL pixels), whatever resolution they were decoded at."""
    sx, sy = pixels.shape[1] / width, pixels.shape[0] / height
    x0, y0 = int(math.floor(box[0] * sx)), int(math.floor(box[1] * sy))
    x1, y1 = max(x0 + 1, int(math.ceil(box[2] * sx))), max(y0 + 1, int(math.ceil(box[3] * sy)))
    return np.ascontiguousarray(pixels[y0:y1, x0:x1])
