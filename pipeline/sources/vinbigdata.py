"""Reader of the VinBigData (Kaggle 2021) files into raw tables (checked by :mod:`pipeline.sources.validate`).

Kaggle layout under ``root``::

    train.csv                 image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max (original DICOM pixels)
    sample_submission.csv     image_id,PredictionString (only the ids are used: the test set)
    train/<image_id>.dicom    (or .dcm)
    test/<image_id>.dicom

Image sizes come from a meta CSV (``image_id,dim0,dim1`` as in the widely used Kaggle
``train_meta.csv``: dim0 = Rows = height, dim1 = Columns = width; the project's own ``meta.csv`` with
``height,width`` columns is accepted too) or, without one, from each DICOM header (Rows, Columns; the
pixel data is not read). Test ids come from ``sample_submission.csv``, else from the ``test/`` folder,
else from the test meta CSV; no test set is not an error (reported).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from pipeline.classes import VINBIGDATA
from pipeline.errors import DataError
from pipeline.sources.files import (
    DICOM_SUFFIXES, image_sizes, index_files, read_csv_lines, require_columns, require_file,
    resolve_path, strip_text, to_number,
)
from pipeline.sources.problems import Problems
from pipeline.sources.tables import (
    BOX_COLUMNS, Options, RawDataset, keep_first_per_split, raw_boxes, raw_images,
)
from pipeline.sources.validate import finish, safe_id_mask

__all__ = ["DICOM_SUFFIXES", "dicom_sizes", "parse_vinbigdata", "read_image_sizes", "read_sample_submission",
           "read_vinbigdata_train"]


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
    out = {}
    for col, name in ((hcol, "height"), (wcol, "width")):
        num = pd.to_numeric(df[col], errors="coerce")
        bad = ~(num.notna() & (num > 0) & (num % 1 == 0))
        if bad.any():
            sub = df.loc[bad]
            problems.add_rows(path, sub["_line"], (f"{col} ({name}) is {v!r}, not a positive whole number of pixels"
                                                   for v in sub[col]),
                              hint="Image sizes are whole pixel counts (rows, columns) from the DICOM header.")
        out[name] = num.where(~bad, 0).fillna(0).astype("int64")
    sizes = pd.DataFrame({"image_id": strip_text(df["image_id"]), "width": out["width"],
                          "height": out["height"], "_line": df["_line"]})
    dup = sizes.duplicated("image_id", keep=False)
    if dup.any():
        conflict = sizes[dup].groupby("image_id")[["width", "height"]].nunique().max(axis=1) > 1
        sub = sizes[dup & sizes["image_id"].isin(set(conflict[conflict].index))].drop_duplicates("image_id", keep="last")
        problems.add_rows(path, sub["_line"], (f"image {i!r} is listed more than once with different sizes"
                                               for i in sub["image_id"]),
                          hint="Keep one row per image, with its size from the DICOM header.")
    problems.raise_if_any()
    return sizes.drop_duplicates("image_id").drop(columns="_line").reset_index(drop=True)


def dicom_sizes(paths: Iterable[Path | str]) -> pd.DataFrame:
    """Image sizes from DICOM headers: ``image_id`` (file stem), ``width`` (Columns), ``height`` (Rows), ``source``.

    Only the header is read, so this costs a few ms per file even for the 4 MB JPEG 2000 files of
    VinBigData. Missing, unreadable or size-less files are collected and raised as one DataError.
    """
    paths = [Path(p) for p in paths]
    problems = Problems()
    exists = [p.is_file() for p in paths]
    w, h, errors = image_sizes([p if e else None for p, e in zip(paths, exists)], desc="DICOM headers")
    rows = []
    for p, e, ww, hh, err in zip(paths, exists, w, h, errors):
        if not e:
            problems.add(p, None, "DICOM file not found", "Put the DICOMs where the layout expects them "
                         "(root/train/<id>.dicom, root/test/<id>.dicom), or give image sizes in a meta CSV.")
        elif err:
            problems.add(p, None, err, "Replace the file with an intact copy, or give image sizes in a meta CSV.")
        else:
            rows.append((p.stem, int(ww), int(hh), str(p)))
    problems.raise_if_any()
    return pd.DataFrame(rows, columns=["image_id", "width", "height", "source"]).astype(
        {"image_id": "str", "width": "int64", "height": "int64", "source": "str"})


def _sample_ids(path: Path) -> pd.DataFrame:
    df = read_csv_lines(require_file(path, "sample submission"), dtype={"image_id": "str"})
    require_columns(df, path, ["image_id"])
    return pd.DataFrame({"image_id": strip_text(df["image_id"]), "_line": df["_line"]})


def read_sample_submission(path: Path | str) -> list[str]:
    """Test image ids from Kaggle's ``sample_submission.csv`` (``image_id,PredictionString``), in file order."""
    path = Path(path)
    df = _sample_ids(path)
    problems = Problems()
    bad = ~safe_id_mask(df["image_id"])
    problems.add_rows(path, df.loc[bad, "_line"], (f"image_id {v!r} is not a safe file name" for v in df.loc[bad, "image_id"]),
                      hint="Image ids become file names: rename the image and its rows.")
    dup = df["image_id"].duplicated()
    problems.add_rows(path, df.loc[dup, "_line"], (f"image {i!r} is listed twice" for i in df.loc[dup, "image_id"]),
                      hint="List each test image once.")
    problems.raise_if_any()
    return df["image_id"].tolist()


