"""The demo's lung-segmentation set: every demo image again as a PNG with the mask of the lungs drawn.

Layout (the ``images_masks`` layout :mod:`pipeline.lungs.data` reads, like Shenzhen's)::

    <root>/lungs/images/<id>.jpg     8-bit display image (bright = dense), the demo file's own size, JPEG
                                     quality 90 (a tenth of a PNG of the grainy image; Shenzhen's are JPEGs too)
    <root>/lungs/masks/<id>.png      8-bit mask, 255 = lung field (heart shadow left out), 0 elsewhere
    <root>/lungs/split.csv           image_id, split (train | valid | test), abnormal (1 = a finding drawn)

Ids and sizes are those of the demo's DICOMs / NIH PNGs, so a mask lies on the original file's pixels.
Train images go to ``valid`` one in ``VALID_EVERY``; the demo's test images are ``test``.
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from pipeline.io import write_bytes_atomic, write_text_atomic

LUNGS_DIR = "lungs"
VALID_EVERY = 5


def lung_split(split: str, index: int) -> str:
    """``train`` images become ``valid`` one in ``VALID_EVERY`` (by index); ``test`` stays ``test``."""
    if split == "train" and index % VALID_EVERY == VALID_EVERY - 1:
        return "valid"
    return split


JPEG_QUALITY = 90


def _encode(ext: str, arr: np.ndarray, params: list[int]) -> bytes:
    ok, buf = cv2.imencode(ext, arr, params)
    if not ok:
        raise RuntimeError(f"{ext} encoding failed")
    return buf.tobytes()


def write_lung_pair(root: Path, image_id: str, image01: np.ndarray, mask: np.ndarray) -> None:
    """Write one image (display intensities in [0, 1]) and its boolean lung mask (same shape)."""
    if image01.shape != mask.shape:
        raise ValueError(f"{image_id}: image {image01.shape} and mask {mask.shape} differ in size")
    base = Path(root) / LUNGS_DIR
    img = np.clip(np.rint(image01 * 255.0), 0, 255).astype(np.uint8)
    write_bytes_atomic(base / "images" / f"{image_id}.jpg", _encode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]))
    write_bytes_atomic(base / "masks" / f"{image_id}.png",
                       _encode(".png", mask.astype(np.uint8) * 255, [cv2.IMWRITE_PNG_COMPRESSION, 3]))


def write_split_csv(root: Path, rows: list[tuple[str, str, int]]) -> Path:
    """``rows``: (image_id, split, abnormal) in the order the images were made."""
    text = "image_id,split,abnormal\n" + "".join(f"{i},{s},{int(a)}\n" for i, s, a in rows)
    return write_text_atomic(Path(root) / LUNGS_DIR / "split.csv", text)


def clean(root: Path) -> None:
    """Remove what an earlier demo wrote here (only these files)."""
    base = Path(root) / LUNGS_DIR
    for sub, pattern in (("images", "*.jpg"), ("masks", "*.png")):
        for p in (base / sub).glob(pattern):
            p.unlink()
    (base / "split.csv").unlink(missing_ok=True)
