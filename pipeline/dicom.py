"""Reading radiographs (DICOM or PNG) into a float image in [0, 1] where bright = dense (bone).

Pure functions, no config. The steps for a DICOM, in the order the standard applies them:

1. stored values: pydicom 3 with the installed decoders (pylibjpeg, openjpeg, libjpeg), or, for
   JPEG 2000 when the caller needs a smaller image, Pillow's JPEG 2000 reader at a reduced
   resolution level (``decode_reduce`` = 2, 4, ...: decoding half the size is about 4x faster);
2. modality LUT: ``RescaleSlope``/``RescaleIntercept`` or a Modality LUT Sequence, when present;
3. VOI: a VOI LUT Sequence or ``WindowCenter``/``WindowWidth`` when present (``voi_lut``:
   ``auto`` uses them when there, ``on`` requires them, ``off`` ignores them); otherwise the
   robust range between two percentiles of the image (default 0.5 and 99.5) maps to [0, 1];
4. MONOCHROME1 (low value = white) is inverted so bone is bright, and ``inverted`` says so.

Arrays are (rows, columns) = (height, width); ``DecodedImage.height/width`` are always the
ORIGINAL pixel dimensions from the header, even when the pixels were decoded at reduced size.
Every failure raises :class:`pipeline.errors.DataError` with a one-line message naming the file.
"""
from __future__ import annotations

import io
import math
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from pipeline.errors import DataError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
J2K_SYNTAXES = ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91")  # JPEG 2000 lossless / lossy
VOI_MODES = ("auto", "on", "off")
DEFAULT_PERCENTILES = (0.5, 99.5)
# Percentiles are taken on at most about this many pixels (a regular subsample): the range of a
# 4-megapixel radiograph is estimated as well from 250k pixels, 15x faster.
_PERCENTILE_SAMPLES = 250_000


@dataclass
class DecodedImage:
    """A radiograph ready for resizing: ``pixels`` float32 (rows, cols) in [0, 1], bright = dense."""

    pixels: np.ndarray
    height: int            # ORIGINAL rows (header), not pixels.shape[0] when decode_reduce > 1
    width: int             # ORIGINAL columns
    photometric: str       # as in the file (MONOCHROME1 / MONOCHROME2); "MONOCHROME2" for PNG
    bits_stored: int
    transfer_syntax: str   # the DICOM transfer syntax UID, or "png"
    mapping: str           # "voi_lut", "window C/W", "percentile 0.5-99.5", "minmax", "png"
    inverted: bool         # True when MONOCHROME1 was inverted
    decode_reduce: int     # 1 = full-size decode; 2, 4, ... = JPEG 2000 decoded at 1/k size


# ----------------------------------------------------------------------------------------------
# entry points


def read_image(
    path: str | Path,
    *,
    voi_lut: str = "auto",
    percentiles: tuple[float, float] | list[float] = DEFAULT_PERCENTILES,
    target_shape: tuple[int, int] | Callable[[int, int], tuple[int, int]] | None = None,
    fast_decode: bool = True,
    decode_slack: float = 0.1,
) -> DecodedImage:
    """Read a DICOM or a PNG (chosen by content, not extension). See :func:`read_dicom`."""
    path = Path(path)
    head = _read_head(path)
    if head.startswith(PNG_SIGNATURE):
        return read_png(path)
    return read_dicom(path, voi_lut=voi_lut, percentiles=percentiles, target_shape=target_shape,
                      fast_decode=fast_decode, decode_slack=decode_slack)


