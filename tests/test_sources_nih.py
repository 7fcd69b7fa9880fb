"""ChestX-ray14 images of any size (bbox_256/, images_256/), image folders, data.missing_images, and the
class lists and has_dataset of the two Kaggle/NIH formats."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from pipeline.classes import CHESTXRAY14, VINBIGDATA
from pipeline.errors import ConfigError, DataError
from pipeline.sources import has_dataset, load_dataset
from tests.source_writers import write_image


def load(root, **data):
    return load_dataset({"data": {"format": "chestxray14", "root": str(root), **data}})


@pytest.fixture(scope="module")
def nih(real_dir):
    return real_dir / "chestxray14"


@pytest.fixture(scope="module")
def both_256(nih):
    return load(nih, images_subdir=["bbox_256", "images_256"], official_split=False)


def bbox_list_1024(path):
    """BBox_List_2017.csv read with the csv module: image id -> [(label, x_min, y_min, x_max, y_max)]."""
    out: dict[str, list] = {}
    with open(path, newline="") as fh:
        rows = csv.reader(fh)
        next(rows)
        for r in rows:
            x, y, w, h = map(float, r[2:6])
            out.setdefault(r[0][:-4], []).append((r[1], x, y, x + w, y + h))
    return out


def test_bbox_256_boxes_are_the_1024_list_divided_by_4(nih):
    ds = load(nih, images_subdir="bbox_256")
    assert ds.classes == CHESTXRAY14
    im = ds.images
    assert len(im) == 880 and (im["width"] == 256).all() and (im["height"] == 256).all()
    assert (im["split"] == "test").all()  # every boxed image is in test_list.txt
    truth = bbox_list_1024(nih / "BBox_List_2017.csv")
    assert set(im["image_id"]) == set(truth)
    ann = ds.annotations
    assert len(ann) == 984
    order = {i: k for k, i in enumerate(truth)}  # per image, the boxes keep the list's order
    got = ann.iloc[np.argsort(ann["image_id"].map(order).to_numpy(), kind="stable")]
    want = np.array([r[1:] for rows in truth.values() for r in rows]) / 4
    assert got["image_id"].tolist() == [i for i, rows in truth.items() for _ in rows]
    np.testing.assert_allclose(got[["x_min", "y_min", "x_max", "y_max"]].to_numpy(float), want, rtol=0, atol=1e-9)
    assert (ann.loc[ann["class_name"] == "Infiltration", "class_id"] == 3).all()
    # auto = skip for chestxray14: the 111,240 images not in bbox_256 are left out, and counted
    assert any("111240 of 112120 image files not found" in line and "skip" in line for line in ds.report)


def test_bbox_256_and_images_256_as_one_dataset(nih, both_256):
    ds = both_256
    im = ds.images
    assert len(im) == 880 + 621 - 12 and im["image_id"].is_unique and (im["split"] == "train").all()
    assert any("12 images are in more than one image folder" in line and "bbox_256 and images_256" in line
               for line in ds.report)
    src = im.set_index("image_id")["source"]
    in_both = {p.stem for p in (nih / "bbox_256").glob("*.png")} & {p.stem for p in (nih / "images_256").glob("*.png")}
    assert len(in_both) == 12 and all("/bbox_256/" in src[i] for i in in_both)  # the first folder listed wins
    assert len(ds.annotations) == 984
    assert (im.set_index("image_id").loc[list(in_both), "width"] == 256).all()
    # labels from Data_Entry; 100 of the 621 are "No Finding"
    only_621 = im[im["source"].str.contains("/images_256/")]
    assert (only_621["labels"] == "14").sum() >= 100 - 12


def test_missing_images_modes(nih):
    with pytest.raises(DataError) as exc:
        load(nih, images_subdir="bbox_256", missing_images="error")
    msg = str(exc.value)
    assert "111240 problems" in msg and "Data_Entry_2017.csv line 2: image file not found" in msg
    ds = load(nih, images_subdir="bbox_256", missing_images="assume", official_split=False)
    assert len(ds.images) == 112120
    sizes = ds.images.set_index("image_id")
    assert sizes.loc["00000001_000", "width"] == 1024 and sizes.loc["00013118_008", "width"] == 256
    assert any("111240 of 112120 image files not found" in line and "assume" in line for line in ds.report)
    with pytest.raises(ConfigError, match="data.missing_images must be one of"):
        load(nih, missing_images="maybe")


def test_image_folder_discovery(tmp_path):
    """images/ and the NIH parts images_001 .. images_012 (nested or flat) are found; images_256 is not."""
    (tmp_path / "Data_Entry_2017.csv").write_text(
        "Image Index,Finding Labels,Follow-up #,Patient ID\n"
        "00000001_000.png,Cardiomegaly,0,1\n00000002_000.png,No Finding,0,2\n"
        "00000003_000.png,Hernia,0,3\n00000004_000.png,Mass,0,4\n")
    write_image(tmp_path / "images_001/images/00000001_000.png", 16, 16)
    write_image(tmp_path / "images_012/00000002_000.png", 16, 16)
    write_image(tmp_path / "images_256/00000003_000.png", 16, 16)
    write_image(tmp_path / "images_013/00000004_000.png", 16, 16)  # not an NIH part name
    ds = load(tmp_path, official_split=False)
    assert ds.images["image_id"].tolist() == ["00000001_000", "00000002_000"]
    ds = load(tmp_path, official_split=False, images_subdir=["images_256", "images_013"])
    assert ds.images["image_id"].tolist() == ["00000003_000", "00000004_000"]
    assert has_dataset(tmp_path, "chestxray14") and not has_dataset(tmp_path, "vinbigdata")


def test_classes_and_has_dataset_of_the_kaggle_formats(real_dir, tmp_path):
    ds = load_dataset({"data": {"format": "vinbigdata", "root": str(real_dir / "vinbigdata"), "limit": 3,
                                "meta_csv": "train_meta.csv", "test_meta_csv": "test_meta.csv",
                                "missing_images": "assume"}})
    assert ds.classes == VINBIGDATA and ds.normal_id == 14
    assert has_dataset(real_dir / "vinbigdata", "vinbigdata") and has_dataset(real_dir / "chestxray14", "chestxray14")
    assert not has_dataset(tmp_path / "nothing", "voc")
    with pytest.raises(ConfigError, match="data.format must be one of"):
        has_dataset(tmp_path, "mimic")
