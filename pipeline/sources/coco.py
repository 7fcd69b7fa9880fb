"""Reader of COCO instances JSON files into raw tables (checked by :mod:`pipeline.sources.validate`).

Layouts under ``root`` (found in this order when ``data.annotations`` is null)::

    annotations/*.json          e.g. instances_train2017.json + instances_val2017.json, images in
                                train2017/ and val2017/ (or images/train2017/, images/)
    *.json                      e.g. one annotations.json, images in images/ beside it
    <split>/_annotations.coco.json   (Roboflow's export) images in the same folder

``data.annotations`` names the file(s) instead (relative to ``root``). Each JSON has ``images`` (``id``,
``file_name``, ``width``, ``height``), ``annotations`` (``image_id``, ``category_id``, ``bbox`` = x, y,
width, height in pixels of the image as the JSON states its size) and ``categories`` (``id``, ``name``).
An image's file is ``file_name`` under the first of: the folders of ``data.images_subdir``; else the
JSON's folder, ``images/`` beside it, ``root/<name>`` and ``root/images/<name>`` for ``instances_<name>.json``,
``root/images``. When the JSON's width/height differ from the file's, boxes are scaled per axis.

Splits: a file whose path (relative to ``root``) contains ``data.test_split`` as a word ('test' in
``instances_test2017.json`` or ``test/_annotations.coco.json``) holds test images; every other file is
train. Classes: the categories in id order (all files must have the same), then the normal class "No
finding"; ``image_id`` is the file name's stem. An image without annotations is a normal image (one row).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import DataError
from pipeline.sources.files import image_sizes, resolve_path, split_of_name
from pipeline.sources.problems import Problems
from pipeline.sources.tables import (
    Options, RawDataset, keep_first_per_split, raw_boxes, raw_images, split_normal,
)

RAD_ID = "coco"


def find_coco_files(root: Path, annotations: tuple[str, ...] = (), required: bool = True) -> list[Path]:
    """The instances JSON files: ``data.annotations`` if given, else annotations/*.json, *.json in root, or
    <folder>/_annotations.coco.json."""
    if annotations:
        files = [resolve_path(a, root) for a in annotations]
        missing = [f for f in files if not f.is_file()]
        if missing and required:
            raise DataError(f"{missing[0]}: COCO annotation file not found (data.annotations). Give the instances "
                            "JSON file(s), absolute or relative to data.root.")
        return [] if missing else files
    for pattern in ("annotations/*.json", "*.json", "*/_annotations.coco.json"):
        files = sorted(root.glob(pattern)) if root.is_dir() else []
        if files:
            return files
    if required:
        raise DataError(f"{root}: no COCO annotation file: looked for annotations/*.json, *.json and "
                        "*/_annotations.coco.json. Set data.root to the dataset folder, or data.annotations to the "
                        "instances JSON file(s).")
    return []


def _load(path: Path) -> dict:
    try:
        with open(path, "r", encoding="utf-8-sig") as fh:
            doc = json.load(fh)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path} line {exc.lineno}: not valid JSON ({exc.msg}, column {exc.colno}). Use the "
                        "original export of the instances file.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot be read ({exc}).") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(doc, dict) or not isinstance(doc.get(key), list):
            raise DataError(f"{path}: no '{key}' list; a COCO instances file has 'images', 'annotations' and "
                            "'categories'. Set data.annotations to the instances JSON file(s).")
    return doc


def _categories(docs: list[tuple[Path, dict]]) -> dict[int, str]:
    """Category id -> name, the same in every file."""
    first = None
    for path, doc in docs:
        cats: dict[int, str] = {}
        for i, c in enumerate(doc["categories"]):
            cid, name = (c.get("id"), c.get("name")) if isinstance(c, dict) else (None, None)
            if not isinstance(cid, int) or isinstance(cid, bool) or not isinstance(name, str) or not name.strip():
                raise DataError(f"{path} categories[{i}]: needs an integer 'id' and a 'name', got {c!r}.")
            if cid in cats:
                raise DataError(f"{path} categories[{i}]: category id {cid} is listed twice.")
            cats[cid] = name.strip()
        if not cats:
            raise DataError(f"{path}: 'categories' is empty; list the classes as {{\"id\": 1, \"name\": \"...\"}}.")
        if first is not None and cats != first[1]:
            raise DataError(f"{path}: its categories {cats} differ from those of {first[0]} ({first[1]}). Every file "
                            "of one dataset needs the same categories.")
        first = first or (path, cats)
    return dict(sorted(first[1].items()))


def _image_dirs(path: Path, root: Path, opts: Options) -> list[Path]:
    if opts.images_subdir:
        dirs = [root / d for d in opts.images_subdir]
        for d in dirs:
            if not d.is_dir():
                raise DataError(f"{d}: image folder not found (data.images_subdir). Set it to the folder(s) under "
                                "data.root that hold the images, or null to look beside the JSON.")
        return dirs
    dirs = [path.parent, path.parent / "images"]
    if path.stem.startswith("instances_"):
        name = path.stem[len("instances_"):]
        dirs += [root / name, root / "images" / name]
    dirs.append(root / "images")
    return [d for d in dict.fromkeys(dirs) if d.is_dir()] or [path.parent]


def _number(value) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else np.nan


