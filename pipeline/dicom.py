"""Reading radiographs (DICOM or PNG) into a float image in [0, 1] where bright = dense (bone).

Pure functions, no config. For a DICOM, in order:

1. the data set (:mod:`pipeline.dicom_header`): files without the preamble are read when they parse,
   and everything that can be refused from the header is refused there with an actionable reason;
2. stored values of one frame (:mod:`pipeline.dicom_decode`): a JPEG 2000 image is decoded at a
   reduced resolution when the caller needs a smaller image (:mod:`pipeline.j2k`), everything else by
   the fastest installed decoder that can, GDCM directly as the last resort; grey images stored as
   RGB/YBR/palette become grey, true colour is refused;
3. intensity (:mod:`pipeline.intensity`): modality LUT, VOI LUT / window or percentile range, and the
   MONOCHROME1 inversion so that bone is bright (``inverted`` says so).

Arrays are (rows, columns) = (height, width); ``DecodedImage.height/width`` are always the
ORIGINAL pixel dimensions from the header, even when the pixels were decoded at reduced size.
Every failure raises :class:`pipeline.errors.DataError` with a one-line message naming the file.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from pipeline.dicom_decode import J2K_SYNTAXES, decode_frame
from pipeline.dicom_header import MULTIFRAME_MODES, check_image_header, read_dataset, read_head
from pipeline.errors import DataError
from pipeline.intensity import (DEFAULT_PERCENTILES, VOI_MODES, apply_modality, check_percentiles, map_to_unit,
                                picture_bits, robust_range, scale_to_unit, window_to_unit)
from pipeline.j2k import J2KInfo, choose_reduce, j2k_codestream_info

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

TargetShape = tuple[int, int] | Callable[[int, int], tuple[int, int]] | None


@dataclass
class DecodedImage:
    """A radiograph ready for resizing: ``pixels`` float32 (rows, cols) in [0, 1], bright = dense."""

    pixels: np.ndarray
    height: int            # ORIGINAL rows (header), not pixels.shape[0] when decode_reduce > 1
    width: int             # ORIGINAL columns
    photometric: str       # as in the file (MONOCHROME1 / MONOCHROME2 / RGB ...); "MONOCHROME2" for PNG
    bits_stored: int
    transfer_syntax: str   # the DICOM transfer syntax UID, or "png"
    mapping: str           # "voi_lut", "window C/W", "percentile 0.5-99.5", "minmax", "png"
    inverted: bool         # True when MONOCHROME1 was inverted
    decode_reduce: int     # 1 = full-size decode; 2, 4, ... = JPEG 2000 decoded at 1/k size
    decoder: str = ""      # which decoder produced the pixels (pillow-reduced, pylibjpeg, gdcm, ...)
    notes: list[str] = field(default_factory=list)  # what was tolerated: no preamble, grey from RGB, frame 1 of N


def read_image(path: str | Path, *, voi_lut: str = "auto",
               percentiles: tuple[float, float] | list[float] = DEFAULT_PERCENTILES,
               target_shape: TargetShape = None, fast_decode: bool = True, decode_slack: float = 0.1,
               multiframe: str = "refuse") -> DecodedImage:
    """Read a DICOM or a PNG (chosen by content, not extension). See :func:`read_dicom`."""
    path = Path(path)
    head = read_head(path)
    # the DICM marker wins: a DICOM's 128-byte preamble may itself be a TIFF header ("dual-personality"
    # files such as pydicom's MR_small.dcm start with II*\0)
    if head[128:132] != b"DICM" and (head.startswith(PNG_SIGNATURE) or head.startswith(PICTURE_SIGNATURES)):
        return read_png(path)
    return _read_dicom(path, head, voi_lut=voi_lut, percentiles=percentiles, target_shape=target_shape,
                       fast_decode=fast_decode, decode_slack=decode_slack, multiframe=multiframe)


def read_dicom(path: str | Path, *, voi_lut: str = "auto",
               percentiles: tuple[float, float] | list[float] = DEFAULT_PERCENTILES,
               target_shape: TargetShape = None, fast_decode: bool = True, decode_slack: float = 0.1,
               multiframe: str = "refuse") -> DecodedImage:
    """Read one greyscale image of a DICOM into a :class:`DecodedImage`.

    ``target_shape`` (out_height, out_width) is the size the caller will resize to (or a function
    of the original (height, width) that returns it); with ``fast_decode`` a JPEG 2000 image is
    decoded at the smallest power-of-two reduction whose rows and columns are still at least
    ``target * (1 - decode_slack)`` (so a 1984-row image decodes at 992 rows for a 1024 target with
    the default slack 0.1; the caller then resizes up by 3%). ``decode_slack=0`` never lets the
    decoded image be smaller than the target. ``multiframe``: ``refuse`` (a multi-frame file is an
    error) or ``first`` (its first frame is the image).
    """
    path = Path(path)
    return _read_dicom(path, read_head(path), voi_lut=voi_lut, percentiles=percentiles,
                       target_shape=target_shape, fast_decode=fast_decode, decode_slack=decode_slack,
                       multiframe=multiframe)


def _read_dicom(path: Path, head: bytes, *, voi_lut: str, percentiles, target_shape: TargetShape,
                fast_decode: bool, decode_slack: float, multiframe: str) -> DecodedImage:
    if voi_lut not in VOI_MODES:
        raise DataError(f"voi_lut must be one of {VOI_MODES}, got {voi_lut!r}")
    if multiframe not in MULTIFRAME_MODES:
        raise DataError(f"multiframe must be one of {MULTIFRAME_MODES}, got {multiframe!r}")
    lo_pct, hi_pct = check_percentiles(percentiles)
    # the reduced JPEG 2000 decode reads its frame from the file itself (pipeline.dicom_fragments)
    ds, notes = read_dataset(path, head, defer_pixels=fast_decode and target_shape is not None)
    with warnings.catch_warnings():
        # pydicom warns about invalid values (reported in words when one is needed) and excess padding
        warnings.simplefilter("ignore", UserWarning)
        header = check_image_header(ds, path, multiframe)
        if callable(target_shape):
            target_shape = target_shape(header.rows, header.columns)
        frame = decode_frame(ds, path, header, target_shape=target_shape, fast_decode=fast_decode,
                             slack=decode_slack)
    values = apply_modality(frame.values, ds)
    inverted = header.photometric == "MONOCHROME1"
    # MONOCHROME1: low stored value is white; inverted so bone is bright
    unit, mapping = map_to_unit(values, ds, voi_lut=voi_lut, percentiles=(lo_pct, hi_pct), path=path,
                                invert=inverted)
    return DecodedImage(
        pixels=unit, height=header.rows, width=header.columns, photometric=header.photometric,
        bits_stored=header.bits_stored, transfer_syntax=header.transfer_syntax, mapping=mapping,
        inverted=inverted, decode_reduce=frame.reduce, decoder=frame.decoder, notes=notes + frame.notes,
    )


def read_png(path: str | Path) -> DecodedImage:
    """Read an 8- or 16-bit greyscale PNG (e.g. ChestX-ray14), or a JPEG / BMP / TIFF picture (TBX11K,
    Shenzhen), as a :class:`DecodedImage`.

    These are already display images, so values map linearly: v / (2^bits - 1) (``mapping`` "png" or
    "jpeg", ...), bits being what the samples use (:func:`pipeline.intensity.picture_bits`: a 16-bit file
    holding 12-bit data is divided by 4095, ``mapping`` "png (12 of 16 bits used)"). A picture stored as
    RGB(A) whose colour channels are equal is taken as grey (``mapping`` "... (grey from rgb)"); for lossy JPEG "equal" allows the small differences its colour compression
    leaves (at most 8 grey levels, 1 on average); a truly coloured one is an error.
    """
    import cv2

    path = Path(path)
    read_head(path)
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    kind = _picture_kind(path)
    if img is None:
        raise DataError(f"{path}: cannot decode the {kind.upper()} (truncated or corrupt file)")
    mapping = kind
    if img.ndim == 3:
        channels = img[..., :3].astype(np.int32)  # drop alpha
        diff = np.abs(channels - channels[..., :1])
        lossy = kind == "jpeg"
        grey = (diff.max() <= 8 and diff.mean() <= 1.0) if lossy else not diff.any()
        if not grey:
            raise DataError(f"{path}: colour {kind.upper()} ({img.shape[2]} channels that differ); chest X-rays "
                            f"must be greyscale: convert it to grey first")
        img = np.ascontiguousarray(img[..., :3].mean(axis=2).round().astype(img.dtype) if lossy else img[..., 0])
        mapping = f"{kind} (grey from rgb)"
    if img.dtype not in (np.uint8, np.uint16):
        raise DataError(f"{path}: unsupported PNG sample type {img.dtype}; expected 8 or 16 bits")
    bits = picture_bits(img)  # a 16-bit file's samples may use 12 of its bits: scaled by what they use
    top = float((1 << bits) - 1)
    if img.dtype == np.uint16 and bits < 16:
        mapping = f"{mapping} ({bits} of 16 bits used)"
    if int(img.min()) == int(img.max()):
        raise DataError(f"{path}: constant image (every pixel is {int(img.min())}): nothing to convert")
    return DecodedImage(
        pixels=img.astype(np.float32) * np.float32(1.0 / top), height=img.shape[0], width=img.shape[1],
        photometric="MONOCHROME2", bits_stored=bits, transfer_syntax=kind, mapping=mapping,
        inverted=False, decode_reduce=1, decoder="opencv",
    )


# Pictures decoded like PNGs: JPEG, BMP, TIFF (both byte orders).
PICTURE_SIGNATURES = (b"\xff\xd8\xff", b"BM", b"II*\x00", b"MM\x00*")


def _picture_kind(path: Path) -> str:
    head = read_head(path)[:4]
    return {b"\xff\xd8\xff": "jpeg", b"BM": "bmp", b"II*\x00": "tiff", b"MM\x00*": "tiff"}.get(
        head[:3] if head.startswith(b"\xff\xd8\xff") else head[:2] if head.startswith(b"BM") else head, "png")


def dicom_shape(path: str | Path) -> tuple[int, int]:
    """(rows, columns) = (height, width) from the header only (fast: pixel data is not read)."""
    import pydicom

    from pipeline.dicom_header import int_element

    path = Path(path)
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception as exc:  # noqa: BLE001
        from pipeline.dicom_header import detail

        raise DataError(f"{path}: cannot read the DICOM header ({detail(exc)}): truncated or not DICOM") from None
    return int_element(ds, "Rows", path), int_element(ds, "Columns", path)


__all__ = [
    "DecodedImage", "read_image", "read_dicom", "read_png", "dicom_shape", "PNG_SIGNATURE", "J2K_SYNTAXES",
    # re-exported from the modules this one was split into, for callers that import them from here
    "J2KInfo", "j2k_codestream_info", "choose_reduce", "apply_modality", "map_to_unit", "robust_range",
    "scale_to_unit", "window_to_unit", "VOI_MODES", "DEFAULT_PERCENTILES",
]
