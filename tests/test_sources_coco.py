"""COCO reader (data.format=coco) on hand-made instances files and on a COCO JSON written from the real TBX11K boxes."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pipeline.errors import DataError
from pipeline.sources import has_dataset, load_dataset
from tests.source_writers import write_coco, write_image


def load(root, **data):
    return load_dataset({"data": {"format": "coco", "root": str(root), **data}})


def coco(images, annotations, categories=({"id": 3, "name": "nodule"}, {"id": 7, "name": "mass"})):
    return {"images": list(images), "annotations": list(annotations), "categories": list(categories)}


def make_coco(tmp_path):
    """COCO 2017 layout: annotations/instances_{train,test}2017.json, images in train2017/ and test2017/.
    p (JSON says 200x100, file 100x50: boxes halved), q (no annotation: normal), r (test)."""
    root = tmp_path
    write_image(root / "train2017/p.png", 100, 50)
    write_image(root / "train2017/q.jpg", 30, 30)
    write_image(root / "test2017/r.png", 64, 64)
    (root / "annotations").mkdir()
    train = coco([{"id": 1, "file_name": "p.png", "width": 200, "height": 100},
                  {"id": 2, "file_name": "q.jpg", "width": 30, "height": 30}],
                 [{"id": 10, "image_id": 1, "category_id": 7, "bbox": [20, 10, 40, 60]},
                  {"id": 11, "image_id": 1, "category_id": 3, "bbox": [0, 0, 200, 100]}])
    test = coco([{"id": 1, "file_name": "r.png", "width": 64, "height": 64}],
                [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1.5, 2.5, 10, 20]}])
    (root / "annotations/instances_train2017.json").write_text(json.dumps(train))
    (root / "annotations/instances_test2017.json").write_text(json.dumps(test, indent=2))
    return root


def test_coco_small(tmp_path):
    root = make_coco(tmp_path)
    assert has_dataset(root, "coco") and not has_dataset(tmp_path / "none", "coco")
    ds = load(root)
    assert ds.classes == ["nodule", "mass", "No finding"]  # categories in id order (3, 7)
    im = ds.images.set_index("image_id")
    assert im["split"].to_dict() == {"p": "train", "q": "train", "r": "test"}
    assert (im.loc["p", "width"], im.loc["p", "height"]) == (100, 50)  # the file, not the JSON's 200x100
    assert im["labels"].to_dict() == {"p": "0|1", "q": "2", "r": "0"}
    assert im.loc["r", "source"] == str(root / "test2017/r.png")
    ann = ds.annotations
    p = ann[ann["image_id"] == "p"][["class_id", "x_min", "y_min", "x_max", "y_max"]].to_numpy(float)
    np.testing.assert_array_equal(p, [[1, 10, 5, 30, 35], [0, 0, 0, 100, 50]])  # x,y,w,h -> corners, halved
    r = ann[ann["image_id"] == "r"].iloc[0]
    assert [r["x_min"], r["y_min"], r["x_max"], r["y_max"]] == [1.5, 2.5, 11.5, 22.5]
    assert ann["image_id"].tolist() == ["p", "p", "q", "r"]  # image order, then file order
    assert ds.annotations.loc[2, "class_id"] == 2 and np.isnan(ds.annotations.loc[2, "x_min"])

    ds = load(root, annotations="annotations/instances_train2017.json")  # one file: its images are train
    assert ds.images["image_id"].tolist() == ["p", "q"] and (ds.images["split"] == "train").all()
    ds = load(root, test_split="train2017")  # the file named for the split given becomes test
    assert ds.images.set_index("image_id")["split"].to_dict() == {"p": "test", "q": "test", "r": "train"}


def test_coco_roboflow_layout(tmp_path):
    for split, name in (("train", "a"), ("valid", "b"), ("test", "c")):
        write_image(tmp_path / split / f"{name}.jpg", 20, 20)
        doc = coco([{"id": 0, "file_name": f"{name}.jpg", "width": 20, "height": 20}],
                   [{"id": 0, "image_id": 0, "category_id": 3, "bbox": [1, 1, 5, 5]}])
        (tmp_path / split / "_annotations.coco.json").write_text(json.dumps(doc))
    ds = load(tmp_path)
    assert ds.images.set_index("image_id")["split"].to_dict() == {"a": "train", "b": "train", "c": "test"}


def _error(root, **data) -> str:
    with pytest.raises(DataError) as exc:
        load(root, **data)
    return str(exc.value)


def test_coco_broken(tmp_path):
    root = make_coco(tmp_path)
    path = root / "annotations/instances_test2017.json"
    doc = json.loads(path.read_text())
    bad = dict(doc, annotations=[
        {"id": 1, "image_id": 1, "category_id": 3, "bbox": [1.5, 2.5, 10, 20]},
        {"id": 2, "image_id": 1, "category_id": 5, "bbox": [1, 1, 5, 5]},       # unknown category
        {"id": 3, "image_id": 9, "category_id": 3, "bbox": [1, 1, 5, 5]},       # unknown image
        {"id": 4, "image_id": 1, "category_id": 3, "bbox": [60, 1, 10, 5]},     # 6 px past the right edge
        {"id": 5, "image_id": 1, "category_id": 3, "bbox": [1, 1, 5]},          # 3 numbers
    ])
    path.write_text(json.dumps(bad))
    msg = _error(root)
    assert "instances_test2017.json annotations[1] (id 2): unknown category_id 5 (expected one of [3, 7])" in msg, msg
    assert "instances_test2017.json annotations[2] (id 3): image_id 9 is not an image of this file" in msg
    assert "instances_test2017.json annotations[3] (id 4): box (60, 1, 70, 6) lies outside image 'r' of 64x64" in msg
    assert "instances_test2017.json annotations[4] (id 5): bbox [1, 1, 5] is not 4 numbers" in msg
    assert "annotations[0]" not in msg

    path.write_text('{"images": [\n  {"id": 1,}\n]}')
    assert "instances_test2017.json line 2: not valid JSON" in _error(root)
    path.write_text(json.dumps({"images": []}))
    assert "instances_test2017.json: no 'annotations' list" in _error(root)
    path.write_text(json.dumps(dict(doc, categories=[{"id": 3, "name": "nodule"}])))
    assert "differ from those of" in _error(root)


def test_coco_missing_image(tmp_path):
    root = make_coco(tmp_path)
    (root / "train2017/q.jpg").unlink()
    msg = _error(root)
    assert "instances_train2017.json images[1] (id 2): image file not found:" in msg, msg
    ds = load(root, missing_images="assume")  # the JSON's width/height
    q = ds.images.set_index("image_id").loc["q"]
    assert (q["width"], q["height"]) == (30, 30)
    assert load(root, missing_images="skip").images["image_id"].tolist() == ["p", "r"]


# --------------------------------------------------------------------------------------------------
# the real TBX11K boxes: a COCO JSON written from the VOC reader's tables reads back identical
# --------------------------------------------------------------------------------------------------
def test_tbx11k_coco_roundtrip(real_dir, tmp_path):
    tbx = real_dir / "tbx11k"
    voc = load_dataset({"data": {"format": "voc", "root": str(tbx)}})
    (tmp_path / "images").symlink_to(tbx / "images")
    write_coco(tmp_path / "annotations.json", voc.images, voc.annotations, voc.classes[:-1])
    back = load(tmp_path)
    assert back.classes == voc.classes
    pd.testing.assert_frame_equal(back.images.drop(columns="source"), voc.images.drop(columns="source"))
    assert (back.images["source"] == [str(tmp_path / "images" / f"{i}.jpg") for i in voc.images["image_id"]]).all()
    a, b = voc.annotations, back.annotations
    pd.testing.assert_frame_equal(b.drop(columns="rad_id"), a.drop(columns="rad_id"), check_exact=False,
                                  rtol=0, atol=1e-9)  # x + (x_max - x) is x_max up to float rounding
    assert (b["rad_id"] == "coco").all()
