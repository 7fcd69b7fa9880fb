"""Reading any input the gate may be given as an RGB picture: DICOM, PNG, JPEG, TIFF, BMP, GIF, WebP.

* DICOM (recognised by content, ``DICM`` at byte 128, or by a ``.dcm``/``.dicom`` name): greyscale
  radiographs through the project's reader :func:`pipeline.dicom.read_image` (modality LUT, window or
  percentiles, MONOCHROME1 inverted, reduced-resolution JPEG 2000); colour, palette and multi-frame
  DICOMs (ultrasound, secondary captures), which that reader refuses, through pydicom's own
  ``pixel_array`` (first frame, converted to RGB), min-max scaled.
* Raster files through Pillow: 8-bit grey/RGB as stored; 16-bit and float images (16-bit PNG X-rays)
  stretched between their 0.5 and 99.5 percentiles; palette images converted; transparency
  composited on white (as a browser shows it); EXIF orientation applied.

Everything comes back as ``uint8`` (H, W, 3); grey images have three equal channels. ``max_side``
shrinks large images (area interpolation, aspect kept) and lets JPEG/JPEG 2000 decode at reduced size.
Failures raise :class:`pipeline.errors.DataError` naming the file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from pipeline.errors import DataError

RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif", ".webp", ".ppm", ".pgm", ".pbm")
DICOM_SUFFIXES = (".dcm", ".dicom")


def is_dicom(path: str | Path) -> bool:
    """True for a ``.dcm``/``.dicom`` name, or a file of any other name whose content is DICOM (``DICM`` at
    byte 128, or a known first tag when written without the preamble): extension-less, ``.dic`` and
    UID-named files (``1.2.840.113619.2.55.3.6``) alike, as ``dicom2png`` finds them."""
    from pipeline.dicom_header import looks_like_dicom

    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return looks_like_dicom(head)


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in RASTER_SUFFIXES + DICOM_SUFFIXES


def collect_images(inputs: Iterable[str | Path]) -> list[Path]:
    """Files named directly (any name), plus the images under named folders (recursive, sorted; hidden
    files skipped; a file of any other name kept when its content is DICOM). A missing input is a DataError."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            for p in sorted(path.rglob("*")):
                if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts) and (
                        is_image_name(p) or is_dicom(p)):
                    found.append(p)
        else:
            raise DataError(f"input {path} does not exist; give image files (DICOM, PNG, JPEG...) or folders")
    return found


def to_uint8(values: np.ndarray, lo_pct: float = 0.5, hi_pct: float = 99.5) -> np.ndarray:
    """Any numeric array -> uint8, stretched between two percentiles (min-max when they coincide)."""
    v = np.asarray(values, dtype=np.float32)
    lo, hi = np.percentile(v, [lo_pct, hi_pct]) if v.size else (0.0, 1.0)
    if hi <= lo:
        lo, hi = float(v.min()), float(v.max())
    if hi <= lo:
        return np.zeros(v.shape, dtype=np.uint8)
    return (np.clip((v - lo) / (hi - lo), 0, 1) * 255 + 0.5).astype(np.uint8)


def as_rgb(img: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 1|3|4) uint8 -> (H, W, 3) uint8 (alpha dropped)."""
    if img.ndim == 2:
        img = img[:, :, None]
    if img.shape[2] == 1:
        img = np.repeat(img, 3, axis=2)
    return np.ascontiguousarray(img[:, :, :3])


def shrink(img: np.ndarray, max_side: int | None) -> np.ndarray:
    """Area-resize so the longer side is at most ``max_side`` (never enlarges)."""
    import cv2

    h, w = img.shape[:2]
    if not max_side or max(h, w) <= max_side:
        return img
    scale = max_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(img, size, interpolation=cv2.INTER_AREA)


def read_rgb(path: str | Path, max_side: int | None = None) -> np.ndarray:
    """Any supported image file -> uint8 (H, W, 3) (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file (0 bytes)")
    img = _read_dicom(path, max_side) if is_dicom(path) else _read_raster(path, max_side)
    return shrink(as_rgb(img), max_side)


def _read_dicom(path: Path, max_side: int | None) -> np.ndarray:
    from pipeline.dicom import read_image
    from pipeline.imaging import output_shape

    target = (lambda h, w: output_shape(h, w, max_side)) if max_side else None
    try:
        decoded = read_image(path, target_shape=target)
    except DataError as first:
        try:
            return _read_dicom_any(path)  # colour / palette / multi-frame: pydicom's own decoding
        except Exception:  # noqa: BLE001 (the project reader's message is the one to show)
            raise first from None
    return (np.clip(decoded.pixels, 0, 1) * 255 + 0.5).astype(np.uint8)


def _read_dicom_any(path: Path) -> np.ndarray:
    import warnings

    import pydicom
    from pydicom.pixels import apply_color_lut, pixel_array

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        ds = pydicom.dcmread(path)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        arr = pixel_array(ds, index=0 if frames > 1 else None)  # YBR is converted to RGB here
        if str(ds.get("PhotometricInterpretation", "")).upper() == "PALETTE COLOR":
            arr = apply_color_lut(arr, ds)
    if arr.ndim == 3 and arr.shape[2] not in (1, 3, 4):
        raise DataError(f"{path}: unexpected pixel array shape {arr.shape}")
    if arr.dtype != np.uint8:
        arr = to_uint8(arr, 0.0, 100.0)
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        arr = 255 - arr
    return arr


def _read_raster(path: Path, max_side: int | None) -> np.ndarray:
    import warnings

    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # EXIF / palette-transparency warnings
            with Image.open(path) as im:
                if max_side and im.format == "JPEG":
                    im.draft("RGB", (max_side, max_side))  # decode at 1/2, 1/4, 1/8 when that suffices
                im = ImageOps.exif_transpose(im)
                return _pil_to_array(im)
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image Pillow can read (and not a DICOM); give DICOM, PNG, JPEG, "
                        "TIFF, BMP, GIF or WebP files") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path}: cannot decode the image ({exc}); the file is probably truncated or "
                        "corrupt") from None


def _pil_to_array(im) -> np.ndarray:
    from PIL import Image

    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        return to_uint8(np.asarray(im))
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("LA", "RGBA", "PA") or (im.mode in ("L", "RGB") and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba)
    if im.mode == "L":
        return np.asarray(im)
    if im.mode == "1":
        return np.asarray(im.convert("L"))
    return np.asarray(im.convert("RGB"))
