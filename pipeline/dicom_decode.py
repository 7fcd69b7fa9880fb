"""Decoding a checked DICOM data set's pixels into one greyscale frame of stored values.

Which decoder, in this order (the name is recorded in meta.csv ``decoder``):

1. JPEG 2000 greyscale with a smaller target: Pillow at a reduced resolution (``pillow-reduced``;
   see :mod:`pipeline.j2k`);
2. pydicom's decoder plugins, fastest first for each transfer syntax (measured on the real files,
   same output where two agree: :data:`PLUGIN_ORDER`); native data is pydicom's own (``pydicom``);
3. GDCM called directly (``gdcm-direct``): pydicom refuses to hand JPEG Extended 12-bit data to any
   plugin, but GDCM decodes it.

Colour: an RGB, YBR or palette image whose channels agree after conversion to RGB (within 1% of the
sample range: lossy JPEG rounding) is a grey image stored in colour; it becomes that grey and a note
says so. Any other colour image is refused with the size of the channel difference.
"""
from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.dicom_fragments import deferred_pixel_offset, open_single_frame
from pipeline.dicom_header import ImageHeader, detail, uid_name
from pipeline.errors import DataError

J2K_SYNTAXES = ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91")  # JPEG 2000 lossless / lossy
# pydicom plugin preference per transfer syntax (others: pydicom's own order). Measured on this
# project's real files (docs/notes/dicom.md): Pillow decodes JPEG baseline 4x faster than GDCM with
# identical output; pylibjpeg (openjpeg) is the fastest full JPEG 2000 decoder, identical to GDCM;
# GDCM decodes JPEG-LS 2x faster than pylibjpeg (libjpeg), identical.
PLUGIN_ORDER = {
    "1.2.840.10008.1.2.4.50": ("pillow", "gdcm", "pylibjpeg"),
    "1.2.840.10008.1.2.4.51": ("pillow", "gdcm", "pylibjpeg"),
    "1.2.840.10008.1.2.4.80": ("gdcm", "pylibjpeg"),
    "1.2.840.10008.1.2.4.81": ("gdcm", "pylibjpeg"),
    "1.2.840.10008.1.2.4.90": ("pylibjpeg", "pillow", "gdcm"),
    "1.2.840.10008.1.2.4.91": ("pylibjpeg", "pillow", "gdcm"),
}
GREY_TOLERANCE = 0.01  # share of the sample range by which RGB channels of a "grey" image may differ


@dataclass
class Decoded:
    values: np.ndarray          # (rows, cols) stored values, integer (or float for odd colour cases)
    reduce: int                 # 1 = full size; 2, 4, ... = JPEG 2000 decoded at 1/k size
    decoder: str                # pillow-reduced | pydicom | gdcm | pillow | pylibjpeg | gdcm-direct
    notes: list[str] = field(default_factory=list)


def decode_frame(ds, path: Path, header: ImageHeader, *, target_shape, fast_decode: bool,
                 slack: float) -> Decoded:
    """The first (or only) frame's stored values as a 2-D array. Raises DataError."""
    notes = [f"frame 1 of {header.frames}"] if header.frames > 1 else []
    if (fast_decode and target_shape is not None and header.transfer_syntax in J2K_SYNTAXES
            and header.samples == 1):
        reduced = _try_reduced(ds, path, header, target_shape, slack)
        if reduced is not None:
            return Decoded(reduced[0], reduced[1], "pillow-reduced", notes)
    arr, decoder = _decode_full(ds, path, header)
    values, colour_note = _as_grey(arr, ds, path, header)
    if colour_note:
        notes.append(colour_note)
    return Decoded(values, 1, decoder, notes)


def _try_reduced(ds, path: Path, header: ImageHeader, target_shape, slack: float):
    from pydicom.encaps import get_frame

    from pipeline.j2k import decode_reduced

    try:
        offset = deferred_pixel_offset(ds) if header.frames == 1 else None
        source = open_single_frame(path, offset) if offset is not None else None
        if source is None:
            source = io.BytesIO(get_frame(ds.PixelData, 0, number_of_frames=header.frames))
        with source:
            return decode_reduced(source, rows=header.rows, columns=header.columns, signed=header.signed,
                                  bits_stored=header.bits_stored, target_shape=target_shape, slack=slack)
    except Exception:  # noqa: BLE001  any Pillow/openjpeg trouble: the full decode decides
        return None


def _decode_full(ds, path: Path, header: ImageHeader) -> tuple[np.ndarray, str]:
    from pydicom.pixels import get_decoder

    decoder = get_decoder(header.transfer_syntax)
    index = 0 if header.frames > 1 else None
    problems: list[str] = []
    if decoder.is_native:
        try:
            arr, _ = decoder.as_array(ds, index=index)
            return arr, "pydicom"
        except Exception as exc:  # noqa: BLE001
            raise DataError(f"{path}: the uncompressed pixel data cannot be read ({detail(exc)}); the "
                            f"header's image geometry does not match the data: check Rows, Columns, "
                            f"BitsAllocated and SamplesPerPixel") from None
    available = decoder.available_plugins
    order = [p for p in PLUGIN_ORDER.get(header.transfer_syntax, ()) if p in available]
    order += [p for p in available if p not in order]
    for plugin in order:
        try:
            arr, _ = decoder.as_array(ds, index=index, decoding_plugin=plugin)
            return arr, plugin
        except Exception as exc:  # noqa: BLE001  each plugin has its own exceptions; collect the reasons
            problems.append(f"{plugin}: {_plugin_message(exc, plugin)}")
    arr = _gdcm_direct(path, header, problems)
    if arr is not None:
        return arr, "gdcm-direct"
    tried = ", ".join(order + ["GDCM directly"])
    raise DataError(f"{path}: the {uid_name(header.transfer_syntax)} pixel data could not be decoded by any "
                    f"installed decoder (tried {tried}): the compressed data is corrupt or uses a feature "
                    f"they lack; re-export the image. Decoders said: {'; '.join(problems)}"[:700])


