"""Reader of Pascal VOC style datasets (TBX11K's layout) into raw tables (checked by :mod:`pipeline.sources.validate`).

Layout under ``root`` (TBX11K; the classic VOC names are found too)::

    annotations/xml/<id>.xml   (or Annotations/<id>.xml, or data.annotations: the XML folder)
    images/<id>.jpg            (or JPEGImages/, or data.images_subdir: one folder or a list); found by file stem
    lists/<split>.txt          optional (or ImageSets/Main/<split>.txt): one id per line

Each XML gives ``<size><width>/<height>`` and one ``<object>`` per box: ``<name>`` (the class) and
``<bndbox>`` ``xmin, ymin, xmax, ymax`` (pixels of the image the annotator saw, corners as written: no
1-based shift). When ``<size>`` differs from the image file's size the boxes are scaled per axis to the
file (TBX11K: the XMLs are in the original size, the files 512x512: x by 512/width, y by 512/height); an
XML without ``<size>`` is taken to be in the file's pixels.

Splits: ``train.txt``, ``val.txt`` and ``trainval.txt`` are train, ``<data.test_split>.txt`` (default
``test.txt``) is test; without any list every XML is a train image. With lists, the images are the listed
ids (a listed id without an XML is an image with no object); XMLs in no list are not used (counted).
Classes: ``data.classes`` (names in id order) or the sorted distinct ``<name>`` values of all XMLs of
the dataset (so ``data.limit`` does not change the ids), then the normal class "No finding". An image
whose XML has no object is a normal image (one row).
"""
from __future__ import annotations

from pathlib import Path
from xml.parsers import expat

import numpy as np
import pandas as pd

from pipeline.errors import ConfigError, DataError
from pipeline.sources.files import IMAGE_SUFFIXES, image_sizes, index_files, read_list_lines, resolve_path
from pipeline.sources.problems import Problems
from pipeline.sources.tables import (
    Options, RawDataset, keep_first_per_split, raw_boxes, raw_images, split_normal,
)

XML_DIRS = ("annotations/xml", "Annotations", "annotations")
IMAGE_DIRS = ("images", "JPEGImages")
LIST_DIRS = ("lists", "ImageSets/Main")
TRAIN_LISTS = ("train", "val", "trainval")
RAD_ID = "voc"
_TOP_FIELDS = {"filename", "size/width", "size/height"}
_OBJECT_FIELDS = {"name", "difficult", "bndbox/xmin", "bndbox/ymin", "bndbox/xmax", "bndbox/ymax"}
_COORDS = ("xmin", "ymin", "xmax", "ymax")


class XmlProblem(Exception):
    def __init__(self, line: int, message: str):
        super().__init__(message)
        self.line = line


def find_voc_xml_dir(root: Path, annotations: tuple[str, ...] = (), required: bool = True) -> Path | None:
    """The XML folder: ``data.annotations`` if given, else annotations/xml/, Annotations/ or annotations/."""
    if annotations:
        if len(annotations) != 1:
            raise ConfigError(f"data.annotations must name one XML folder for data.format=voc, got {list(annotations)!r}.")
        cands = [resolve_path(annotations[0], root)]
    else:
        cands = [root / d for d in XML_DIRS]
    for d in cands:
        if d.is_dir() and any(index_files([d], (".xml",))[0]):
            return d
    if required:
        raise DataError(f"{root}: no folder of VOC XML files; looked in {', '.join(str(c) for c in cands)}. Set "
                        "data.root to the dataset folder, or data.annotations to the folder of the .xml files.")
    return None