def read_dicom(
    path: str | Path,
    *,
    voi_lut: str = "auto",
    percentiles: tuple[float, float] | list[float] = DEFAULT_PERCENTILES,
    target_shape: tuple[int, int] | Callable[[int, int], tuple[int, int]] | None = None,
    fast_decode: bool = True,
    decode_slack: float = 0.1,
) -> DecodedImage:
    """Read one greyscale single-frame DICOM into a :class:`DecodedImage`.

    ``target_shape`` (out_height, out_width) is the size the caller will resize to (or a function
    of the original (height, width) that returns it); with
    ``fast_decode`` a JPEG 2000 image is decoded at the smallest power-of-two reduction whose
    rows and columns are still at least ``target * (1 - decode_slack)`` (so a 1984-row image
    decodes at 992 rows for a 1024 target with the default slack 0.1; the caller then resizes up
    by 3%). ``decode_slack=0`` never lets the decoded image be smaller than the target.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    path = Path(path)
    if voi_lut not in VOI_MODES:
        raise DataError(f"voi_lut must be one of {VOI_MODES}, got {voi_lut!r}")
    lo_pct, hi_pct = _check_percentiles(percentiles)
    _read_head(path)  # empty / unreadable file: a clear message before pydicom's
    try:
        with warnings.catch_warnings():
            # pydicom warns about a truncated element and drops it; _check_dataset reports that
            warnings.simplefilter("ignore", UserWarning)
            ds = pydicom.dcmread(path)
    except InvalidDicomError:
        raise DataError(f"{path}: not a DICOM file (no 'DICM' marker at byte 128 and no valid header)") from None
    except Exception as exc:  # truncated headers raise EOFError, struct.error, ValueError...
        raise DataError(f"{path}: cannot read the DICOM header ({_one_line(exc)}); the file is "
                        f"probably truncated or corrupt: re-download it") from None

    info = _check_dataset(ds, path)
    if callable(target_shape):
        target_shape = target_shape(info["rows"], info["columns"])
    stored, reduce = _decode_stored(ds, path, info, target_shape, fast_decode, decode_slack)
    values = apply_modality(stored, ds)
    unit, mapping = map_to_unit(values, ds, voi_lut=voi_lut, percentiles=(lo_pct, hi_pct), path=path)
    inverted = info["photometric"] == "MONOCHROME1"
    if inverted:
        unit = 1.0 - unit  # low stored value is white in MONOCHROME1: make bone bright
    return DecodedImage(
        pixels=np.ascontiguousarray(unit, dtype=np.float32),
        height=info["rows"], width=info["columns"],
        photometric=info["photometric"], bits_stored=info["bits_stored"],
        transfer_syntax=info["transfer_syntax"], mapping=mapping, inverted=inverted,
        decode_reduce=reduce,
    )


def read_png(path: str | Path) -> DecodedImage:
    """Read an 8- or 16-bit greyscale PNG (e.g. ChestX-ray14) as a :class:`DecodedImage`.

    PNGs of these datasets are already display images, so values map linearly: v / (2^bits - 1)
    (``mapping`` "png"). A PNG stored as RGB(A) whose colour channels are equal is taken as grey
    (``mapping`` "png (grey from rgb)"); a truly coloured one is an error.
    """
    import cv2

    path = Path(path)
    _read_head(path)
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DataError(f"{path}: cannot decode the PNG (truncated or corrupt file)")
    mapping = "png"
    if img.ndim == 3:
        channels = img[..., :3]  # drop alpha
        if not (np.array_equal(channels[..., 0], channels[..., 1])
                and np.array_equal(channels[..., 0], channels[..., 2])):
            raise DataError(f"{path}: colour PNG ({img.shape[2]} channels that differ); chest X-rays "
                            f"must be greyscale: convert it to grey first")
        img = np.ascontiguousarray(channels[..., 0])
        mapping = "png (grey from rgb)"
    if img.dtype == np.uint8:
        bits, top = 8, 255.0
    elif img.dtype == np.uint16:
        bits, top = 16, 65535.0
    else:
        raise DataError(f"{path}: unsupported PNG sample type {img.dtype}; expected 8 or 16 bits")
    if int(img.min()) == int(img.max()):
        raise DataError(f"{path}: constant image (every pixel is {int(img.min())}): nothing to convert")
    return DecodedImage(
        pixels=img.astype(np.float32) * np.float32(1.0 / top), height=img.shape[0], width=img.shape[1],
        photometric="MONOCHROME2", bits_stored=bits, transfer_syntax="png", mapping=mapping,
        inverted=False, decode_reduce=1,
    )


def dicom_shape(path: str | Path) -> tuple[int, int]:
    """(rows, columns) = (height, width) from the header only (fast: pixel data is not read)."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        return int(ds.Rows), int(ds.Columns)
    except Exception as exc:
        raise DataError(f"{path}: cannot read Rows/Columns from the DICOM header ({_one_line(exc)})") from None


# ----------------------------------------------------------------------------------------------
# header checks and decoding


def _read_head(path: Path) -> bytes:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot open ({_one_line(exc)})") from None
    if not head:
        raise DataError(f"{path}: empty file (0 bytes)")
    return head


