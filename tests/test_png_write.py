"""pipeline.png_write: PNGs that cv2 and Pillow decode to exactly the array written, with valid chunk CRCs."""
from __future__ import annotations

import io
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from pipeline import imaging
from pipeline.png_write import encode_grey_png


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("shape", [(1, 1), (1, 7), (9, 1), (37, 53), (300, 257)])
def test_decoders_return_the_array_written(dtype, shape):
    rng = np.random.default_rng(sum(shape))
    top = np.iinfo(dtype).max
    img = rng.integers(0, top + 1, size=shape, dtype=np.int64).astype(dtype)
    img[0, 0], img[-1, -1] = 0, top  # both ends of the range: the Up filter's differences wrap modulo 256
    png = encode_grey_png(img)
    back = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    assert back.dtype == dtype and back.shape == shape
    np.testing.assert_array_equal(back, img)
    pil = Image.open(io.BytesIO(png))
    pil.verify()  # chunk CRCs and structure
    pil = Image.open(io.BytesIO(png))
    assert pil.size == shape[::-1] and pil.mode == ("L" if dtype == np.uint8 else "I;16")
    np.testing.assert_array_equal(np.asarray(pil).astype(dtype), img)


def test_chunks_and_filter_bytes():
    img = np.arange(12, dtype=np.uint8).reshape(3, 4)
    png = encode_grey_png(img)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR" and png.endswith(b"IEND\xaeB`\x82")
    idat = png.index(b"IDAT")
    length = int.from_bytes(png[idat - 4:idat], "big")
    raw = zlib.decompress(png[idat + 4:idat + 4 + length])
    rows = np.frombuffer(raw, np.uint8).reshape(3, 5)
    assert rows[:, 0].tolist() == [2, 2, 2]  # every row filtered "Up"
    assert rows[0, 1:].tolist() == [0, 1, 2, 3] and rows[1:, 1:].tolist() == [[4] * 4, [4] * 4]


def test_smaller_than_stored_and_as_small_as_libpng_on_a_radiograph(real_dir):
    from pipeline import dicom

    path = sorted((real_dir / "vinbigdata/dicom").glob("*.dicom"))[0]
    img = dicom.read_dicom(path, target_shape=lambda h, w: imaging.output_shape(h, w, 512))
    px = imaging.quantise(imaging.resize(img.pixels, imaging.output_shape(img.height, img.width, 512)), 8)
    ours = imaging.encode_png(px, 1)
    libpng = cv2.imencode(".png", px, [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY,
                                       cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY, cv2.IMWRITE_PNG_FILTER,
                                       cv2.IMWRITE_PNG_FILTER_UP])[1].tobytes()
    stored = imaging.encode_png(px, 0)
    assert len(ours) <= 1.02 * len(libpng) and len(ours) < 0.6 * len(stored)
    np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(ours, np.uint8), cv2.IMREAD_UNCHANGED), px)


def test_refuses_what_it_cannot_write():
    for bad in (np.zeros((2, 2, 3), np.uint8), np.zeros((2, 2), np.float32), np.zeros((0, 4), np.uint8)):
        with pytest.raises(ValueError, match="2-D uint8 or uint16"):
            encode_grey_png(bad)
