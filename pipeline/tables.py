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


def read_meta(path: Path) -> pd.DataFrame:
    """meta.csv (prepare's per-image conversion record): image_id, split, original and PNG sizes, fingerprint."""
    return read_table(path, "image meta table", ["image_id", "split", "height", "width", "fingerprint"],
                      dtype={"split": str, "fingerprint": str}, keep_default_na=False,
                      hint="run the prepare stage first (python -m pipeline prepare).")


def image_fingerprints(meta: pd.DataFrame, split: str) -> dict[str, str]:
    """image_id -> its conversion fingerprint (content of the source and the pixel options) for a split."""
    rows = meta[meta["split"] == split]
    return dict(zip(rows["image_id"].astype(str), rows["fingerprint"].astype(str)))


DETECTION_ROLES = ("truth", "negative", "excluded", "unlabelled")


def read_detection_roles(path: Path) -> pd.DataFrame:
    """detection.csv: image_id, split, role (truth | negative | excluded | unlabelled), reason (pipeline.roles)."""
    df = read_table(path, "detection roles table", ["image_id", "split", "role"], keep_default_na=False,
                    dtype={"split": str, "role": str, "reason": str},
                    hint="run the prepare stage again (python -m pipeline prepare): it writes detection.csv.")
    bad = ~df["role"].isin(DETECTION_ROLES)
    if bad.any():
        raise DataError(f"{path} line {int(bad.to_numpy().nonzero()[0][0]) + 2}: role {df['role'][bad].iloc[0]!r} is not "
                        f"one of {list(DETECTION_ROLES)}; run the prepare stage again.")
    return df


def detector_images(path: Path, split: str = "train") -> list[str]:
    """Ids of a split the detector trains on and is scored on (roles truth and negative), in file order."""
    df = read_detection_roles(path)
    return df.loc[(df["split"] == split) & df["role"].isin(["truth", "negative"]), "image_id"].astype(str).tolist()


def read_sizes(paths) -> pd.DataFrame:
    """``image_id, split, width, height`` in ORIGINAL pixels of every converted image (meta.csv)."""
    meta = read_meta(paths.meta_csv)
    out = meta[["image_id", "split", "width", "height"]].copy()
    out["width"] = pd.to_numeric(out["width"], errors="coerce")
    out["height"] = pd.to_numeric(out["height"], errors="coerce")
    return out.dropna(subset=["width", "height"]).drop_duplicates("image_id").reset_index(drop=True)
