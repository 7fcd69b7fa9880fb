"""pipeline.convert (batches, failures, resume) and the dicom2png tool, on real files and broken copies."""
from __future__ import annotations

import os
import re
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian

from pipeline import convert as convert_mod
from pipeline.convert import (META_COLUMNS, ConvertJob, ConvertOptions, convert_images, job_fingerprint,
                              needs_conversion, read_meta)
from pipeline.errors import DataError
from pipeline.tools import dicom2png

SIIM = "dicom/1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"


def real_sources(real_dir) -> list[Path]:
    return (sorted(real_dir.glob("vinbigdata/dicom/*.dicom")) + sorted(real_dir.glob("dicom/**/*.dcm"))
            + [real_dir / "chestxray14/images/00000001_000.png"])


def jobs_for(paths, out: Path, split="train") -> list[ConvertJob]:
    return [ConvertJob(p.stem, split, p, out / f"{p.stem}.png") for p in paths]


@pytest.mark.parametrize("bits", [8, 16])
def test_every_real_file_converts(real_dir, tmp_path, bits):
    paths = real_sources(real_dir)
    meta, failures = convert_images(jobs_for(paths, tmp_path), ConvertOptions(size=256, bits=bits), progress=False)
    assert failures.empty and len(meta) == 9
    assert list(meta.columns) == META_COLUMNS
    for rec in meta.itertuples():
        png = cv2.imread(str(tmp_path / f"{rec.image_id}.png"), cv2.IMREAD_UNCHANGED)
        assert png.dtype == (np.uint8 if bits == 8 else np.uint16)
        assert png.shape == (rec.out_height, rec.out_width) and max(png.shape) == 256
        assert rec.inverted == (rec.photometric == "MONOCHROME1")
        assert rec.clahe == "2.0/8"
        assert re.fullmatch(r"[0-9a-f]{16}", rec.fingerprint)
    vin = meta[meta["transfer_syntax"] == "1.2.840.10008.1.2.4.90"].set_index("image_id")
    assert len(vin) == 4 and (vin["decode_reduce"] == 8).all()
    assert (vin["mapping"] == "percentile 0.5-99.5").all()
    # ORIGINAL sizes equal the competition's train_meta (dim0 = rows = height)
    tm = pd.read_csv(real_dir / "vinbigdata/train_meta.csv").set_index("image_id").loc[vin.index]
    assert (vin["height"] == tm["dim0"]).all() and (vin["width"] == tm["dim1"]).all()
    png_row = meta.set_index("image_id").loc["00000001_000"]
    assert (png_row["transfer_syntax"], png_row["mapping"]) == ("png", "png")


def test_clahe_on_off_recorded_and_different(real_dir, tmp_path):
    src = [real_dir / SIIM]
    on, _ = convert_images(jobs_for(src, tmp_path / "on"), ConvertOptions(size=256), progress=False)
    off, _ = convert_images(jobs_for(src, tmp_path / "off"), ConvertOptions(size=256, clahe=False), progress=False)
    assert (on["clahe"].item(), off["clahe"].item()) == ("2.0/8", "off")
    a = cv2.imread(str(tmp_path / "on" / f"{src[0].stem}.png"), 0).astype(int)
    b = cv2.imread(str(tmp_path / "off" / f"{src[0].stem}.png"), 0).astype(int)
    assert np.abs(a - b).mean() > 5


def test_square_output(real_dir, tmp_path):
    src = [real_dir / "vinbigdata/dicom/9943805f08872ab64d994fc84ff1b25d.dicom"]
    meta, _ = convert_images(jobs_for(src, tmp_path), ConvertOptions(size=200, square=True), progress=False)
    assert (meta["out_height"].item(), meta["out_width"].item()) == (200, 200)
    assert (meta["height"].item(), meta["width"].item()) == (2280, 1936)


def _native(ds, arr: np.ndarray) -> None:
    """Make ``ds`` an uncompressed Explicit VR Little Endian dataset holding ``arr``."""
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.PixelData = arr.tobytes()
    ds.BitsAllocated = arr.dtype.itemsize * 8
    ds.BitsStored = ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    ds.Rows, ds.Columns = arr.shape[:2]


