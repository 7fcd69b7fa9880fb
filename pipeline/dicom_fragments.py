"""The compressed bytes of a single-frame encapsulated DICOM image, read straight from the file.

pydicom, asked for a frame, first reads the whole Pixel Data value into memory and then copies the
frame's fragments out of it: two copies of a 4 MB VinBigData codestream before the decoder sees it, and
a third when the file was read whole. Here the data set is parsed with the pixel data deferred
(:func:`pipeline.dicom_header.read_dataset` with ``defer_pixels``) and the fragments are read from the
file at the offset pydicom recorded: one copy. Any surprise (a multi-frame image, a damaged item, the file
changed) returns None and the caller uses pydicom's own reading, which decides and reports.

Encapsulation (DICOM PS3.5 A.4): after the (7FE0,0010) header come items ``(FFFE,E000) <uint32 length>``,
the first the Basic Offset Table, then the fragments, closed by the sequence delimiter ``(FFFE,E0DD)``;
all fragments of a single-frame image belong to its one frame.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

ITEM = b"\xfe\xff\x00\xe0"           # (FFFE,E000), little endian: encapsulated data is always explicit LE
DELIMITER = b"\xfe\xff\xdd\xe0"      # (FFFE,E0DD)
MAX_FRAGMENTS = 4096
UNDEFINED_LENGTH = 0xFFFFFFFF


def deferred_pixel_offset(ds) -> int | None:
    """File offset of the Pixel Data value when it was deferred and is encapsulated, else None."""
    try:
        elem = ds.get_item("PixelData", keep_deferred=True)
    except Exception:  # noqa: BLE001
        return None
    if not getattr(elem, "is_raw", False) or elem.value is not None or elem.length != UNDEFINED_LENGTH:
        return None  # already read (or converted), or native data
    return elem.value_tell


def read_single_frame(path: Path, offset: int) -> bytes | None:
    """The concatenated fragments after the Basic Offset Table at ``offset``, or None when the items there
    are not a well-formed encapsulated value that ends inside the file."""
    try:
        with open(path, "rb", buffering=0) as fh:
            size = os.fstat(fh.fileno()).st_size
            fh.seek(offset)
            tag, length = _item(fh)
            if tag != ITEM or offset + 8 + length > size:
                return None
            fh.seek(length, os.SEEK_CUR)  # the Basic Offset Table: a single frame needs no offsets
            parts: list[bytes] = []
            for _ in range(MAX_FRAGMENTS):
                tag, length = _item(fh)
                if tag == DELIMITER:
                    return parts[0] if len(parts) == 1 else (b"".join(parts) if parts else None)
                if tag != ITEM or fh.tell() + length > size:
                    return None
                data = fh.read(length)
                if len(data) != length:
                    return None
                parts.append(data)
    except (OSError, struct.error):
        return None
    return None


def _item(fh) -> tuple[bytes, int]:
    head = fh.read(8)
    if len(head) != 8:
        raise struct.error("end of file inside an item header")
    return head[:4], struct.unpack("<I", head[4:])[0]
