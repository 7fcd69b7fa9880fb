"""What both dataset readers share: the two output tables, CSV reading and box validation.

Tables (see docs/DESIGN.md):

* **annotations**: ``image_id, class_id, class_name, rad_id, x_min, y_min, x_max, y_max``, one row per
  box (or per "no finding" reading, with NaN box). Coordinates are absolute pixels of the source
  image (DICOM or PNG), corners, ``x`` to the right and ``y`` down, ``0 <= x_min < x_max <= width``.
* **images**: ``image_id, split, patient_id, width, height, labels, source``.

Validation is vectorised (whole columns at once), so the 67,914 rows of VinBigData's ``train.csv``
check in well under a second. Every problem is collected with its file and line number (the header
is line 1, the first data row line 2) and reported together in one :class:`DataError`.
"""
from __future__ import annotations

import gzip
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from pipeline.classes import NORMAL_ID
from pipeline.errors import DataError
from pipeline.paths import is_safe_id

ANNOTATION_COLUMNS = ["image_id", "class_id", "class_name", "rad_id", "x_min", "y_min", "x_max", "y_max"]
IMAGE_COLUMNS = ["image_id", "split", "patient_id", "width", "height", "labels", "source"]
BOX_COLUMNS = ["x_min", "y_min", "x_max", "y_max"]

# Boxes may poke past the image edge by rounding (annotation tools, 1-based pixel ends); up to this many
# pixels is clipped and reported, beyond it the box or the image size is wrong and must be fixed by hand.
CLIP_TOLERANCE_PX = 2.0

# How many problems one error message lists before it says "... and N more".
MAX_LISTED = 10


@dataclass
class Dataset:
    """What a source reader returns: the two tables plus human-readable notes on what it fixed or assumed."""

    annotations: pd.DataFrame
    images: pd.DataFrame
    report: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------
# problem collection
# --------------------------------------------------------------------------------------------------
class Problems:
    """Collects data problems (file, line, text) and raises them as one :class:`DataError`.

    Only the first few problems of each kind are formatted (the rest are counted), so a file where every
    row is wrong still fails fast with a short message.
    """

    def __init__(self) -> None:
        self._items: list[tuple[str, int, str]] = []  # (file, line, message); line 0 = whole file
        self._count = 0
        self._hints: list[str] = []

    def __bool__(self) -> bool:
        return self._count > 0

    def __len__(self) -> int:
        return self._count

    def add(self, file: Path | str, line: int | None, message: str, hint: str | None = None) -> None:
        self._items.append((str(file), int(line or 0), message))
        self._count += 1
        self._hint(hint)

    def add_rows(self, file: Path | str, lines: Sequence[int], messages: Iterable[str] | None = None,
                 message: str | None = None, hint: str | None = None) -> None:
        """Record one problem per row; ``messages`` (lazily formatted, aligned with ``lines``) or one ``message``."""
        lines = list(lines)
        if not lines:
            return
        it = iter(messages) if messages is not None else None
        for line in lines[:MAX_LISTED]:
            self._items.append((str(file), int(line), next(it) if it is not None else str(message)))
        self._count += len(lines)
        self._hint(hint)

    def _hint(self, hint: str | None) -> None:
        if hint and hint not in self._hints:
            self._hints.append(hint)

    def message(self) -> str:
        items = sorted(self._items, key=lambda t: (t[0], t[1]))[:MAX_LISTED]
        n = self._count
        head = f"{n} problem{'s' if n != 1 else ''} in the input data"
        lines = [head + (f" (first {len(items)} shown):" if n > len(items) else ":")]
        for file, line, msg in items:
            where = f"{file} line {line}" if line else file
            lines.append(f"  {where}: {msg}")
        if n > len(items):
            lines.append(f"  ... and {n - len(items)} more problem{'s' if n - len(items) != 1 else ''}")
        if self._hints:
            lines.append("What to do:")
            lines.extend(f"  - {h}" for h in self._hints)
        return "\n".join(lines)

    def raise_if_any(self) -> None:
        if self._count:
            raise DataError(self.message())


# --------------------------------------------------------------------------------------------------
# reading files
# --------------------------------------------------------------------------------------------------
def require_file(path: Path | str, what: str, hint: str = "") -> Path:
    """``path`` as a Path, or a DataError that names the missing file, what it is for, and what to do."""
    path = Path(path)
    if not path.is_file():
        extra = f" {hint}" if hint else ""
        where = "a folder, not a file" if path.is_dir() else "not found"
        raise DataError(f"{path}: {what} {where}.{extra}")
    return path