def _read_train_rows(path: Path, problems: Problems) -> pd.DataFrame:
    """train.csv as text columns plus ``_line``, coordinates as numbers (bad ones are problems)."""
    path = require_file(path, "VinBigData annotations (train.csv)",
                        "Point data.root at the folder that holds the Kaggle files (train.csv, train/, test/).")
    df = read_csv_lines(path, dtype="str")
    require_columns(df, path, ["image_id", "rad_id", *BOX_COLUMNS],
                    "Use Kaggle's train.csv: image_id,class_name,class_id,rad_id,x_min,y_min,x_max,y_max.")
    if "class_id" not in df.columns and "class_name" not in df.columns:
        require_columns(df, path, ["class_id", "class_name"])
    df["image_id"] = strip_text(df["image_id"])
    for c in BOX_COLUMNS:
        df[c] = to_number(df, c, path, problems)
    return df


def _boxes(rows: pd.DataFrame, path: Path) -> pd.DataFrame:
    return raw_boxes(rows["image_id"], file=str(path), line=rows["_line"], rad_id=rows["rad_id"].fillna(""),
                     class_name=rows["class_name"] if "class_name" in rows else None,
                     class_id=rows["class_id"] if "class_id" in rows else None,
                     **{c: rows[c] for c in BOX_COLUMNS})


def read_vinbigdata_train(path: Path | str, sizes: pd.DataFrame | None = None,
                          sizes_from: str = "the image sizes") -> tuple[pd.DataFrame, list[str]]:
    """Read and validate Kaggle's ``train.csv`` alone into the annotation table (original DICOM pixels).

    ``sizes`` (``image_id, width, height``) enables the bounds checks and the clipping of boxes up to
    2 px past the edge; ``sizes_from`` names where they came from, for error messages. Returns the
    table (file order) and report lines. Raises DataError listing every problem with its line number.
    """
    path, problems = Path(path), Problems()
    rows = _read_train_rows(path, problems)
    first = rows.drop_duplicates("image_id")
    size = sizes.drop_duplicates("image_id").set_index("image_id") if sizes is not None else None
    images = raw_images(first["image_id"], "train", "", file=str(path), line=first["_line"],
                        width=first["image_id"].map(size["width"]) if size is not None else np.nan,
                        height=first["image_id"].map(size["height"]) if size is not None else np.nan)
    raw = RawDataset(classes=list(VINBIGDATA), images=images, boxes=_boxes(rows, path), problems=problems,
                     sizes_from=sizes_from, boxes_from=path.name, check_bounds=sizes is not None)
    ds = finish(raw)
    return ds.annotations, ds.report


# --------------------------------------------------------------------------------------------------
# the dataset
# --------------------------------------------------------------------------------------------------
def _test_ids(root: Path, test_meta: Path | None, report: list[str]) -> tuple[pd.DataFrame, str]:
    """Test ids with the file and line they come from."""
    sub_csv, test_dir = root / "sample_submission.csv", root / "test"
    if sub_csv.is_file():
        df = _sample_ids(sub_csv)
        report.append(f"test: {len(df)} image ids from sample_submission.csv")
        return df, str(sub_csv)
    if test_dir.is_dir():
        ids = sorted(index_files([test_dir], DICOM_SUFFIXES)[0])
        report.append(f"test: {len(ids)} image ids from the DICOMs in {test_dir} (no sample_submission.csv)")
        return pd.DataFrame({"image_id": ids, "_line": 0}), str(test_dir)
    if test_meta is not None:
        ids = read_image_sizes(test_meta)["image_id"]
        report.append(f"test: {len(ids)} image ids from {test_meta.name} (no sample_submission.csv, no test/)")
        return pd.DataFrame({"image_id": ids, "_line": np.arange(2, len(ids) + 2)}), str(test_meta)
    report.append("test: no sample_submission.csv, test/ folder or test meta CSV: no test images")
    return pd.DataFrame({"image_id": pd.Series([], dtype="str"), "_line": pd.Series([], dtype="int64")}), ""


