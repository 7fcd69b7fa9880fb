"""Reader of the NIH ChestX-ray14 files into the annotation and image tables.

Layout under ``root`` (as NIH and Kaggle ship it)::

    Data_Entry_2017.csv          (or Data_Entry_2017_v2020.csv, optionally .gz)
    BBox_List_2017.csv           984 boxes on 880 images, 8 classes, x,y,w,h in 1024x1024 pixel space
    train_val_list.txt           official split (86,524 file names), by patient
    test_list.txt                (25,596 file names)
    images/<name>.png            or images_001/images/<name>.png ... (the NIH download), or data.images_subdir

Quirks handled: CRLF line endings; Data_Entry's header has bracketed names that contain the separator
(``OriginalImage[Width,Height]`` becomes two columns ``OriginalImage[Width`` and ``Height]``) and, in the
2017 file, a trailing comma (an empty 12th column); the v2020 file has LF and no trailing comma; the BBox
header ``Bbox [x,y,w,h],,,`` has 9 fields while its rows have 6; BBox says ``Infiltrate`` where
Data_Entry says ``Infiltration``; split lists may lack a final newline.

Coordinates: ``image_id`` is the file stem (``00000001_000``). The released PNGs are 1024x1024, already
resized (aspect NOT kept) from the original scans whose sizes Data_Entry records in
``OriginalImage[Width, Height]``; BBox_List coordinates are in the 1024x1024 PNG space. The images table
gives the size of the PNG actually on disk (its header), because that is the source image every
later stage reads; boxes are in that PNG's pixels (scaled from 1024 only where a PNG is not 1024x1024,
which is reported). Where a PNG is absent (CSV-only use), its size is taken as 1024x1024, the size of
every image in the NIH release, and the count is reported. Data_Entry's original sizes are kept in
:func:`read_data_entry`'s output but not used for boxes.
"""
from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.classes import CHESTXRAY14, NORMAL_ID
from pipeline.errors import DataError
from pipeline.sources.common import (
    Dataset, Problems, check_ids, empty_annotations, finalize_annotations, make_images, norm_header,
    read_csv_lines, require_columns, require_file, resolve_classes, to_number, validate_boxes,
)

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
    return names.astype("str").str.strip().str.replace(r"\.png$", "", regex=True, case=False)


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
def read_data_entry(path: Path | str) -> pd.DataFrame:
    """Read ``Data_Entry_2017.csv`` (2017 or v2020 variant, plain or .gz) into clean columns.

    Returns, in file order: ``image_id`` (file stem), ``image_index`` (file name), ``finding_labels`` (as
    written), ``labels`` (class ids, '|'-joined; 'No Finding' -> '14'), ``patient_id`` (str),
    and, where the file has them, ``follow_up``, ``patient_age``, ``patient_gender``, ``view_position``,
    ``original_width``, ``original_height`` (the scan's size before NIH resized it to 1024x1024),
    ``pixel_spacing_x``, ``pixel_spacing_y`` (mm, of the original scan).
    """
    path = require_file(path, "ChestX-ray14 Data_Entry file")
    raw = read_csv_lines(path, dtype="str")
    df = _rename(raw, _DATA_ENTRY_COLUMNS)
    require_columns(df, path, ["image_index", "finding_labels", "patient_id"],
                    "Use NIH's Data_Entry_2017.csv (header: Image Index,Finding Labels,Follow-up #,Patient ID,...).")
    problems = Problems()
    out = pd.DataFrame({"image_id": _stem(df["image_index"]), "image_index": df["image_index"].str.strip()})
    check_ids(out["image_id"], df["_line"], path, problems, column="Image Index")
    dup = out["image_id"].duplicated()
    if dup.any():
        problems.add_rows(path, df.loc[dup, "_line"], (f"image {i!r} is listed twice" for i in out.loc[dup, "image_id"]),
                          hint="Keep one row per image.")
    out["finding_labels"] = df["finding_labels"].fillna("").str.strip()
    out["labels"] = _labels_of(df["finding_labels"], path, df["_line"], problems)
    pid = df["patient_id"].fillna("").str.strip()
    no_pid = pid == ""
    if no_pid.any():
        problems.add_rows(path, df.loc[no_pid, "_line"], message="empty Patient ID",
                          hint="Every image needs its Patient ID (the split and the folds group by patient).")
    out["patient_id"] = pid.str.replace(r"^0+(?=\d)", "", regex=True)  # '00001' and '1' are one patient
    for col in ("follow_up", "patient_age", "original_width", "original_height"):
        if col in df.columns:
            out[col] = pd.to_numeric(df[col], errors="coerce").astype("Int64")
    for col in ("pixel_spacing_x", "pixel_spacing_y"):
        if col in df.columns:
            out[col] = pd.to_numeric(df[col], errors="coerce").astype("float64")
    for col in ("patient_gender", "view_position"):
        if col in df.columns:
            out[col] = df[col].astype("str").str.strip()
    problems.raise_if_any()
    return out.reset_index(drop=True)


