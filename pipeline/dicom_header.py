"""Reading a DICOM file's data set and deciding, from the header alone, whether it is a convertible image.

Every refusal is a :class:`pipeline.errors.DataError` whose one-line message names the file, the element
or problem in words, and what to do; never a bare library exception. What was tolerated on the way
(no preamble, a missing transfer syntax) comes back as ``notes`` for meta.csv.

- A file without the 128-byte preamble and ``DICM`` marker (older or hand-written files) is read when
  its first data element is a known DICOM tag; otherwise it is "not a DICOM file".
- A missing Transfer Syntax UID with uncompressed pixel data is taken from the encoding pydicom
  detected (implicit/explicit VR, byte order).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

from pipeline.dicom_fragments import UNDEFINED_LENGTH
from pipeline.errors import DataError

MULTIFRAME_MODES = ("refuse", "first")
GREY = ("MONOCHROME1", "MONOCHROME2")
# Colour interpretations whose pixels are converted to RGB and accepted when the channels agree.
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_RCT", "YBR_ICT", "YBR_PARTIAL_420", "PALETTE COLOR")
DEFER_BYTES = 256 * 1024  # read_dataset(defer_pixels=True): values larger than this stay in the file until used
NO_PREAMBLE = "no preamble (read without the 128-byte preamble and DICM marker)"


@dataclass(frozen=True)
class ImageHeader:
    """The image elements of a data set, checked (see :func:`check_image_header`)."""

    rows: int
    columns: int
    bits_allocated: int
    bits_stored: int
    signed: bool
    photometric: str
    samples: int
    frames: int
    transfer_syntax: str


def read_head(path: Path) -> bytes:
    """The first 132 bytes (preamble + marker), with clear errors for missing/empty/unreadable files."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, not a file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot open ({exc.strerror or 'operating system error'})") from None
    if not head:
        raise DataError(f"{path}: empty file (0 bytes)")
    return head


def looks_like_dicom(head: bytes) -> bool:
    """True for a DICOM file with the ``DICM`` marker, or one whose first bytes are a known DICOM tag
    (a file written without the preamble). Used to find extension-less DICOMs in folders."""
    if head[128:132] == b"DICM":
        return True
    if len(head) < 8:
        return False
    from pydicom.datadict import dictionary_has_tag

    for order in ("little", "big"):
        group = int.from_bytes(head[0:2], order)
        elem = int.from_bytes(head[2:4], order)
        # the file meta, identifying, patient, acquisition, relationship or image group: how data sets start
        if group in (0x0002, 0x0008, 0x0010, 0x0018, 0x0020, 0x0028) and dictionary_has_tag((group << 16) | elem):
            return True
    return False


def read_dataset(path: Path, head: bytes | None = None, *, defer_pixels: bool = False):
    """pydicom Dataset of the file, and the notes on what was tolerated.

    ``defer_pixels``: values over :data:`DEFER_BYTES` (the pixel data) stay in the file until first used
    (pydicom reads them then), so a JPEG 2000 frame can be read once, straight to the decoder
    (:mod:`pipeline.dicom_fragments`). A file whose deferred values would end past its end is read whole
    instead, so a truncated file is judged exactly as without deferring.
    """
    ds, notes = _read_dataset(path, head, DEFER_BYTES if defer_pixels else None)
    if defer_pixels and not _deferred_values_fit(ds, path):
        ds, notes = _read_dataset(path, head, None)
    return ds, notes


def _deferred_values_fit(ds, path: Path) -> bool:
    try:
        size = Path(path).stat().st_size
        for tag in list(ds.keys()):
            elem = ds.get_item(tag, keep_deferred=True)
            if getattr(elem, "is_raw", False) and elem.value is None and elem.length != UNDEFINED_LENGTH:
                if elem.value_tell + elem.length > size:
                    return False
    except Exception:  # noqa: BLE001  anything odd: read the file whole, as without deferring
        return False
    return True