def _split_images(root: Path, split: str, ids: pd.DataFrame, file: str, meta: Path | None,
                  report: list[str]) -> tuple[pd.DataFrame, str]:
    """Raw images of one split: DICOM paths from one folder listing; sizes from the meta CSV or the headers."""
    folder = root / split
    found = index_files([folder], DICOM_SUFFIXES)[0] if folder.is_dir() else {}
    id_list = ids["image_id"].tolist()
    paths = [found.get(i) for i in id_list]
    prefix, suffix = f"{folder}{os.sep}", DICOM_SUFFIXES[0]
    source = [str(p) if p is not None else prefix + i + suffix for p, i in zip(paths, id_list)]
    exists = [p is not None for p in paths]
    if meta is not None:
        size = read_image_sizes(meta).set_index("image_id")
        w = ids["image_id"].map(size["width"]).astype("float64")
        h = ids["image_id"].map(size["height"]).astype("float64")
        report.append(f"{split}: image sizes from {meta.name}")
        return raw_images(ids["image_id"], split, source, file=file, line=ids["_line"], exists=exists, width=w,
                          height=h, declared_width=w, declared_height=h, sizes_from=str(meta),
                          labels=None if split == "train" else ""), str(meta)
    w, h, errors = image_sizes(paths, desc="DICOM headers")
    report.append(f"{split}: image sizes from {sum(exists)} DICOM headers in {folder}")
    return raw_images(ids["image_id"], split, source, file=file, line=ids["_line"], exists=exists, width=w, height=h,
                      size_error=errors, sizes_from=f"the DICOM headers in {folder}",
                      labels=None if split == "train" else ""), f"the DICOM headers in {folder}"


def parse_vinbigdata(opts: Options) -> RawDataset:
    """The Kaggle layout under ``opts.root`` as raw tables. ``opts.limit`` keeps the first N images of each
    split (file order); ``source`` is the DICOM path (a missing one is handled by data.missing_images)."""
    root = Path(opts.root)
    if not root.is_dir():
        raise DataError(f"{root}: VinBigData folder not found. Set data.root to the folder with train.csv, "
                        "train/ and test/ (or data.demo=true for synthetic data).")
    report: list[str] = []
    problems = Problems()
    train_csv = root / "train.csv"
    rows = _read_train_rows(train_csv, problems)
    train = rows.loc[~rows["image_id"].duplicated(), ["image_id", "_line"]].assign(split="train")
    test, test_file = _test_ids(root, resolve_path(opts.test_meta_csv, root), report)
    test = test.assign(split="test")
    if opts.limit is not None:
        train, test = keep_first_per_split(train, opts.limit), keep_first_per_split(test, opts.limit)
        rows = rows[rows["image_id"].isin(train["image_id"])]
    tr, tr_from = _split_images(root, "train", train, str(train_csv), resolve_path(opts.meta_csv, root), report)
    parts, sources = [tr], [tr_from]
    if len(test):
        te, te_from = _split_images(root, "test", test, test_file, resolve_path(opts.test_meta_csv, root), report)
        parts.append(te)
        sources.append(te_from)
    n_normal = int(strip_text(rows["class_name"]).eq(VINBIGDATA[-1]).sum()) if "class_name" in rows else 0
    report.append(f"train.csv: {len(rows)} rows, {len(train)} images, {int(rows['x_min'].notna().sum())} boxes"
                  + (f", {n_normal} 'no finding' rows" if "class_name" in rows else ""))
    return RawDataset(classes=list(VINBIGDATA), images=pd.concat(parts, ignore_index=True),
                      boxes=_boxes(rows, train_csv), problems=problems, report=report,
                      sizes_from=" and ".join(dict.fromkeys(sources)), boxes_from="train.csv")