def read_voc_xml(path: Path) -> dict:
    """``filename``, ``size/width``, ``size/height`` (text, '' when absent) and ``objects``: one dict per
    ``<object>`` (``line``, and the text of name, difficult, bndbox/xmin ..). Raises XmlProblem(line, text)."""
    parser = expat.ParserCreate()
    stack: list[str] = []
    text: list[str] = []
    top: dict = {}
    objects: list[dict] = []
    cur: list = [None]

    def start(tag, attrs):
        if not stack and tag != "annotation":
            raise XmlProblem(parser.CurrentLineNumber, f"the root element is <{tag}>, not <annotation>: not a VOC "
                                                       "annotation file")
        stack.append(tag)
        text.clear()
        if len(stack) == 2 and tag == "object":
            cur[0] = {"line": parser.CurrentLineNumber}

    def end(tag):
        value = "".join(text).strip()
        text.clear()
        obj = cur[0]
        if obj is not None and len(stack) >= 3:
            rel = "/".join(stack[2:])
            if rel in _OBJECT_FIELDS:
                obj[rel] = value
        elif obj is None and len(stack) >= 2:
            key = "/".join(stack[1:])
            if key in _TOP_FIELDS:
                top[key] = value
        if len(stack) == 2 and tag == "object":
            objects.append(obj)
            cur[0] = None
        stack.pop()

    parser.StartElementHandler, parser.EndElementHandler = start, end
    parser.CharacterDataHandler = text.append
    try:
        with open(path, "rb") as fh:
            parser.ParseFile(fh)
    except expat.ExpatError as exc:
        raise XmlProblem(exc.lineno, f"not well-formed XML ({expat.ErrorString(exc.code)}, column {exc.offset + 1})") from None
    return {**{k: top.get(k, "") for k in _TOP_FIELDS}, "objects": objects}