def _check_dataset(ds, path: Path) -> dict:
    """Everything that can be refused before decoding, with a reason the user can act on."""
    from pydicom.uid import ImplicitVRLittleEndian

    if "PixelData" not in ds:
        if _has_pixel_data_tag(path):
            raise DataError(f"{path}: the PixelData element is cut short (the file ends before the length "
                            f"its header declares): truncated file, copy or download it again")
        kind = "float/double pixel data" if ("FloatPixelData" in ds or "DoubleFloatPixelData" in ds) else "no PixelData element"
        raise DataError(f"{path}: {kind}: not an image DICOM (a report, structured document or header only?)")
    meta = getattr(ds, "file_meta", None)
    tsyntax = str(getattr(meta, "TransferSyntaxUID", "") or ImplicitVRLittleEndian)
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        bits_alloc, bits_stored = int(ds.BitsAllocated), int(ds.get("BitsStored", ds.BitsAllocated))
    except (AttributeError, TypeError, ValueError) as exc:
        raise DataError(f"{path}: image header incomplete ({_one_line(exc)}); Rows, Columns and "
                        f"BitsAllocated are required") from None
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if samples != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise DataError(f"{path}: colour image (SamplesPerPixel={samples}, PhotometricInterpretation="
                        f"{photometric}); only greyscale radiographs are supported")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise DataError(f"{path}: multi-frame DICOM ({frames} frames); only single-frame radiographs are supported")
    if rows < 1 or cols < 1:
        raise DataError(f"{path}: Rows={rows}, Columns={cols}: no pixels")
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError:
        raise DataError(f"{path}: no pixel decoder for transfer syntax {tsyntax} ({_uid_name(tsyntax)}); "
                        f"convert the file with e.g. dcmdjpeg/gdcmconv first") from None
    if not decoder.is_available:
        raise DataError(f"{path}: the decoder plugins for {_uid_name(tsyntax)} are not installed "
                        f"(pip install pylibjpeg pylibjpeg-openjpeg pylibjpeg-libjpeg)")
    if not getattr(decoder, "is_encapsulated", False):
        # Native (uncompressed) data: pydicom would read past the end or fail obscurely.
        expected = math.ceil(rows * cols * bits_alloc / 8)
        have = len(ds.PixelData)
        if have < expected:
            raise DataError(f"{path}: PixelData has {have} bytes, expected {expected} "
                            f"(Rows {rows} x Columns {cols} x {bits_alloc} bits): truncated file or wrong header")
    return {"rows": rows, "columns": cols, "bits_allocated": bits_alloc, "bits_stored": bits_stored,
            "signed": int(ds.get("PixelRepresentation", 0) or 0) == 1, "photometric": photometric,
            "transfer_syntax": tsyntax}


def _has_pixel_data_tag(path: Path) -> bool:
    """True when the bytes of tag (7FE0,0010) occur in the file (pydicom drops a truncated element)."""
    try:
        return b"\xe0\x7f\x10\x00" in Path(path).read_bytes()
    except OSError:
        return False


def _decode_stored(ds, path: Path, info: dict, target_shape, fast_decode: bool, slack: float):
    """Stored values as an integer array, and the reduction factor used (1 = full size)."""
    if fast_decode and target_shape is not None and info["transfer_syntax"] in J2K_SYNTAXES:
        try:
            result = _decode_j2k_reduced(ds, info, target_shape, slack)
        except Exception:  # noqa: BLE001  any Pillow/openjpeg trouble: the full decode decides
            result = None
        if result is not None:
            return result
    try:
        arr = ds.pixel_array
    except Exception as exc:  # noqa: BLE001  decoders raise many types; the reason is what matters
        raise DataError(f"{path}: cannot decode the pixel data ({_uid_name(info['transfer_syntax'])}): "
                        f"{_one_line(exc)}") from None
    if arr.ndim != 2:
        raise DataError(f"{path}: decoded pixel array has shape {arr.shape}; expected one greyscale frame")
    return arr, 1


@dataclass(frozen=True)
class J2KInfo:
    """What the SIZ and COD marker segments of a JPEG 2000 codestream say."""

    width: int
    height: int
    components: int
    precision: int   # bits per sample in the codestream (may differ from DICOM BitsStored)
    signed: bool
    levels: int      # wavelet decomposition levels = the largest possible reduce
    offset: bool     # image origin not at (0, 0): reduced sizes are harder to predict


def j2k_codestream_info(codestream: bytes) -> J2KInfo:
    """Parse SIZ and the first COD of a raw JPEG 2000 codestream (``FF4F FF51 ...``)."""
    if codestream[:4] != b"\xff\x4f\xff\x51":
        raise ValueError("not a raw JPEG 2000 codestream (no SOC/SIZ markers)")
    lsiz = struct.unpack_from(">H", codestream, 4)[0]
    (_, xsiz, ysiz, xo, yo, _, _, _, _, csiz) = struct.unpack_from(">HIIIIIIIIH", codestream, 6)
    ssiz = codestream[4 + 38]
    pos, levels = 4 + lsiz, None
    while pos + 4 <= len(codestream):
        marker, length = struct.unpack_from(">HH", codestream, pos)
        if marker == 0xFF52:  # COD: Scod(1) SGcod(4) then decomposition levels
            levels = codestream[pos + 4 + 5]
            break
        if marker in (0xFF90, 0xFF93):  # first tile part / data: no COD before it
            break
        pos += 2 + length
    if levels is None:
        raise ValueError("no COD marker segment in the main header")
    return J2KInfo(width=xsiz - xo, height=ysiz - yo, components=csiz, precision=(ssiz & 0x7F) + 1,
                   signed=bool(ssiz & 0x80), levels=levels, offset=bool(xo or yo))