def build_bad_files(real_dir, tmp_path) -> dict[str, Path]:
    """One broken file per failure kind, each made from a copy of the real SIIM DICOM."""
    src = real_dir / SIIM
    raw = src.read_bytes()
    good = pydicom.dcmread(src)
    arr16 = (good.pixel_array.astype(np.uint16) * 16)
    d = tmp_path / "bad"
    d.mkdir()
    files = {}
    files["empty"] = d / "empty.dcm"
    files["empty"].write_bytes(b"")
    files["truncated"] = d / "truncated.dcm"
    files["truncated"].write_bytes(raw[: len(raw) // 2])
    files["text"] = d / "text.dcm"
    files["text"].write_text("image_id,class_name\nabc,Nodule\n" * 20)

    def save(name, edit):
        ds = pydicom.dcmread(src)
        edit(ds)
        files[name] = d / f"{name}.dcm"
        ds.save_as(files[name], enforce_file_format=True)

    save("no_pixels", lambda ds: delattr(ds, "PixelData"))

    def short(ds):
        _native(ds, arr16)
        ds.PixelData = ds.PixelData[: len(ds.PixelData) // 2]

    save("short", short)

    def rgb(ds):  # true colour: the channels differ (a grey image stored as RGB converts: test_dicom_colour)
        grey = good.pixel_array
        _native(ds, np.dstack([grey, grey // 2, 255 - grey]))
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0

    save("rgb", rgb)

    def multi(ds):
        _native(ds, arr16)
        ds.PixelData = ds.PixelData * 2
        ds.NumberOfFrames = 2

    save("multiframe", multi)
    save("unsupported", lambda ds: setattr(ds.file_meta, "TransferSyntaxUID", "1.2.840.10008.1.2.4.100"))
    save("constant", lambda ds: _native(ds, np.full((64, 64), 1000, np.uint16)))
    return files


EXPECTED_REASON = {
    "empty": "empty file", "truncated": "truncated", "text": "not a DICOM", "no_pixels": "no PixelData",
    "short": "PixelData has", "rgb": "colour image", "multiframe": "multi-frame",
    "unsupported": "no pixel decoder", "constant": "constant image",
}


def test_bad_files_fail_alone(real_dir, tmp_path):
    bad = build_bad_files(real_dir, tmp_path)
    good = [real_dir / SIIM, real_dir / "vinbigdata/dicom/4004f114ab2ecb224ac7484957b79ea4.dicom"]
    out = tmp_path / "out"
    jobs = jobs_for(good[:1], out) + jobs_for(bad.values(), out) + jobs_for(good[1:], out)
    meta, failures = convert_images(jobs, ConvertOptions(size=128), progress=False)
    assert sorted(meta["image_id"]) == sorted(p.stem for p in good)
    assert list(failures.columns) == ["image_id", "split", "source", "reason"]
    reasons = dict(zip(failures["image_id"], failures["reason"]))
    assert set(reasons) == set(EXPECTED_REASON)
    for name, expected in EXPECTED_REASON.items():
        assert expected in reasons[name], (name, reasons[name])
        assert "\n" not in reasons[name] and "Traceback" not in reasons[name]
        assert str(bad[name]) in reasons[name]  # the reason names the file
    # only the good PNGs exist: no partial PNG, no leftover temporary file
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{p.stem}.png" for p in good)


def test_resume_skips_and_force_redoes(real_dir, tmp_path, monkeypatch):
    paths = [real_dir / SIIM, real_dir / "dicom/header_modified/Fake_MONOHR1.dcm"]
    jobs = jobs_for(paths, tmp_path)
    meta1, _ = convert_images(jobs, ConvertOptions(size=128), progress=False)
    mtimes = {j.image_id: j.dest.stat().st_mtime_ns for j in jobs}

    calls = []
    real_one = convert_mod.convert_one
    monkeypatch.setattr(convert_mod, "convert_one", lambda job, opts: calls.append(job.image_id) or real_one(job, opts))
    meta2, _ = convert_images(jobs, ConvertOptions(size=128), previous_meta=meta1, progress=False)
    assert calls == []
    pd.testing.assert_frame_equal(meta1, meta2)
    assert {j.image_id: j.dest.stat().st_mtime_ns for j in jobs} == mtimes

    jobs[0].dest.unlink()  # a missing PNG is redone even though meta has its row
    convert_images(jobs, ConvertOptions(size=128), previous_meta=meta1, progress=False)
    assert calls == [jobs[0].image_id]

    calls.clear()
    convert_images(jobs, ConvertOptions(size=128), previous_meta=meta1, force=True, progress=False)
    assert calls == [j.image_id for j in jobs]


def _count_calls(monkeypatch) -> list[str]:
    calls: list[str] = []
    real_one = convert_mod.convert_one
    monkeypatch.setattr(convert_mod, "convert_one", lambda job, opts: calls.append(job.image_id) or real_one(job, opts))
    return calls


def test_changed_options_reconvert_same_options_skip(real_dir, tmp_path, monkeypatch):
    paths = [real_dir / SIIM, real_dir / "dicom/header_modified/Fake_MONOHR1.dcm"]
    jobs = jobs_for(paths, tmp_path)
    meta1, _ = convert_images(jobs, ConvertOptions(size=256), progress=False)
    assert (meta1[["out_height", "out_width"]].max(axis=1) == 256).all() and (meta1["clahe"] == "2.0/8").all()
    calls = _count_calls(monkeypatch)

    # image.size=64 image.clahe=false after a 256 px run: every PNG and meta row is redone
    small = ConvertOptions(size=64, clahe=False)
    assert needs_conversion(jobs, small, meta1) == [True, True]
    meta2, failures = convert_images(jobs, small, previous_meta=meta1, progress=False)
    assert failures.empty and calls == [j.image_id for j in jobs]
    assert (meta2[["out_height", "out_width"]].max(axis=1) == 64).all() and (meta2["clahe"] == "off").all()
    assert (meta2["fingerprint"] != meta1["fingerprint"]).all()
    for rec in meta2.itertuples():
        png = cv2.imread(str(tmp_path / f"{rec.image_id}.png"), cv2.IMREAD_UNCHANGED)
        assert png.shape == (rec.out_height, rec.out_width)
    # the original-size columns do not depend on the options
    pd.testing.assert_frame_equal(meta1[["image_id", "height", "width"]], meta2[["image_id", "height", "width"]])

    # the same options again (meta read back from CSV, as prepare does): nothing converted, nothing rewritten
    from pipeline.io import write_csv_atomic

    write_csv_atomic(meta2, tmp_path / "meta.csv")
    back = read_meta(tmp_path / "meta.csv")
    pd.testing.assert_frame_equal(back, meta2)
    mtimes = {j.image_id: j.dest.stat().st_mtime_ns for j in jobs}
    calls.clear()
    assert needs_conversion(jobs, small, back) == [False, False]
    meta3, _ = convert_images(jobs, small, previous_meta=back, progress=False)
    assert calls == []
    pd.testing.assert_frame_equal(meta3, meta2)
    assert {j.image_id: j.dest.stat().st_mtime_ns for j in jobs} == mtimes

    # only the clahe knob differs: that one setting is enough to redo the images
    meta4, _ = convert_images(jobs, ConvertOptions(size=64, clahe=True), previous_meta=meta3, progress=False)
    assert calls == [j.image_id for j in jobs] and (meta4["clahe"] == "2.0/8").all()


def test_fingerprint_tracks_pixel_options_only(real_dir):
    job = ConvertJob("a", "train", real_dir / SIIM, Path("unused.png"))
    base = job_fingerprint(job, ConvertOptions())
    assert re.fullmatch(r"[0-9a-f]{16}", base)
    assert job_fingerprint(job, ConvertOptions()) == base  # deterministic
    changed = [dict(size=512), dict(square=True), dict(bits=16), dict(voi_lut="off"), dict(percentiles=(1, 99)),
               dict(clahe=False), dict(clahe_clip=3.0), dict(clahe_grid=4), dict(denoise=True),
               dict(fast_decode=False), dict(decode_slack=0.2), dict(multiframe="first")]
    fps = {job_fingerprint(job, ConvertOptions(**kw)) for kw in changed}
    assert len(fps) == len(changed) and base not in fps
    # lossless PNG compression, and knobs of a disabled step, do not change the pixels
    assert job_fingerprint(job, ConvertOptions(png_compression=9)) == base
    assert job_fingerprint(job, ConvertOptions(denoise_strength=7.0)) == base
    off = job_fingerprint(job, ConvertOptions(clahe=False))
    assert job_fingerprint(job, ConvertOptions(clahe=False, clahe_clip=4.0, clahe_grid=2)) == off
    assert job_fingerprint(ConvertJob("b", "train", real_dir / "missing.dcm", Path("x.png")), ConvertOptions()) == ""
    # the source's content counts, not its name or place: another job reading the same bytes agrees
    other = ConvertJob("c", "test", real_dir / "dicom/header_modified/Fake_MONOHR1.dcm", Path("y.png"))
    assert job_fingerprint(other, ConvertOptions()) != base


@pytest.fixture
def digest_cache(tmp_path):
    """The content-digest cache in tmp_path for this test (as the runner / dicom2png set it), then none."""
    from pipeline import fingerprint

    fingerprint.set_cache_dir(tmp_path / ".cache")
    yield tmp_path / ".cache"
    fingerprint.set_cache_dir(None)


def _dataset(real_dir, folder: Path) -> list[Path]:
    """Three real sources (two DICOMs, one PNG) copied into ``folder``."""
    folder.mkdir(parents=True)
    out = []
    for src in (real_dir / SIIM, real_dir / "dicom/header_modified/Fake_MONOHR1.dcm",
                real_dir / "chestxray14/images/00000001_000.png"):
        dest = folder / (f"img{len(out)}" + src.suffix)
        dest.write_bytes(src.read_bytes())
        out.append(dest)
    return out


def test_skip_rule_is_content_not_mtime_or_path(real_dir, tmp_path, monkeypatch, digest_cache):
    sources = _dataset(real_dir, tmp_path / "data")
    out = tmp_path / "out"
    opts = ConvertOptions(size=128)
    meta1, _ = convert_images(jobs_for(sources, out), opts, progress=False)
    pngs = {p.name: p.read_bytes() for p in out.glob("*.png")}
    calls = _count_calls(monkeypatch)

    # touch every source: same bytes, new mtimes -> nothing converted, the same fingerprints
    for src in sources:
        st = src.stat()
        os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert needs_conversion(jobs_for(sources, out), opts, meta1) == [False] * 3
    meta2, _ = convert_images(jobs_for(sources, out), opts, previous_meta=meta1, progress=False)
    assert calls == []
    pd.testing.assert_frame_equal(meta2, meta1)

    # the dataset copied to another folder (as to a cluster's scratch disk): nothing converted,
    # and the kept rows name where the sources are now
    moved = tmp_path / "elsewhere" / "data"
    moved.parent.mkdir()
    os.rename(tmp_path / "data", moved)
    new_sources = [moved / p.name for p in sources]
    meta3, _ = convert_images(jobs_for(new_sources, out), opts, previous_meta=meta2, progress=False)
    assert calls == []
    assert list(meta3["source"]) == [str(p) for p in new_sources]
    assert (meta3["fingerprint"] == meta1["fingerprint"]).all()
    assert {p.name: p.read_bytes() for p in out.glob("*.png")} == pngs

    # one file's bytes changed (a header edit, pixels the same): exactly that image is converted again
    ds = pydicom.dcmread(new_sources[0])
    ds.ImageComments = "edited"
    ds.save_as(new_sources[0])
    assert needs_conversion(jobs_for(new_sources, out), opts, meta3) == [True, False, False]
    meta4, _ = convert_images(jobs_for(new_sources, out), opts, previous_meta=meta3, progress=False)
    assert calls == ["img0"]
    assert meta4["fingerprint"].iloc[0] != meta3["fingerprint"].iloc[0]
    assert (meta4["fingerprint"].iloc[1:] == meta3["fingerprint"].iloc[1:]).all()


def test_changed_source_file_reconverts(real_dir, tmp_path, monkeypatch, digest_cache):
    src = tmp_path / "src" / "img.dcm"
    src.parent.mkdir()
    src.write_bytes((real_dir / SIIM).read_bytes())
    jobs = jobs_for([src], tmp_path / "out")
    opts = ConvertOptions(size=128)
    meta1, _ = convert_images(jobs, opts, progress=False)
    calls = _count_calls(monkeypatch)

    # other content with the recorded mtime put back: converted again (the content decides)
    mtime = src.stat().st_mtime_ns
    other = pydicom.dcmread(real_dir / "dicom/header_modified/Fake_MONOHR1.dcm")
    other.ImageComments = "edited copy"  # the two real files happen to be the same size
    other.save_as(src)
    os.utime(src, ns=(mtime, mtime))
    meta2, _ = convert_images(jobs, opts, previous_meta=meta1, progress=False)
    assert calls == ["img"] and meta2["photometric"].item() == "MONOCHROME1" != meta1["photometric"].item()

    # a source that is now broken: reported, and its stale PNG is removed rather than left for training
    src.write_bytes(b"")
    meta3, failures = convert_images(jobs, opts, previous_meta=meta2, progress=False)
    assert meta3.empty and list(failures["image_id"]) == ["img"]
    assert not jobs[0].dest.exists()


def test_journal_resumes_a_killed_batch_and_stale_temporaries_go(real_dir, tmp_path, monkeypatch, digest_cache):
    from pipeline.convert_records import Journal

    sources = _dataset(real_dir, tmp_path / "data")
    out, journal = tmp_path / "out", tmp_path / "out" / ".journal.jsonl"
    opts = ConvertOptions(size=128)
    ref, _ = convert_images(jobs_for(sources, tmp_path / "ref"), opts, progress=False)
    # what a batch killed after its first image leaves: that image's PNG and journal line, a line cut
    # short by the kill, and the temporary file of the image it was writing
    jobs = jobs_for(sources, out)
    first, _ = convert_images(jobs[:1], opts, progress=False)
    rec = Journal(journal)
    rec.add(first.iloc[0].to_dict())
    rec.close(remove=False)
    with open(journal, "a") as fh:
        fh.write('{"image_id": "img1", "spl')
    (out / ".img1.png.k3j2x9ab.tmp.png").write_bytes(b"\x89PNG partial")
    (out / ".unrelated.tmp").write_bytes(b"not ours")

    calls = _count_calls(monkeypatch)
    meta, failures = convert_images(jobs, opts, progress=False, journal=journal)
    assert failures.empty and calls == ["img1", "img2"]  # img0 came back from the journal
    pd.testing.assert_frame_equal(meta, ref.assign(source=[str(p) for p in sources]))
    assert not journal.exists()  # a finished batch leaves no journal
    assert sorted(p.name for p in out.iterdir()) == [".unrelated.tmp", "img0.png", "img1.png", "img2.png"]
    for p in out.glob("img*.png"):
        assert p.read_bytes() == (tmp_path / "ref" / p.name).read_bytes()


def test_meta_without_fingerprint_still_reads_and_reconverts(real_dir, tmp_path, monkeypatch):
    jobs = jobs_for([real_dir / SIIM], tmp_path)
    meta1, _ = convert_images(jobs, ConvertOptions(size=128), progress=False)
    old = tmp_path / "meta.csv"
    meta1.drop(columns="fingerprint").to_csv(old, index=False)  # as written before the column existed
    back = read_meta(old)
    assert list(back.columns) == META_COLUMNS and back["fingerprint"].tolist() == [""]
    calls = _count_calls(monkeypatch)
    meta2, _ = convert_images(jobs, ConvertOptions(size=128), previous_meta=back, progress=False)
    assert calls == [jobs[0].image_id]
    assert meta2["fingerprint"].item() == meta1["fingerprint"].item()
    # an in-memory table lacking the column behaves the same
    calls.clear()
    convert_images(jobs, ConvertOptions(size=128), previous_meta=meta1.drop(columns="fingerprint"), progress=False)
    assert calls == [jobs[0].image_id]


def test_two_workers(real_dir, tmp_path):
    paths = [real_dir / SIIM, real_dir / "dicom/header_modified/Fake_MONOHR1.dcm",
             real_dir / "chestxray14/images/00000001_000.png"]
    (tmp_path / "empty.dcm").write_bytes(b"")
    meta, failures = convert_images(jobs_for(paths + [tmp_path / "empty.dcm"], tmp_path / "out"),
                                    ConvertOptions(size=128), workers=2, progress=False)
    assert list(meta["image_id"]) == [p.stem for p in paths]  # job order kept
    assert list(failures["image_id"]) == ["empty"]


def test_options_from_config_and_errors():
    from pipeline.config import load_config
    from pipeline.errors import ConfigError

    opts = ConvertOptions.from_config(load_config(None, ["image.size=512", "image.clahe=false"]).image)
    assert (opts.size, opts.clahe, opts.bits, opts.percentiles) == (512, False, 8, (0.5, 99.5))
    with pytest.raises(ConfigError, match="bits"):
        ConvertOptions(bits=12)


def test_dicom2png_cli(real_dir, tmp_path, capsys, digest_cache):
    inputs = tmp_path / "in"
    inputs.mkdir()
    (inputs / "siim_noext").write_bytes((real_dir / SIIM).read_bytes())  # DICOM without extension
    (inputs / "notes.txt").write_text("ignored")
    png = real_dir / "chestxray14/images/00000001_000.png"
    out = tmp_path / "out"
    argv = [str(inputs), str(png), "--out", str(out), "--size", "128", "--quiet"]
    assert dicom2png.main(argv) == 0
    assert sorted(p.name for p in out.glob("*.png")) == ["00000001_000.png", "siim_noext.png"]
    assert pd.read_csv(out / "failures.csv").empty
    assert len(read_meta(out / "meta.csv")) == 2
    assert "2 converted, 0 skipped" in capsys.readouterr().out

    (inputs / "broken.dcm").write_bytes(b"")
    assert dicom2png.main(argv) == 1  # resumes: 2 skipped, 1 failed
    text = capsys.readouterr().out
    assert "0 converted, 2 skipped" in text and "1 failed" in text
    assert list(pd.read_csv(out / "failures.csv")["image_id"]) == ["broken"]
    assert len(read_meta(out / "meta.csv")) == 2

    # the same name in a sub-folder goes to the same sub-folder of --out (series folders often repeat names)
    (inputs / "broken.dcm").unlink()
    (inputs / "sub").mkdir()
    (inputs / "sub" / "00000001_000.png").write_bytes(png.read_bytes())
    assert dicom2png.main(argv) == 0
    assert "1 converted, 2 skipped" in capsys.readouterr().out
    assert (out / "sub" / "00000001_000.png").is_file()
    meta = read_meta(out / "meta.csv")
    assert sorted(zip(meta["split"], meta["image_id"])) == [("", "00000001_000"), ("", "siim_noext"),
                                                            ("sub", "00000001_000")]
    # two input folders holding the same relative name would write one PNG: an error naming both
    twin = tmp_path / "twin"
    (twin / "sub").mkdir(parents=True)
    (twin / "sub" / "00000001_000.png").write_bytes(png.read_bytes())
    with pytest.raises(DataError, match="both write"):
        dicom2png.main([str(inputs), str(twin), "--out", str(out), "--quiet"])
    from pipeline.__main__ import main as cli

    assert cli(["dicom2png", str(inputs), str(twin), "--out", str(out), "--quiet"]) == 2  # "error: ...", exit 2


def test_dicom2png_touch_and_copy_convert_nothing(real_dir, tmp_path, capsys, digest_cache):
    sources = _dataset(real_dir, tmp_path / "data")
    out = tmp_path / "out"
    assert dicom2png.main([str(tmp_path / "data"), "--out", str(out), "--size", "96", "--quiet"]) == 0
    assert "3 converted, 0 skipped" in capsys.readouterr().out
    assert (out / ".cache" / "hashes.sqlite").is_file()  # the tool keeps its digest cache in --out
    pngs = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}
    for src in sources:
        os.utime(src, ns=(src.stat().st_atime_ns, src.stat().st_mtime_ns + 7_000_000_000))
    assert dicom2png.main([str(tmp_path / "data"), "--out", str(out), "--size", "96", "--quiet"]) == 0
    assert "0 converted, 3 skipped" in capsys.readouterr().out
    copy = tmp_path / "copy"
    copy.mkdir()
    for src in sources:
        (copy / src.name).write_bytes(src.read_bytes())
    assert dicom2png.main([str(copy), "--out", str(out), "--size", "96", "--quiet"]) == 0
    assert "0 converted, 3 skipped" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")} == pngs  # not even rewritten
    assert set(read_meta(out / "meta.csv")["source"]) == {str(copy / s.name) for s in sources}