def _relative(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def _number(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        return np.nan
    return v if np.isfinite(v) else np.nan


def _image_list(root: Path, xml_index: dict, opts: Options, report: list[str]) -> pd.DataFrame:
    """image_id, split, _file, _line of every image: from the split lists when present, else every XML."""
    list_dir = next((root / d for d in LIST_DIRS if (root / d).is_dir()), None)
    names = [(n, "train") for n in TRAIN_LISTS if n != opts.test_split] + [(opts.test_split, "test")]
    lists = [(list_dir / f"{n}.txt", s) for n, s in names if list_dir is not None and (list_dir / f"{n}.txt").is_file()]
    if not lists:
        if list_dir is not None:
            report.append(f"{list_dir}: no {', '.join(n + '.txt' for n, _ in names)}: every XML is a train image")
        ids = sorted(xml_index)
        return pd.DataFrame({"image_id": ids, "split": "train", "_file": [str(xml_index[i]) for i in ids], "_line": 0})
    rows = []
    for path, split in lists:
        values, numbers = read_list_lines(path)
        for v, n in zip(values, numbers):
            name = Path(v).name
            stem = name.rsplit(".", 1)[0] if Path(name).suffix.lower() in (*IMAGE_SUFFIXES, ".xml") else name
            rows.append((stem, split, str(path), n))
    table = pd.DataFrame(rows, columns=["image_id", "split", "_file", "_line"])
    repeat = table.duplicated(["image_id", "split"])
    if repeat.any():  # e.g. an id in both train.txt and trainval.txt
        report.append(f"{list_dir}: {int(repeat.sum())} ids listed twice within train (or test) lists; kept once")
        table = table[~repeat]
    report.append(f"{list_dir}: splits from {', '.join(p.name for p, _ in lists)} "
                  f"({int((table['split'] == 'train').sum())} train, {int((table['split'] == 'test').sum())} test)")
    unlisted = len(set(xml_index) - set(table["image_id"].tolist()))
    if unlisted:
        report.append(f"{unlisted} XML files are in no list: not used")
    return table.reset_index(drop=True)


def parse_voc(opts: Options) -> RawDataset:
    root = Path(opts.root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found. Set data.root to the folder with annotations/xml/ and images/.")
    xml_dir = find_voc_xml_dir(root, opts.annotations)
    xml_index, _ = index_files([xml_dir], (".xml",))
    report: list[str] = []
    problems = Problems()
    table = _image_list(root, xml_index, opts, report)

    parsed: dict[str, dict] = {}
    for image_id in dict.fromkeys(table["image_id"]):
        xml = xml_index.get(image_id)
        if xml is None:
            continue
        try:
            parsed[image_id] = read_voc_xml(xml)
        except XmlProblem as exc:
            problems.add(xml, exc.line, str(exc), "Fix or replace the XML file (it must be a VOC <annotation>).")
    names = list(opts.classes) if opts.classes else sorted({o.get("name", "") for d in parsed.values()
                                                           for o in d["objects"]} - {""})
    classes, aliases = split_normal(names)
    table = keep_first_per_split(table, opts.limit)

    dirs = [root / d for d in opts.images_subdir] if opts.images_subdir else \
        [next((root / d for d in IMAGE_DIRS if (root / d).is_dir()), root / IMAGE_DIRS[0])]
    for d in dirs:
        if opts.images_subdir and not d.is_dir():
            raise DataError(f"{d}: image folder not found (data.images_subdir). Set it to the folder(s) under data.root "
                            "that hold the images, or null for images/ or JPEGImages/.")
    found, dups = index_files([d for d in dirs if d.is_dir()])
    if dups:
        k, kept, other = dups[0]
        report.append(f"images: {len(dups)} ids have more than one image file (e.g. {kept.name} and {other}); "
                      f"the first is used (folders in data.images_subdir order, then {', '.join(IMAGE_SUFFIXES)})")

    img_rows, box_rows = [], []
    n_no_xml = n_no_object = n_difficult = 0
    for image_id, split, file, line in zip(table["image_id"], table["split"], table["_file"], table["_line"]):
        doc = parsed.get(image_id)
        xml = xml_index.get(image_id)
        filename = doc["filename"] if doc else ""
        path = found.get(image_id) or (found.get(Path(filename).stem) if filename else None)
        guess = filename if Path(filename).suffix.lower() in IMAGE_SUFFIXES else f"{image_id}.jpg"
        sw, sh = (_number(doc["size/width"]), _number(doc["size/height"])) if doc else (np.nan, np.nan)
        sw, sh = (sw, sh) if sw > 0 and sh > 0 else (np.nan, np.nan)
        where = (str(xml), 0) if xml is not None else (file, line)
        img_rows.append((image_id, split, str(path or dirs[0] / guess), path is not None, sw, sh, *where))
        if xml is None:
            n_no_xml += 1
        objects = doc["objects"] if doc else []
        for o in objects:
            coords = [_number(o.get(f"bndbox/{c}", "")) for c in _COORDS]
            bad = [c for c in _COORDS if o.get(f"bndbox/{c}", "") not in ("", None) and np.isnan(coords[_COORDS.index(c)])]
            if bad:
                problems.add(xml, o["line"], f"<bndbox> {', '.join(bad)} not a number", "Write coordinates as plain numbers.")
            if not o.get("name"):
                problems.add(xml, o["line"], "an <object> without <name>", "Give every <object> its class in <name>.")
            n_difficult += o.get("difficult", "0") not in ("", "0")
            box_rows.append((image_id, o.get("name", ""), *coords, sw, sh, str(xml), o["line"], False))
        if doc is not None and not objects:
            n_no_object += 1
        if not objects and not (doc is None and xml is not None):
            box_rows.append((image_id, None, np.nan, np.nan, np.nan, np.nan, sw, sh, where[0], where[1], True))
    im = pd.DataFrame(img_rows, columns=["image_id", "split", "source", "exists", "sw", "sh", "_file", "_line"])
    w, h, errors = image_sizes([Path(s) if e else None for s, e in zip(im["source"], im["exists"])])
    images = raw_images(im["image_id"], im["split"], im["source"], file=im["_file"], line=im["_line"], exists=im["exists"],
                        width=w, height=h, size_error=errors, declared_width=im["sw"], declared_height=im["sh"])
    if n_no_xml or n_no_object:
        report.append(f"voc: {n_no_object} XML files without <object> and {n_no_xml} listed ids without an XML: "
                      "images with no object (normal)")
    if n_difficult:
        report.append(f"voc: {n_difficult} objects marked <difficult>; kept as boxes like the others")
    b = pd.DataFrame(box_rows, columns=["image_id", "class_name", *_COORDS, "sw", "sh", "_file", "_line", "normal"])
    boxes = raw_boxes(b["image_id"], file=b["_file"], line=b["_line"], rad_id=RAD_ID, class_name=b["class_name"],
                      x_min=b["xmin"], y_min=b["ymin"], x_max=b["xmax"], y_max=b["ymax"], space_w=b["sw"],
                      space_h=b["sh"], normal=b["normal"])
    return RawDataset(classes=classes, aliases=aliases, images=images, boxes=boxes, problems=problems, report=report,
                      sizes_from="the image file headers", boxes_from=f"{_relative(xml_dir, root)}/*.xml")
