"""Source readers on the real VinBigData / ChestX-ray14 files, and on broken variants built in tmp_path."""
from __future__ import annotations

import gzip
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.config import Config
from pipeline.errors import ConfigError, DataError
from pipeline.sources import (
    ANNOTATION_COLUMNS, IMAGE_COLUMNS, dicom_sizes, load_chestxray14, load_dataset, load_vinbigdata,
    read_bbox_list, read_data_entry, read_image_sizes, read_sample_submission, read_split_list,
    read_vinbigdata_train,
)

# Rows (height) x Columns (width) of the 4 real VinBigData DICOMs (MANIFEST.md, DICOM header table).
REAL_DICOM_SIZES = {
    "4004f114ab2ecb224ac7484957b79ea4": (1976, 1984),
    "4b56bc6d22b192f075f13231419dfcc8": (1968, 2040),
    "6a0da094696816e8ccc92c81602173d1": (2008, 2112),
    "9943805f08872ab64d994fc84ff1b25d": (1936, 2280),
}  # id -> (width, height)


# --------------------------------------------------------------------------------------------------
# cached loads of the big real files (each read once per module)
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vbd(real_dir):
    return real_dir / "vinbigdata"


@pytest.fixture(scope="module")
def vbd_sizes(vbd):
    return read_image_sizes(vbd / "train_meta.csv")


@pytest.fixture(scope="module")
def vbd_train(vbd, vbd_sizes):
    t = time.perf_counter()
    ann, report = read_vinbigdata_train(vbd / "train.csv", vbd_sizes, "train_meta.csv")
    return ann, report, time.perf_counter() - t


@pytest.fixture(scope="module")
def vbd_ds(vbd):
    # CSV-only: the 18,000 DICOMs are not here, so their sizes are the meta CSVs' (missing_images=assume)
    return load_vinbigdata(vbd, meta_csv=vbd / "train_meta.csv", test_meta_csv=vbd / "test_meta.csv",
                           missing_images="assume")


@pytest.fixture(scope="module")
def nih(real_dir):
    return real_dir / "chestxray14"


@pytest.fixture(scope="module")
def entry_2017(nih):
    return read_data_entry(nih / "Data_Entry_2017.csv")


@pytest.fixture(scope="module")
def nih_ds(nih):
    return load_chestxray14(nih, missing_images="assume")


# --------------------------------------------------------------------------------------------------
# VinBigData, real files
# --------------------------------------------------------------------------------------------------
def test_vinbigdata_train_csv_real(vbd_train):
    ann, report, seconds = vbd_train
    assert list(ann.columns) == ANNOTATION_COLUMNS
    assert len(ann) == 67914
    assert ann["image_id"].nunique() == 15000
    assert ann["rad_id"].nunique() == 17
    normal = ann["class_id"] == 14
    assert normal.sum() == 31818
    assert ann.loc[normal, ["x_min", "y_min", "x_max", "y_max"]].isna().all().all()
    assert ann.loc[~normal, ["x_min", "y_min", "x_max", "y_max"]].notna().all().all()
    assert (ann["class_name"] == "Aortic enlargement").sum() == 7162
    assert (ann["class_name"] == "Pneumothorax").sum() == 226
    assert (ann["class_id"] == 12).sum() == 226
    assert ann["class_id"].dtype == np.int64 and ann["x_min"].dtype == np.float64
    # every real box is inside its image: nothing clipped
    assert not any("clipped" in line for line in report)
    # first data row of the file (line 2) stays first
    assert ann.iloc[0]["image_id"] == "50a418190bc3fb1ef1633bf9678929b3"
    assert seconds < 10, f"train.csv took {seconds:.1f} s to read and validate"


def test_vinbigdata_sizes_from_meta(vbd_sizes):
    assert list(vbd_sizes.columns) == ["image_id", "width", "height"]
    assert len(vbd_sizes) == 15000
    row = vbd_sizes.set_index("image_id").loc["4b56bc6d22b192f075f13231419dfcc8"]
    assert (row["width"], row["height"]) == (1968, 2040)  # dim1 = columns = width, dim0 = rows = height


