"""Resizing, contrast enhancement, quantisation and PNG encoding of a [0, 1] float image.

Arrays are (rows, cols) = (height, width). Shapes are given as (height, width) everywhere.

Choices (each recorded per image by :mod:`pipeline.convert`):
- size: the longer side becomes ``size`` and the aspect ratio is kept (boxes scale by one factor
  per axis, recorded as out_height/height and out_width/width), or ``square`` gives size x size.
- never upscale the ORIGINAL image: an image already smaller than ``size`` keeps its size (square
  mode: side = min(size, longer side), so only the shorter side may grow). Upscaling invents no
  detail and only costs disk and time; YOLO resizes to ``imgsz`` itself.
- a JPEG 2000 image decoded at reduced resolution may come out a few percent smaller than the
  target (see ``decode_slack``); the last resize then enlarges it slightly (bilinear).
- downscaling uses area interpolation (cv2.INTER_AREA: a box filter, no ringing, no aliasing).
- CLAHE runs after resizing, on the quantised 8- or 16-bit image, so its tiles are a fixed share of
  the output whatever the source resolution.
"""
from __future__ import annotations

import numpy as np

# OpenCV's 16-bit CLAHE uses a 65536-bin histogram and clips each bin at
# max(clip * pixels_per_tile / 65536, 1): for any realistic tile that floor of 1 flattens the
# histogram and the result is nothing like the 8-bit CLAHE with the same clip. 16-bit CLAHE here
# equalises the high byte with the 8-bit operator and keeps the low byte: out = clahe8(v >> 8) * 256
# + (v & 255), so the contrast gain equals the 8-bit one and 16-bit precision is kept.


def output_shape(height: int, width: int, size: int, square: bool = False) -> tuple[int, int]:
    """(out_height, out_width) for an original (height, width): longer side -> size, never upscaled."""
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    longer = max(height, width)
    if square:
        side = min(size, longer)
        return side, side
    if longer <= size:
        return height, width
    scale = size / longer
    return max(1, round(height * scale)), max(1, round(width * scale))


def resize(img: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize to (height, width): area interpolation when shrinking, bilinear where a side grows."""
    import cv2

    h, w = img.shape[:2]
    out_h, out_w = shape
    if (h, w) == (out_h, out_w):
        return img
    interp = cv2.INTER_AREA if (out_h <= h and out_w <= w) else cv2.INTER_LINEAR
    return cv2.resize(img, (out_w, out_h), interpolation=interp)


def quantise(unit: np.ndarray, bits: int) -> np.ndarray:
    """[0, 1] float -> uint8 (bits=8) or uint16 (bits=16), rounding to nearest."""
    if bits == 8:
        top, dtype = 255.0, np.uint8
    elif bits == 16:
        top, dtype = 65535.0, np.uint16
    else:
        raise ValueError(f"bits must be 8 or 16, got {bits}")
    scaled = np.clip(unit, 0.0, 1.0)  # a new array: scaled in place (the same values, two copies fewer)
    scaled *= np.float32(top)
    scaled += np.float32(0.5)
    return scaled.astype(dtype)


def clahe(img: np.ndarray, clip: float = 2.0, grid: int = 8) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation of a uint8 or uint16 image.

    ``clip`` is OpenCV's clip limit (times the mean histogram height), ``grid`` tiles per side.
    A uint16 image: the high byte goes through the 8-bit operator and the low byte is kept (see
    the note above), so the same clip gives the same contrast gain on 8 and 16 bits.
    """
    import cv2

    op = cv2.createCLAHE(clipLimit=float(clip), tileGridSize=(int(grid), int(grid)))
    if img.dtype == np.uint8:
        return op.apply(img)
    if img.dtype != np.uint16:
        raise ValueError(f"CLAHE needs uint8 or uint16, got {img.dtype}")
    high = op.apply((img >> 8).astype(np.uint8)).astype(np.uint16)
    return (high << 8) | (img & 0xFF)


def denoise(img: np.ndarray, strength: float = 3.0) -> np.ndarray:
    """Light non-local-means denoising (cv2.fastNlMeansDenoising); 16-bit uses the L1 norm."""
    import cv2

    if img.dtype == np.uint8:
        return cv2.fastNlMeansDenoising(img, None, h=float(strength), templateWindowSize=7, searchWindowSize=21)
    if img.dtype == np.uint16:
        return cv2.fastNlMeansDenoising(img, None, h=[float(strength) * 257.0], templateWindowSize=7,
                                        searchWindowSize=21, normType=cv2.NORM_L1)
    raise ValueError(f"denoise needs uint8 or uint16, got {img.dtype}")


def encode_png(img: np.ndarray, compression: int = 1) -> bytes:
    """PNG bytes of a uint8/uint16 greyscale image (lossless whatever ``compression``).

    ``compression`` 1 (default): the "Up" row filter and Huffman-only deflate. Measured on the real
    VinBigData images at 512 and 1024 px (docs/notes/dicom.md): 40% less encoding time than zlib
    level 1 with libpng's adaptive filters, files 10% smaller, and faster to decode; radiograph noise
    leaves LZ77 little to find. 0: stored, no compression (2.3x larger files); 2..9: that zlib level
    with adaptive filters (slowest, smallest).
    """
    level = int(compression)
    if level == 1 and img.ndim == 2 and img.dtype in (np.uint8, np.uint16):
        from pipeline.png_write import encode_grey_png

        return encode_grey_png(img)  # the same settings, zlib-ng's faster Huffman coder
    import cv2

    if level == 1:
        params = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY,
                  cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]
    else:
        params = [cv2.IMWRITE_PNG_COMPRESSION, level]
    ok, buf = cv2.imencode(".png", img, params)
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()
