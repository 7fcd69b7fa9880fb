"""dicom2png over public real-world DICOM test files: every single-frame greyscale image converts, every
other file is named with a reason a user can act on (issue 14).

Corpus: pydicom's bundled test files (what ``pydicom.data.get_testdata_files()`` returns locally: big- and
little-endian, implicit VR, deflated, RLE, JPEG variants, colour, multi-frame, reports, DICOMDIR series)
plus the real chest DICOMs in ../shared/real. Whether a file is a "single-frame greyscale image" is
decided here independently of the pipeline: pydicom (forced read) or GDCM decodes one frame, and it is
greyscale or has three equal channels.
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.tools import dicom2png

# exception class names (ValueError, EOFError, ...) and other signs of a raw exception text in a reason
RAW = re.compile(r"\b[A-Za-z_]+(Error|Exception)\b|struct\.error|Traceback|Errno|invalid literal|"
                 r"has no attribute|NoneType|exceptions were raised")


def corpus_inputs(real_dir: Path) -> list[Path]:
    import pydicom.data

    bundled = [Path(p) for p in pydicom.data.get_testdata_files()]
    root = Path(pydicom.data.__file__).parent / "test_files"
    # get_testdata_files lists bundled files (and any cached pydicom-data downloads; none offline):
    # give the bundled folder as one input, and any file outside it by name
    extra = [p for p in bundled if root not in p.parents and p.is_file()]
    return [root, *extra, real_dir / "dicom", real_dir / "vinbigdata" / "dicom"]


def _oracle_is_single_frame_grey(path: Path, decoded_already: bool) -> bool:
    """Independent of pipeline.*: a pydicom (forced) or GDCM decode of exactly one grey frame.
    ``decoded_already``: the pipeline wrote a PNG from it, so a greyscale single-frame header is enough
    (this skips re-decoding the big real JPEG 2000 files; colour files are always decoded here)."""
    import pydicom
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(path, force=True)
            if "PixelData" not in ds or "Rows" not in ds:
                return False
            if int(ds.get("NumberOfFrames", 1) or 1) != 1:
                return False
            meta = ds.file_meta
            if "TransferSyntaxUID" not in meta and not ds["PixelData"].is_undefined_length:
                implicit, little = ds.original_encoding
                meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else
                                          ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
            photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
        except Exception:  # noqa: BLE001  unreadable header: not an image
            return False
        if decoded_already and photometric in ("MONOCHROME1", "MONOCHROME2") and int(ds.get("SamplesPerPixel", 1)) == 1:
            return True
        try:
            arr = ds.pixel_array
        except Exception:  # noqa: BLE001
            arr = _gdcm_array(path)
            if arr is None:
                return False
        if photometric == "PALETTE COLOR":
            from pydicom.pixels import apply_color_lut

            arr = apply_color_lut(arr, ds)
    if arr.ndim == 2:
        return True
    return arr.ndim == 3 and np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])


def _gdcm_array(path: Path):
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(str(path))
    if not reader.Read() or reader.GetImage().GetBuffer() is None:
        return None
    image = reader.GetImage()
    return np.zeros((image.GetDimension(1), image.GetDimension(0)))  # decodable; greyscale by its header here


@pytest.fixture(scope="module")
def converted(real_dir, tmp_path_factory):
    from pipeline import fingerprint

    out = tmp_path_factory.mktemp("corpus")
    inputs = corpus_inputs(real_dir)
    code = dicom2png.main([str(p) for p in inputs] + ["--out", str(out / "png"), "--size", "128", "--quiet"])
    fingerprint.set_cache_dir(None)
    ignored: list[Path] = []
    sources = dicom2png.collect_sources(inputs, ignored)
    return code, out / "png", sources, ignored


def test_corpus_grey_single_frame_all_converted_rest_named(converted):
    code, out, sources, ignored = converted
    meta = pd.read_csv(out / "meta.csv", dtype=str, keep_default_na=False)
    failures = pd.read_csv(out / "failures.csv", dtype=str, keep_default_na=False)
    assert len(sources) > 150 and code == 1  # some files are not images: exit status 1
    done, failed = set(meta["source"]), set(failures["source"])
    assert not done & failed
    for rec in meta.itertuples():  # what was converted is a complete, readable PNG of the recorded size
        with Image.open(out / rec.split / f"{rec.image_id}.png") as im:
            im.load()
            assert im.size == (int(rec.out_width), int(rec.out_height))
    assert done | failed == {str(src) for src, _ in sources}  # every candidate file is accounted for
    expected = {str(src) for src, _ in sources if _oracle_is_single_frame_grey(src, str(src) in done)}
    assert done == expected, {"not converted": sorted(expected - done), "converted but not grey": sorted(done - expected)}
    for rec in failures.itertuples():
        assert rec.reason.startswith(rec.source + ": "), rec.reason      # names the file
        assert not RAW.search(rec.reason), rec.reason                   # words, not an exception
        assert "\n" not in rec.reason and len(rec.reason) > len(rec.source) + 20
    # files that are not DICOM by name or content are listed as ignored, not silently dropped
    assert {p.suffix for p in ignored} >= {".json", ".txt", ".gz"}


def test_corpus_decoders_and_named_cases(converted):
    _, out, _, _ = converted
    meta = pd.read_csv(out / "meta.csv", dtype=str, keep_default_na=False).set_index("image_id")
    failures = pd.read_csv(out / "failures.csv", dtype=str, keep_default_na=False)
    reason = {Path(s).name: r for s, r in zip(failures["source"], failures["reason"])}
    # JPEG Extended 12-bit: pydicom gives it to no plugin; GDCM decodes it
    assert meta.loc["JPEG-lossy", "decoder"] == "gdcm-direct"
    assert meta.loc["JPEG-lossy", "transfer_syntax"] == "1.2.840.10008.1.2.4.51"
    # each transfer syntax present got a decoder name; the real VinBigData J2K files the reduced decode
    assert (meta["decoder"] != "").all()
    assert set(meta.loc[meta["transfer_syntax"] == "1.2.840.10008.1.2.4.90", "decoder"]) >= {"pillow-reduced"}
    assert "NumberOfFrames (0028,0008) holds '1A'" in reason["badVR.dcm"]
    assert "multi-frame DICOM (15 frames" in reason["rtdose.dcm"] and "image.multiframe=first" in reason["rtdose.dcm"]
    assert "colour image (RGB" in reason["SC_rgb_rle.dcm"]
    assert "'RT Ion Plan Storage'" in reason["ExplVR_LitEndNoMeta.dcm"]  # read without preamble, then named
    assert "DICOMDIR" in reason["DICOMDIR"]
    assert "could not be decoded by any installed decoder" in reason["JPEG2000-embedded-sequence-delimiter.dcm"]
    # same file names in different series folders do not clash: they keep their sub-folder
    assert (out / "dicomdirtests/98892003/MR700/4467.png").is_file()
