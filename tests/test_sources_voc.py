"""VOC reader (data.format=voc) on the real TBX11K files and on hand-made folders in tmp_path."""
from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pytest

from pipeline.errors import ConfigError, DataError
from pipeline.sources import ANNOTATION_COLUMNS, IMAGE_COLUMNS, has_dataset, load_dataset
from tests.source_writers import voc_object_line, write_image, write_voc_xml

TB_CLASSES = ["ActiveTuberculosis", "ObsoletePulmonaryTuberculosis", "No finding"]


def load(root, **data):
    return load_dataset({"data": {"format": "voc", "root": str(root), **data}})


@pytest.fixture(scope="module")
def tbx(real_dir):
    return real_dir / "tbx11k"


@pytest.fixture(scope="module")
def tbx_ds(tbx):
    return load(tbx)


def test_tbx11k_real(tbx, tbx_ds):
    ds = tbx_ds
    assert list(ds.annotations.columns) == ANNOTATION_COLUMNS and list(ds.images.columns) == IMAGE_COLUMNS
    assert ds.classes == TB_CLASSES  # sorted <name> values, then the normal class at id 2
    im, ann = ds.images, ds.annotations
    assert len(im) == 600 and (im["split"] == "train").all()  # lists/train.txt, no test list
    assert (im["width"] == 512).all() and (im["height"] == 512).all()  # the JPEG headers, not the XML <size>
    boxes = ann[ann["class_id"] != 2]
    assert len(boxes) == 902
    assert (boxes["class_id"] == 0).sum() == 724 and (boxes["class_id"] == 1).sum() == 178  # MANIFEST counts
    assert (boxes["x_min"] >= 0).all() and (boxes["x_max"] <= 512).all() and (boxes["y_max"] <= 512).all()
    # the one XML without <object> is a normal image: one row, no box, label '2'
    normal = ann[ann["class_id"] == 2]
    assert len(normal) == 1 and normal[["x_min", "y_min", "x_max", "y_max"]].isna().all().all()
    assert im.set_index("image_id").loc[normal["image_id"].iloc[0], "labels"] == "2"
    # tb0005.xml: <size> 1756x2022, box 1313,505,1451,681 -> x * 512/1756, y * 512/2022
    r = ann[ann["image_id"] == "tb0005"].iloc[0]
    assert r["class_name"] == "ActiveTuberculosis"
    np.testing.assert_allclose(r[["x_min", "y_min", "x_max", "y_max"]].to_numpy(float),
                               [1313 * 512 / 1756, 505 * 512 / 2022, 1451 * 512 / 1756, 681 * 512 / 2022])
    assert any("scaled per axis" in line and "1756x2022 -> 512x512" in line for line in ds.report)
    assert im.set_index("image_id").loc["tb0005", "source"] == str(tbx / "images" / "tb0005.jpg")


