"""The fast paths of pipeline.intensity and pipeline.j2k give exactly the numbers of the plain array code."""
from __future__ import annotations

import io

import numpy as np
import pytest

from pipeline import intensity, j2k

PAIRS = [(0.5, 99.5), (1, 99), (0, 100), (2.5, 97.5), (50, 50.0001), (10, 90)]


def _arrays():
    rng = np.random.default_rng(7)
    yield rng.integers(0, 4096, (700, 650)).astype(np.uint16)                    # 12-bit, > 250k pixels
    yield np.clip(rng.normal(2000, 300, (300, 200)), 0, 4095).astype(np.uint16)  # peaked histogram
    yield rng.integers(0, 256, (64, 48)).astype(np.uint8)
    yield rng.integers(-1024, 3000, (400, 400)).astype(np.int16)                 # CT-like, negative values
    yield np.full((50, 50), 7, np.uint16) + (np.arange(2500).reshape(50, 50) % 3 == 0)  # two levels
    yield rng.integers(0, 1024, (1100, 1000)).astype(np.uint16)                  # a strided subsample (every 2nd)


@pytest.mark.parametrize("k", range(6))
def test_histogram_percentiles_equal_numpy(k):
    values = list(_arrays())[k]
    step = max(1, int(np.sqrt(values.size / 250_000)))
    sample = values[::step, ::step]
    for lo, hi in PAIRS:
        expected = tuple(float(v) for v in np.percentile(sample, (lo, hi)))
        assert intensity.robust_range(values, lo, hi) == expected, (k, lo, hi)
        assert intensity.robust_range(values, lo, hi, vmin=float(values.min())) == expected


def _old_scale(values, lo, hi):  # the previous implementation, element-wise with copies
    out = values.astype(np.float32)
    out -= np.float32(lo)
    out *= np.float32(1.0 / (hi - lo))
    np.clip(out, 0.0, 1.0, out=out)
    return out


def _old_window(values, center, width):
    x = values.astype(np.float32)
    if width <= 1:
        return (x > center - 0.5).astype(np.float32)
    lo = center - 0.5 - (width - 1) / 2.0
    return _old_scale(x, lo, lo + (width - 1))


@pytest.mark.parametrize("k", range(5))
def test_in_place_mapping_equals_the_previous_code(k):
    values = list(_arrays())[k]
    vmin, vmax = float(values.min()), float(values.max())
    c, w = (vmin + vmax) / 2, (vmax - vmin) / 3
    for fast, old in ((intensity.scale_to_unit(values, vmin + 1, vmax - 1), _old_scale(values, vmin + 1, vmax - 1)),
                      (intensity.window_to_unit(values, c, w), _old_window(values, c, w)),
                      (intensity.scale_to_unit(values.astype(np.float64) * 0.7, 3, 900),
                       _old_scale(values.astype(np.float64) * 0.7, 3, 900))):
        assert fast.dtype == old.dtype == np.float32 and np.array_equal(fast, old)
    step = max(1, int(np.sqrt(values.size / 250_000)))
    lo, hi = np.percentile(values[::step, ::step], (0.5, 99.5))
    unit, label = intensity.map_to_unit(values, {}, invert=True)
    expected = 1.0 - (_old_scale(values, lo, hi) if hi > lo else _old_scale(values, vmin, vmax))
    assert label.startswith(("percentile", "minmax")) and np.array_equal(unit, expected)


def test_reduced_j2k_values_as_the_int32_code_gave(real_dir):
    """The reduced decode keeps unsigned data as uint16 (no int32 copy): same values as before."""
    import pydicom
    from PIL import Image
    from pydicom.encaps import generate_frames

    ds = pydicom.dcmread(real_dir / "vinbigdata/dicom/4004f114ab2ecb224ac7484957b79ea4.dicom")
    codestream = next(generate_frames(ds.PixelData, number_of_frames=1))
    values, factor = j2k.decode_reduced(codestream, rows=1984, columns=1976, signed=False, bits_stored=12,
                                        target_shape=(512, 510), slack=0.1)
    assert factor == 4 and values.dtype == np.uint16 and values.shape == (496, 494)
    im = Image.open(io.BytesIO(codestream))
    im.reduce = 2
    im.load()
    shift = 16 - j2k.j2k_codestream_info(codestream).precision  # (these files say 16 bits in the codestream)
    old = np.clip((np.asarray(im) >> shift).astype(np.int32), 0, 4095)  # the previous implementation
    assert np.array_equal(values, old)


def test_picture_bits_is_the_smallest_usual_depth_holding_the_largest_value():
    from pipeline.intensity import picture_bits

    cases = {255: 8, 256: 10, 1023: 10, 4095: 12, 4096: 14, 16383: 14, 16384: 16, 65535: 16}
    for top, bits in cases.items():
        img = np.zeros((3, 3), np.uint16)
        img[1, 1] = top
        assert picture_bits(img) == bits, top
    assert picture_bits(np.full((2, 2), 255, np.uint8)) == 8
    assert picture_bits(np.zeros((2, 2), np.uint16)) == 8
