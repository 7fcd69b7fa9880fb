"""Reader of the VinBigData (Kaggle 2021) files into the annotation and image tables.

Kaggle layout under ``root``::

    train.csv                 image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max (original DICOM pixels)
    sample_submission.csv     image_id,PredictionString (only the ids are used: the test set)
    train/<image_id>.dicom    (or .dcm)
    test/<image_id>.dicom

Image sizes come from a meta CSV (``image_id,dim0,dim1`` as in the widely used Kaggle
``train_meta.csv``: dim0 = Rows = height, dim1 = Columns = width; the project's own ``meta.csv`` with
``height,width`` columns is accepted too) or, without one, from each DICOM header (Rows, Columns;
the pixel data is not read). Boxes are validated against those sizes (see
:func:`pipeline.sources.common.validate_boxes`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from pipeline.classes import NORMAL_ID, VINBIGDATA
from pipeline.errors import DataError
from pipeline.sources.common import (
    BOX_COLUMNS, Dataset, Problems, check_ids, finalize_annotations, labels_from_annotations, make_images,
    read_csv_lines, require_columns, require_file, resolve_classes, resolve_path, to_number, validate_boxes,
)

DICOM_SUFFIXES = (".dicom", ".dcm")
_PROGRESS_MIN = 200  # show a progress bar when reading at least this many DICOM headers


# --------------------------------------------------------------------------------------------------
# single files
# --------------------------------------------------------------------------------------------------
def read_image_sizes(path: Path | str) -> pd.DataFrame:
    """Image sizes from a meta CSV: ``image_id, width, height`` (int64 pixels), in file order.

    Accepts ``image_id,dim0,dim1`` (Kaggle train_meta/test_meta: dim0 = rows = height, dim1 = columns
    = width) or any CSV with ``image_id,height,width`` (the project's meta.csv, whose height/width are
    the ORIGINAL pixels). Sizes must be positive integers; an id listed twice must have the same size.
    """
    path = require_file(path, "image size CSV",
                        "Set data.meta_csv / data.test_meta_csv to an existing file (image_id,dim0,dim1), or null to "
                        "read sizes from the DICOM headers.")
    df = read_csv_lines(path, dtype={"image_id": "str"})
    if {"dim0", "dim1"} <= set(df.columns):
        hcol, wcol = "dim0", "dim1"
    elif {"height", "width"} <= set(df.columns):
        hcol, wcol = "height", "width"
    else:
        require_columns(df, path, ["image_id", "dim0", "dim1"],
                        "An image size CSV needs image_id,dim0,dim1 (dim0 = rows = height) or image_id,height,width.")
    require_columns(df, path, ["image_id"])
    problems = Problems()
    ok = check_ids(df["image_id"], df["_line"], path, problems)
    out = {}
    for col, name in ((hcol, "height"), (wcol, "width")):
        num = pd.to_numeric(df[col], errors="coerce")
        bad = ok & ~(num.notna() & (num > 0) & (num % 1 == 0))
        if bad.any():
            sub = df.loc[bad]
            problems.add_rows(path, sub["_line"], (f"{col} ({name}) is {v!r}, not a positive whole number of pixels"
                                                   for v in sub[col]),
                              hint="Image sizes are whole pixel counts (rows, columns) from the DICOM header.")
        out[name] = num.where(~bad, 0).fillna(0).astype("int64")
    sizes = pd.DataFrame({"image_id": df["image_id"].astype("str"), "width": out["width"],
                          "height": out["height"], "_line": df["_line"]})
    dup = sizes.duplicated("image_id", keep=False)
    if dup.any():
        conflict = sizes[dup].groupby("image_id")[["width", "height"]].nunique().max(axis=1) > 1
        conflicting = set(conflict[conflict].index)
        sub = sizes[dup & sizes["image_id"].isin(conflicting)].drop_duplicates("image_id", keep="last")
        problems.add_rows(path, sub["_line"], (f"image {i!r} is listed more than once with different sizes"
                                               for i in sub["image_id"]),
                          hint="Keep one row per image, with its size from the DICOM header.")
    problems.raise_if_any()
    return sizes.drop_duplicates("image_id").drop(columns="_line").reset_index(drop=True)


def dicom_sizes(paths: Iterable[Path | str]) -> pd.DataFrame:
    """Image sizes from DICOM headers: ``image_id`` (file stem), ``width`` (Columns), ``height`` (Rows), ``source``.

    Only the header is read (``stop_before_pixels``), so this costs a few ms per file even for the
    4 MB JPEG 2000 files of VinBigData. Missing, unreadable or size-less files are collected and raised
    as one DataError.
    """
    import pydicom  # imported here: only the DICOM path needs it
    from pydicom.errors import InvalidDicomError

    paths = [Path(p) for p in paths]
    problems = Problems()
    rows = []
    it = paths
    if len(paths) >= _PROGRESS_MIN:
        from tqdm import tqdm
        it = tqdm(paths, desc="DICOM headers", unit="file", mininterval=2.0)
    for p in it:
        if not p.is_file():
            problems.add(p, None, "DICOM file not found",
                         "Put the DICOMs where the layout expects them (root/train/<id>.dicom, root/test/<id>.dicom), "
                         "or give image sizes in a meta CSV (data.meta_csv / data.test_meta_csv).")
            continue
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["Rows", "Columns"])
            r, c = ds.get("Rows"), ds.get("Columns")
        except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
            problems.add(p, None, f"cannot be read as DICOM ({exc})", "Replace the file with an intact copy.")
            continue
        if not r or not c:
            problems.add(p, None, "DICOM header has no Rows/Columns", "Give image sizes in a meta CSV instead.")
            continue
        rows.append((p.stem, int(c), int(r), str(p)))
    problems.raise_if_any()
    return pd.DataFrame(rows, columns=["image_id", "width", "height", "source"]).astype(
        {"image_id": "str", "width": "int64", "height": "int64", "source": "str"})


def read_sample_submission(path: Path | str) -> list[str]:
    """Test image ids from Kaggle's ``sample_submission.csv`` (``image_id,PredictionString``), in file order."""
    path = require_file(path, "sample submission")
    df = read_csv_lines(path, dtype={"image_id": "str"})
    require_columns(df, path, ["image_id"])
    problems = Problems()
    check_ids(df["image_id"], df["_line"], path, problems)
    dup = df["image_id"].duplicated()
    if dup.any():
        problems.add_rows(path, df.loc[dup, "_line"], (f"image {i!r} is listed twice" for i in df.loc[dup, "image_id"]),
                          hint="List each test image once.")
    problems.raise_if_any()
    return df["image_id"].astype("str").tolist()