def test_dicom_header_sizes_equal_train_meta(vbd, vbd_sizes):
    got = dicom_sizes(sorted((vbd / "dicom").glob("*.dicom")))
    assert len(got) == 4
    for _, r in got.iterrows():
        assert (r["width"], r["height"]) == REAL_DICOM_SIZES[r["image_id"]]
    merged = got.merge(vbd_sizes, on="image_id", suffixes=("", "_meta"))
    assert len(merged) == 4
    assert (merged["width"] == merged["width_meta"]).all() and (merged["height"] == merged["height_meta"]).all()


def test_sample_submission_real(vbd):
    ids = read_sample_submission(vbd / "sample_submission.csv")
    assert len(ids) == 3000 and len(set(ids)) == 3000
    assert set(ids) == set(read_image_sizes(vbd / "test_meta.csv")["image_id"])


def test_load_vinbigdata_real(vbd, vbd_ds):
    im = vbd_ds.images
    assert list(im.columns) == IMAGE_COLUMNS
    assert (im["split"] == "train").sum() == 15000 and (im["split"] == "test").sum() == 3000
    assert im["image_id"].is_unique
    assert (im["patient_id"] == "").all()
    assert im["width"].dtype == np.int64 and (im["width"] > 0).all() and (im["height"] > 0).all()
    by_id = im.set_index("image_id")
    # 4004f114...: Aortic enlargement, Calcification, Cardiomegaly, Nodule/Mass, Other lesion, Pleural thickening
    assert by_id.loc["4004f114ab2ecb224ac7484957b79ea4", "labels"] == "0|2|3|8|9|11"
    assert by_id.loc["4004f114ab2ecb224ac7484957b79ea4", "height"] == 1984
    assert by_id.loc["50a418190bc3fb1ef1633bf9678929b3", "labels"] == "14"
    assert (im.loc[im["split"] == "test", "labels"] == "").all()
    # 15,000 train images, 10,606 of them read as normal by all three radiologists
    assert (im["labels"] == "14").sum() == 10606
    assert by_id.loc["50a418190bc3fb1ef1633bf9678929b3", "source"] == str(
        vbd / "train" / "50a418190bc3fb1ef1633bf9678929b3.dicom")
    assert len(vbd_ds.annotations) == 67914


def test_load_vinbigdata_from_dicom_headers_with_limit(vbd, tmp_path):
    """Kaggle layout built from the real DICOMs (symlinked) and their real train.csv rows; no meta CSV."""
    rows = pd.read_csv(vbd / "train.csv", dtype={"image_id": "str"})
    rows = rows[rows["image_id"].isin(REAL_DICOM_SIZES)]
    rows.to_csv(tmp_path / "train.csv", index=False)
    (tmp_path / "train").mkdir()
    for i, image_id in enumerate(REAL_DICOM_SIZES):
        suffix = ".dcm" if i == 0 else ".dicom"  # both spellings are accepted
        (tmp_path / "train" / f"{image_id}{suffix}").symlink_to(vbd / "dicom" / f"{image_id}.dicom")
    ds = load_vinbigdata(tmp_path)
    assert len(ds.annotations) == len(rows) == 17 + 12 + 10 + 16
    assert (ds.images["split"] == "train").all() and len(ds.images) == 4
    for _, r in ds.images.iterrows():
        assert (r["width"], r["height"]) == REAL_DICOM_SIZES[r["image_id"]]
        assert Path(r["source"]).is_file()
    assert any("DICOM headers" in line for line in ds.report)
    assert any("no test images" in line for line in ds.report)

    first = rows["image_id"].drop_duplicates().tolist()[:2]
    ds2 = load_vinbigdata(tmp_path, limit=2)
    assert ds2.images["image_id"].tolist() == first
    assert set(ds2.annotations["image_id"]) == set(first)