def test_tbx11k_every_box_is_its_xml_box_scaled(tbx, tbx_ds):
    """Independent check with ElementTree over all 600 XMLs: box * 512 / <size>, per axis, in file order."""
    want = []
    for xml in sorted((tbx / "annotations" / "xml").glob("*.xml")):
        root = ET.parse(xml).getroot()
        w, h = float(root.findtext("size/width")), float(root.findtext("size/height"))
        for o in root.findall("object"):
            b = [float(o.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax")]
            want.append((xml.stem, TB_CLASSES.index(o.findtext("name")), b[0] * 512 / w, b[1] * 512 / h,
                         b[2] * 512 / w, b[3] * 512 / h))
    got = tbx_ds.annotations.dropna(subset=["x_min"]).sort_values("image_id", kind="stable")
    assert got["image_id"].tolist() == [t[0] for t in want]
    assert got["class_id"].tolist() == [t[1] for t in want]
    np.testing.assert_allclose(got[["x_min", "y_min", "x_max", "y_max"]].to_numpy(float),
                               np.array([t[2:] for t in want]), rtol=0, atol=1e-9)


def test_tbx11k_limit_keeps_class_ids(tbx):
    ds = load(tbx, limit=3)
    assert len(ds.images) == 3 and ds.classes == TB_CLASSES


# --------------------------------------------------------------------------------------------------
# hand-made folders
# --------------------------------------------------------------------------------------------------
def make_voc(tmp_path, classic=False):
    """a (XML size 200x100, file 100x50: scaled by 1/2), b (no <size>: the file's pixels), c (no object),
    d (test), e (in no list). Classic VOC names when ``classic``."""
    xml_dir = tmp_path / ("Annotations" if classic else "annotations/xml")
    img_dir = tmp_path / ("JPEGImages" if classic else "images")
    lists = tmp_path / ("ImageSets/Main" if classic else "lists")
    write_voc_xml(xml_dir / "a.xml", [("nodule", 20, 10, 60, 50), ("mass", 0, 0, 200, 100)], size=(200, 100))
    write_voc_xml(xml_dir / "b.xml", [("mass", 5, 5, 30, 40)])
    write_voc_xml(xml_dir / "c.xml", [], size=(64, 64))
    write_voc_xml(xml_dir / "d.xml", [("nodule", 1, 1, 9, 9)], size=(64, 64))
    write_voc_xml(xml_dir / "e.xml", [("nodule", 1, 1, 9, 9)], size=(64, 64))
    write_image(img_dir / "a.jpg", 100, 50)
    write_image(img_dir / "b.png", 64, 64)
    write_image(img_dir / "c.jpg", 64, 64)
    write_image(img_dir / "d.jpg", 64, 64)
    write_image(img_dir / "e.jpg", 64, 64)
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("a\nb\n")
    (lists / "val.txt").write_text("c.jpg\n")  # an extension is dropped
    (lists / "test.txt").write_text("d\n")
    return tmp_path


@pytest.mark.parametrize("classic", [False, True])
def test_voc_small(tmp_path, classic):
    root = make_voc(tmp_path, classic)
    assert has_dataset(root, "voc") and not has_dataset(root / "nothing", "voc")
    ds = load(root)
    assert ds.classes == ["mass", "nodule", "No finding"]
    im = ds.images.set_index("image_id")
    assert im["split"].to_dict() == {"a": "train", "b": "train", "c": "train", "d": "test"}  # e: in no list
    assert (im.loc["a", "width"], im.loc["a", "height"]) == (100, 50)
    assert im.loc["a", "labels"] == "0|1" and im.loc["c", "labels"] == "2" and im.loc["d", "labels"] == "1"
    ann = ds.annotations
    a = ann[ann["image_id"] == "a"][["class_id", "x_min", "y_min", "x_max", "y_max"]].to_numpy(float)
    np.testing.assert_array_equal(a, [[1, 10, 5, 30, 25], [0, 0, 0, 100, 50]])  # halved per axis
    b = ann[ann["image_id"] == "b"].iloc[0]
    assert [b["x_min"], b["y_max"]] == [5.0, 40.0]  # no <size>: already in the file's pixels
    assert any("1 XML files are in no list" in line for line in ds.report)

    ds2 = load(root, test_split="val", classes=["nodule", "mass"])  # val.txt is test; classes fix the ids
    assert ds2.classes == ["nodule", "mass", "No finding"]
    assert ds2.images.set_index("image_id")["split"].to_dict() == {"a": "train", "b": "train", "c": "test"}
    assert ds2.annotations.iloc[0]["class_id"] == 0  # a's first object, nodule


def test_voc_without_lists_every_xml_is_train(tmp_path):
    root = make_voc(tmp_path)
    for f in (root / "lists").iterdir():
        f.unlink()
    ds = load(root)
    assert ds.images["image_id"].tolist() == ["a", "b", "c", "d", "e"] and (ds.images["split"] == "train").all()


def _error(root, **data) -> str:
    with pytest.raises(DataError) as exc:
        load(root, **data)
    return str(exc.value)


def test_voc_broken_xml_names_file_and_line(tmp_path):
    root = make_voc(tmp_path)
    (root / "annotations/xml/b.xml").write_text("<annotation>\n  <object>\n    <name>mass</name>\n  </objec>\n")
    msg = _error(root)
    assert "b.xml line 4: not well-formed XML (mismatched tag" in msg, msg
    (root / "annotations/xml/b.xml").write_text("<html>\n</html>\n")
    assert "b.xml line 1: the root element is <html>, not <annotation>" in _error(root)


def test_voc_box_outside_the_image(tmp_path):
    root = make_voc(tmp_path)
    objects = [("mass", 5, 5, 30, 40), ("mass", 10, 10, 80, 20)]  # no <size>; the file is 64 wide
    write_voc_xml(root / "annotations/xml/b.xml", objects)
    msg = _error(root)
    assert f"b.xml line {voc_object_line(1, None)}: box (10, 10, 80, 20) lies outside image 'b' of 64x64" in msg, msg
    assert f"line {voc_object_line(0, None)}:" not in msg
    # in a declared <size>, the message gives both the file's pixels and what was written
    write_voc_xml(root / "annotations/xml/b.xml", objects, size=(32, 32))
    msg = _error(root)
    assert "box (20, 20, 160, 40) lies outside image 'b' of 64x64" in msg and "written as (10, 10, 80, 20) in a 32x32" in msg


def test_voc_unknown_class_and_bad_numbers(tmp_path):
    root = make_voc(tmp_path)
    write_voc_xml(root / "annotations/xml/b.xml", [("mass", 5, 5, 30, 40), ("tumour", 1, 1, 2, 2), ("mass", 1, "x", 3, 4)])
    msg = _error(root, classes=["mass", "nodule"])
    assert f"b.xml line {voc_object_line(1, None)}: unknown class name 'tumour'" in msg, msg
    assert f"b.xml line {voc_object_line(2, None)}: <bndbox> ymin not a number" in msg
    assert "Class names must be one of: mass, nodule, No finding" in msg


def test_voc_missing_image(tmp_path):
    root = make_voc(tmp_path)
    (root / "images/b.png").unlink()
    msg = _error(root)
    assert "annotations/xml/b.xml: image file not found:" in msg and "data.missing_images=skip" in msg, msg
    ds = load(root, missing_images="skip")
    assert "b" not in set(ds.images["image_id"]) and "b" not in set(ds.annotations["image_id"])
    assert any("1 of 4 image files not found" in line and "skip" in line for line in ds.report)
    # assume: b has no <size>, so there is nothing to assume
    assert "image file not found" in _error(root, missing_images="assume")
    (root / "images/a.jpg").unlink()
    write_voc_xml(root / "annotations/xml/b.xml", [("mass", 5, 5, 30, 40)], size=(64, 64))
    ds = load(root, missing_images="assume")
    a = ds.images.set_index("image_id").loc["a"]
    assert (a["width"], a["height"]) == (200, 100)  # the XML's <size>: boxes stay as written
    assert ds.annotations[ds.annotations["image_id"] == "a"]["x_max"].max() == 200


def test_voc_listed_id_without_xml_is_normal_and_bad_keys(tmp_path):
    root = make_voc(tmp_path)
    write_image(root / "images/f.jpg", 32, 32)
    (root / "lists/train.txt").write_text("a\nb\nf\n")
    ds = load(root)
    assert ds.images.set_index("image_id").loc["f", "labels"] == "2"
    assert any("1 listed ids without an XML" in line for line in ds.report)
    (root / "lists/test.txt").write_text("d\na\n")  # a in train and test
    assert "image 'a' is listed more than once (first:" in _error(root)
    with pytest.raises(ConfigError, match="data.classes names a class twice"):
        load(root, classes=["mass", "mass"])
    with pytest.raises(DataError, match="no folder of VOC XML files"):
        load(root, annotations="nope")