def _plugin_message(exc: BaseException, plugin: str) -> str:
    """pydicom wraps each plugin's error as 'Unable to decode ...:\\n  <plugin>: <message>'."""
    text = detail(exc)
    for line in str(exc).splitlines():
        line = line.strip()
        if line.startswith(f"{plugin}:"):
            text = line[len(plugin) + 1:].strip()[:160]
    # a Python-internal message (a plugin tripping over its own None) tells a user nothing
    return "failed without a usable message" if "NoneType" in text or "has no attribute" in text else text


def _gdcm_direct(path: Path, header: ImageHeader, problems: list[str]) -> np.ndarray | None:
    """GDCM's own reader on the file: its decoders have no pydicom gatekeeping (JPEG Extended 12-bit)."""
    try:
        import gdcm
    except ImportError:
        return None
    gdcm.Trace.WarningOff()  # it warns about 12-bit JPEG precision even when it decodes it well
    gdcm.Trace.ErrorOff()
    reader = gdcm.ImageReader()
    reader.SetFileName(str(path))
    with _quiet_stderr():  # its libjpeg prints "Unsupported JPEG data precision 12" while decoding it
        ok = reader.Read()
        image = reader.GetImage() if ok else None
        buffer = image.GetBuffer() if ok else None
    if not ok:
        problems.append("GDCM directly: cannot read the file")
        return None
    fmt = image.GetPixelFormat()
    dtypes = {gdcm.PixelFormat.UINT8: np.uint8, gdcm.PixelFormat.INT8: np.int8,
              gdcm.PixelFormat.UINT16: np.uint16, gdcm.PixelFormat.INT16: np.int16,
              gdcm.PixelFormat.UINT32: np.uint32, gdcm.PixelFormat.INT32: np.int32}
    dtype = dtypes.get(fmt.GetScalarType())
    samples = int(fmt.GetSamplesPerPixel())
    cols, rows = int(image.GetDimension(0)), int(image.GetDimension(1))
    if dtype is None or (rows, cols) != (header.rows, header.columns):
        problems.append("GDCM directly: unexpected sample type or image size")
        return None
    if buffer is None:
        problems.append("GDCM directly: could not decode the pixel data")
        return None
    data = buffer.encode("utf-8", "surrogateescape")
    frame = rows * cols * samples * np.dtype(dtype).itemsize
    if len(data) < frame:
        problems.append("GDCM directly: decoded buffer shorter than one frame")
        return None
    arr = np.frombuffer(data[:frame], dtype=dtype).reshape((rows, cols, samples) if samples > 1 else (rows, cols))
    if samples == 3 and str(image.GetPhotometricInterpretation()).strip().startswith("YBR_FULL"):
        from pydicom.pixels import convert_color_space

        arr = convert_color_space(arr, "YBR_FULL", "RGB")
    return arr.copy()


@contextlib.contextmanager
def _quiet_stderr():
    """Silence what C libraries write to file descriptor 2 (restored afterwards)."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _as_grey(arr: np.ndarray, ds, path: Path, header: ImageHeader) -> tuple[np.ndarray, str]:
    """The 2-D grey image of a decoded frame, and a note when it came from colour."""
    photometric = header.photometric
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        try:
            arr = apply_color_lut(arr, ds)
        except Exception as exc:  # noqa: BLE001
            raise DataError(f"{path}: PALETTE COLOR image whose palette cannot be applied ({detail(exc)}); the "
                            f"palette elements (0028,1101..1203) are missing or damaged") from None
    if arr.ndim == 2:
        return arr, ""
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise DataError(f"{path}: decoded one frame as shape {arr.shape}, expected (rows, columns) or "
                        f"(rows, columns, 3); SamplesPerPixel or NumberOfFrames disagree with the data")
    r, g, b = (arr[..., k] for k in range(3))
    if np.array_equal(r, g) and np.array_equal(r, b):
        return np.ascontiguousarray(r), f"grey from {photometric} (channels equal)"
    wide = arr.astype(np.int64, copy=False) if arr.dtype.kind in "ui" else arr.astype(np.float64)
    spread = float(max(np.abs(wide[..., 0] - wide[..., 1]).max(), np.abs(wide[..., 0] - wide[..., 2]).max()))
    if arr.dtype.kind not in "ui":
        top = float(wide.max() - wide.min())
    else:  # a palette's output has the width of its entries, not of the stored indices
        bits = 8 * arr.dtype.itemsize if photometric == "PALETTE COLOR" else min(header.bits_stored, 32)
        top = float((1 << bits) - 1)
    if spread <= max(1.0, GREY_TOLERANCE * top):
        grey = wide.mean(axis=2)
        grey = np.rint(grey).astype(arr.dtype) if arr.dtype.kind in "ui" else grey.astype(np.float32)
        return grey, f"grey from {photometric} (channels within {spread:.0f} of {top:.0f})"
    raise DataError(f"{path}: colour image ({photometric}; its red, green and blue differ by up to {spread:.0f} of "
                    f"{top:.0f} levels): only greyscale radiographs are converted; leave colour photographs, "
                    f"screenshots or colour ultrasound out of the images")
