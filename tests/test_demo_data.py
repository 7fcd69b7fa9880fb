"""The synthetic demo dataset: real layouts, readable DICOMs, honest boxes, determinism."""
from __future__ import annotations

import csv
import hashlib
import importlib
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless

from pipeline.classes import CHESTXRAY14, VINBIGDATA
from pipeline.demo import MARKER, make_demo, synth
from pipeline.demo import chestxray14 as cx
from pipeline.demo import vinbigdata as vb
from pipeline.errors import DataError
from pipeline.tools import demo_data


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def vbd(tmp_path_factory) -> Path:
    return make_demo(tmp_path_factory.mktemp("vbd") / "demo", "vinbigdata", n_train=24, n_test=8, seed=3)


@pytest.fixture(scope="module")
def nih(tmp_path_factory) -> Path:
    return make_demo(tmp_path_factory.mktemp("nih") / "demo", "chestxray14", n_train=20, n_test=10, seed=5,
                     image_size=256)


# ---------------------------------------------------------------------------------------------- rendering
@pytest.mark.parametrize("name", synth.RENDERABLE)
def test_every_finding_renders_inside_its_box(name):
    rng = np.random.default_rng(11)
    ch = synth.render_chest(rng, 300, 260)
    delta, (x0, y0, x1, y1) = synth.render_finding(ch, name, rng)
    assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
    a = np.abs(delta)
    assert a.max() >= 0.1, "finding must be high-contrast"
    c0, r0, c1, r1 = int(round(x0 * 260)), int(round(y0 * 300)), int(round(x1 * 260)), int(round(y1 * 300))
    inside = a[r0:r1, c0:c1].sum()
    assert inside >= 0.97 * a.sum(), f"{name}: only {inside / a.sum():.1%} of the change lies in the box"
    # The box is not a whole-image box (except the diffuse NIH-only Emphysema, both lungs).
    if name != "Emphysema":
        assert (x1 - x0) * (y1 - y0) < 0.35


def test_to_pixels_rounds_outwards_and_clips():
    assert synth.to_pixels((0.1, 0.2, 0.5, 0.55), 100, 200) == (10.0, 40.0, 50.0, 110.0)
    assert synth.to_pixels((-0.1, 0.0, 1.2, 1.0), 100, 200) == (0.0, 0.0, 100.0, 200.0)
    assert synth.to_pixels((0.999, 0.5, 0.9995, 0.5), 100, 200) == (99.0, 100.0, 100.0, 101.0)


def test_chest_has_dark_lungs_and_bright_mediastinum():
    rng = np.random.default_rng(0)
    ch = synth.render_chest(rng, 384, 384)
    g, img = ch.geo, ch.base
    lung = img[int(g.ly * 384), int(g.lx["R"] * 384)]
    spine = img[int(g.ly * 384) - 40:int(g.ly * 384) + 40, int(g.cx * 384)].mean()
    outside = img[200, 2]
    assert outside < lung < spine


# ----------------------------------------------------------------------------------- DICOM variants
def test_variants_cover_the_real_range():
    vs = [vb.sample_variant(np.random.default_rng([42, 1, i, 1])) for i in range(300)]
    assert {v.photometric for v in vs} == {"MONOCHROME1", "MONOCHROME2"}
    assert {v.bits_stored for v in vs} == {12, 14, 15, 16}
    assert {v.j2k for v in vs} == {True, False}
    assert {v.tagless for v in vs} == {True, False}
    assert {v.window for v in vs} == {True, False}
    assert {v.rescale for v in vs} == {None, (1.0, 0.0), (1.0, -1024.0)}
    assert 0.15 <= np.mean([v.j2k for v in vs]) <= 0.35
    sizes = [max(v.rows, v.cols) for v in vs]
    assert min(sizes) >= 360 and max(sizes) <= 2600
    assert np.median(sizes) <= 1200 and sum(s >= 1700 for s in sizes) >= 3
    assert any(v.rows != v.cols for v in vs)