# --------------------------------------------------------------------------------------------------
# VinBigData, broken variants
# --------------------------------------------------------------------------------------------------
HEADER = "image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max"
GOOD_ROWS = [  # line 2, 3, 4
    "img1,No finding,14,R1,,,,",
    "img1,Cardiomegaly,3,R2,100,200,300,400",
    "img2,Aortic enlargement,0,R3,10,20,30,40",
]
META = "image_id,dim0,dim1\nimg1,1000,800\nimg2,600,500\n"  # img1: 800 wide, 1000 high


def _write(tmp_path, rows, header=HEADER, meta=META):
    (tmp_path / "train.csv").write_text("\n".join([header, *rows]) + "\n")
    (tmp_path / "train_meta.csv").write_text(meta)
    return tmp_path / "train.csv", read_image_sizes(tmp_path / "train_meta.csv")


def _error(tmp_path, rows, **kw) -> str:
    path, sizes = _write(tmp_path, rows, **kw)
    with pytest.raises(DataError) as exc:
        read_vinbigdata_train(path, sizes, "train_meta.csv")
    return str(exc.value)


def test_good_small_file(tmp_path):
    path, sizes = _write(tmp_path, GOOD_ROWS)
    ann, report = read_vinbigdata_train(path, sizes)
    assert ann["class_id"].tolist() == [14, 3, 0]
    assert ann.iloc[1][["x_min", "y_min", "x_max", "y_max"]].tolist() == [100.0, 200.0, 300.0, 400.0]
    assert report == []


@pytest.mark.parametrize("line3, problem", [
    ("img1,Cardiomegaly,3,R2,100,200,850,400", "outside image 'img1' of 800x1000"),   # 50 px past the right edge
    ("img1,Cardiomegaly,3,R2,100,200,100,400", "empty box"),                        # x_max == x_min
    ("img1,Cardiomegaly,3,R2,300,200,100,400", "empty box"),                        # x_max < x_min
    ("img1,Cardiomegaly,3,R2,100,400,300,200", "empty box"),                        # y_max < y_min
    ("img1,Cardiomegaly,3,R2,,,,", "finding (class_id != 14) without box coordinates"),
    ("img1,Cardiomegaly,3,R2,100,200,,400", "finding (class_id != 14) without box coordinates"),
    ("img1,Heart attack,3,R2,100,200,300,400", "unknown class name 'Heart attack'"),
    ("img1,Cardiomegaly,15,R2,100,200,300,400", "unknown class id '15'"),
    ("img1,Cardiomegaly,0,R2,100,200,300,400", "class_id 0 is 'Aortic enlargement' but class_name is 'Cardiomegaly'"),
    ("../img1,Cardiomegaly,3,R2,100,200,300,400", "image_id '../img1' is not a safe file name"),
    ("img3,Cardiomegaly,3,R2,100,200,300,400", "image 'img3' has no size in train_meta.csv"),
    ("img1,Cardiomegaly,3,R2,100,abc,300,400", "y_min is 'abc', not a number"),
    ("img1,Cardiomegaly,3,R2,-5,200,300,400", "outside image 'img1'"),  # 5 px left of the edge
])
def test_broken_train_csv_names_file_line_and_problem(tmp_path, line3, problem):
    msg = _error(tmp_path, [GOOD_ROWS[0], line3, GOOD_ROWS[2]])
    assert "train.csv line 3:" in msg, msg
    assert problem in msg, msg
    assert "What to do:" in msg
    assert "line 2:" not in msg and "line 4:" not in msg  # the good rows are not blamed


def test_missing_column(tmp_path):
    msg = _error(tmp_path, ["img1,No finding,14,,,,"], header="image_id,class_name,class_id,x_min,y_min,x_max,y_max")
    assert "train.csv line 1" in msg and "missing required column(s) ['rad_id']" in msg


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="train.csv: VinBigData annotations"):
        read_vinbigdata_train(tmp_path / "train.csv")
    with pytest.raises(DataError, match="VinBigData folder not found"):
        load_vinbigdata(tmp_path / "nope")
    (tmp_path / "train.csv").write_text(HEADER + "\n" + GOOD_ROWS[1] + "\n")
    with pytest.raises(DataError, match=r"train.csv line 2: image file not found: .*train/img1.dicom"):
        load_vinbigdata(tmp_path)  # no meta CSV and no DICOM
    with pytest.raises(DataError, match=r"train.csv line 2: image file not found .*and no size stated to assume"):
        load_vinbigdata(tmp_path, missing_images="assume")  # nothing to assume without a meta CSV
    with pytest.raises(DataError, match="missing_meta.csv: image size CSV not found"):
        load_vinbigdata(tmp_path, meta_csv="missing_meta.csv")


