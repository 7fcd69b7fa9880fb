"""Reader of datasets in the ultralytics YOLO layout into raw tables (checked by :mod:`pipeline.sources.validate`).

Layout under ``root``::

    data.yaml                  path: . (optional), train: images/train, val: images/val, test: images/test,
                               names: {0: ActiveTuberculosis, 1: ObsoletePulmonaryTuberculosis} (or a list)
    images/<split>/<id>.jpg    any of .png .jpg .jpeg .bmp .tif .tiff .webp .dcm (sub-folders too)
    labels/<split>/<id>.txt    one line per box: class x_center y_center width height, normalised to 0..1

The data YAML is ``data.annotations`` or, when that is null, ``data.yaml`` / ``dataset.yaml`` / the only
``*.yaml`` in ``root``. Each of ``train``, ``val``, ``test`` is a folder, a ``.txt`` list of image paths
(relative ones are relative to the list's folder) or a list of these, relative to ``path`` (which is
relative to the YAML's folder). Labels are found as ultralytics finds them: the last ``/images/`` of the
image path becomes ``/labels/`` and the suffix ``.txt``.

Splits: the key named by ``data.test_split`` (default ``test``) is test; every other key (train, val) is
train. Classes: ``names`` in id order, then the normal class "No finding" (a name spelled "No finding" is
that class). An image with no label file or an empty one has no object: it is a normal image (one row).
Boxes are kept normalised here (a 1 x 1 space); the validation pass scales them by the file's size.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import ConfigError, DataError
from pipeline.sources.files import IMAGE_SUFFIXES, image_sizes, index_files, read_list_lines, resolve_path
from pipeline.sources.problems import Problems
from pipeline.sources.tables import (
    Options, RawDataset, keep_first_per_split, raw_boxes, raw_images, split_normal,
)

YAML_NAMES = ("data.yaml", "dataset.yaml")
SPLIT_KEYS = ("train", "val", "test")
RAD_ID = "yolo"


def find_yolo_yaml(root: Path, annotations: tuple[str, ...] = (), required: bool = True) -> Path | None:
    """The data YAML: ``data.annotations`` if given, else data.yaml / dataset.yaml / the only *.yaml in root."""
    if annotations:
        if len(annotations) != 1:
            raise ConfigError(f"data.annotations must name one data YAML for data.format=yolo, got {list(annotations)!r}.")
        path = resolve_path(annotations[0], root)
        if path.is_file():
            return path
        if required:
            raise DataError(f"{path}: YOLO data YAML not found (data.annotations). Give the path of the data YAML "
                            "(absolute, or relative to data.root).")
        return None
    for name in YAML_NAMES:
        if (root / name).is_file():
            return root / name
    found = sorted(root.glob("*.yaml")) + sorted(root.glob("*.yml")) if root.is_dir() else []
    if len(found) == 1:
        return found[0]
    if required:
        what = f"several ({', '.join(p.name for p in found)})" if found else "none"
        raise DataError(f"{root}: no YOLO data YAML found: expected {' or '.join(YAML_NAMES)} or one *.yaml, found "
                        f"{what}. Set data.annotations to the data YAML (with names: and train:/val:/test:).")
    return None


def _load_yaml(path: Path) -> dict:
    import yaml

    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8-sig"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path} line {mark.line + 1}" if mark is not None else str(path)
        raise DataError(f"{where}: not valid YAML ({getattr(exc, 'problem', None) or exc}). Fix the data YAML.") from None
    if not isinstance(doc, dict):
        raise DataError(f"{path}: a YOLO data YAML is a mapping with names: and train:/val:/test:, got {type(doc).__name__}.")
    return doc


def _class_names(doc: dict, path: Path) -> list[str]:
    names = doc.get("names")
    hint = "Give the class names in the data YAML, e.g. names: {0: ActiveTuberculosis, 1: ObsoletePulmonaryTuberculosis}."
    if names is None:
        raise DataError(f"{path}: no 'names' (the class names in id order). {hint}")
    if isinstance(names, dict):
        keys = sorted(names, key=lambda k: (not isinstance(k, int), k if isinstance(k, int) else 0))
        if keys != list(range(len(names))):
            raise DataError(f"{path}: 'names' keys must be the class ids 0..{len(names) - 1}, got {list(names)!r}. {hint}")
        names = [names[k] for k in keys]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) and n.strip() for n in names):
        raise DataError(f"{path}: 'names' must be a non-empty list or mapping of class names, got {names!r}. {hint}")
    if len(set(names)) != len(names):
        raise DataError(f"{path}: 'names' lists a class twice: {names!r}. {hint}")
    nc = doc.get("nc")
    if nc is not None and nc != len(names):
        raise DataError(f"{path}: nc is {nc!r} but 'names' has {len(names)} classes. Make them agree (or drop nc).")
    return [n.strip() for n in names]


def _base(doc: dict, yaml_path: Path, root: Path) -> Path:
    base = doc.get("path")
    if not base:
        return yaml_path.parent
    p = Path(str(base)).expanduser()
    if p.is_absolute():
        return p
    for cand in (yaml_path.parent / p, root / p):
        if cand.is_dir():
            return cand
    return yaml_path.parent / p


def _split_images(entry, key: str, base: Path, yaml_path: Path) -> list[tuple[Path, str, int]]:
    """(image path, file it is listed in, line) of one YAML split entry: a folder, a .txt list, or a list of these."""
    out: list[tuple[Path, str, int]] = []
    for item in entry if isinstance(entry, list) else [entry]:
        p = Path(str(item)).expanduser()
        p = p if p.is_absolute() else base / p
        if p.is_dir():
            found, _ = index_files([p], IMAGE_SUFFIXES, key="path", recursive=True)
            out.extend((f, str(f), 0) for f in sorted(found.values()))
        elif p.is_file() and p.suffix.lower() == ".txt":
            values, numbers = read_list_lines(p)
            for v, n in zip(values, numbers):
                q = Path(v).expanduser()
                out.append((q if q.is_absolute() else p.parent / q, str(p), n))
        else:
            raise DataError(f"{yaml_path}: {key}: {item!r} is not a folder or a .txt list of images ({p} not found). "
                            "Fix the path (relative to the YAML's 'path', or to the YAML's folder).")
    return out


def label_path(image: Path) -> Path:
    """ultralytics' rule: the last '/images/' of the path becomes '/labels/', the suffix '.txt'."""
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    s = str(image)
    if sa in s:
        s = sb.join(s.rsplit(sa, 1))
    return Path(s).with_suffix(".txt")


