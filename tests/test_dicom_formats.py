"""Other people's DICOMs: no preamble, no transfer syntax, grey stored as colour, true colour, multi-frame,
JPEG Extended 12-bit. Each file is made from a real one (../shared/real or pydicom's bundled test files)."""
from __future__ import annotations

import numpy as np
import pydicom
import pydicom.data
import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless

from pipeline import dicom
from pipeline.convert import ConvertJob, ConvertOptions, convert_images
from pipeline.errors import DataError

SIIM = "dicom/1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"


def _native(ds, arr: np.ndarray, photometric: str) -> None:
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.Rows, ds.Columns = arr.shape[:2]
    ds.SamplesPerPixel = 3 if arr.ndim == 3 else 1
    if arr.ndim == 3:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelData = arr.astype(np.uint8).tobytes()


@pytest.fixture
def siim(real_dir):
    path = real_dir / SIIM
    return path, pydicom.dcmread(path).pixel_array


def test_file_without_preamble_reads_and_says_so(siim, tmp_path):
    path, _ = siim
    bare = tmp_path / "bare.dcm"
    bare.write_bytes(path.read_bytes()[132:])  # no 128-byte preamble, no DICM: starts at the file meta group
    img, ref = dicom.read_image(bare), dicom.read_image(path)
    assert np.array_equal(img.pixels, ref.pixels)
    assert img.notes == [dicom_header_note()]


def dicom_header_note() -> str:
    from pipeline.dicom_header import NO_PREAMBLE

    return NO_PREAMBLE


def test_no_preamble_no_file_meta_transfer_syntax_from_the_data(tmp_path):
    src = pydicom.data.get_testdata_file("MR_small.dcm")
    ds = pydicom.dcmread(src)
    del ds.file_meta
    ds.preamble = None
    pydicom.dcmwrite(tmp_path / "raw.dcm", ds, implicit_vr=True, little_endian=True)
    img = dicom.read_image(tmp_path / "raw.dcm")
    assert np.array_equal(img.pixels, dicom.read_image(src).pixels)
    assert img.notes[1] == "transfer syntax missing: Implicit VR Little Endian assumed from the data"
    assert img.transfer_syntax == "1.2.840.10008.1.2"


def test_grey_stored_as_colour_becomes_grey(siim, tmp_path):
    from pydicom.pixels import convert_color_space

    path, grey = siim
    ref = dicom.read_image(path)
    rgb = np.dstack([grey] * 3)
    made = {}
    ds = pydicom.dcmread(path)
    _native(ds, rgb, "RGB")
    made["rgb"] = tmp_path / "rgb.dcm"
    ds.save_as(made["rgb"], enforce_file_format=True)
    ds = pydicom.dcmread(path)
    _native(ds, convert_color_space(rgb, "RGB", "YBR_FULL"), "YBR_FULL")  # rounding: channels within 1 back
    made["ybr"] = tmp_path / "ybr.dcm"
    ds.save_as(made["ybr"], enforce_file_format=True)
    ds = pydicom.dcmread(path)  # channels a level apart, as lossy colour JPEG of a grey image leaves them
    near = rgb.copy()
    near[::2, ::3, 1] = np.clip(near[::2, ::3, 1].astype(int) + 1, 0, 255)
    _native(ds, near, "RGB")
    made["near"] = tmp_path / "near.dcm"
    ds.save_as(made["near"], enforce_file_format=True)
    ds = pydicom.dcmread(path)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.compress(JPEG2000Lossless, rgb, photometric_interpretation="RGB", use_mct=True)  # with the colour transform
    made["j2k"] = tmp_path / "j2k.dcm"
    ds.save_as(made["j2k"], enforce_file_format=True)

    out = {k: dicom.read_image(p) for k, p in made.items()}
    assert np.array_equal(out["rgb"].pixels, ref.pixels) and out["rgb"].notes == ["grey from RGB (channels equal)"]
    assert np.array_equal(out["j2k"].pixels, ref.pixels) and out["j2k"].decoder == "pylibjpeg"
    assert out["ybr"].notes[0] in ("grey from YBR_FULL (channels equal)", "grey from YBR_FULL (channels within 1 of 255)")
    assert np.corrcoef(out["ybr"].pixels.ravel(), ref.pixels.ravel())[0, 1] > 0.9999
    assert out["near"].notes == ["grey from RGB (channels within 1 of 255)"]
    assert np.corrcoef(out["near"].pixels.ravel(), ref.pixels.ravel())[0, 1] > 0.9999
    assert out["ybr"].photometric == "YBR_FULL"  # meta.csv keeps what the file said


def test_true_colour_refused_with_the_size_of_the_difference(siim, tmp_path):
    path, grey = siim
    ds = pydicom.dcmread(path)
    tinted = np.dstack([grey, grey, np.clip(grey.astype(int) + 40, 0, 255)])  # a blue cast
    _native(ds, tinted, "RGB")
    ds.save_as(tmp_path / "tinted.dcm", enforce_file_format=True)
    with pytest.raises(DataError, match=r"colour image \(RGB; its red, green and blue differ by up to 40 of 255"):
        dicom.read_image(tmp_path / "tinted.dcm")


def test_multiframe_refused_by_default_first_frame_on_request(siim, tmp_path):
    path, grey = siim
    ds = pydicom.dcmread(path)
    ds.NumberOfFrames = 3
    ds.compress(JPEG2000Lossless, np.stack([grey, 255 - grey, grey // 2]))
    ds.save_as(tmp_path / "frames.dcm", enforce_file_format=True)
    jobs = [ConvertJob("frames", "", tmp_path / "frames.dcm", tmp_path / "out" / "frames.png")]
    meta, failures = convert_images(jobs, ConvertOptions(size=256), progress=False)
    assert meta.empty and "multi-frame DICOM (3 frames" in failures["reason"].item()
    assert "image.multiframe=first" in failures["reason"].item()
    meta, failures = convert_images(jobs, ConvertOptions(size=256, multiframe="first"), progress=False)
    assert failures.empty
    row = meta.iloc[0]
    assert (row["notes"], row["decoder"], row["decode_reduce"]) == ("frame 1 of 3", "pillow-reduced", 4)
    # the first frame is what was converted: the same pixels as the single-frame original at that size
    first = dicom.read_image(tmp_path / "frames.dcm", multiframe="first", fast_decode=False)
    assert np.array_equal(first.pixels, dicom.read_image(path).pixels)


def test_jpeg_extended_12bit_through_gdcm():
    lossy = pydicom.data.get_testdata_file("JPEG-lossy.dcm")      # 12-bit JPEG Extended (NEMA WG04 NM1_JPLY)
    fixed = pydicom.data.get_testdata_file("JPGExtended.dcm")     # the same image with its JPEG stream repaired
    a, b = dicom.read_image(lossy), dicom.read_image(fixed)
    assert (a.decoder, b.decoder) == ("gdcm-direct", "pylibjpeg")
    assert a.bits_stored == 12 and a.pixels.shape == b.pixels.shape == (1024, 256)
    assert np.corrcoef(a.pixels.ravel(), b.pixels.ravel())[0, 1] > 0.9999


def test_unreadable_number_names_the_element():
    with pytest.raises(DataError, match=r"NumberOfFrames \(0028,0008\) holds '1A', which is not a whole number"):
        dicom.read_image(pydicom.data.get_testdata_file("badVR.dcm"))