def test_box_one_px_past_the_edge_is_clipped_and_reported(tmp_path):
    rows = [GOOD_ROWS[0], "img1,Cardiomegaly,3,R2,100,200,801,400", "img2,Aortic enlargement,0,R3,-1.5,20,30,40"]
    path, sizes = _write(tmp_path, rows)
    ann, report = read_vinbigdata_train(path, sizes)
    assert ann.iloc[1]["x_max"] == 800.0
    assert ann.iloc[2]["x_min"] == 0.0
    assert report == ["train.csv: 2 boxes clipped to the image by at most 1.5 px"]
    # the loader passes the report on
    ds = load_vinbigdata(tmp_path, meta_csv=tmp_path / "train_meta.csv", missing_images="assume")
    assert "train.csv: 2 boxes clipped to the image by at most 1.5 px" in ds.report


def test_no_finding_with_box_is_emptied(tmp_path):
    path, sizes = _write(tmp_path, ["img1,No finding,14,R1,0,0,1,1", GOOD_ROWS[2]])
    ann, report = read_vinbigdata_train(path, sizes)
    assert ann.iloc[0][["x_min", "y_min", "x_max", "y_max"]].isna().all()
    assert "1 'no finding' rows had a box" in report[0]


def test_all_problems_collected_in_one_error(tmp_path):
    rows = [f"img1,Cardiomegaly,3,R2,100,200,{900 + i},400" for i in range(12)] + ["img1,Bad,3,R2,1,1,2,2"]
    msg = _error(tmp_path, rows)
    assert msg.startswith("13 problems in the input data (first 10 shown):")
    assert "line 2:" in msg and "line 11:" in msg and "line 12:" not in msg
    assert "... and 3 more problems" in msg


def test_blank_lines_keep_true_line_numbers(tmp_path):
    msg = _error(tmp_path, [GOOD_ROWS[0], "", "img1,Cardiomegaly,3,R2,300,200,100,400"])
    assert "train.csv line 4: empty box" in msg


def test_meta_csv_variants(tmp_path):
    (tmp_path / "meta.csv").write_text("image_id,split,height,width,out_height\nimg1,train,1000,800,512\n")
    sizes = read_image_sizes(tmp_path / "meta.csv")  # the project's own meta.csv
    assert sizes.to_dict("records") == [{"image_id": "img1", "width": 800, "height": 1000}]
    (tmp_path / "bad.csv").write_text("image_id,dim0,dim1\nimg1,1000,-800\nimg2,1000,800\nimg2,900,800\n")
    with pytest.raises(DataError) as exc:
        read_image_sizes(tmp_path / "bad.csv")
    msg = str(exc.value)
    assert "bad.csv line 2: dim1 (width) is -800, not a positive whole number" in msg
    assert "bad.csv line 4: image 'img2' is listed more than once with different sizes" in msg
    (tmp_path / "cols.csv").write_text("image_id,rows,cols\nimg1,1,1\n")
    with pytest.raises(DataError, match=r"cols.csv line 1: missing required column\(s\) \['dim0', 'dim1'\]"):
        read_image_sizes(tmp_path / "cols.csv")


def test_digit_only_ids_stay_text(tmp_path):
    (tmp_path / "m.csv").write_text("image_id,dim0,dim1\n0012,10,20\n")
    assert read_image_sizes(tmp_path / "m.csv")["image_id"].tolist() == ["0012"]


