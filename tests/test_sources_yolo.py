"""YOLO reader (data.format=yolo) on hand-made ultralytics folders and on a YOLO export of the real TBX11K boxes."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import ConfigError, DataError
from pipeline.sources import has_dataset, load_dataset
from tests.source_writers import write_image, write_yaml, yolo_export_of_voc

TB_NAMES = ["ActiveTuberculosis", "ObsoletePulmonaryTuberculosis"]
YAML = "path: .\ntrain: images/train\nval: images/val\ntest: images/test\nnames:\n  0: nodule\n  1: mass\n"


def load(root, **data):
    return load_dataset({"data": {"format": "yolo", "root": str(root), **data}})


def make_yolo(tmp_path, yaml_text=YAML):
    """train: a (200x100, two boxes), b (empty label file), c (no label file); val: v; test: t."""
    root = tmp_path
    write_yaml(root / "data.yaml", yaml_text)
    write_image(root / "images/train/a.png", 200, 100)
    write_image(root / "images/train/b.jpg", 50, 50)
    write_image(root / "images/train/sub/c.png", 40, 40)  # sub-folders are searched too
    write_image(root / "images/val/v.png", 64, 64)
    write_image(root / "images/test/t.png", 64, 32)
    (root / "labels/train/sub").mkdir(parents=True)
    (root / "labels/val").mkdir(parents=True)
    (root / "labels/test").mkdir(parents=True)
    (root / "labels/train/a.txt").write_text("1 0.5 0.5 0.5 0.5\n\n0 0.1 0.2 0.2 0.2\n")
    (root / "labels/train/b.txt").write_text("")
    (root / "labels/val/v.txt").write_text("0 0.5 0.5 0.25 0.25\n")
    (root / "labels/test/t.txt").write_text("1 0.5 0.5 1 1\n")
    return root


def test_yolo_small(tmp_path):
    root = make_yolo(tmp_path)
    assert has_dataset(root, "yolo") and not has_dataset(tmp_path / "none", "yolo")
    ds = load(root)
    assert ds.classes == ["nodule", "mass", "No finding"]
    im = ds.images.set_index("image_id")
    assert im["split"].to_dict() == {"a": "train", "b": "train", "c": "train", "v": "train", "t": "test"}
    assert (im.loc["a", "width"], im.loc["a", "height"]) == (200, 100)
    assert im["labels"].to_dict() == {"a": "0|1", "b": "2", "c": "2", "v": "0", "t": "1"}
    ann = ds.annotations
    a = ann[ann["image_id"] == "a"][["class_id", "x_min", "y_min", "x_max", "y_max"]].to_numpy(float)
    np.testing.assert_allclose(a, [[1, 50, 25, 150, 75], [0, 0, 10, 40, 30]])  # line 3 after a blank line 2
    t = ann[ann["image_id"] == "t"].iloc[0]
    assert [t["x_min"], t["y_min"], t["x_max"], t["y_max"]] == [0.0, 0.0, 64.0, 32.0]
    normal = ann[ann["image_id"].isin(["b", "c"])]
    assert (normal["class_id"] == 2).all() and normal["x_min"].isna().all() and len(normal) == 2
    assert any("1 images without a label file and 1 with an empty one" in line for line in ds.report)
    assert (ann["rad_id"] == "yolo").all()


def test_yolo_split_mapping_lists_and_names_list(tmp_path):
    root = make_yolo(tmp_path, "train: [images/train, train_extra.txt]\nval: images/val\nnames: [nodule, mass]\n")
    write_image(root / "extra/images/x.png", 10, 10)
    (root / "train_extra.txt").write_text("./extra/images/x.png\n")
    ds = load(root, test_split="val")
    assert ds.images.set_index("image_id")["split"].to_dict() == {"a": "train", "b": "train", "c": "train",
                                                                   "x": "train", "v": "test"}
    ds = load(root)  # no test: entry
    assert (ds.images["split"] == "train").all()
    assert any("no 'test' entry" in line for line in ds.report)


def test_yolo_last_name_no_finding_is_the_normal_class(tmp_path):
    root = make_yolo(tmp_path, "train: images/train\nnames: [nodule, mass, No finding]\n")
    (root / "labels/train/b.txt").write_text("2 0.5 0.5 0.1 0.1\n")  # a normal "box", as some exports write
    ds = load(root)
    assert ds.classes == ["nodule", "mass", "No finding"]
    b = ds.annotations[ds.annotations["image_id"] == "b"].iloc[0]
    assert b["class_id"] == 2 and np.isnan(b["x_min"])
    assert any("'no finding' rows had a box" in line for line in ds.report)


def _error(root, **data) -> str:
    with pytest.raises(DataError) as exc:
        load(root, **data)
    return str(exc.value)


@pytest.mark.parametrize("line2, problem", [
    ("0 0.5 0.5 0.2", "expected 5 numbers (class x_center y_center width height), got 4"),
    ("0 0.5 0.5 0.2 abc", "'0 0.5 0.5 0.2 abc' is not 5 numbers"),
    ("5 0.5 0.5 0.2 0.2", "unknown YOLO class id '5' (expected one of 0..1)"),
    ("0.5 0.5 0.5 0.2 0.2", "unknown YOLO class id '0.5'"),
    ("0 0.95 0.5 0.3 0.2", "lies outside image 'a' of 200x100 (width x height) by 20 px"),
    ("0 0.5 0.5 0 0.2", "empty box"),
])
def test_yolo_bad_label_line_names_file_and_line(tmp_path, line2, problem):
    root = make_yolo(tmp_path)
    (root / "labels/train/a.txt").write_text(f"1 0.5 0.5 0.5 0.5\n{line2}\n")
    msg = _error(root)
    assert "labels/train/a.txt line 2:" in msg and problem in msg, msg
    assert "a.txt line 1:" not in msg


def test_yolo_box_within_tolerance_is_clipped(tmp_path):
    root = make_yolo(tmp_path)
    (root / "labels/train/a.txt").write_text("0 0.505 0.5 1.0 0.2\n")  # x from 1 to 201: 1 px past the edge
    ds = load(root)
    a = ds.annotations[ds.annotations["image_id"] == "a"].iloc[0]
    assert a["x_max"] == 200.0 and a["x_min"] == pytest.approx(1.0)
    assert any("1 box clipped to the image by at most 1 px" in line for line in ds.report)


def test_yolo_yaml_problems(tmp_path):
    root = make_yolo(tmp_path, "train: images/train\n")
    msg = _error(root)
    assert "data.yaml: no 'names'" in msg and "names: {0:" in msg
    write_yaml(root / "data.yaml", "train: images/train\nnames: {0: a, 2: b}\n")
    assert "'names' keys must be the class ids 0..1" in _error(root)
    write_yaml(root / "data.yaml", "train: images/train\nnames: [a, b]\nnc: 3\n")
    assert "nc is 3 but 'names' has 2 classes" in _error(root)
    write_yaml(root / "data.yaml", "train: images/train\nnames: [a, b\n")
    assert "data.yaml line 3: not valid YAML" in _error(root)
    write_yaml(root / "data.yaml", "train: images/nope\nnames: [a, b]\n")
    assert "train: 'images/nope' is not a folder or a .txt list" in _error(root)
    (root / "data.yaml").unlink()
    assert "no YOLO data YAML found" in _error(root)
    write_yaml(root / "one.yaml", "names: [a]\n")
    write_yaml(root / "two.yaml", "names: [a]\n")
    assert "found several (one.yaml, two.yaml)" in _error(root)
    with pytest.raises(ConfigError, match="images_subdir does not apply to data.format=yolo"):
        load(root, images_subdir="images")


def test_yolo_missing_image_of_a_list(tmp_path):
    root = make_yolo(tmp_path, "train: list.txt\nnames: [nodule, mass]\n")
    (root / "list.txt").write_text("images/train/a.png\nimages/train/gone.png\n")
    msg = _error(root)
    assert "list.txt line 2: image file not found:" in msg and "gone.png" in msg, msg
    ds = load(root, missing_images="skip")
    assert ds.images["image_id"].tolist() == ["a"]
    (root / "labels/train/zzz.txt").write_text("0 0.5 0.5 0.1 0.1\n")
    write_yaml(root / "data.yaml", YAML)
    ds = load(root)
    assert any("label files have no image" in line and "zzz.txt" in line for line in ds.report)


def test_yolo_duplicate_ids_across_splits(tmp_path):
    root = make_yolo(tmp_path)
    write_image(root / "images/test/a.png", 64, 64)
    assert "image 'a' is listed more than once (first:" in _error(root)


# --------------------------------------------------------------------------------------------------
# the real TBX11K boxes: VOC reader vs. a YOLO export of the same boxes
# --------------------------------------------------------------------------------------------------
def test_tbx11k_voc_equals_its_yolo_export(real_dir, tmp_path):
    tbx = real_dir / "tbx11k"
    voc = load_dataset({"data": {"format": "voc", "root": str(tbx)}})
    yolo = load(yolo_export_of_voc(tbx, tmp_path / "yolo", TB_NAMES))
    assert yolo.classes == voc.classes
    assert yolo.images[["image_id", "split", "width", "height", "labels"]].sort_values("image_id").reset_index(drop=True) \
        .equals(voc.images[["image_id", "split", "width", "height", "labels"]].sort_values("image_id").reset_index(drop=True))
    key = ["image_id", "class_id", "x_min"]
    v = voc.annotations.sort_values(key).reset_index(drop=True)
    y = yolo.annotations.sort_values(key).reset_index(drop=True)
    assert len(v) == len(y) == 903
    assert v["image_id"].tolist() == y["image_id"].tolist() and v["class_id"].tolist() == y["class_id"].tolist()
    diff = np.abs(v[["x_min", "y_min", "x_max", "y_max"]].to_numpy(float) - y[["x_min", "y_min", "x_max", "y_max"]].to_numpy(float))
    assert np.nanmax(diff) < 0.5, np.nanmax(diff)  # 6-decimal normalised labels at 512 px: well under 0.01 px