@pytest.mark.parametrize("variant", [
    vb.DicomVariant(400, 360, "MONOCHROME1", 12, True, True, False, None, False),
    vb.DicomVariant(380, 420, "MONOCHROME2", 16, False, False, True, (1.0, -1024.0), True),
    vb.DicomVariant(360, 400, "MONOCHROME1", 14, False, False, True, (1.0, 0.0), False),
])
def test_dicom_roundtrip(tmp_path, variant):
    img = np.linspace(0, 1, variant.rows * variant.cols, dtype=np.float32).reshape(variant.rows, variant.cols)
    ds = vb.build_dataset(img, variant, "ab" * 16, 1, "train", 0, np.random.default_rng(0))
    path = tmp_path / "x.dicom"
    ds.save_as(path, enforce_file_format=True)
    back = pydicom.dcmread(path)
    arr = back.pixel_array
    assert arr.shape == (variant.rows, variant.cols) and arr.max() < 2 ** variant.bits_stored
    assert back.file_meta.TransferSyntaxUID == (JPEG2000Lossless if variant.j2k else ExplicitVRLittleEndian)
    # MONOCHROME1 stores dense (bright on display) as low values.
    first, last = int(arr.flat[0]), int(arr.flat[-1])
    assert (first > last) if variant.photometric == "MONOCHROME1" else (first < last)
    if variant.tagless:
        kept = {e.keyword for e in back}
        assert kept == {"PatientSex", "PatientAge", "SamplesPerPixel", "PhotometricInterpretation", "Rows", "Columns",
                        "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation", "PixelData"}
    else:
        assert back.SOPClassUID == back.file_meta.MediaStorageSOPClassUID
        assert ("WindowCenter" in back) == variant.window
        assert ("RescaleIntercept" in back) == (variant.rescale is not None)
        # The window covers the content in rescaled units.
        if variant.window:
            slope, icpt = variant.rescale or (1.0, 0.0)
            vals = arr.astype(float) * slope + icpt
            assert vals.min() - 1 <= back.WindowCenter - back.WindowWidth / 2 <= np.percentile(vals, 10)


# ------------------------------------------------------------------------------------ VinBigData layout
def test_vinbigdata_layout(vbd):
    train = pd.read_csv(vbd / "train.csv", dtype={"rad_id": str})
    assert list(train.columns) == ["image_id", "class_name", "class_id", "rad_id", "x_min", "y_min", "x_max", "y_max"]
    tm = pd.read_csv(vbd / "train_meta.csv")
    te = pd.read_csv(vbd / "test_meta.csv")
    assert list(tm.columns) == ["image_id", "dim0", "dim1"] and len(tm) == 24 and len(te) == 8
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in tm.image_id)
    assert set(train.image_id) == set(tm.image_id)
    assert not set(tm.image_id) & set(te.image_id)
    # Files exist and match the meta sizes; every file decodes.
    seen = {"pi": set(), "ts": set()}
    for split, meta in (("train", tm), ("test", te)):
        assert sorted(p.stem for p in (vbd / split).glob("*.dicom")) == sorted(meta.image_id)
        for r in meta.itertuples():
            ds = pydicom.dcmread(vbd / split / f"{r.image_id}.dicom")
            assert ds.pixel_array.shape == (r.dim0, r.dim1)
            seen["pi"].add(ds.PhotometricInterpretation)
            seen["ts"].add(ds.file_meta.TransferSyntaxUID)
    assert seen["pi"] == {"MONOCHROME1", "MONOCHROME2"}
    # Class names/ids agree; normal rows have no box; boxes lie in the image.
    assert all(VINBIGDATA[c] == n for c, n in zip(train.class_id, train.class_name))
    normal = train.class_id == 14
    assert train.loc[normal, ["x_min", "y_min", "x_max", "y_max"]].isna().all().all()
    box = train[~normal].merge(tm, on="image_id")
    assert ((box.x_min >= 0) & (box.y_min >= 0) & (box.x_max <= box.dim1) & (box.y_max <= box.dim0)).all()
    assert ((box.x_max > box.x_min) & (box.y_max > box.y_min)).all()
    # Three distinct readers per image from R1..R17.
    per = train.groupby("image_id").rad_id.agg(lambda s: len(set(s)))
    assert (per == 3).all()
    assert train.rad_id.str.fullmatch(r"R([1-9]|1[0-7])").all()
    # Coordinates written like the real file (691.0), normal rows as four empty fields.
    text = (vbd / "train.csv").read_text().splitlines()
    assert any(line.endswith(",,,,") and ",No finding,14," in line for line in text)
    assert any(line.split(",")[4].endswith(".0") for line in text[1:] if ",No finding," not in line)
    # Sample submission = test ids; test_truth covers every test id.
    sub = pd.read_csv(vbd / "sample_submission.csv")
    assert sorted(sub.image_id) == sorted(te.image_id) and (sub.PredictionString == "14 1 0 0 1 1").all()
    truth = pd.read_csv(vbd / "test_truth.csv")
    assert set(truth.image_id) == set(te.image_id) and list(truth.columns) == list(train.columns)