def _read_file(path: Path, doc: dict, split: str, root: Path, opts: Options, problems: Problems):
    dirs = _image_dirs(path, root, opts)
    by_coco_id: dict = {}
    images = []
    for i, im in enumerate(doc["images"]):
        at = f"images[{i}]" + (f" (id {im.get('id')})" if isinstance(im, dict) else "")
        if not isinstance(im, dict) or "id" not in im or not isinstance(im.get("file_name"), str):
            problems.add(path, 0, "an image needs 'id' and 'file_name'", "Use the original COCO export.", at=at)
            continue
        if im["id"] in by_coco_id:
            problems.add(path, 0, f"image id {im['id']} is listed twice", "Give every image its own id.", at=at)
            continue
        name = im["file_name"]
        file = next((d / name for d in dirs if (d / name).is_file()), None)
        stem = Path(name).stem
        by_coco_id[im["id"]] = stem
        w, h = _number(im.get("width")), _number(im.get("height"))
        w, h = (w, h) if w > 0 and h > 0 else (np.nan, np.nan)
        images.append((stem, split, str(file or dirs[0] / name), file is not None, w, h, str(path), at))
    boxes = []
    n_crowd = 0
    for j, a in enumerate(doc["annotations"]):
        at = f"annotations[{j}]" + (f" (id {a.get('id')})" if isinstance(a, dict) and "id" in a else "")
        ref = a.get("image_id") if isinstance(a, dict) else None
        if not isinstance(ref, (int, str)) or ref not in by_coco_id:
            problems.add(path, 0, f"image_id {ref!r} is not an image of this file", "Use the original COCO export.", at=at)
            continue
        bbox = a.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(np.isfinite(_number(v)) for v in bbox)):
            problems.add(path, 0, f"bbox {bbox!r} is not 4 numbers (x, y, width, height)",
                         "Give every annotation its bbox as [x, y, width, height] in pixels.", at=at)
            continue
        x, y, bw, bh = (float(v) for v in bbox)
        n_crowd += bool(a.get("iscrowd"))
        boxes.append((by_coco_id[a["image_id"]], a.get("category_id"), x, y, x + bw, y + bh, at, False))
    return images, boxes, n_crowd


def parse_coco(opts: Options) -> RawDataset:
    root = Path(opts.root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found. Set data.root to the folder of the COCO files.")
    files = find_coco_files(root, opts.annotations)
    docs = [(p, _load(p)) for p in files]
    cats = _categories(docs)
    classes, aliases = split_normal(list(cats.values()))
    normal_id = len(classes) - 1
    class_ids = {cid: classes.index(n) if n in classes else normal_id for cid, n in cats.items()}
    problems, report = Problems(), []
    img_rows, box_rows = [], []
    n_crowd = 0
    rels = [str(p.relative_to(root)) if p.is_relative_to(root) else p.name for p, _ in docs]
    splits = [split_of_name(rel, opts.test_split) for rel in rels]
    order = sorted(range(len(docs)), key=lambda k: splits[k] == "test")  # train files first, else as found
    for k in order:
        (path, doc), rel, split = docs[k], rels[k], splits[k]
        images, boxes, crowd = _read_file(path, doc, split, root, opts, problems)
        report.append(f"{rel}: {len(images)} {split} images, {len(boxes)} boxes")
        img_rows.extend(images)
        box_rows.extend((*b, str(path)) for b in boxes)
        n_crowd += crowd
    if n_crowd:
        report.append(f"coco: {n_crowd} annotations are iscrowd=1; kept as boxes like the others")
    im = pd.DataFrame(img_rows, columns=["image_id", "split", "source", "exists", "w", "h", "_file", "_at"])
    im = keep_first_per_split(im, opts.limit)
    b = pd.DataFrame(box_rows, columns=["image_id", "category_id", "x_min", "y_min", "x_max", "y_max", "_at",
                                        "normal", "_file"])
    b = b[b["image_id"].isin(im["image_id"])]
    empty = im[~im["image_id"].isin(b["image_id"])]
    if len(empty):
        report.append(f"coco: {len(empty)} images without annotations: images with no object (normal)")
    b = pd.concat([b, pd.DataFrame({"image_id": empty["image_id"], "category_id": None, "_at": empty["_at"],
                                    "normal": True, "_file": empty["_file"]})], ignore_index=True)
    order = {i: k for k, i in enumerate(im["image_id"].drop_duplicates())}
    b = b.iloc[np.argsort(b["image_id"].map(order).to_numpy(), kind="stable")]  # image order, then file order
    size = im.drop_duplicates("image_id").set_index("image_id")
    w, h, errors = image_sizes([Path(s) if e else None for s, e in zip(im["source"], im["exists"])])
    images = raw_images(im["image_id"], im["split"], im["source"], file=im["_file"], at=im["_at"], exists=im["exists"],
                        width=w, height=h, size_error=errors, declared_width=im["w"], declared_height=im["h"])
    boxes = raw_boxes(b["image_id"], file=b["_file"], at=b["_at"], rad_id=RAD_ID, class_id=b["category_id"],
                      x_min=b["x_min"], y_min=b["y_min"], x_max=b["x_max"], y_max=b["y_max"],
                      space_w=b["image_id"].map(size["w"]), space_h=b["image_id"].map(size["h"]),
                      normal=b["normal"].astype(bool))
    return RawDataset(classes=classes, aliases=aliases, class_ids=class_ids, class_id_label="category_id",
                      images=images, boxes=boxes, problems=problems, report=report,
                      sizes_from="the image file headers", boxes_from="coco")