# --------------------------------------------------------------------------------------------------
# ChestX-ray14, real files
# --------------------------------------------------------------------------------------------------
ENTRY_COLUMNS = ["image_id", "image_index", "finding_labels", "labels", "patient_id", "follow_up", "patient_age",
                 "original_width", "original_height", "pixel_spacing_x", "pixel_spacing_y", "patient_gender",
                 "view_position"]


def test_data_entry_2017(entry_2017):
    e = entry_2017
    assert len(e) == 112120 and e["image_id"].is_unique
    assert list(e.columns) == ENTRY_COLUMNS  # bracketed header names rejoined, trailing-comma column gone
    assert e["patient_id"].nunique() == 30805
    r = e.iloc[1]  # 00000001_001.png,Cardiomegaly|Emphysema,1,1,58,M,PA,2894,2729,0.143,0.143
    assert (r["image_id"], r["image_index"], r["labels"], r["patient_id"]) == (
        "00000001_001", "00000001_001.png", "1|10", "1")
    assert (r["original_width"], r["original_height"], r["pixel_spacing_x"]) == (2894, 2729, 0.143)
    assert e.loc[e["finding_labels"] == "No Finding", "labels"].eq("14").all()
    assert (e["labels"] == "14").sum() == 60361


def test_data_entry_v2020_gz(nih, entry_2017):
    e = read_data_entry(nih / "Data_Entry_2017_v2020.csv.gz")
    assert len(e) == 112120 and list(e.columns) == ENTRY_COLUMNS
    assert set(e["image_id"]) == set(entry_2017["image_id"])  # same images (the row order differs)
    new, old = e.set_index("image_id").loc["00000001_000"], entry_2017.set_index("image_id").loc["00000001_000"]
    assert (new["patient_age"], old["patient_age"]) == (57, 58)  # the known revision
    assert new["pixel_spacing_x"] == pytest.approx(0.143)  # written 0.14300000000000002


def test_bbox_list_real(nih):
    ann, report = read_bbox_list(nih / "BBox_List_2017.csv")
    assert list(ann.columns) == ANNOTATION_COLUMNS
    assert len(ann) == 984 and ann["image_id"].nunique() == 880
    assert (ann["rad_id"] == "NIH").all()
    assert set(ann["class_id"]) == set(range(8))
    inf = ann["class_name"] == "Infiltration"
    assert inf.sum() == 123 and (ann.loc[inf, "class_id"] == 3).all()
    assert "'Infiltrate' read as 'Infiltration'" in report[0]
    # line 2: 00013118_008.png,Atelectasis,225.084745762712,547.019216763771,86.7796610169491,79.1864406779661
    r = ann.iloc[0]
    assert (r["image_id"], r["class_id"]) == ("00013118_008", 0)
    assert r["x_min"] == pytest.approx(225.084745762712)
    assert r["y_min"] == pytest.approx(547.019216763771)
    assert r["x_max"] == pytest.approx(311.864406779661)  # 225.0847... + 86.7797...
    assert r["y_max"] == pytest.approx(626.205657441737)  # 547.0192... + 79.1864...
    assert (ann["x_max"] <= 1024).all() and (ann["y_max"] <= 1024).all()


def test_split_lists_partition_data_entry(nih, entry_2017):
    train = read_split_list(nih / "train_val_list.txt")
    test = read_split_list(nih / "test_list.txt")
    assert len(train) == 86524 and len(test) == 25596
    assert not set(train) & set(test)
    assert set(train) | set(test) == set(entry_2017["image_id"])
    assert test[-1] == "00030805_000"  # last line without a final newline


