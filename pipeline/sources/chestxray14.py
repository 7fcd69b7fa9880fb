"""Reader of the NIH ChestX-ray14 files into raw tables (checked by :mod:`pipeline.sources.validate`).

Layout under ``root`` (as NIH and Kaggle ship it)::

    Data_Entry_2017.csv          (or Data_Entry_2017_v2020.csv, optionally .gz)
    BBox_List_2017.csv           984 boxes on 880 images, 8 classes, x,y,w,h in 1024x1024 pixel space
    train_val_list.txt           official split (86,524 file names), by patient
    test_list.txt                (25,596 file names)
    images/<name>.png            or the NIH download's images_001/images/ ... images_012/images/ (or flat
                                 images_001/ ...), or the folder(s) named by data.images_subdir

Quirks handled: CRLF line endings; Data_Entry's header has bracketed names that contain the separator
(``OriginalImage[Width,Height]`` becomes two columns ``OriginalImage[Width`` and ``Height]``) and, in the
2017 file, a trailing comma (an empty 12th column); the v2020 file has LF and no trailing comma; the BBox
header ``Bbox [x,y,w,h],,,`` has 9 fields while its rows have 6; BBox says ``Infiltrate`` where
Data_Entry says ``Infiltration``; split lists may lack a final newline.

Coordinates: ``image_id`` is the file stem (``00000001_000``). BBox_List coordinates are in the 1024x1024
space of the NIH PNGs; the images table gives the size of the file actually on disk (its header), and the
boxes are scaled per axis by that size / 1024 (so a 256x256 copy, as ``bbox_256/``, gets boxes / 4). The
image files may be of any size and PNG or JPEG (found by file stem). An image listed in Data_Entry but
not on disk is handled as ``data.missing_images`` says (error, skip, or assume the NIH size 1024x1024).
With several image folders, an image found in more than one is read from the first folder listed (the
count is reported). Data_Entry's original scan sizes are kept in :func:`read_data_entry`'s output but
not used for boxes.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.classes import CHESTXRAY14, NORMAL_ID
from pipeline.errors import DataError
from pipeline.sources.files import (
    IMAGE_SUFFIXES, image_sizes, index_files, norm_header, png_size, read_csv_lines, read_list_lines,
    require_columns, require_file, strip_text, to_number,
)
from pipeline.sources.problems import Problems
from pipeline.sources.tables import Options, RawDataset, keep_first_per_split, raw_boxes, raw_images
from pipeline.sources.validate import finish, safe_id_mask

__all__ = ["NIH_SIZE", "image_dirs", "parse_chestxray14", "png_size", "read_bbox_list", "read_data_entry",
           "read_split_list"]

NIH_SIZE = 1024  # every PNG of the NIH release is 1024x1024; BBox_List coordinates are in this space
DATA_ENTRY_NAMES = ("Data_Entry_2017.csv", "Data_Entry_2017_v2020.csv", "Data_Entry_2017_v2020.csv.gz",
                    "Data_Entry_2017.csv.gz")
BBOX_NAME = "BBox_List_2017.csv"
TRAIN_LIST, TEST_LIST = "train_val_list.txt", "test_list.txt"
# Other spellings of the class names seen in the NIH files and their re-saves.
ALIASES = {"Infiltrate": "Infiltration", "Pleural Thickening": "Pleural_Thickening", "No finding": "No Finding"}
RAD_ID = "NIH"

# Normalised header name (lower-case letters and digits) -> column name of read_data_entry's output.
_DATA_ENTRY_COLUMNS = {
    "imageindex": "image_index", "findinglabels": "finding_labels", "followup": "follow_up",
    "patientid": "patient_id", "patientage": "patient_age", "patientgender": "patient_gender",
    "viewposition": "view_position",
    "originalimagewidth": "original_width", "height": "original_height", "originalimageheight": "original_height",
    "originalimagepixelspacingx": "pixel_spacing_x", "y": "pixel_spacing_y", "originalimagepixelspacingy": "pixel_spacing_y",
}
_BBOX_COLUMNS = {"imageindex": "image_index", "findinglabel": "class_name", "findinglabels": "class_name",
                 "bboxx": "x", "x": "x", "y": "y", "w": "w", "h": "h"}


def _rename(df: pd.DataFrame, mapping: dict[str, str]) -> pd.DataFrame:
    """Canonical column names; the empty columns of trailing commas ('Unnamed: 11') are dropped."""
    cols = {}
    for c in df.columns:
        if c == "_line":
            continue
        key = norm_header(c)
        if key in mapping and mapping[key] not in cols.values():
            cols[c] = mapping[key]
    unnamed = [c for c in df.columns if c.startswith("Unnamed:") and c not in cols]
    extra = [c for c in unnamed if df[c].notna().any()]
    df = df.drop(columns=[c for c in unnamed if c not in extra])
    return df.rename(columns=cols)


def _stem(names: pd.Series) -> pd.Series:
    """'00000001_000.png' -> '00000001_000' (the image id; the file name stays in the source path)."""
    out = [n.strip() for n in names.fillna("").astype("str").tolist()]
    return pd.Series([n[:-4] if n[-4:].lower() == ".png" else n for n in out], index=names.index, dtype="str")


def _labels_of(finding_labels: pd.Series, path: Path, lines: pd.Series, problems: Problems) -> pd.Series:
    """'Cardiomegaly|Emphysema' -> '1|10'; 'No Finding' -> '14'. Unknown names are problems."""
    index = {n: i for i, n in enumerate(CHESTXRAY14)}
    text = finding_labels.fillna("").astype("str")
    mapped: dict[str, str | None] = {}
    for value in text.unique():  # a few hundred distinct combinations, not 112,120 rows
        names = [ALIASES.get(p.strip(), p.strip()) for p in value.split("|") if p.strip()]
        if not names or any(n not in index for n in names):
            mapped[value] = None
            continue
        ids = sorted({index[n] for n in names})
        if len(ids) > 1 and NORMAL_ID in ids:  # 'No Finding' next to a finding: the finding wins
            ids.remove(NORMAL_ID)
        mapped[value] = "|".join(map(str, ids))
    out = text.map(mapped)
    bad = out.isna()
    if bad.any():
        problems.add_rows(path, lines[bad], (f"unknown finding label(s) in {v!r}" for v in text[bad]),
                          hint=f"Finding Labels are '|'-joined names from: {', '.join(CHESTXRAY14)}.")
    return out.fillna("")


# --------------------------------------------------------------------------------------------------
# single files
# --------------------------------------------------------------------------------------------------
def _strip_zeros(pid: str) -> str:
    """'00001' -> '1' (Patient IDs written with and without leading zeros are one patient); '000' -> '0'."""
    if not pid.startswith("0"):
        return pid
    rest = pid.lstrip("0")
    return rest if rest[:1].isdigit() else "0" + rest


def _parse_data_entry(path: Path, problems: Problems, full: bool = True) -> pd.DataFrame:
    """Data_Entry as clean columns plus ``_line``; label and Patient ID problems go to ``problems``.
    ``full``: also the age, sex, view and original size columns (the dataset needs only ids, labels, patients)."""
    path = require_file(path, "ChestX-ray14 Data_Entry file")
    raw = read_csv_lines(path, dtype="str")
    df = _rename(raw, _DATA_ENTRY_COLUMNS)
    require_columns(df, path, ["image_index", "finding_labels", "patient_id"],
                    "Use NIH's Data_Entry_2017.csv (header: Image Index,Finding Labels,Follow-up #,Patient ID,...).")
    index = [v.strip() for v in df["image_index"].fillna("").tolist()]
    out = pd.DataFrame({"image_id": _stem(pd.Series(index, dtype="str")), "image_index": pd.Series(index, dtype="str")})
    out["finding_labels"] = strip_text(df["finding_labels"]).to_numpy()
    out["labels"] = _labels_of(df["finding_labels"], path, df["_line"], problems)
    pid = pd.Series([v.strip() for v in df["patient_id"].fillna("").tolist()], dtype="str")
    no_pid = pid == ""
    if no_pid.any():
        problems.add_rows(path, df.loc[no_pid, "_line"], message="empty Patient ID",
                          hint="Every image needs its Patient ID (the split and the folds group by patient).")
    out["patient_id"] = pd.Series([_strip_zeros(v) for v in pid.tolist()], dtype="str")
    out["_line"] = df["_line"].to_numpy()
    if not full:
        return out
    for col in ("follow_up", "patient_age", "original_width", "original_height"):
        if col in df.columns:
            out[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64")
    for col in ("pixel_spacing_x", "pixel_spacing_y"):
        if col in df.columns:
            out[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
    for col in ("patient_gender", "view_position"):
        if col in df.columns:
            out[col] = df[col].astype("str").str.strip()
    return out


def _id_problems(ids: pd.Series, lines: pd.Series, path: Path, problems: Problems, column: str) -> None:
    """Unsafe and repeated ids of a single file read on its own (the dataset pass checks them for load_dataset)."""
    bad = ~safe_id_mask(ids)
    problems.add_rows(path, lines[bad], (f"{column} {v!r} is not a safe file name (letters, digits, '.', '_', '-';"
                                         " no path separators, no '..')" for v in ids[bad]),
                      hint="Image ids become file names: rename the image and its rows, or remove them.")
    dup = ids.duplicated()
    problems.add_rows(path, lines[dup], (f"image {i!r} is listed twice" for i in ids[dup]), hint="List each image once.")


def read_data_entry(path: Path | str) -> pd.DataFrame:
    """Read ``Data_Entry_2017.csv`` (2017 or v2020 variant, plain or .gz) into clean columns.

    Returns, in file order: ``image_id`` (file stem), ``image_index`` (file name), ``finding_labels`` (as
    written), ``labels`` (class ids, '|'-joined; 'No Finding' -> '14'), ``patient_id`` (str),
    and, where the file has them, ``follow_up``, ``patient_age``, ``patient_gender``, ``view_position``,
    ``original_width``, ``original_height`` (the scan's size before NIH resized it to 1024x1024),
    ``pixel_spacing_x``, ``pixel_spacing_y`` (mm, of the original scan).
    """
    path, problems = Path(path), Problems()
    out = _parse_data_entry(path, problems)
    _id_problems(out["image_id"], out["_line"], path, problems, "Image Index")
    problems.raise_if_any()
    return out.drop(columns="_line").reset_index(drop=True)


def _parse_bbox(path: Path, problems: Problems, report: list[str]) -> pd.DataFrame:
    """BBox_List rows as raw boxes (corners in the 1024x1024 NIH space)."""
    path = require_file(path, "ChestX-ray14 box list")
    df = _rename(read_csv_lines(path, dtype="str"), _BBOX_COLUMNS)
    require_columns(df, path, ["image_index", "class_name", "x", "y", "w", "h"],
                    "Use NIH's BBox_List_2017.csv (header: Image Index,Finding Label,Bbox [x,y,w,h]).")
    names = strip_text(df["class_name"])
    aliased = names.isin(list(ALIASES))
    if aliased.any():
        seen = sorted(set(names[aliased]))
        report.append(f"{path.name}: {int(aliased.sum())} rows name a class by another spelling ("
                      + ", ".join(f"{n!r} read as {ALIASES[n]!r}" for n in seen) + ")")
    normal = names.map(lambda v: ALIASES.get(v, v)) == CHESTXRAY14[NORMAL_ID]
    if normal.any():
        problems.add_rows(path, df.loc[normal, "_line"], message="'No Finding' is not a box class",
                          hint="The box list holds findings only: remove 'No Finding' rows.")
        df = df[~normal]
    x, y, w, h = (to_number(df, c, path, problems) for c in ("x", "y", "w", "h"))
    return raw_boxes(_stem(df["image_index"]), file=str(path), line=df["_line"], rad_id=RAD_ID,
                     class_name=df["class_name"], x_min=x, y_min=y, x_max=x + w, y_max=y + h,
                     space_w=NIH_SIZE, space_h=NIH_SIZE)


def read_bbox_list(path: Path | str) -> tuple[pd.DataFrame, list[str]]:
    """Read ``BBox_List_2017.csv`` alone into the annotation table, in the NIH 1024x1024 pixel space.

    Rows ``Image Index, Finding Label, x, y, w, h`` become corners ``x_min = x, y_min = y, x_max = x + w,
    y_max = y + h`` (pixels, y down); class ids index :data:`pipeline.classes.CHESTXRAY14` ('Infiltrate' is
    read as 'Infiltration'); ``rad_id`` is "NIH". Boxes are validated against 1024x1024 (clipped within
    2 px, reported). Returns the table and report lines; raises DataError naming every bad line.
    """
    path, problems, report = Path(path), Problems(), []
    boxes = _parse_bbox(path, problems, report)
    first = boxes.drop_duplicates("image_id")
    images = raw_images(first["image_id"], "test", "", file=str(path), line=first["_line"], width=NIH_SIZE,
                        height=NIH_SIZE, labels="")
    ds = finish(RawDataset(classes=list(CHESTXRAY14), images=images, boxes=boxes, problems=problems, report=report,
                           aliases=ALIASES, sizes_from=f"the NIH {NIH_SIZE}x{NIH_SIZE} image space",
                           boxes_from=path.name))
    return ds.annotations, ds.report


def read_split_list(path: Path | str) -> list[str]:
    """Image ids (file stems) of an official split list (one file name per line), in file order.

    Blank lines, CRLF and a missing final newline are fine; unsafe names and repeats are errors.
    """
    path = require_file(path, "ChestX-ray14 split list",
                        "Put NIH's train_val_list.txt and test_list.txt in data.root, or set data.official_split=false.")
    values, numbers = read_list_lines(path)
    ids = _stem(pd.Series(values, dtype="str"))
    problems = Problems()
    _id_problems(ids, pd.Series(numbers), path, problems, "file name")
    problems.raise_if_any()
    return ids.tolist()


# --------------------------------------------------------------------------------------------------
# images on disk
# --------------------------------------------------------------------------------------------------
_NIH_PART = re.compile(r"images_(\d{3})")  # the NIH download's parts: images_001 .. images_012


def image_dirs(root: Path, images_subdir: tuple[str, ...] | str | None = None) -> list[Path]:
    """Folders that hold the images: ``root/<each of images_subdir>``; else ``root/images`` and the NIH
    download's parts ``root/images_001/images`` .. ``images_012`` (or flat ``root/images_001`` ..). Other
    folders (``images_256``, say) are used only when named. Empty when none exist (CSV-only use)."""
    if images_subdir:
        names = (images_subdir,) if isinstance(images_subdir, str) else tuple(images_subdir)
        dirs = [root / n for n in names]
        for d, n in zip(dirs, names):
            if not d.is_dir():
                raise DataError(f"{d}: image folder not found (data.images_subdir={list(names)!r}). Set it to the "
                                "folder(s) under data.root that hold the images, or null to look in images/ and "
                                "images_001/ .. images_012/.")
        return dirs
    dirs = [root / "images"] if (root / "images").is_dir() else []
    for d in sorted(root.iterdir()) if root.is_dir() else []:
        m = _NIH_PART.fullmatch(d.name)
        if m and 1 <= int(m.group(1)) <= 12 and d.is_dir():
            dirs.append(d / "images" if (d / "images").is_dir() else d)
    return dirs


def _find_images(dirs: list[Path], report: list[str]) -> dict[str, Path]:
    found, dups = index_files(dirs, IMAGE_SUFFIXES)
    if dups:
        w, h, _ = image_sizes([p for d in dups for p in d[1:]])
        differ = int(np.sum((w[0::2] != w[1::2]) | (h[0::2] != h[1::2])))
        k, kept, other = dups[0]
        report.append(f"images: {len(dups)} images are in more than one image folder (e.g. {k}: {kept.parent.name} and "
                      f"{other.parent.name}); the first folder's file is used"
                      + (f" ({differ} of the pairs differ in size)" if differ else " (same size in both)"))
    return found


# --------------------------------------------------------------------------------------------------
# the dataset
# --------------------------------------------------------------------------------------------------
def find_data_entry(root: Path) -> Path:
    for name in DATA_ENTRY_NAMES:
        if (root / name).is_file():
            return root / name
    raise DataError(f"{root}: no ChestX-ray14 image list; expected one of {list(DATA_ENTRY_NAMES)}. "
                    "Point data.root at the folder of NIH's Data_Entry_2017.csv.")


def _official_split(root: Path, entries: pd.DataFrame, entry_name: str, report: list[str]) -> pd.Series:
    hint = "Put NIH's {} in data.root, or set data.official_split=false."
    train_list = read_split_list(require_file(root / TRAIN_LIST, "ChestX-ray14 train/val list", hint.format(TRAIN_LIST)))
    test_list = read_split_list(require_file(root / TEST_LIST, "ChestX-ray14 test list", hint.format(TEST_LIST)))
    both = set(train_list).intersection(test_list)
    if both:
        raise DataError(f"{root / TEST_LIST}: {len(both)} images are also in {TRAIN_LIST} (e.g. {sorted(both)[0]!r}). "
                        "Use NIH's original split lists: they are disjoint.")
    known = set(entries["image_id"].tolist())
    for name, ids in ((TRAIN_LIST, train_list), (TEST_LIST, test_list)):
        extra = len(set(ids) - known)
        if extra:
            report.append(f"{name}: {extra} images not in {entry_name}; ignored")
    ids = entries["image_id"].tolist()
    test_set, train_set = set(test_list), set(train_list)
    in_test = np.fromiter((i in test_set for i in ids), dtype=bool, count=len(ids))
    split = pd.Series(np.where(in_test, "test", "train"), index=entries.index, dtype="str")
    n_none = int(sum(1 for i, t in zip(ids, in_test) if not t and i not in train_set))
    if n_none:
        report.append(f"{entry_name}: {n_none} images in neither split list; put in train")
    return split


def parse_chestxray14(opts: Options) -> RawDataset:
    """ChestX-ray14 as raw tables: every Data_Entry image (``labels`` from Finding Labels, test included:
    NIH publishes them) and the BBox_List boxes. ``official_split``: train = train_val_list.txt, test =
    test_list.txt; otherwise every image is train. ``limit`` keeps the first N images of each split."""
    root = Path(opts.root)
    if not root.is_dir():
        raise DataError(f"{root}: ChestX-ray14 folder not found. Set data.root to the folder with "
                        "Data_Entry_2017.csv, BBox_List_2017.csv, the split lists and images/.")
    report: list[str] = []
    problems = Problems()
    entry_path = find_data_entry(root)
    entries = _parse_data_entry(entry_path, problems, full=False)
    report.append(f"{entry_path.name}: {len(entries)} images of {entries['patient_id'].nunique()} patients")
    if opts.official_split:
        entries["split"] = _official_split(root, entries, entry_path.name, report)
    else:
        entries["split"] = "train"
        report.append("official_split is off: every image is train, no test split")
    known = set(entries["image_id"].tolist())
    entries = keep_first_per_split(entries, opts.limit)

    dirs = image_dirs(root, opts.images_subdir)
    found = _find_images(dirs, report) if dirs else {}
    files = [found.get(i) for i in entries["image_id"].tolist()]
    width, height, errors = image_sizes(files)
    unused = len(set(found) - set(entries["image_id"].tolist()))
    if unused:
        report.append(f"images: {unused} image files in {', '.join(d.name for d in dirs)} are not in "
                      f"{entry_path.name}" + (" or were left out by data.limit" if opts.limit else "") + "; not used")
    prefix = f"{dirs[0] if dirs else root / 'images'}{os.sep}"
    source = [str(f) if f is not None else prefix + n for f, n in zip(files, entries["image_index"].tolist())]
    images = raw_images(entries["image_id"], entries["split"], source, file=str(entry_path), line=entries["_line"],
                        exists=[f is not None for f in files], width=width, height=height, size_error=errors,
                        declared_width=NIH_SIZE, declared_height=NIH_SIZE, patient_id=entries["patient_id"],
                        labels=entries["labels"])

    bbox_path = root / BBOX_NAME
    if bbox_path.is_file():
        boxes = _parse_bbox(bbox_path, problems, report)
        n_all = len(boxes)
        listed = boxes["image_id"].isin(known)
        if (~listed).any():
            report.append(f"{BBOX_NAME}: {int((~listed).sum())} boxes on images not in {entry_path.name}; dropped")
        kept = boxes["image_id"].isin(entries["image_id"])
        if (listed & ~kept).any():
            report.append(f"{BBOX_NAME}: {int((listed & ~kept).sum())} boxes on images left out by limit={opts.limit}")
        boxes = boxes[kept].reset_index(drop=True)
        report.append(f"{BBOX_NAME}: {len(boxes)} of {n_all} boxes kept, on {boxes['image_id'].nunique()} images")
    else:
        boxes = raw_boxes([], file=str(bbox_path), class_name=[])
        report.append(f"{BBOX_NAME} not found in {root}: no boxes (classification only)")
    return RawDataset(classes=list(CHESTXRAY14), images=images, boxes=boxes, problems=problems, report=report,
                      aliases=ALIASES, sizes_from="the image file headers", boxes_from=BBOX_NAME)