def test_about_half_the_images_are_normal():
    """Over a default-size set, without writing files: the drawn truth is normal for about half."""
    normal = [not vb.draw_findings(vb._rng(42, "train", i, 2), list(vb.DEFAULT_CLASSES)) for i in range(240)]
    assert 0.45 <= np.mean(normal) <= 0.62
    counts = [len(vb.draw_findings(vb._rng(42, "train", i, 2), list(vb.DEFAULT_CLASSES))) for i in range(240)]
    assert set(counts) == {0, 1, 2, 3}


def test_reader_disagreement(vbd):
    train = pd.read_csv(vbd / "train.csv")
    found = train[train.class_id != 14]
    per = found.groupby(["image_id", "class_id"]).rad_id.nunique()
    assert (per == 3).any()
    boxes = found.groupby(["image_id", "class_id"]).x_min.agg(["min", "max"])
    assert (boxes["max"] > boxes["min"]).any(), "readers' boxes should be jittered, not identical"
    all_normal = train.groupby("image_id").class_id.agg(lambda s: (s == 14).all())
    assert 0.2 <= all_normal.mean() <= 0.8


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = make_demo(tmp_path / "a", n_train=3, n_test=2, seed=9)
    b = make_demo(tmp_path / "b", n_train=3, n_test=2, seed=9)
    c = make_demo(tmp_path / "c", n_train=3, n_test=2, seed=10)
    ha, hb, hc = _hashes(a), _hashes(b), _hashes(c)
    assert ha == hb
    assert set(ha) != set(hc)


def test_parallel_generation_matches_serial(tmp_path):
    vb.write_vinbigdata(tmp_path / "s", 14, 2, 4, workers=1)
    vb.write_vinbigdata(tmp_path / "p", 14, 2, 4, workers=2)  # 16 tasks: the pool is used
    assert _hashes(tmp_path / "s") == _hashes(tmp_path / "p")


def test_refuses_foreign_folder_and_replaces_earlier_demo(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "train.csv").write_text("x")
    with pytest.raises(DataError, match="not written by demo-data"):
        make_demo(tmp_path / "real", n_train=2, n_test=1)
    out = make_demo(tmp_path / "d", n_train=2, n_test=1, seed=1)
    old = {p.name for p in (out / "train").iterdir()}
    make_demo(out, n_train=2, n_test=1, seed=2)
    new = {p.name for p in (out / "train").iterdir()}
    assert len(new) == 2 and not old & new
    assert len(list((out / "lungs" / "masks").glob("*.png"))) == 3, "the earlier demo's lung masks are gone"
    with pytest.raises(DataError, match="not VinBigData findings"):
        make_demo(tmp_path / "e", classes=["Nope"], n_train=1, n_test=0)