def test_load_chestxray14_real(nih, nih_ds):
    im, ann = nih_ds.images, nih_ds.annotations
    assert list(im.columns) == IMAGE_COLUMNS and len(im) == 112120
    assert (im["split"] == "train").sum() == 86524 and (im["split"] == "test").sum() == 25596
    # the official split is by patient: no patient has images in both splits
    assert (im.groupby("patient_id")["split"].nunique() == 1).all()
    # the 11 real PNGs are found and measured; the rest are assumed 1024x1024 and reported
    pngs = {p.stem for p in (nih / "images").glob("*.png")}
    on_disk = im[im["image_id"].isin(pngs)]
    assert len(on_disk) == len(pngs) == 11
    assert on_disk["source"].map(lambda s: Path(s).is_file()).all()
    assert (on_disk["width"] == 1024).all() and (on_disk["height"] == 1024).all()
    assert any("112109 of 112120 image files not found" in line and "assume" in line for line in nih_ds.report)
    by_id = im.set_index("image_id")
    assert by_id.loc["00000001_000", "labels"] == "1" and by_id.loc["00000001_000", "split"] == "train"
    assert by_id.loc["00000001_000", "source"] == str(nih / "images" / "00000001_000.png")
    assert len(ann) == 984
    assert set(ann["image_id"]) <= set(im.loc[im["split"] == "test", "image_id"])


def test_chestxray14_nih_folders_and_non_1024_png(tmp_path):
    """images_001/images/ layout, v2020-style Data_Entry, CRLF split lists, and a PNG that is not 1024x1024."""
    from PIL import Image

    (tmp_path / "Data_Entry_2017_v2020.csv").write_text(
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
        "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n"
        "00000001_000.png,Cardiomegaly,0,1,57,M,PA,2682,2749,0.143,0.143\n"
        "00000002_000.png,No Finding,0,2,81,M,PA,2500,2048,0.171,0.171\n"
        "00000003_000.png,Hernia|Infiltration,0,3,74,F,PA,2500,2048,0.168,0.168\n")
    (tmp_path / "BBox_List_2017.csv").write_text(
        "Image Index,Finding Label,Bbox [x,y,w,h],,,\r\n00000001_000.png,Cardiomegaly,100,200,300,400\r\n")
    (tmp_path / "train_val_list.txt").write_text("00000002_000.png\r\n00000003_000.png")
    (tmp_path / "test_list.txt").write_text("00000001_000.png\r\n")
    d = tmp_path / "images_001" / "images"
    d.mkdir(parents=True)
    Image.new("L", (512, 256)).save(d / "00000001_000.png")
    Image.new("L", (1024, 1024)).save(d / "00000002_000.png")
    ds = load_chestxray14(tmp_path, missing_images="assume")
    im = ds.images.set_index("image_id")
    assert im["split"].tolist() == ["test", "train", "train"]
    assert im["labels"].tolist() == ["1", "14", "3|13"]
    assert (im.loc["00000001_000", "width"], im.loc["00000001_000", "height"]) == (512, 256)
    assert im.loc["00000001_000", "source"] == str(d / "00000001_000.png")
    assert im.loc["00000003_000", "width"] == 1024  # absent PNG: NIH size
    # the box is in 1024 space; the PNG is 512 wide (x / 2) and 256 high (y / 4)
    assert ds.annotations.iloc[0][["x_min", "y_min", "x_max", "y_max"]].tolist() == [50.0, 50.0, 200.0, 150.0]
    assert any("scaled per axis" in line and "1024x1024 -> 512x256" in line for line in ds.report)
    assert any("1 of 3 image files not found" in line for line in ds.report)

    ds2 = load_chestxray14(tmp_path, official_split=False, limit=2, missing_images="assume")
    assert ds2.images["split"].tolist() == ["train", "train"]
    assert ds2.images["image_id"].tolist() == ["00000001_000", "00000002_000"]
    assert len(ds2.annotations) == 1

    with pytest.raises(DataError, match="image folder not found"):
        load_chestxray14(tmp_path, images_subdir="pngs")
    (tmp_path / "test_list.txt").unlink()
    with pytest.raises(DataError, match="test_list.txt: ChestX-ray14 test list not found.*official_split=false"):
        load_chestxray14(tmp_path, missing_images="assume")