def read_bbox_list(path: Path | str) -> tuple[pd.DataFrame, list[str]]:
    """Read ``BBox_List_2017.csv`` into the annotation table, in the NIH 1024x1024 pixel space.

    Rows ``Image Index, Finding Label, x, y, w, h`` become corners ``x_min = x, y_min = y, x_max = x + w,
    y_max = y + h`` (pixels, y down); class ids index :data:`pipeline.classes.CHESTXRAY14` ('Infiltrate' is
    read as 'Infiltration'); ``rad_id`` is "NIH". Boxes are validated against 1024x1024 (clipped within
    2 px, reported). Returns the table and report lines; raises DataError naming every bad line.
    """
    path = require_file(path, "ChestX-ray14 box list")
    raw = read_csv_lines(path, dtype="str")
    df = _rename(raw, _BBOX_COLUMNS)
    require_columns(df, path, ["image_index", "class_name", "x", "y", "w", "h"],
                    "Use NIH's BBox_List_2017.csv (header: Image Index,Finding Label,Bbox [x,y,w,h]).")
    problems = Problems()
    df["image_id"] = _stem(df["image_index"])
    ok = check_ids(df["image_id"], df["_line"], path, problems, column="Image Index")
    report = []
    n_alias = int(df["class_name"].astype("str").str.strip().isin(list(ALIASES)).sum())
    if n_alias:
        names = sorted(set(df["class_name"].str.strip()) & set(ALIASES))
        report.append(f"{path.name}: {n_alias} rows name a class by another spelling ("
                      + ", ".join(f"{n!r} read as {ALIASES[n]!r}" for n in names) + ")")
    df = resolve_classes(df, path, CHESTXRAY14, problems, aliases=ALIASES)
    x, y, w, h = (to_number(df, c, path, problems) for c in ("x", "y", "w", "h"))
    df["x_min"], df["y_min"], df["x_max"], df["y_max"] = x, y, x + w, y + h
    df["rad_id"] = RAD_ID
    normal = df["class_id"] == NORMAL_ID
    if normal.any():
        problems.add_rows(path, df.loc[normal, "_line"], message="'No Finding' is not a box class",
                          hint="The box list holds findings only: remove 'No Finding' rows.")
    df = df[ok & ~normal]
    space = pd.DataFrame({"image_id": df["image_id"].unique(), "width": NIH_SIZE, "height": NIH_SIZE})
    df, rep = validate_boxes(df, path, problems, space, sizes_from=f"the NIH {NIH_SIZE}x{NIH_SIZE} image space")
    problems.raise_if_any()
    return finalize_annotations(df), report + rep


def read_split_list(path: Path | str) -> list[str]:
    """Image ids (file stems) of an official split list (one file name per line), in file order.

    Blank lines, CRLF and a missing final newline are fine; unsafe names and repeats are errors.
    """
    path = require_file(path, "ChestX-ray14 split list",
                        "Put NIH's train_val_list.txt and test_list.txt in data.root, or set data.official_split=false.")
    with open(path, "r", encoding="utf-8-sig", newline="") as fh:
        lines = fh.read().splitlines()
    s = pd.Series(lines, dtype="str").str.strip()
    line_no = pd.Series(np.arange(1, len(s) + 1))
    keep = s != ""
    s, line_no = s[keep], line_no[keep]
    ids = _stem(s)
    problems = Problems()
    check_ids(ids, line_no, path, problems, column="file name")
    dup = ids.duplicated()
    if dup.any():
        problems.add_rows(path, line_no[dup], (f"image {i!r} is listed twice" for i in ids[dup]),
                          hint="List each image once.")
    problems.raise_if_any()
    return ids.tolist()