def test_all_classes_can_be_requested(tmp_path):
    out = make_demo(tmp_path / "all", n_train=12, n_test=0, seed=1, classes=VINBIGDATA[:14])
    assert (out / "train.csv").is_file()


# --------------------------------------------------------------------------------- ChestX-ray14 layout
def test_chestxray14_quirks(nih, real_dir):
    raw = (nih / "Data_Entry_2017.csv").read_bytes()
    real_head = (real_dir / "chestxray14" / "Data_Entry_2017.csv").read_bytes().split(b"\r\n")[0]
    assert raw.split(b"\r\n")[0] == real_head
    assert raw.endswith(b"\r\n") and raw.count(b"\n") == raw.count(b"\r\n")
    rows = list(csv.reader(raw.decode().splitlines()))
    assert len(rows[0]) == 12 and all(len(r) == 11 for r in rows[1:]) and len(rows) == 31
    bb = (nih / "BBox_List_2017.csv").read_text()
    real_bb = (real_dir / "chestxray14" / "BBox_List_2017.csv").read_text().splitlines()[0]
    assert bb.splitlines()[0] == real_bb == "Image Index,Finding Label,Bbox [x,y,w,h],,,"
    assert "\r" not in bb
    brows = list(csv.reader(bb.splitlines()))[1:]
    assert brows and all(len(r) == 6 for r in brows)
    assert all(r[1] in ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltrate", "Mass", "Nodule", "Pneumonia",
                        "Pneumothorax") for r in brows)
    assert all(0 <= float(r[2]) and float(r[2]) + float(r[4]) <= 1024 for r in brows)


def test_chestxray14_split_by_patient(nih):
    train = (nih / "train_val_list.txt").read_text().split("\n")
    test = (nih / "test_list.txt").read_text().split("\n")
    assert len(train) == 20 and len(test) == 10 and not (nih / "test_list.txt").read_text().endswith("\n")
    assert not {n[:8] for n in train} & {n[:8] for n in test}
    df = pd.read_csv(nih / "Data_Entry_2017.csv")
    assert set(df["Image Index"]) == set(train) | set(test)
    assert df["Patient ID"].value_counts().max() >= 2, "some patients have follow-ups"
    labels = {lab for s in df["Finding Labels"] for lab in s.split("|")}
    assert "No Finding" in labels and labels <= set(CHESTXRAY14[:14]) | {"No Finding"}
    for name in train[:3] + test[:3]:
        from PIL import Image
        with Image.open(nih / "images" / name) as im:
            assert im.mode == "L" and im.size == (256, 256)
    bb = pd.read_csv(nih / "BBox_List_2017.csv")
    assert set(bb["Image Index"]) <= set(test)


def test_chestxray14_plan_patients():
    ps = cx.plan_patients(50, 20, np.random.default_rng(0))
    assert sum(p["n"] for p in ps if p["split"] == "train") == 50
    assert sum(p["n"] for p in ps if p["split"] == "test") == 20
    assert [p["patient"] for p in ps] == list(range(1, len(ps) + 1))


# --------------------------------------------------------------------------------------------- CLI
def test_cli_writes_layout(tmp_path, capsys):
    assert demo_data.main([str(tmp_path / "o"), "--n-train", "3", "--n-test", "1", "--seed", "2"]) == 0
    out = capsys.readouterr().out
    assert "3 train and 1 test DICOMs" in out
    for name in ("train.csv", "test_truth.csv", "train_meta.csv", "test_meta.csv", "sample_submission.csv", MARKER):
        assert (tmp_path / "o" / name).is_file()
    assert demo_data.main([str(tmp_path / "n"), "--format", "chestxray14", "--n-train", "3", "--n-test", "2",
                           "--image-size", "128"]) == 0
    assert len(list((tmp_path / "n" / "images").glob("*.png"))) == 5


def test_cli_via_main_reports_errors(tmp_path, capsys):
    from pipeline.__main__ import main

    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("x")
    rc = main(["demo-data", str(tmp_path / "x"), "--n-train", "1", "--n-test", "0"])
    assert rc != 0 and "not written by demo-data" in capsys.readouterr().err


