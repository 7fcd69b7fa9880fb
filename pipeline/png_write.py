"""Greyscale PNG files written directly: the "Up" row filter and Huffman-only deflate, by zlib-ng.

The encoder of ``image.png_compression: 1`` (the default). The settings libpng used for it through cv2 until
2026-12-03, but there zlib's Huffman-only coder took 2.0 ms of the 2.1 ms PNG encode of a 512 x 510 radiograph
(a quarter of a 512-px conversion's time outside the decoder); zlib-ng's Huffman-only coder writes a stream of
the same size in about half that (measured on the real VinBigData images, docs/notes/dicom.md). Without zlib-ng
the standard library's zlib writes an equivalent PNG, slower.

A PNG (ISO/IEC 15948): the signature, IHDR (width, height, bit depth 8 or 16, colour type 0 = grey),
one IDAT with the zlib stream of the filtered rows (each row: filter byte 2 = Up, then the row's bytes minus
the previous row's, modulo 256; 16-bit samples big-endian), IEND; each chunk with its CRC-32.
"""
from __future__ import annotations

import struct
import zlib

import numpy as np

try:
    from zlib_ng import zlib_ng as _deflate
except ImportError:  # pragma: no cover  (zlib-ng is in requirements.txt; stdlib zlib writes the same PNG)
    _deflate = zlib

SIGNATURE = b"\x89PNG\r\n\x1a\n"
FILTER_UP = 2


def encode_grey_png(img: np.ndarray) -> bytes:
    """PNG bytes of a 2-D uint8 or uint16 image, lossless (decoders return exactly ``img``)."""
    if img.ndim != 2 or img.dtype not in (np.uint8, np.uint16) or img.size == 0:
        raise ValueError(f"encode_grey_png needs a non-empty 2-D uint8 or uint16 array, got {img.dtype} {img.shape}")
    height, width = img.shape
    rows = img.astype(">u2", copy=False).view(np.uint8) if img.dtype == np.uint16 else img
    rows = rows.reshape(height, -1)
    filtered = np.empty((height, rows.shape[1] + 1), dtype=np.uint8)
    filtered[:, 0] = FILTER_UP
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])  # uint8 arithmetic wraps: modulo 256
    coder = _deflate.compressobj(1, _deflate.DEFLATED, 15, 9, _deflate.Z_HUFFMAN_ONLY)
    data = coder.compress(filtered.data) + coder.flush()
    depth = 16 if img.dtype == np.uint16 else 8
    header = struct.pack(">IIBBBBB", width, height, depth, 0, 0, 0, 0)
    return SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))