def _read_dataset(path: Path, head: bytes | None, defer_size: int | None):
    import pydicom
    from pydicom.errors import InvalidDicomError

    head = read_head(path) if head is None else head
    notes: list[str] = []
    with warnings.catch_warnings():
        # pydicom warns about a truncated element and drops it (check_image_header reports that),
        # about invalid values (reported when the value is needed) and about excess padding
        warnings.simplefilter("ignore", UserWarning)
        try:
            try:
                ds = pydicom.dcmread(path, defer_size=defer_size)
            except InvalidDicomError:
                if not looks_like_dicom(head):
                    raise DataError(f"{path}: not a DICOM file (no 'DICM' marker at byte 128, and the first bytes "
                                    f"are no DICOM data element); check that this is the file you meant") from None
                ds = pydicom.dcmread(path, force=True, defer_size=defer_size)
                notes.append(NO_PREAMBLE)
        except DataError:
            raise
        except Exception as exc:  # noqa: BLE001  truncated headers raise EOFError, struct.error, ValueError...
            raise DataError(f"{path}: the DICOM header cannot be parsed ({detail(exc)}); the file is probably "
                            f"truncated or corrupt: copy or download it again") from None
    _fill_transfer_syntax(ds, path, notes)
    return ds, notes


def _fill_transfer_syntax(ds, path: Path, notes: list[str]) -> None:
    """Give a data set without (0002,0010) the transfer syntax its encoding shows (native data only)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    meta = getattr(ds, "file_meta", None)
    if meta is not None and meta.get("TransferSyntaxUID"):
        return
    if "PixelData" not in ds:
        return  # refused later as "no PixelData"; nothing to decode
    if ds["PixelData"].is_undefined_length:
        raise DataError(f"{path}: the Transfer Syntax UID (0002,0010) is missing and the pixel data is "
                        f"compressed, so the codec is unknown; add the transfer syntax to the file meta "
                        f"(e.g. dcmodify -i \"(0002,0010)=<UID>\") or re-export the file")
    implicit, little = ds.original_encoding
    uid = ImplicitVRLittleEndian if implicit else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    if meta is None:
        ds.file_meta = meta = FileMetaDataset()
    meta.TransferSyntaxUID = uid
    notes.append(f"transfer syntax missing: {uid.name} assumed from the data")


def check_image_header(ds, path: Path, multiframe: str = "refuse") -> ImageHeader:
    """Everything that can be refused before decoding, with a reason the user can act on."""
    if "PixelData" not in ds:
        raise DataError(f"{path}: {_no_pixel_data(ds, path)}")
    tsyntax = str(ds.file_meta.TransferSyntaxUID)
    rows, cols = int_element(ds, "Rows", path), int_element(ds, "Columns", path)
    bits_alloc = int_element(ds, "BitsAllocated", path)
    bits_stored = int_element(ds, "BitsStored", path, default=bits_alloc)
    samples = int_element(ds, "SamplesPerPixel", path, default=1)
    frames = int_element(ds, "NumberOfFrames", path, default=1)
    signed = int_element(ds, "PixelRepresentation", path, default=0) == 1
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    if not photometric:
        photometric = "MONOCHROME2" if samples == 1 else ""
    if rows < 1 or cols < 1:
        raise DataError(f"{path}: Rows={rows}, Columns={cols}: the image has no pixels")
    if photometric not in GREY + COLOUR:
        raise DataError(f"{path}: PhotometricInterpretation (0028,0004) is {photometric or 'missing'!r}"
                        f"{'' if photometric else f' with SamplesPerPixel={samples}'}: only greyscale "
                        f"(MONOCHROME1/2) or grey stored as RGB/YBR/palette can be converted")
    if frames > 1 and multiframe != "first":
        raise DataError(f"{path}: multi-frame DICOM ({frames} frames, NumberOfFrames (0028,0008)); set "
                        f"image.multiframe=first (dicom2png --multiframe first) to convert its first frame, "
                        f"or split the frames into single files")
    _check_decoder(tsyntax, path)
    if not ds.file_meta.TransferSyntaxUID.is_encapsulated:
        # Native (uncompressed) data: pydicom would read past the end or fail obscurely.
        # YBR_FULL_422 stores two samples per pixel (chroma shared by pixel pairs)
        per_pixel = 2 if photometric == "YBR_FULL_422" else samples
        expected = math.ceil(rows * cols * per_pixel * max(1, frames) * bits_alloc / 8)
        have = len(ds.PixelData)
        if have < expected:
            raise DataError(f"{path}: PixelData has {have} bytes, expected {expected} (Rows {rows} x Columns "
                            f"{cols} x {per_pixel} sample(s) x {max(1, frames)} frame(s) x {bits_alloc} bits): "
                            f"truncated file or wrong header; copy or download it again")
    return ImageHeader(rows=rows, columns=cols, bits_allocated=bits_alloc, bits_stored=bits_stored,
                       signed=signed, photometric=photometric, samples=samples, frames=max(1, frames),
                       transfer_syntax=tsyntax)


def int_element(ds, keyword: str, path: Path, default: int | None = None) -> int:
    """An integer element's value; a missing required one or an unreadable one is a clear DataError."""
    from pydicom.datadict import tag_for_keyword

    tag = tag_for_keyword(keyword) or 0
    tag_text = f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
    raw = _raw_value(ds, keyword)
    if raw is None or raw == "":
        if default is not None:
            return default
        raise DataError(f"{path}: {keyword} {tag_text} is missing: the file has pixel data but no image "
                        f"geometry; it is not a displayable image, or its header is damaged")
    try:
        return int(raw)
    except (TypeError, ValueError):
        raise DataError(f"{path}: {keyword} {tag_text} holds {str(raw)[:40]!r}, which is not a whole number: "
                        f"fix the header (e.g. dcmodify -m \"{keyword}=<value>\") or leave the file out") from None


