"""Reading files for the dataset readers: CSVs with line numbers, list files, image folders and image
sizes from file headers. No validation of the data itself (that is :mod:`pipeline.sources.validate`).
"""
from __future__ import annotations

import os
import re
import struct
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from pipeline.errors import DataError
from pipeline.sources.problems import Problems

# Image files the readers look for (ultralytics' image formats that Pillow reads, plus DICOM).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".dcm", ".dicom")
DICOM_SUFFIXES = (".dicom", ".dcm")
_PROGRESS_MIN = 1000  # show a progress bar when reading at least this many image headers


# --------------------------------------------------------------------------------------------------
# text files
# --------------------------------------------------------------------------------------------------
def require_file(path: Path | str, what: str, hint: str = "") -> Path:
    """``path`` as a Path, or a DataError that names the missing file, what it is for, and what to do."""
    path = Path(path)
    if not path.is_file():
        extra = f" {hint}" if hint else ""
        where = "a folder, not a file" if path.is_dir() else "not found"
        raise DataError(f"{path}: {what} {where}.{extra}")
    return path


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
    bad = num.isna() & raw.notna()
    if bad.any():  # only the few non-numbers are looked at as text
        bad[bad] = raw[bad].astype("str").str.strip() != ""
    if bad.any():
        sub = df.loc[bad]
        problems.add_rows(path, sub["_line"], (f"{column} is {v!r}, not a number" for v in sub[column]),
                          hint="Write coordinates as plain numbers, e.g. 691.0.")
    return num


def strip_text(values: pd.Series) -> pd.Series:
    """Text column with surrounding blanks removed ('' for missing), same index. A list comprehension:
    several times faster than ``.str.strip()`` on pandas' str columns without pyarrow."""
    return pd.Series([v.strip() if isinstance(v, str) else "" for v in values.tolist()], index=values.index, dtype="str")


def read_list_lines(path: Path) -> tuple[list[str], list[int]]:
    """Non-blank lines of a list file (first whitespace-separated field, stripped) and their line numbers.
    CRLF, a BOM and a missing final newline are fine."""
    with open(path, "r", encoding="utf-8-sig", newline="") as fh:
        lines = fh.read().splitlines()
    values, numbers = [], []
    for i, text in enumerate(lines, start=1):
        fields = text.split()
        if fields:
            values.append(fields[0])
            numbers.append(i)
    return values, numbers


def resolve_path(value: str | Path | None, root: Path) -> Path | None:
    """A config path: absolute as given; relative to the working directory if it exists there, else to ``root``."""
    if value is None or str(value) == "":
        return None
    p = Path(value).expanduser()
    if p.is_absolute() or p.exists():
        return p
    return root / p


def split_of_name(name: str, test_split: str) -> str:
    """'test' when ``name`` (a file or folder name) contains ``test_split`` as a word (letters on neither
    side: 'instances_test2017' yes, 'latest' no), else 'train'."""
    pattern = rf"(?<![a-z]){re.escape(test_split.lower())}(?![a-z])"
    return "test" if re.search(pattern, name.lower()) else "train"


# --------------------------------------------------------------------------------------------------
# image folders
# --------------------------------------------------------------------------------------------------
def index_files(dirs: Iterable[Path], suffixes: Sequence[str] = IMAGE_SUFFIXES, key: str = "stem",
                recursive: bool = False) -> tuple[dict[str, Path], list[tuple[str, Path, Path]]]:
    """Key ('stem', 'name' or 'path') -> path of every file in ``dirs`` with one of ``suffixes`` (any case), from
    directory listings (no stat per file). The first folder wins, and within a folder the suffix listed
    first; every other file with the same key is returned in ``duplicates`` as (key, kept, other)."""
    rank = {s.lower(): i for i, s in enumerate(suffixes)}
    found: dict[str, tuple[Path, int, Path]] = {}  # key -> (path, suffix rank, folder)
    dups: list[tuple[str, Path, Path]] = []
    for d in dirs:
        for folder, entries in _listings(Path(d), recursive):
            for name, path in entries:
                dot = name.rfind(".")
                r = rank.get(name[dot:].lower()) if dot > 0 else None
                if r is None:
                    continue
                k = name[:dot] if key == "stem" else name if key == "name" else str(path)
                old = found.get(k)
                if old is None:
                    found[k] = (path, r, folder)
                elif old[2] == folder and r < old[1]:
                    dups.append((k, path, old[0]))
                    found[k] = (path, r, folder)
                else:
                    dups.append((k, old[0], path))
    return {k: v[0] for k, v in found.items()}, dups


def _listings(d: Path, recursive: bool):
    if not recursive:
        with os.scandir(d) as it:
            yield d, [(e.name, Path(e.path)) for e in it if e.is_file()]
        return
    for folder, subdirs, names in os.walk(d, followlinks=True):
        subdirs.sort()
        yield Path(folder), [(n, Path(folder) / n) for n in sorted(names)]


# --------------------------------------------------------------------------------------------------
# image sizes
# --------------------------------------------------------------------------------------------------
def png_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG from its IHDR chunk (24 bytes read); other formats through Pillow's lazy
    open (header only) and DICOM through its header."""
    with open(path, "rb") as fh:
        head = fh.read(24)
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        return struct.unpack(">II", head[16:24])
    if Path(path).suffix.lower() in DICOM_SUFFIXES:
        return dicom_size(path)
    from PIL import Image
    with Image.open(path) as im:
        return im.size


def dicom_size(path: Path) -> tuple[int, int]:
    """(width, height) = (Columns, Rows) from a DICOM header; the pixel data is not read. Raises ValueError."""
    import pydicom  # imported here: only the DICOM path needs it
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Rows", "Columns"])
        r, c = ds.get("Rows"), ds.get("Columns")
    except (InvalidDicomError, EOFError) as exc:
        raise ValueError(f"cannot be read as DICOM ({exc})") from None
    if not r or not c:
        raise ValueError("DICOM header has no Rows/Columns")
    return int(c), int(r)


def image_sizes(files: Sequence[Path | None], desc: str = "image headers") -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Width and height (float, NaN where not read) of each file from its header, and the reason for each
    size that could not be read ('' when read; None entries are skipped). A progress bar from 1,000 files."""
    n = len(files)
    w, h = np.full(n, np.nan), np.full(n, np.nan)
    errors = [""] * n
    idx = [i for i, f in enumerate(files) if f is not None]
    it = idx
    if len(idx) >= _PROGRESS_MIN:
        from tqdm import tqdm
        it = tqdm(idx, desc=desc, unit="file", mininterval=2.0)
    for i in it:
        try:
            w[i], h[i] = png_size(files[i])
        except (OSError, ValueError, SyntaxError, struct.error) as exc:
            errors[i] = f"cannot read the image size ({exc})"
    return w, h, errors
