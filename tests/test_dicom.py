"""pipeline.dicom and pipeline.imaging on the real files in ../shared/real and small hand-made arrays."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline import dicom, imaging
from pipeline.errors import DataError

VIN_IDS = ["4004f114ab2ecb224ac7484957b79ea4", "4b56bc6d22b192f075f13231419dfcc8",
           "6a0da094696816e8ccc92c81602173d1", "9943805f08872ab64d994fc84ff1b25d"]
SIIM = "dicom/1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"


def _small(h, w):
    return imaging.output_shape(h, w, 256)


def all_real_dicoms(real_dir):
    return sorted(real_dir.glob("vinbigdata/dicom/*.dicom")) + sorted(real_dir.glob("dicom/**/*.dcm"))


def test_every_real_dicom_reads(real_dir):
    files = all_real_dicoms(real_dir)
    assert len(files) == 8
    for path in files:
        img = dicom.read_image(path, target_shape=_small)
        header = dicom.dicom_shape(path)
        assert (img.height, img.width) == header
        assert img.pixels.dtype == np.float32
        assert 0.0 <= img.pixels.min() and img.pixels.max() <= 1.0 and img.pixels.max() - img.pixels.min() > 0.5
        assert img.pixels.shape[0] >= 256 * 0.9 and img.pixels.shape[0] * img.decode_reduce >= img.height - img.decode_reduce
        assert img.inverted == (img.photometric == "MONOCHROME1")


def test_vinbigdata_tagless_j2k_reduced_and_bone_bright(real_dir):
    img = dicom.read_dicom(real_dir / "vinbigdata/dicom" / f"{VIN_IDS[0]}.dicom", target_shape=(256, 255))
    assert img.decode_reduce == 8  # 1984/8 = 248 >= 256 * 0.9: the smallest level that still serves
    assert img.pixels.shape == (248, 247)
    assert (img.photometric, img.bits_stored, img.inverted) == ("MONOCHROME1", 12, True)
    assert img.mapping == "percentile 0.5-99.5"  # no window, no rescale in these files
    p = img.pixels
    h, w = p.shape
    rows = slice(int(0.35 * h), int(0.65 * h))
    spine = p[rows, int(0.45 * w):int(0.55 * w)].mean()
    left, right = p[rows, int(0.1 * w):w // 3].mean(), p[rows, 2 * w // 3:int(0.9 * w)].mean()
    assert spine > left + 0.1 and spine > right + 0.1  # bone bright, air-filled lungs dark


def test_reduced_decode_matches_full_decode(real_dir):
    path = real_dir / "vinbigdata/dicom" / f"{VIN_IDS[3]}.dicom"
    fast = dicom.read_dicom(path, target_shape=(512, 435))
    full = dicom.read_dicom(path, target_shape=(512, 435), fast_decode=False)
    assert fast.decode_reduce == 4 and full.decode_reduce == 1
    assert full.pixels.shape == (2280, 1936)
    small = cv2.resize(full.pixels, fast.pixels.shape[::-1], interpolation=cv2.INTER_AREA)
    assert np.corrcoef(small.ravel(), fast.pixels.ravel())[0, 1] >= 0.99


def test_fake_monochrome1_is_negative_of_original(real_dir):
    orig = dicom.read_dicom(real_dir / SIIM)
    fake = dicom.read_dicom(real_dir / "dicom/header_modified/Fake_MONOHR1.dcm")
    assert (orig.inverted, fake.inverted) == (False, True)
    assert orig.transfer_syntax == "1.2.840.10008.1.2.4.50"
    np.testing.assert_allclose(fake.pixels, 1.0 - orig.pixels, atol=1e-6)


def test_voi_modes_on_windowed_file(real_dir):
    path = real_dir / "dicom/RG1_JLSN.dcm"  # JPEG-LS, WindowCenter/Width 15000/30000
    assert dicom.read_dicom(path, target_shape=(256, 241)).mapping == "window 15000/30000"
    assert dicom.read_dicom(path, voi_lut="off").mapping == "percentile 0.5-99.5"
    with pytest.raises(DataError, match="no VOI LUT"):
        dicom.read_dicom(real_dir / SIIM, voi_lut="on")


def test_j2k_header_and_reduce_choice(real_dir):
    import pydicom
    from pydicom.encaps import generate_frames

    ds = pydicom.dcmread(real_dir / "vinbigdata/dicom" / f"{VIN_IDS[0]}.dicom")
    info = dicom.j2k_codestream_info(next(generate_frames(ds.PixelData, number_of_frames=1)))
    assert (info.height, info.width, info.precision, info.signed, info.levels) == (1984, 1976, 16, False, 5)
    assert dicom.choose_reduce(1984, 1976, (1024, 1020), 5, slack=0.1) == 1  # 992 >= 921.6
    assert dicom.choose_reduce(1984, 1976, (1024, 1020), 5, slack=0.0) == 0  # 992 < 1024
    assert dicom.choose_reduce(1984, 1976, (512, 510), 5, slack=0.0) == 1   # 992 >= 512, 496 < 512
    # 1841 / 4: openjpeg gives ceil = 461, Pillow round-half-up = 460 -> level 2 skipped
    assert dicom.choose_reduce(1955, 1841, (300, 282), 5, slack=0.0) == 1


def test_window_formula_hand_values():
    x = np.array([-200.0, -160.0, 39.5, 239.0, 400.0], dtype=np.float32)
    out = dicom.window_to_unit(x, center=40, width=400)
    np.testing.assert_allclose(out, [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-6)
    exact = dicom.window_to_unit(np.array([-160.0, 40.0, 240.0]), 40, 400, "LINEAR_EXACT")
    np.testing.assert_allclose(exact, [0.0, 0.5, 1.0], atol=1e-6)


def test_percentile_mapping_and_constant():
    values = np.arange(10000, dtype=np.int32).reshape(100, 100)
    unit, label = dicom.map_to_unit(values, {}, percentiles=(1, 99))
    assert label == "percentile 1-99"
    lo, hi = np.percentile(values, (1, 99))
    np.testing.assert_allclose(unit[50, 0], (5000 - lo) / (hi - lo), atol=1e-6)
    assert unit.min() == 0.0 and unit.max() == 1.0
    with pytest.raises(DataError, match="constant image"):
        dicom.map_to_unit(np.full((4, 4), 7), {})


def test_png_reading(real_dir, tmp_path):
    path = real_dir / "chestxray14/images/00000001_000.png"
    img = dicom.read_image(path)
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert (img.transfer_syntax, img.mapping, img.decode_reduce, img.bits_stored) == ("png", "png", 1, 8)
    np.testing.assert_allclose(img.pixels, raw / 255.0, atol=1e-6)
    grey16 = (raw.astype(np.uint16) * 257)
    cv2.imwrite(str(tmp_path / "g16.png"), grey16)
    np.testing.assert_allclose(dicom.read_image(tmp_path / "g16.png").pixels, raw / 255.0, atol=1e-6)
    # 12-bit data in a 16-bit file (largest value 4095 or below): scaled by 4095, not by 65535 (near black)
    cv2.imwrite(str(tmp_path / "g12.png"), ((raw.astype(np.uint32) * 4095 + 127) // 255).astype(np.uint16))
    g12 = dicom.read_image(tmp_path / "g12.png")
    assert (g12.bits_stored, g12.mapping) == (12, "png (12 of 16 bits used)")
    np.testing.assert_allclose(g12.pixels, raw / 255.0, atol=0.5 / 4095 + 1e-6)
    cv2.imwrite(str(tmp_path / "g8in16.png"), raw.astype(np.uint16))  # 8-bit values widened to 16 bits
    np.testing.assert_allclose(dicom.read_image(tmp_path / "g8in16.png").pixels, raw / 255.0, atol=1e-6)
    cv2.imwrite(str(tmp_path / "rgb.png"), np.dstack([raw] * 3))
    assert dicom.read_image(tmp_path / "rgb.png").mapping == "png (grey from rgb)"
    colour = np.dstack([raw, raw, 255 - raw])
    cv2.imwrite(str(tmp_path / "colour.png"), colour)
    with pytest.raises(DataError, match="colour PNG"):
        dicom.read_image(tmp_path / "colour.png")


def test_output_shape_aspect_square_and_no_upscale():
    assert imaging.output_shape(1984, 1976, 1024) == (1024, 1020)
    assert imaging.output_shape(2280, 1936, 512) == (512, 435)  # 1936 * 512 / 2280 = 434.7
    assert imaging.output_shape(1984, 1976, 512, square=True) == (512, 512)
    assert imaging.output_shape(600, 800, 1024) == (600, 800)   # never upscaled
    assert imaging.output_shape(600, 800, 1024, square=True) == (800, 800)


def test_resize_quantise_clahe():
    ramp = np.tile(np.linspace(0, 1, 400, dtype=np.float32), (200, 1))
    small = imaging.resize(ramp, (100, 200))
    assert small.shape == (100, 200)
    np.testing.assert_allclose(small[0, 0], ramp[0, :2].mean(), atol=1e-6)  # area: mean of 2x2
    q8 = imaging.quantise(np.array([0.0, 0.5, 1.0, 1.2]), 8)
    assert q8.dtype == np.uint8 and q8.tolist() == [0, 128, 255, 255]
    assert imaging.quantise(np.array([0.5]), 16).tolist() == [32768]
    rng = np.random.default_rng(0)
    img = (rng.normal(0.5, 0.05, (128, 128)).clip(0, 1)).astype(np.float32)
    e8 = imaging.clahe(imaging.quantise(img, 8), 2.0, 8)
    assert e8.std() > imaging.quantise(img, 8).std() * 1.5  # contrast spread
    e16 = imaging.clahe(imaging.quantise(img, 16), 2.0, 8)
    assert e16.dtype == np.uint16
    # same contrast gain as the 8-bit operator (the high bytes differ only by rounding)
    assert np.corrcoef((e16 >> 8).ravel(), e8.ravel())[0, 1] > 0.99
    assert abs(float((e16 >> 8).std()) - float(e8.std())) < 1.0
    png = imaging.encode_png(e16)
    assert cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED).dtype == np.uint16


def test_split_modules_keep_the_old_names_importable():
    """pipeline.dicom was split (dicom_header, dicom_decode, j2k, intensity); its public names still work."""
    from pipeline import intensity, j2k
    from pipeline.dicom import (DEFAULT_PERCENTILES, J2KInfo, apply_modality, choose_reduce, dicom_shape,  # noqa: F401
                                j2k_codestream_info, map_to_unit, read_dicom, read_image, read_png, robust_range,
                                scale_to_unit, window_to_unit)

    assert j2k_codestream_info is j2k.j2k_codestream_info and map_to_unit is intensity.map_to_unit