def _raw_value(ds, keyword: str):
    try:
        value = ds.get(keyword, None)
    except Exception:  # noqa: BLE001  pydicom converts values lazily and may raise on bad ones
        elem = ds.get_item(keyword)
        value = getattr(elem, "value", None)
        if isinstance(value, (bytes, bytearray)):
            value = value.decode("latin-1", "replace").strip("\x00 ")
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = value[0] if len(value) else None
    if isinstance(value, str):
        value = value.strip()
    return value


def _no_pixel_data(ds, path: Path) -> str:
    if _has_pixel_data_tag(path):
        return ("the PixelData element (7FE0,0010) is cut short (the file ends before the length its header "
                "declares): truncated file, copy or download it again")
    if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
        return ("float pixel data (FloatPixelData/DoubleFloatPixelData): a parametric map, not a radiograph; "
                "only integer pixel data can be converted")
    name = sop_class_name(ds)
    if name and name.endswith("Image Storage"):
        return (f"no PixelData element (7FE0,0010) although the SOP class is {name!r}: a header-only file "
                f"(the pixels were stripped or never written); get the complete file")
    if name == "Media Storage Directory Storage":
        return "a DICOMDIR (the index of a DICOM folder), not an image: convert the image files it lists instead"
    what = f"a {name!r} object" if name else "not an image (a report, plan, structured document or header only?)"
    return f"no PixelData element (7FE0,0010): {what}; leave it out of the images to convert"


def sop_class_name(ds) -> str:
    """Name of the SOP class (SOPClassUID, else the file meta's MediaStorageSOPClassUID), or ""."""
    from pydicom.uid import UID

    meta = getattr(ds, "file_meta", None)
    uid = ds.get("SOPClassUID", None) or (meta.get("MediaStorageSOPClassUID", None) if meta is not None else None)
    if not uid:
        return ""
    name = UID(str(uid)).name
    return name if name and name != str(uid) else ""


def _has_pixel_data_tag(path: Path) -> bool:
    """True when the bytes of tag (7FE0,0010) occur in the file (pydicom drops a truncated element)."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return False
    return b"\xe0\x7f\x10\x00" in data or b"\x7f\xe0\x00\x10" in data


def _check_decoder(tsyntax: str, path: Path) -> None:
    from pydicom.pixels import get_decoder

    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError:
        raise DataError(f"{path}: no pixel decoder for transfer syntax {uid_name(tsyntax)}; convert the file "
                        f"to an uncompressed or JPEG/JPEG 2000 transfer syntax first (e.g. gdcmconv --raw)") from None
    if not decoder.is_available and not _gdcm_installed():
        raise DataError(f"{path}: no installed decoder handles {uid_name(tsyntax)} (pip install pylibjpeg "
                        f"pylibjpeg-openjpeg pylibjpeg-libjpeg python-gdcm)")


def _gdcm_installed() -> bool:
    try:
        import gdcm  # noqa: F401
    except ImportError:
        return False
    return True


def uid_name(uid: str) -> str:
    from pydicom.uid import UID

    name = UID(uid).name
    return f"{name} ({uid})" if name and name != uid else uid


def detail(exc: BaseException) -> str:
    """A library's message as a detail inside our own sentence: first line, no exception class name."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    text = lines[0] if lines else "no message"
    return text[:200]
