"""The compressed bytes of a single-frame encapsulated DICOM image, read straight from the file.

pydicom, asked for a frame, first reads the whole Pixel Data value into memory and then copies the
frame's fragments out of it: two copies of a 4 MB VinBigData codestream before the decoder sees it, and
a third when the file was read whole. Here the data set is parsed with the pixel data deferred
(:func:`pipeline.dicom_header.read_dataset` with ``defer_pixels``) and the fragments are read from the
file at the offset pydicom recorded, by the decoder itself when the frame is one fragment: no copy of the
whole codestream. Any surprise (a multi-frame image, a damaged item, the file
changed) returns None and the caller uses pydicom's own reading, which decides and reports.

Encapsulation (DICOM PS3.5 A.4): after the (7FE0,0010) header come items ``(FFFE,E000) <uint32 length>``,
the first the Basic Offset Table, then the fragments, closed by the sequence delimiter ``(FFFE,E0DD)``;
all fragments of a single-frame image belong to its one frame.
"""
from __future__ import annotations

import io
import os
import struct
from pathlib import Path
from typing import BinaryIO

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


def open_single_frame(path: Path, offset: int) -> BinaryIO | None:
    """The frame's codestream as a readable, seekable binary file: a window onto the file itself when the
    frame is one fragment (the decoder reads it in its own chunks, no copy of the whole), else its fragments
    joined in memory; None when the items at ``offset`` are not a well-formed encapsulated value that ends
    inside the file. Close it after use (``with``)."""
    fh = None
    try:
        fh = open(path, "rb", buffering=0)
        fragments = _fragments(fh, offset)
        if fragments is None:
            fh.close()
            return None
        if len(fragments) == 1:
            return FragmentWindow(fh, *fragments[0])
        parts = []
        for start, length in fragments:
            fh.seek(start)
            parts.append(fh.read(length))
        fh.close()
        return io.BytesIO(b"".join(parts))
    except (OSError, struct.error):
        if fh is not None:
            fh.close()
        return None


class FragmentWindow(io.RawIOBase):
    """Bytes ``start .. start + length`` of an open file, as a file of their own (read, seek, tell)."""

    def __init__(self, fh, start: int, length: int):
        super().__init__()
        self._fh, self._start, self._length, self._pos = fh, start, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._length}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def read(self, size: int = -1) -> bytes:
        left = max(0, self._length - self._pos)
        size = left if size is None or size < 0 else min(size, left)
        if not size:
            return b""
        self._fh.seek(self._start + self._pos)
        data = self._fh.read(size)
        self._pos += len(data)
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._fh.close()
        super().close()


def _fragments(fh, offset: int) -> list[tuple[int, int]] | None:
    """(file offset, length) of each fragment after the Basic Offset Table, or None when malformed."""
    size = os.fstat(fh.fileno()).st_size
    fh.seek(offset)
    tag, length = _item(fh)
    if tag != ITEM or offset + 8 + length > size:
        return None
    fh.seek(length, os.SEEK_CUR)  # the Basic Offset Table: a single frame needs no offsets
    found: list[tuple[int, int]] = []
    for _ in range(MAX_FRAGMENTS):
        tag, length = _item(fh)
        if tag == DELIMITER:
            return found or None
        start = fh.tell()
        if tag != ITEM or start + length > size:
            return None
        found.append((start, length))
        fh.seek(length, os.SEEK_CUR)
    return None


def _item(fh) -> tuple[bytes, int]:
    head = fh.read(8)
    if len(head) != 8:
        raise struct.error("end of file inside an item header")
    return head[:4], struct.unpack("<I", head[4:])[0]