def _read_train_rows(path: Path) -> pd.DataFrame:
    """train.csv as text columns plus ``_line``; structure (columns) checked, values not yet."""
    path = require_file(path, "VinBigData annotations (train.csv)",
                        "Point data.root at the folder that holds the Kaggle files (train.csv, train/, test/).")
    df = read_csv_lines(path, dtype="str")
    require_columns(df, path, ["image_id", "rad_id", *BOX_COLUMNS],
                    "Use Kaggle's train.csv: image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max.")
    if "class_id" not in df.columns and "class_name" not in df.columns:
        require_columns(df, path, ["class_id", "class_name"])
    df["image_id"] = df["image_id"].str.strip()
    return df


def _validate_train(df: pd.DataFrame, path: Path, sizes: pd.DataFrame | None,
                    sizes_from: str) -> tuple[pd.DataFrame, list[str]]:
    problems = Problems()
    id_ok = check_ids(df["image_id"].fillna(""), df["_line"], path, problems)
    df = resolve_classes(df, path, VINBIGDATA, problems)
    for c in BOX_COLUMNS:
        df[c] = to_number(df, c, path, problems)
    df, report = validate_boxes(df[id_ok], path, problems, sizes, sizes_from)
    problems.raise_if_any()
    return finalize_annotations(df), report


def read_vinbigdata_train(path: Path | str, sizes: pd.DataFrame | None = None,
                          sizes_from: str = "the image sizes") -> tuple[pd.DataFrame, list[str]]:
    """Read and validate Kaggle's ``train.csv`` into the annotation table (original DICOM pixels).

    ``sizes`` (``image_id, width, height``) enables the bounds checks and the clipping of boxes up to
    2 px past the edge; ``sizes_from`` names where they came from, for error messages. Returns the
    table (file order) and report lines. Raises DataError listing every problem with its line number.
    """
    path = Path(path)
    df = _read_train_rows(path)
    return _validate_train(df, path, sizes, sizes_from)


# --------------------------------------------------------------------------------------------------
# the dataset
# --------------------------------------------------------------------------------------------------
def _dicom_path(root: Path, split: str, image_id: str) -> Path:
    """root/<split>/<id>.dicom, or the .dcm file when only that exists."""
    base = root / split / image_id
    for suf in DICOM_SUFFIXES:
        if base.with_name(image_id + suf).is_file():
            return base.with_name(image_id + suf)
    return base.with_name(image_id + DICOM_SUFFIXES[0])


def _split_sizes(ids: list[str], meta: Path | None, root: Path, split: str,
                 report: list[str]) -> tuple[pd.DataFrame, str]:
    """Sizes of ``ids``: from the meta CSV when given, else from DICOM headers. Missing ones raise."""
    if meta is not None:
        sizes = read_image_sizes(meta)
        report.append(f"{split}: image sizes from {meta.name}")
        return sizes, str(meta)
    sizes = dicom_sizes(_dicom_path(root, split, i) for i in ids)
    report.append(f"{split}: image sizes from {len(sizes)} DICOM headers in {root / split}")
    return sizes, f"the DICOM headers in {root / split}"