# --------------------------------------------------------------------------------------------------
# images on disk
# --------------------------------------------------------------------------------------------------
def image_dirs(root: Path, images_subdir: str | None = None) -> list[Path]:
    """Folders that hold the PNGs: ``root/images_subdir``; else ``root/images`` and/or the NIH download's
    ``root/images_001/images`` ... (or flat ``root/images_001``). Empty when none exist (CSV-only use)."""
    if images_subdir:
        d = root / images_subdir
        if not d.is_dir():
            raise DataError(f"{d}: image folder not found (data.images_subdir={images_subdir!r}). Set it to the "
                            "folder under data.root that holds the PNGs, or null to look in images/ and images_*/.")
        return [d]
    dirs = [root / "images"] if (root / "images").is_dir() else []
    for d in sorted(root.glob("images_*")):
        if (d / "images").is_dir():
            dirs.append(d / "images")
        elif d.is_dir():
            dirs.append(d)
    return dirs


def _index_pngs(dirs: list[Path]) -> dict[str, Path]:
    """File name -> path of every PNG in ``dirs`` (one directory listing each, not one stat per image)."""
    found: dict[str, Path] = {}
    for d in dirs:
        with os.scandir(d) as it:
            for e in it:
                if e.name.lower().endswith(".png") and e.name not in found:
                    found[e.name] = Path(e.path)
    return found


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG from its IHDR chunk (24 bytes read); other formats through Pillow."""
    with open(path, "rb") as fh:
        head = fh.read(24)
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        return struct.unpack(">II", head[16:24])
    from PIL import Image
    with Image.open(path) as im:
        return im.size


def _image_sizes(files: list[Path | None], problems: Problems) -> tuple[np.ndarray, np.ndarray]:
    w = np.full(len(files), NIH_SIZE, dtype=np.int64)
    h = np.full(len(files), NIH_SIZE, dtype=np.int64)
    idx = [i for i, f in enumerate(files) if f is not None]
    it = idx
    if len(idx) >= 1000:
        from tqdm import tqdm
        it = tqdm(idx, desc="PNG headers", unit="file", mininterval=2.0)
    for i in it:
        try:
            w[i], h[i] = png_size(files[i])
        except (OSError, ValueError, struct.error) as exc:
            problems.add(files[i], None, f"cannot read the image size ({exc})", "Replace the file with an intact copy.")
    return w, h


# --------------------------------------------------------------------------------------------------
# the dataset
# --------------------------------------------------------------------------------------------------
def find_data_entry(root: Path) -> Path:
    for name in DATA_ENTRY_NAMES:
        if (root / name).is_file():
            return root / name
    raise DataError(f"{root}: no ChestX-ray14 image list; expected one of {list(DATA_ENTRY_NAMES)}. "
                    "Point data.root at the folder of NIH's Data_Entry_2017.csv.")


def load_chestxray14(root: Path | str, official_split: bool = True, images_subdir: str | None = None,
                     limit: int | None = None) -> Dataset:
    """Load ChestX-ray14 into the annotation table (BBox_List boxes) and the images table (every image).

    ``official_split``: train = train_val_list.txt, test = test_list.txt (both by patient); otherwise every
    image is train. Images keep Data_Entry order within a split; ``limit`` keeps the first N of each.
    ``labels`` come from Finding Labels for every image (test included: NIH publishes them).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: ChestX-ray14 folder not found. Set data.root to the folder with "
                        "Data_Entry_2017.csv, BBox_List_2017.csv, the split lists and images/.")
    report: list[str] = []
    entry_path = find_data_entry(root)
    entries = read_data_entry(entry_path)
    report.append(f"{entry_path.name}: {len(entries)} images of {entries['patient_id'].nunique()} patients")
    known = set(entries["image_id"])

    split = pd.Series("train", index=entries.index, dtype="str")
    if official_split:
        train_list = read_split_list(require_file(root / TRAIN_LIST, "ChestX-ray14 train/val list",
                                                  "Put NIH's train_val_list.txt in data.root, or set data.official_split=false."))
        test_list = read_split_list(require_file(root / TEST_LIST, "ChestX-ray14 test list",
                                                 "Put NIH's test_list.txt in data.root, or set data.official_split=false."))
        both = set(train_list) & set(test_list)
        if both:
            raise DataError(f"{root / TEST_LIST}: {len(both)} images are also in {TRAIN_LIST} (e.g. {sorted(both)[0]!r}). "
                            "Use NIH's original split lists: they are disjoint.")
        for name, ids in ((TRAIN_LIST, train_list), (TEST_LIST, test_list)):
            extra = len(set(ids) - known)
            if extra:
                report.append(f"{name}: {extra} images not in {entry_path.name}; ignored")
        in_test = entries["image_id"].isin(set(test_list))
        in_train = entries["image_id"].isin(set(train_list))
        split[in_test] = "test"
        n_none = int((~in_test & ~in_train).sum())
        if n_none:
            report.append(f"{entry_path.name}: {n_none} images in neither split list; put in train")
    else:
        report.append("official_split is off: every image is train, no test split")

    entries = entries.assign(split=split)
    if limit is not None:
        entries = entries.groupby("split", sort=False).head(int(limit))
    entries = entries.reset_index(drop=True)

    # --- image files and sizes ---------------------------------------------------------------
    dirs = image_dirs(root, images_subdir)
    found = _index_pngs(dirs) if dirs else {}
    files = [found.get(n) for n in entries["image_index"]]
    problems = Problems()
    width, height = _image_sizes(files, problems)
    problems.raise_if_any()
    n_missing = sum(f is None for f in files)
    default_dir = dirs[0] if dirs else root / "images"
    source = [str(f) if f is not None else str(default_dir / n) for f, n in zip(files, entries["image_index"])]
    if n_missing:
        where = ", ".join(str(d) for d in dirs) if dirs else f"{root} (no images/ or images_*/ folder)"
        report.append(f"images: {n_missing} of {len(files)} PNGs not found in {where}; "
                      f"their size is taken as {NIH_SIZE}x{NIH_SIZE} (the NIH release size)")
    odd = (width != NIH_SIZE) | (height != NIH_SIZE)
    if odd.any():
        report.append(f"images: {int(odd.sum())} PNGs are not {NIH_SIZE}x{NIH_SIZE}; their boxes are scaled to the PNG size")
    images = make_images(entries["image_id"], entries["split"], entries["patient_id"], width, height,
                         entries["labels"], source)

    # --- boxes -------------------------------------------------------------------------------
    bbox_path = root / BBOX_NAME
    if bbox_path.is_file():
        ann, rep = read_bbox_list(bbox_path)
        report.extend(rep)
        n_all = len(ann)
        not_listed = ~ann["image_id"].isin(known)
        if not_listed.any():
            report.append(f"{BBOX_NAME}: {int(not_listed.sum())} boxes on images not in {entry_path.name}; dropped")
        kept = ann["image_id"].isin(set(images["image_id"]))
        if limit is not None and (~kept & ~not_listed).any():
            report.append(f"{BBOX_NAME}: {int((~kept & ~not_listed).sum())} boxes on images left out by limit={limit}")
        ann = ann[kept].reset_index(drop=True)
        size = images.set_index("image_id")
        sx = ann["image_id"].map(size["width"]).to_numpy(dtype="float64") / NIH_SIZE
        sy = ann["image_id"].map(size["height"]).to_numpy(dtype="float64") / NIH_SIZE
        ann[["x_min", "x_max"]] = ann[["x_min", "x_max"]].mul(sx, axis=0)
        ann[["y_min", "y_max"]] = ann[["y_min", "y_max"]].mul(sy, axis=0)
        report.append(f"{BBOX_NAME}: {len(ann)} of {n_all} boxes kept, on {ann['image_id'].nunique()} images")
    else:
        ann = empty_annotations()
        report.append(f"{BBOX_NAME} not found in {root}: no boxes (classification only)")
    return Dataset(annotations=finalize_annotations(ann), images=images, report=report)