# ------------------------------------------------------------------------------ the real readers
def _source(module: str):
    try:
        return importlib.import_module(module)
    except ImportError:
        pytest.skip(f"{module} is not there yet")


def test_vinbigdata_reader_loads_demo(vbd):
    src = _source("pipeline.sources")
    data = src.load_vinbigdata(vbd)
    assert set(data.images.loc[data.images.split == "train", "image_id"]) == set(
        pd.read_csv(vbd / "train_meta.csv").image_id)
    assert (data.images.split == "test").sum() == 8
    assert len(data.annotations) == len(pd.read_csv(vbd / "train.csv"))
    with_meta = src.load_vinbigdata(vbd, meta_csv="train_meta.csv", test_meta_csv="test_meta.csv")
    merged = with_meta.images.merge(data.images, on="image_id")
    assert (merged.width_x == merged.width_y).all() and (merged.height_x == merged.height_y).all()


def test_chestxray14_reader_loads_demo(nih):
    src = _source("pipeline.sources")
    data = src.load_chestxray14(nih)
    assert (data.images.split == "train").sum() == 20 and (data.images.split == "test").sum() == 10
    assert len(data.annotations) == len(pd.read_csv(nih / "BBox_List_2017.csv"))


# ------------------------------------------------------------------------- lung masks and non-chest images
def test_lung_mask_covers_the_dark_lung_fields():
    rng = np.random.default_rng(4)
    r = synth.render_image(rng, 420, 380, ["Pleural effusion"])
    m = r.lung_mask()
    assert m.shape == (420, 380) and m.dtype == bool and 0.12 < m.mean() < 0.45
    assert r.image[m].mean() < r.image[~m].mean() - 0.1, "lungs are darker than the rest"
    hx, hy, _, _ = r.chest.geo.heart
    assert not m[int(hy * 420), int(hx * 380)], "the heart shadow is not lung"
    n, _ = cv2.connectedComponents(m.astype(np.uint8))
    assert n - 1 == 2


def test_demo_lungs_set_matches_the_dicoms(vbd):
    from pipeline.lungs import read_mask, read_mask_dataset

    ds = read_mask_dataset(vbd / "lungs")
    assert ds.layout == "images_masks" and ds.label_name == "abnormal" and not ds.skipped
    meta = pd.concat([pd.read_csv(vbd / "train_meta.csv"), pd.read_csv(vbd / "test_meta.csv")])
    assert sorted(it.image_id for it in ds.items) == sorted(meta.image_id)
    assert {it.split for it in ds.items} == {"train", "valid", "test"}
    assert sum(it.split == "test" for it in ds.items) == 8
    for it in ds.items[:4]:
        row = meta[meta.image_id == it.image_id].iloc[0]
        m = read_mask(it.masks, (int(row.dim0), int(row.dim1)))   # the DICOM's own pixels
        assert 0.1 < m.mean() < 0.5
    truth = pd.read_csv(vbd / "test_truth.csv")
    abnormal = set(truth.loc[truth.class_id != 14, "image_id"])
    assert {it.image_id for it in ds.split("test") if it.label == 1} == abnormal & {it.image_id for it in ds.split("test")}


def test_demo_writes_non_chest_images(vbd, nih):
    from pipeline.demo.other import KINDS

    for root in (vbd, nih):
        labels = pd.read_csv(root / "other" / "labels.csv")
        assert set(labels.kind) == set(KINDS) and (labels.chest == 0).all()
        assert all((root / "other" / f).is_file() for f in labels.file)
    colour = cv2.imread(str(vbd / "other" / "colour_scene_0.png"), cv2.IMREAD_UNCHANGED)
    assert colour.ndim == 3
    assert sorted(p.stem for p in (nih / "lungs" / "masks").glob("*.png")) == sorted(
        p.stem for p in (nih / "images").glob("*.png"))