def load_vinbigdata(root: Path | str, meta_csv: Path | str | None = None, test_meta_csv: Path | str | None = None,
                    limit: int | None = None) -> Dataset:
    """Load VinBigData from the Kaggle layout into the annotation and image tables.

    ``meta_csv`` / ``test_meta_csv``: image sizes (absolute, relative to the working directory, or
    relative to ``root``); without them the DICOM headers are read. Test ids come from
    ``sample_submission.csv``, else from the ``test/`` folder, else from ``test_meta_csv``; no test set
    is not an error (reported). ``limit`` keeps the first N images of each split (file order).
    ``images.source`` is the DICOM path (it need not exist when sizes come from meta CSVs).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: VinBigData folder not found. Set data.root to the folder with train.csv, "
                        "train/ and test/ (or data.demo=true for synthetic data).")
    report: list[str] = []
    meta = resolve_path(meta_csv, root)
    test_meta = resolve_path(test_meta_csv, root)
    train_csv = root / "train.csv"

    rows = _read_train_rows(train_csv)
    train_ids = rows["image_id"].dropna().drop_duplicates().tolist()
    if limit is not None:
        train_ids = train_ids[: int(limit)]
        rows = rows[rows["image_id"].isin(set(train_ids))]
    train_sizes, train_from = _split_sizes(train_ids, meta, root, "train", report)
    ann, rep = _validate_train(rows, train_csv, train_sizes, train_from)
    report.extend(rep)
    n_box = int(ann["x_min"].notna().sum())
    report.append(f"train.csv: {len(ann)} rows, {len(train_ids)} images, {n_box} boxes, "
                  f"{int((ann['class_id'] == NORMAL_ID).sum())} 'no finding' rows")

    # --- test ids ---------------------------------------------------------------------------
    sub_csv, test_dir = root / "sample_submission.csv", root / "test"
    if sub_csv.is_file():
        test_ids, test_src = read_sample_submission(sub_csv), sub_csv
        report.append(f"test: {len(test_ids)} image ids from sample_submission.csv")
    elif test_dir.is_dir():
        test_ids = sorted({p.stem for p in test_dir.iterdir() if p.suffix.lower() in DICOM_SUFFIXES})
        test_src = test_dir
        report.append(f"test: {len(test_ids)} image ids from the DICOMs in {test_dir} (no sample_submission.csv)")
    elif test_meta is not None:
        test_ids, test_src = read_image_sizes(test_meta)["image_id"].tolist(), test_meta
        report.append(f"test: {len(test_ids)} image ids from {test_meta.name} (no sample_submission.csv, no test/)")
    else:
        test_ids, test_src = [], None
        report.append("test: no sample_submission.csv, test/ folder or test meta CSV: no test images")
    if limit is not None:
        test_ids = test_ids[: int(limit)]
    both = sorted(set(test_ids) & set(train_ids))
    if both:
        raise DataError(f"{test_src}: {len(both)} test image ids are also train "
                        f"images in {train_csv} (e.g. {both[0]!r}). Use the original Kaggle files: the splits are disjoint.")

    # --- images table -----------------------------------------------------------------------
    labels = labels_from_annotations(ann)
    tr = pd.DataFrame({"image_id": train_ids})
    tr = tr.merge(train_sizes[["image_id", "width", "height"]], on="image_id", how="left")
    tables = [make_images(tr["image_id"], "train", "", tr["width"], tr["height"],
                          labels.reindex(tr["image_id"]).fillna(str(NORMAL_ID)),
                          [str(_dicom_path(root, "train", i)) for i in tr["image_id"]])]
    if test_ids:
        problems = Problems()
        check_ids(pd.Series(test_ids), pd.Series(np.arange(2, len(test_ids) + 2)), test_src, problems)
        problems.raise_if_any()
        test_sizes, test_from = _split_sizes(test_ids, test_meta, root, "test", report)
        te = pd.DataFrame({"image_id": test_ids}).merge(test_sizes[["image_id", "width", "height"]],
                                                        on="image_id", how="left")
        missing = te[te["width"].isna()]
        if len(missing):
            raise DataError(f"{test_from}: no size for {len(missing)} test images (e.g. {missing['image_id'].iloc[0]!r}). "
                            "Give every test image a row (image_id,dim0,dim1), or set data.test_meta_csv=null "
                            "to read the DICOM headers.")
        tables.append(make_images(te["image_id"], "test", "", te["width"], te["height"], "",
                                  [str(_dicom_path(root, "test", i)) for i in te["image_id"]]))
    images = pd.concat(tables, ignore_index=True)
    return Dataset(annotations=ann, images=images, report=report)