def read_first_line(path: Path) -> str:
    """The header line of a text or gzip file, without its line ending."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8-sig", newline="") as fh:
        return fh.readline().rstrip("\r\n")


def read_csv_lines(path: Path, dtype=None, **kwargs) -> pd.DataFrame:
    """``pd.read_csv`` that keeps each row's line number in a ``_line`` column (header = line 1).

    Blank lines are read as empty rows (so numbering stays true) and then dropped. CRLF and gzip are
    handled by pandas. Raises DataError (not a pandas exception) when the file cannot be parsed.
    """
    try:
        df = pd.read_csv(path, dtype=dtype, skip_blank_lines=False, encoding="utf-8-sig", **kwargs)
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError, EOFError, OSError) as exc:
        raise DataError(f"{path}: cannot be read as CSV ({exc}). Check that it is the original, "
                        "uncorrupted file (plain or .gz CSV).") from None
    df.columns = [str(c).strip() for c in df.columns]
    df["_line"] = np.arange(2, len(df) + 2, dtype=np.int64)
    data_cols = [c for c in df.columns if c != "_line" and not c.startswith("Unnamed:")]
    if data_cols:
        df = df[df[data_cols].notna().any(axis=1)]
    return df.reset_index(drop=True)


def require_columns(df: pd.DataFrame, path: Path, required: Sequence[str], hint: str = "") -> None:
    missing = [c for c in required if c not in df.columns]
    if missing:
        have = [c for c in df.columns if c != "_line"]
        raise DataError(f"{path} line 1: missing required column(s) {missing}; the header has {have}. "
                        + (hint or "Use the original file, whose header has these columns."))


def norm_header(name: str) -> str:
    """Header name reduced to lower-case letters and digits: 'OriginalImage[Width' -> 'originalimagewidth'."""
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def to_number(df: pd.DataFrame, column: str, path: Path, problems: Problems) -> pd.Series:
    """Column as float64; a non-empty value that is not a number is a problem (empty stays NaN)."""
    raw = df[column]
    num = pd.to_numeric(raw, errors="coerce").astype("float64")
    bad = num.isna() & raw.notna() & (raw.astype("str").str.strip() != "")
    if bad.any():
        sub = df.loc[bad]
        problems.add_rows(path, sub["_line"], (f"{column} is {v!r}, not a number" for v in sub[column]),
                          hint="Write coordinates as plain numbers, e.g. 691.0.")
    return num


def check_ids(ids: pd.Series, lines: pd.Series, path: Path, problems: Problems, column: str = "image_id") -> pd.Series:
    """Mask of rows whose id is safe as a file name (no path separators, no '..'); problems for the rest."""
    ids = ids.astype("str").fillna("")
    uniq = ids.unique()
    bad_ids = {u for u in uniq if not is_safe_id(u)}
    if not bad_ids:
        return pd.Series(True, index=ids.index)
    bad = ids.isin(bad_ids)
    problems.add_rows(path, lines[bad], (f"{column} {v!r} is not a safe file name (letters, digits, '.', '_', '-';"
                                         " no path separators, no '..')" for v in ids[bad]),
                      hint="Image ids become file names: rename the image and its rows, or remove them.")
    return ~bad


# --------------------------------------------------------------------------------------------------
# classes
# --------------------------------------------------------------------------------------------------
def resolve_classes(df: pd.DataFrame, path: Path, names: Sequence[str], problems: Problems,
                    aliases: dict[str, str] | None = None) -> pd.DataFrame:
    """Fill ``class_id`` (int64) and ``class_name`` from whichever of the two columns the file has.

    With both present they must agree (``names[class_id] == class_name``). ``aliases`` maps alternative
    spellings to the canonical name (e.g. NIH's 'Infiltrate' -> 'Infiltration'). Rows with an unknown
    class get class_id -1 and a problem each.
    """
    aliases = aliases or {}
    index = {n: i for i, n in enumerate(names)}
    n_cls = len(names)
    has_id, has_name = "class_id" in df.columns, "class_name" in df.columns
    if not (has_id or has_name):
        raise DataError(f"{path} line 1: no class column; the header needs class_name and/or class_id.")
    out = df.copy()
    cid = pd.Series(-1, index=df.index, dtype="int64")
    name_id = None
    if has_name:
        nm = df["class_name"].astype("str").str.strip()
        nm = nm.map(lambda v: aliases.get(v, v)) if aliases else nm
        name_id = nm.map(index).astype("float64")
        bad = name_id.isna()
        if bad.any():
            sub = df.loc[bad]
            problems.add_rows(path, sub["_line"], (f"unknown class name {v!r}" for v in sub["class_name"]),
                              hint=f"Class names must be one of: {', '.join(names)}.")
        cid = name_id.fillna(-1).astype("int64")
    if has_id:
        num = pd.to_numeric(df["class_id"], errors="coerce")
        ok = num.notna() & (num % 1 == 0) & (num >= 0) & (num < n_cls)
        if (~ok).any():
            sub = df.loc[~ok]
            problems.add_rows(path, sub["_line"], (f"unknown class id {v!r} (expected an integer 0..{n_cls - 1})"
                                                   for v in sub["class_id"]),
                              hint="class_id is the index of the class in the dataset's class list.")
        id_int = num.where(ok, -1).astype("int64")
        if name_id is not None:
            both = ok & name_id.notna()
            mismatch = both & (id_int != name_id.fillna(-1).astype("int64"))
            if mismatch.any():
                sub = df.loc[mismatch]
                problems.add_rows(path, sub["_line"],
                                  (f"class_id {int(i)} is {names[int(i)]!r} but class_name is {n!r}"
                                   for i, n in zip(id_int[mismatch], sub["class_name"])),
                                  hint="Make class_id and class_name of each row name the same class.")
            cid = id_int.where(both & ~mismatch, -1)
        else:
            cid = id_int
    out["class_id"] = cid.astype("int64")
    names_arr = np.asarray(list(names) + [""], dtype=object)
    out["class_name"] = pd.Series(names_arr[cid.to_numpy()], index=df.index, dtype="str")
    return out


# --------------------------------------------------------------------------------------------------
# boxes
# --------------------------------------------------------------------------------------------------
def validate_boxes(df: pd.DataFrame, path: Path, problems: Problems, sizes: pd.DataFrame | None,
                   sizes_from: str = "the image sizes", tolerance: float = CLIP_TOLERANCE_PX
                   ) -> tuple[pd.DataFrame, list[str]]:
    """Check and, where the fix is unambiguous, clip the boxes of an annotation table.

    ``df`` has ``image_id, class_id, x_min, y_min, x_max, y_max, _line`` with float coordinates in
    absolute pixels (corners). ``sizes`` has ``image_id, width, height`` (pixels) or is None (bounds
    are then not checked). Rules:

    * a finding (class_id != 14) needs all four coordinates; a "no finding" row's box is emptied
      (derived files write 0,0,1,1 there) and reported;
    * ``x_max > x_min`` and ``y_max > y_min``;
    * every image in ``df`` must have a size in ``sizes``;
    * ``-tol <= x_min``, ``x_max <= width + tol`` (same for y); within the tolerance the box is clipped to
      ``[0, width] x [0, height]`` and the number of rows touched is reported; beyond it, a problem.

    Returns the (possibly clipped) table and report lines; problems go to ``problems``.
    """
    report: list[str] = []
    df = df.copy()
    name = Path(path).name
    coords = df[BOX_COLUMNS]
    normal = df["class_id"] == NORMAL_ID
    known = df["class_id"] >= 0

    normal_box = normal & coords.notna().any(axis=1)
    if normal_box.any():
        df.loc[normal_box, BOX_COLUMNS] = np.nan
        report.append(f"{name}: {int(normal_box.sum())} 'no finding' rows had a box (e.g. 0,0,1,1); emptied, "
                      "as the annotation table keeps normal rows without a box")

    finding = known & ~normal
    missing = finding & df[BOX_COLUMNS].isna().any(axis=1)
    if missing.any():
        sub = df.loc[missing]
        problems.add_rows(path, sub["_line"], message="a finding (class_id != 14) without box coordinates",
                          hint="Give every finding row x_min, y_min, x_max, y_max, or remove the row.")
    boxed = finding & ~missing
    x0, y0, x1, y1 = (df[c] for c in BOX_COLUMNS)

    flat = boxed & ((x1 <= x0) | (y1 <= y0))
    if flat.any():
        sub = df.loc[flat]
        problems.add_rows(path, sub["_line"], (
            f"empty box: x_min={a:g}, x_max={b:g}, y_min={c:g}, y_max={d:g} (needs x_max > x_min and y_max > y_min)"
            for a, b, c, d in zip(sub["x_min"], sub["x_max"], sub["y_min"], sub["y_max"])),
            hint="Check the column order (x_min, y_min, x_max, y_max) and fix or remove empty boxes.")
    boxed = boxed & ~flat

    if sizes is None:
        report.append(f"{name}: no image sizes given; boxes were not checked against the image bounds")
        return df, report

    size = sizes.drop_duplicates("image_id").set_index("image_id")
    w = df["image_id"].map(size["width"]).astype("float64")
    h = df["image_id"].map(size["height"]).astype("float64")
    # Every image needs a size (the images table has one), not only those with boxes.
    no_size = w.isna() | h.isna()
    if no_size.any():
        sub = df.loc[no_size].drop_duplicates("image_id")
        problems.add_rows(path, sub["_line"], (f"image {i!r} has no size in {sizes_from}" for i in sub["image_id"]),
                          hint=f"Add the missing images to {sizes_from} (or remove their rows).")
    chk = boxed & ~no_size
    over_x = (x1 - w).where(chk, 0.0)
    over_y = (y1 - h).where(chk, 0.0)
    under_x = (-x0).where(chk, 0.0)
    under_y = (-y0).where(chk, 0.0)
    excess = pd.concat([over_x, over_y, under_x, under_y], axis=1).max(axis=1).fillna(0.0)
    outside = chk & (excess > tolerance)
    if outside.any():
        sub = df.loc[outside]
        problems.add_rows(path, sub["_line"], (
            f"box ({a:g}, {b:g}, {c:g}, {d:g}) lies outside image {i!r} of {int(ww)}x{int(hh)} (width x height) "
            f"by {e:g} px (more than the {tolerance:g} px tolerance)"
            for i, a, b, c, d, ww, hh, e in zip(sub["image_id"], sub["x_min"], sub["y_min"], sub["x_max"],
                                               sub["y_max"], w[outside], h[outside], excess[outside])),
            hint=f"Check that the sizes in {sizes_from} are the image's original size (width = columns, height = rows) "
                 "and that the boxes are in original pixels; fix or remove boxes outside the image.")
    clip = chk & ~outside & (excess > 0)
    if clip.any():
        df.loc[clip, "x_min"] = x0[clip].clip(lower=0.0)
        df.loc[clip, "y_min"] = y0[clip].clip(lower=0.0)
        df.loc[clip, "x_max"] = np.minimum(x1[clip], w[clip])
        df.loc[clip, "y_max"] = np.minimum(y1[clip], h[clip])
        n = int(clip.sum())
        report.append(f"{name}: {n} box{'es' if n != 1 else ''} clipped to the image by at most "
                      f"{excess[clip].max():.3g} px")
        # A box lying entirely in the tolerance band collapses to nothing when clipped.
        gone = clip & ((df["x_max"] <= df["x_min"]) | (df["y_max"] <= df["y_min"]))
        if gone.any():
            sub = df.loc[gone]
            problems.add_rows(path, sub["_line"], message="box lies on or beyond the image edge (empty after clipping)",
                              hint="Remove boxes that lie outside the image.")
    return df, report


def finalize_annotations(df: pd.DataFrame) -> pd.DataFrame:
    """The annotation table in its contract form: fixed columns and dtypes, original row order."""
    out = pd.DataFrame({
        "image_id": df["image_id"].astype("str"),
        "class_id": df["class_id"].astype("int64"),
        "class_name": df["class_name"].astype("str"),
        "rad_id": df["rad_id"].astype("str").fillna(""),
        **{c: df[c].astype("float64") for c in BOX_COLUMNS},
    })
    return out.reset_index(drop=True)


def empty_annotations() -> pd.DataFrame:
    return finalize_annotations(pd.DataFrame({c: pd.Series([], dtype="float64" if c in BOX_COLUMNS else
                                                            "int64" if c == "class_id" else "str")
                                              for c in ANNOTATION_COLUMNS}))


def make_images(image_id, split, patient_id, width, height, labels, source) -> pd.DataFrame:
    """The images table in its contract form (width/height int64 pixels, text columns str, '' for unknown)."""
    df = pd.DataFrame({"image_id": pd.Series(image_id, dtype="str")})
    n = len(df)

    def col(v, dtype):
        if isinstance(v, (str, int, float)) or v is None:
            return pd.Series([v if v is not None else ""] * n, dtype=dtype)
        return pd.Series(list(v) if not isinstance(v, pd.Series) else v.to_numpy(), dtype=dtype)

    df["split"] = col(split, "str")
    df["patient_id"] = col(patient_id, "str").fillna("")
    df["width"] = col(width, "int64")
    df["height"] = col(height, "int64")
    df["labels"] = col(labels, "str").fillna("")
    df["source"] = col(source, "str")
    return df[IMAGE_COLUMNS]


def labels_from_annotations(ann: pd.DataFrame) -> pd.Series:
    """Image-level labels from an annotation table: sorted finding class ids any reader marked, '|'-joined,
    or "14" when the image has rows but no finding. Index: image_id."""
    ids = ann["image_id"].drop_duplicates()
    found = ann.loc[ann["class_id"] != NORMAL_ID, ["image_id", "class_id"]].drop_duplicates()
    found = found.sort_values(["image_id", "class_id"], kind="stable")
    joined = found["class_id"].astype("str").groupby(found["image_id"], sort=False).agg("|".join)
    return joined.reindex(ids.to_numpy()).fillna(str(NORMAL_ID))


def resolve_path(value: str | Path | None, root: Path) -> Path | None:
    """A config path: absolute as given; relative to the working directory if it exists there, else to ``root``."""
    if value is None or str(value) == "":
        return None
    p = Path(value).expanduser()
    if p.is_absolute() or p.exists():
        return p
    return root / p