def test_chestxray14_broken_files(tmp_path):
    bbox = tmp_path / "BBox_List_2017.csv"
    bbox.write_text("Image Index,Finding Label,Bbox [x,y,w,h],,,\n"
                    "a.png,Mass,1,1,10,10\n"
                    "b.png,Tumour,1,1,10,10\n"
                    "c.png,Mass,1000,1,74,10\n"
                    "..png,Mass,1,1,10,10\n"
                    "e.png,Mass,1,1,10,\n")
    with pytest.raises(DataError) as exc:
        read_bbox_list(bbox)
    msg = str(exc.value)
    assert "BBox_List_2017.csv line 3: unknown class name 'Tumour'" in msg
    assert "BBox_List_2017.csv line 4: box (1000, 1, 1074, 11) lies outside image 'c'" in msg
    assert "BBox_List_2017.csv line 5: image_id '.' is not a safe file name" in msg
    assert "BBox_List_2017.csv line 6: a finding (class_id != 14) without box coordinates" in msg
    assert "line 2:" not in msg

    entry = tmp_path / "Data_Entry_2017.csv"
    entry.write_bytes(b"Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
                      b"OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],\r\n"
                      b"x_1.png,Cardiomegaly|Flu,0,1,58,M,PA,2682,2749,0.143,0.143\r\n"
                      b"x/2.png,No Finding,0,2,58,M,PA,2682,2749,0.143,0.143\r\n")
    with pytest.raises(DataError) as exc:
        read_data_entry(entry)
    msg = str(exc.value)
    assert "Data_Entry_2017.csv line 2: unknown finding label(s) in 'Cardiomegaly|Flu'" in msg
    assert "Data_Entry_2017.csv line 3: Image Index 'x/2' is not a safe file name" in msg

    split = tmp_path / "test_list.txt"
    split.write_text("a.png\nb.png\na.png\n")
    with pytest.raises(DataError, match="test_list.txt line 3: image 'a' is listed twice"):
        read_split_list(split)


def test_data_entry_gz_2017_layout(tmp_path, nih):
    """A gzipped copy of the 2017 file (CRLF, trailing comma) reads like the plain one."""
    head = (nih / "Data_Entry_2017.csv").read_bytes().split(b"\r\n")[:4]
    with gzip.open(tmp_path / "Data_Entry_2017.csv.gz", "wb") as fh:
        fh.write(b"\r\n".join(head) + b"\r\n")
    e = read_data_entry(tmp_path / "Data_Entry_2017.csv.gz")
    assert e["image_id"].tolist() == ["00000001_000", "00000001_001", "00000001_002"]
    assert list(e.columns) == ENTRY_COLUMNS


# --------------------------------------------------------------------------------------------------
# dispatch
# --------------------------------------------------------------------------------------------------
def _cfg(**data):
    base = dict(format="vinbigdata", root="", meta_csv=None, test_meta_csv=None, limit=None,
                official_split=True, images_subdir=None, missing_images="assume")
    base.update(data)
    return Config({"data": Config(base)})


def test_load_dataset_dispatch(tmp_path):
    _write(tmp_path, GOOD_ROWS)
    ds = load_dataset(_cfg(root=str(tmp_path), meta_csv="train_meta.csv"))  # relative to data.root
    assert ds.images["image_id"].tolist() == ["img1", "img2"]
    assert ds.images["labels"].tolist() == ["3", "0"]
    with pytest.raises(ConfigError, match="data.format must be one of"):
        load_dataset(_cfg(format="mimic", root=str(tmp_path)))
    with pytest.raises(ConfigError, match="data.limit"):
        load_dataset(_cfg(root=str(tmp_path), limit=0))


@pytest.mark.parametrize("ids, want", [
    (["a", "b_1.png", "0012"], [True, True, True]),
    (["a", "", "b"], [True, False, True]),
    (["a", ".", ".x"], [True, False, True]),
    (["a", "..", "x..y"], [True, False, False]),
    (["a/b", "c\\d", "e f", "g\nh"], [False, False, False, False]),
    ([], []),
])
def test_safe_id_mask_fast_path_agrees_with_is_safe_id(ids, want):
    from pipeline.paths import is_safe_id
    from pipeline.sources.validate import safe_id_mask

    assert safe_id_mask(pd.Series(ids, dtype="str")).tolist() == want == [is_safe_id(i) for i in ids]
