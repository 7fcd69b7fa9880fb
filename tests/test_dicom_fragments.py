"""The JPEG 2000 frame read straight from the file (pipeline.dicom_fragments) against pydicom's own reading:
the same bytes, the same pixels, and pydicom's path whenever the file is not what the direct read expects."""
from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate, get_frame
from pydicom.uid import JPEG2000Lossless

from pipeline import dicom, dicom_decode
from pipeline.dicom_fragments import deferred_pixel_offset, open_single_frame
from pipeline.dicom_header import read_dataset
from pipeline.errors import DataError

SIIM = "dicom/1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"


def read_single_frame(path, offset):
    source = open_single_frame(path, offset)
    if source is None:
        return None
    with source:
        return source.read()


def _frame_by_pydicom(path):
    ds = pydicom.dcmread(path)
    return get_frame(ds.PixelData, 0, number_of_frames=1)


@pytest.fixture
def j2k_fragments(real_dir, tmp_path):
    """A real radiograph as JPEG 2000 lossless, its one frame split over three fragments."""
    ds = pydicom.dcmread(real_dir / SIIM)
    grey = ds.pixel_array
    ds.compress(JPEG2000Lossless, grey)
    frame = get_frame(ds.PixelData, 0, number_of_frames=1)
    ds.PixelData = encapsulate([frame], fragments_per_frame=3)
    path = tmp_path / "fragments.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path, frame


def test_real_vinbigdata_frames_read_direct_equal_pydicoms(real_dir):
    files = sorted(real_dir.glob("vinbigdata/dicom/*.dicom"))
    assert files
    for path in files:
        ds, _ = read_dataset(path, defer_pixels=True)
        offset = deferred_pixel_offset(ds)
        assert offset is not None, path
        assert read_single_frame(path, offset) == _frame_by_pydicom(path)
        assert deferred_pixel_offset(read_dataset(path)[0]) is None  # not deferred: nothing to read direct


def test_several_fragments_joined_and_pixels_equal_pydicoms_path(j2k_fragments, monkeypatch):
    path, frame = j2k_fragments
    ds, _ = read_dataset(path, defer_pixels=True)
    assert read_single_frame(path, deferred_pixel_offset(ds)) == frame == _frame_by_pydicom(path)
    direct = dicom.read_dicom(path, target_shape=(256, 256))
    assert direct.decoder == "pillow-reduced" and direct.decode_reduce == 4
    calls = []
    monkeypatch.setattr(dicom_decode, "deferred_pixel_offset", lambda ds: calls.append(1))  # pydicom's reading
    via_pydicom = dicom.read_dicom(path, target_shape=(256, 256))
    assert calls and via_pydicom.decoder == "pillow-reduced"
    np.testing.assert_array_equal(direct.pixels, via_pydicom.pixels)


def test_damaged_items_fall_back_to_pydicom(j2k_fragments):
    path, frame = j2k_fragments
    ds, _ = read_dataset(path, defer_pixels=True)
    offset = deferred_pixel_offset(ds)
    data = bytearray(path.read_bytes())
    assert read_single_frame(path, offset + 1) is None  # not at an item
    bot_length = int.from_bytes(data[offset + 4:offset + 8], "little")
    first = offset + 8 + bot_length
    assert data[first:first + 4] == b"\xfe\xff\x00\xe0"
    data[first + 4:first + 8] = (len(data)).to_bytes(4, "little")  # a fragment longer than the file
    path.write_bytes(bytes(data))
    assert read_single_frame(path, offset) is None
    assert read_single_frame(path.with_name("missing.dcm"), offset) is None


@pytest.mark.parametrize("kind", ["j2k", "native"])
def test_truncated_file_judged_as_without_deferring(kind, j2k_fragments, real_dir, tmp_path):
    path = j2k_fragments[0]
    if kind == "native":  # uncompressed pixel data (1 MB, deferred as well)
        ds = pydicom.dcmread(real_dir / SIIM)
        ds.decompress()
        path = tmp_path / "native.dcm"
        ds.save_as(path, enforce_file_format=True)
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(path.read_bytes()[:-2000])  # ends inside the (last fragment of the) pixel data
    errors = []
    for fast in (True, False):
        with pytest.raises(DataError) as info:
            dicom.read_dicom(cut, target_shape=(256, 256), fast_decode=fast)
        errors.append(str(info.value))
    assert errors[0] == errors[1] and "truncated" in errors[0] and str(cut) in errors[0]


def test_main_header_longer_than_the_first_read(j2k_fragments):
    """A 20 KB comment between SIZ and COD: decode_reduced from a file reads the whole main header."""
    import io
    import struct

    from pipeline import j2k

    _, frame = j2k_fragments
    siz_end = 4 + struct.unpack_from(">H", frame, 4)[0]
    comment = b"\xff\x64" + struct.pack(">H", 20_002) + b"\x00\x01" + b"x" * 19_998
    long_header = frame[:siz_end] + comment + frame[siz_end:]
    assert len(comment) > j2k.HEADER_BYTES
    args = dict(rows=1024, columns=1024, signed=False, bits_stored=8, target_shape=(256, 256), slack=0.1)
    ref = j2k.decode_reduced(frame, **args)
    got = j2k.decode_reduced(io.BytesIO(long_header), **args)
    assert ref is not None and got[1] == ref[1] == 4
    np.testing.assert_array_equal(got[0], ref[0])