def choose_reduce(height: int, width: int, target_shape: tuple[int, int], levels: int,
                  slack: float = 0.1) -> int:
    """Largest reduce level r (decode at 1/2^r) keeping both sides >= target * (1 - slack).

    Pillow sizes a reduced image as round-half-up(side / 2^r) while openjpeg produces
    ceil(side / 2^r); levels where those differ make Pillow fail, so they are skipped.
    """
    out_h, out_w = target_shape
    need_h, need_w = out_h * (1.0 - slack), out_w * (1.0 - slack)
    best = 0
    for r in range(1, max(0, levels) + 1):
        p = 1 << r
        h, w = math.ceil(height / p), math.ceil(width / p)
        if h < need_h or w < need_w:
            break
        if (height + p // 2) // p == h and (width + p // 2) // p == w:
            best = r
    return best


def _decode_j2k_reduced(ds, info: dict, target_shape, slack: float):
    """Pillow decode of the J2K codestream at reduced resolution; None when it does not apply."""
    from PIL import Image
    from pydicom.encaps import generate_frames

    codestream = next(generate_frames(ds.PixelData, number_of_frames=1))
    j2k = j2k_codestream_info(codestream)
    if (j2k.components != 1 or j2k.offset or j2k.precision > 16 or j2k.signed != info["signed"]
            or (j2k.height, j2k.width) != (info["rows"], info["columns"])):
        return None  # pydicom knows how to reconcile such mismatches; let it
    level = choose_reduce(info["rows"], info["columns"], target_shape, j2k.levels, slack)
    if level == 0:
        return None
    im = Image.open(io.BytesIO(codestream))
    im.reduce = level  # the JPEG 2000 plugin's attribute: read only the lower resolution levels
    im.load()
    raw = np.asarray(im)
    # Pillow stores sample s as (s + signed offset) << (container_bits - precision).
    container = 16 if raw.dtype == np.uint16 else 8
    shift = container - j2k.precision
    values = (raw >> shift).astype(np.int32) if shift > 0 else raw.astype(np.int32)
    if j2k.signed:
        values -= 1 << (j2k.precision - 1)
    # Lower resolution levels can overshoot the sample range a little (wavelet ringing at edges):
    # clip to what BitsStored allows, as the full-size decode would contain.
    bits = info["bits_stored"]
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if info["signed"] else (0, (1 << bits) - 1)
    np.clip(values, lo, hi, out=values)
    return values, 1 << level


# ----------------------------------------------------------------------------------------------
# intensity mapping


def apply_modality(stored: np.ndarray, ds) -> np.ndarray:
    """Modality LUT: RescaleSlope/Intercept (float32) or a Modality LUT Sequence; else unchanged."""
    if "ModalityLUTSequence" in ds:
        from pydicom.pixels import apply_modality_lut

        return apply_modality_lut(stored, ds)
    slope = ds.get("RescaleSlope", None)
    intercept = ds.get("RescaleIntercept", None)
    if slope is None and intercept is None:
        return stored
    slope = float(slope) if slope not in (None, "") else 1.0
    intercept = float(intercept) if intercept not in (None, "") else 0.0
    if slope == 1.0 and intercept == 0.0:
        return stored
    return stored.astype(np.float32) * np.float32(slope) + np.float32(intercept)


def map_to_unit(values: np.ndarray, ds, *, voi_lut: str = "auto",
                percentiles: tuple[float, float] = DEFAULT_PERCENTILES,
                path: str | Path = "<dataset>") -> tuple[np.ndarray, str]:
    """VOI LUT / window / percentile range -> float32 in [0, 1]; returns (image, mapping label).

    A constant image is an error (nothing to show). If the percentiles coincide (a mostly flat
    image) the full min-max range is used instead (``mapping`` "minmax").
    """
    vmin, vmax = float(values.min()), float(values.max())
    if vmin == vmax:
        raise DataError(f"{path}: constant image (every pixel is {vmin:g}): nothing to convert")
    if voi_lut != "off":
        if "VOILUTSequence" in ds and len(ds.VOILUTSequence) and "LUTData" in ds.VOILUTSequence[0]:
            return _apply_voi_lut_sequence(values, ds), "voi_lut"
        window = _window(ds)
        if window is not None:
            center, width, function = window
            label = f"window {center:g}/{width:g}" + ("" if function == "LINEAR" else f" {function.lower()}")
            return window_to_unit(values, center, width, function), label
        if voi_lut == "on":
            raise DataError(f"{path}: voi_lut is 'on' but the file has no VOI LUT and no valid "
                            f"WindowCenter/WindowWidth; use voi_lut=auto to fall back to percentiles")
    lo_pct, hi_pct = percentiles
    lo, hi = robust_range(values, lo_pct, hi_pct)
    if hi <= lo:
        return scale_to_unit(values, vmin, vmax), "minmax"
    return scale_to_unit(values, lo, hi), f"percentile {lo_pct:g}-{hi_pct:g}"


def robust_range(values: np.ndarray, lo_pct: float, hi_pct: float) -> tuple[float, float]:
    """The lo/hi percentiles of ``values`` from a regular subsample of about 250k pixels."""
    step = max(1, int(math.sqrt(values.size / _PERCENTILE_SAMPLES)))
    sample = values[::step, ::step] if values.ndim == 2 else values.ravel()[::step * step]
    lo, hi = np.percentile(sample, (lo_pct, hi_pct))
    return float(lo), float(hi)


def scale_to_unit(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Linear map lo -> 0, hi -> 1, clipped, float32."""
    out = values.astype(np.float32)
    out -= np.float32(lo)
    out *= np.float32(1.0 / (hi - lo))
    np.clip(out, 0.0, 1.0, out=out)
    return out


def window_to_unit(values: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 windowing to [0, 1]: LINEAR, LINEAR_EXACT or SIGMOID."""
    x = values.astype(np.float32)
    if function == "SIGMOID":
        return (1.0 / (1.0 + np.exp(-4.0 * (x - center) / width))).astype(np.float32)
    if function == "LINEAR_EXACT":
        return scale_to_unit(x, center - width / 2.0, center + width / 2.0)
    # LINEAR: x <= c - 0.5 - (w-1)/2 -> 0; x > c - 0.5 + (w-1)/2 -> 1; else ((x-(c-0.5))/(w-1) + 0.5)
    if width <= 1:
        return (x > center - 0.5).astype(np.float32)
    lo = center - 0.5 - (width - 1) / 2.0
    return scale_to_unit(x, lo, lo + (width - 1))


def _window(ds) -> tuple[float, float, str] | None:
    """First (center, width, function) of the file, or None if absent or unusable (width <= 0)."""
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None
    center, width = ds.WindowCenter, ds.WindowWidth
    center = center[0] if _is_multi(center) else center
    width = width[0] if _is_multi(width) else width
    try:
        center, width = float(center), float(width)
    except (TypeError, ValueError):
        return None
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        function = "LINEAR"
    if width <= 0 or (function == "LINEAR_EXACT" and width == 0):
        return None
    return center, width, function


def _apply_voi_lut_sequence(values: np.ndarray, ds) -> np.ndarray:
    """First VOI LUT of the file through pydicom, scaled by the LUT's own output range."""
    from pydicom.pixels import apply_voi_lut

    out = apply_voi_lut(values, ds, index=0, prefer_lut=True).astype(np.float32)
    lut = ds.VOILUTSequence[0]
    descriptor = [int(v) for v in lut.LUTDescriptor]
    bits = descriptor[2] if len(descriptor) > 2 else 16
    top = float((1 << bits) - 1)
    # Some writers declare 16 bits but fill 12: use the larger of the data maximum and 8 bits.
    data_max = float(np.max(out))
    top = data_max if 255.0 <= data_max < top else top
    return np.clip(out / np.float32(top), 0.0, 1.0)


def _is_multi(value) -> bool:
    return isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue"


def _check_percentiles(percentiles) -> tuple[float, float]:
    try:
        lo, hi = (float(p) for p in percentiles)
    except (TypeError, ValueError):
        raise DataError(f"percentiles must be two numbers [low, high], got {percentiles!r}") from None
    if not 0.0 <= lo < hi <= 100.0:
        raise DataError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles!r}")
    return lo, hi


def _uid_name(uid: str) -> str:
    from pydicom.uid import UID

    name = UID(uid).name
    return f"{name} ({uid})" if name and name != uid else uid


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}"[:300] if first else type(exc).__name__