def _read_labels(path: Path, image_id: str, problems: Problems) -> list[tuple]:
    """(image_id, class id as written, x_min, y_min, x_max, y_max, file, line) of each line, normalised corners."""
    rows = []
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        problems.add(path, None, f"cannot be read ({exc})", "Replace the label file with an intact copy.")
        return rows
    for n, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 5:
            problems.add(path, n, f"expected 5 numbers (class x_center y_center width height), got {len(fields)}",
                         "Write one box per line as 'class x_center y_center width height', normalised to 0..1 "
                         "(segment polygons are not boxes: convert them first).")
            continue
        try:
            _, cx, cy, w, h = (float(v) for v in fields)
        except ValueError:
            problems.add(path, n, f"{line.strip()!r} is not 5 numbers", "Write plain numbers, e.g. 0 0.5 0.5 0.2 0.1.")
            continue
        rows.append((image_id, fields[0], cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2, str(path), n))
    return rows


def parse_yolo(opts: Options) -> RawDataset:
    root = Path(opts.root)
    yaml_path = find_yolo_yaml(root, opts.annotations)
    doc = _load_yaml(yaml_path)
    names = _class_names(doc, yaml_path)
    classes, aliases = split_normal(names)
    normal_id = len(classes) - 1
    class_ids = {i: classes.index(n) if n in classes else normal_id for i, n in enumerate(names)}
    base = _base(doc, yaml_path, root)
    keys = [k for k in dict.fromkeys([*SPLIT_KEYS, opts.test_split]) if doc.get(k)]
    if not keys:
        raise DataError(f"{yaml_path}: no image folders: give train: (and val:/test:) as folders or .txt lists of images.")
    if opts.test_split not in keys:
        report = [f"{yaml_path.name}: no '{opts.test_split}' entry (data.test_split): no test images"]
    else:
        report = []
    rows, seen = [], set()
    n_repeat = 0
    for key in keys:
        split = "test" if key == opts.test_split else "train"
        for path, file, line in _split_images(doc[key], key, base, yaml_path):
            if (split, path) in seen:
                n_repeat += 1
                continue
            seen.add((split, path))
            rows.append((path.stem, split, path, file, line))
    if n_repeat:
        report.append(f"{yaml_path.name}: {n_repeat} images listed twice within a split (e.g. train and val are the same "
                      "folder); kept once")
    table = pd.DataFrame(rows, columns=["image_id", "split", "path", "_file", "_line"])
    table = keep_first_per_split(table, opts.limit)
    exists = [p.is_file() if line else True for p, line in zip(table["path"], table["_line"])]
    w, h, errors = image_sizes([p if e else None for p, e in zip(table["path"], exists)])
    images = raw_images(table["image_id"], table["split"], [str(p) for p in table["path"]], file=table["_file"],
                        line=table["_line"], exists=exists, width=w, height=h, size_error=errors)

    problems, boxes = Problems(), []
    no_file = empty = 0
    for image_id, path in zip(table["image_id"], table["path"]):
        lab = label_path(path)
        got = _read_labels(lab, image_id, problems) if lab.is_file() else None
        if got is None:
            no_file += 1
        elif not got:
            empty += 1
        boxes.extend(got or [(image_id, None, np.nan, np.nan, np.nan, np.nan, str(lab), 0)])
    if no_file or empty:
        report.append(f"labels: {no_file} images without a label file and {empty} with an empty one: images with no "
                      "object (normal)")
    _report_orphans(keys, doc, base, set(table["path"].tolist()), opts.limit, report)
    b = pd.DataFrame(boxes, columns=["image_id", "class_id", "x_min", "y_min", "x_max", "y_max", "_file", "_line"])
    return RawDataset(
        classes=classes, aliases=aliases, class_ids=class_ids, class_id_label="YOLO class id", problems=problems,
        images=images, report=report, sizes_from="the image file headers", boxes_from="YOLO labels",
        boxes=raw_boxes(b["image_id"], file=b["_file"], line=b["_line"], rad_id=RAD_ID, class_id=b["class_id"],
                        x_min=b["x_min"], y_min=b["y_min"], x_max=b["x_max"], y_max=b["y_max"], space_w=1.0, space_h=1.0,
                        normal=b["class_id"].isna()))


def _report_orphans(keys, doc, base: Path, used: set, limit, report: list[str]) -> None:
    """Label files in the labels/ folders of the image folders that belong to no image (ultralytics ignores them)."""
    if limit is not None:
        return
    wanted = {label_path(p) for p in used}
    n, eg = 0, None
    for key in keys:
        for item in doc[key] if isinstance(doc[key], list) else [doc[key]]:
            d = Path(str(item)) if Path(str(item)).is_absolute() else base / str(item)
            lab_dir = label_path(d / "x.png").parent
            if d.is_dir() and lab_dir.is_dir() and lab_dir != d:
                for f in index_files([lab_dir], (".txt",), key="path", recursive=True)[0].values():
                    if f not in wanted:
                        n += 1
                        eg = eg or f
    if n:
        report.append(f"labels: {n} label files have no image (e.g. {eg}); not used")
