"""Readers of the run directory's tables (docs/DESIGN.md), shared by every stage that reads them.

Each raises a DataError naming the file when it is missing, unreadable or lacks a column, and says
which stage writes it. ``image_id`` is always read as text (ids like "0001" or "NA" stay as they are).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from pipeline.errors import DataError


def read_table(path: Path, what: str, required: list[str] | None = None, *, dtype: dict | None = None,
               keep_default_na: bool = True, hint: str = "run the stage that writes it first.") -> pd.DataFrame:
    """A CSV of the run directory; ``required`` columns must be present."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {what} not found; {hint}")
    try:
        df = pd.read_csv(path, dtype={"image_id": "str", **(dtype or {})}, keep_default_na=keep_default_na)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        raise DataError(f"{path}: {what} cannot be read as CSV ({exc}). Delete it and re-run the stage "
                        "that writes it.") from None
    missing = [c for c in (required or []) if c not in df.columns]
    if missing:
        raise DataError(f"{path} line 1: {what} lacks column(s) {missing}; it has {list(df.columns)}. "
                        "Re-run the stage that writes it.")
    return df


def read_images(path: Path) -> pd.DataFrame:
    """images.csv with id/split/patient/label columns as strings ("14" stays "14", empty stays "")."""
    return read_table(path, "images table", ["image_id", "split"], keep_default_na=False,
                      dtype={"split": str, "patient_id": str, "labels": str},
                      hint="run the prepare stage first (python -m pipeline prepare).")


def read_folds(path: Path) -> pd.DataFrame:
    """folds.csv as ``image_id`` (str), ``fold`` (int)."""
    df = read_table(path, "fold table", keep_default_na=False,
                    hint="run the folds stage first (python -m pipeline folds).")
    if list(df.columns[:2]) != ["image_id", "fold"]:
        raise DataError(f"{path}: columns must be image_id,fold; got {list(df.columns)}. "
                        "Delete the file and run `python -m pipeline folds`.")
    try:
        df["fold"] = df["fold"].astype(int)
    except (TypeError, ValueError):
        raise DataError(f"{path}: column 'fold' must hold integers. Delete the file and rerun the folds stage.") from None
    return df[["image_id", "fold"]]
