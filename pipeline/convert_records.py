"""The per-image records of a conversion: the meta table (``meta.csv``) and its crash journal.

``meta.csv`` (docs/DESIGN.md) has one row per converted image; its ``fingerprint`` column is the
record the skip rule compares (:func:`pipeline.work.is_current`). The caller writes it when a batch
ends. So that a killed batch keeps what it finished, :class:`Journal` appends each finished image's
row, as one JSON line, right after its PNG was renamed into place; the next batch reads those rows
back as if they were in meta.csv. A line cut short by a kill is ignored, so a journal row always
describes a complete PNG. The journal is removed when the batch ends normally.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.errors import DataError

if TYPE_CHECKING:  # pandas is imported lazily: spawned workers start faster without it
    import pandas as pd

META_COLUMNS = ["image_id", "split", "height", "width", "out_height", "out_width", "photometric",
                "bits_stored", "transfer_syntax", "source", "mapping", "inverted", "clahe", "decode_reduce",
                "fingerprint", "decoder", "notes", "crop_x0", "crop_y0", "crop_x1", "crop_y1"]
FAILURE_COLUMNS = ["image_id", "split", "source", "reason"]
# columns a table written by an older version may lack; they read as ""
_OPTIONAL = ("fingerprint", "decoder", "notes", "crop_x0", "crop_y0", "crop_x1", "crop_y1")
_INT_COLUMNS = ("height", "width", "out_height", "out_width", "bits_stored", "decode_reduce")
_STR_COLUMNS = ("image_id", "split", "photometric", "transfer_syntax", "source", "mapping", "clahe",
                "fingerprint", "decoder", "notes", "crop_x0", "crop_y0", "crop_x1", "crop_y1")


def read_meta(path: Path) -> pd.DataFrame | None:
    """A previous ``meta.csv`` for resuming, or None when absent; ids and splits read as strings.

    A table from an older version without the ``fingerprint`` (or ``decoder``/``notes``) column is
    accepted: its fingerprints read as "", so each of its images is converted again on the next run."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        return None
    # keep_default_na=False: an empty split (dicom2png) or an id like "NA" stays a string
    # fingerprint as str: an all-digit hash would otherwise read as a number ("1e5..." as a float)
    meta = pd.read_csv(path, dtype={c: str for c in _STR_COLUMNS}, keep_default_na=False)
    for col in _OPTIONAL:
        if col not in meta.columns:
            meta[col] = ""
    missing = [c for c in META_COLUMNS if c not in meta.columns]
    if missing:
        raise DataError(f"{path}: not a conversion meta table (missing columns {missing}); "
                        f"delete it or pass --force")
    return meta_types(meta[META_COLUMNS])


def meta_types(meta: pd.DataFrame) -> pd.DataFrame:
    """Stable dtypes whether rows came from this run or from a CSV read back (resume)."""
    import pandas as pd

    meta = meta.copy()
    for col in _OPTIONAL:  # a table written before the column existed
        if col not in meta.columns:
            meta[col] = ""
        meta[col] = meta[col].fillna("")
    for col in _INT_COLUMNS:
        meta[col] = pd.to_numeric(meta[col]).astype("int64") if len(meta) else meta[col].astype("int64")
    meta["inverted"] = meta["inverted"].map(_to_bool).astype(bool) if len(meta) else meta["inverted"].astype(bool)
    for col in _STR_COLUMNS:
        meta[col] = meta[col].astype(str)
    return meta


def previous_rows(previous_meta: pd.DataFrame | None) -> dict[tuple[str, str], dict]:
    """(split, image_id) -> meta row of an earlier run; a row without a fingerprint never matches."""
    if previous_meta is None or len(previous_meta) == 0:
        return {}
    missing = [c for c in ("image_id", "split") if c not in previous_meta.columns]
    if missing:
        raise DataError(f"previous meta table lacks columns {missing}; expected {META_COLUMNS}")
    out = {}
    for rec in previous_meta.to_dict("records"):
        row = {c: rec.get(c, "") for c in META_COLUMNS}
        for col in _OPTIONAL:  # None (older table) or NaN
            row[col] = row[col] if isinstance(row[col], str) else ""
        out[(str(row["split"]), str(row["image_id"]))] = row
    return out


class Journal:
    """Append-only JSON lines of finished meta rows (see the module docstring). ``path=None``: off."""

    def __init__(self, path: Path | None) -> None:
        self.path = Path(path) if path is not None else None
        self._fh = None

    def rows(self) -> dict[tuple[str, str], dict]:
        """Rows of an interrupted earlier batch (later lines win); malformed lines are skipped."""
        out: dict[tuple[str, str], dict] = {}
        if self.path is None or not self.path.is_file():
            return out
        with open(self.path, encoding="utf-8", errors="replace") as fh:
            for line in fh:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue  # the last line of a killed batch may be cut short
                if isinstance(row, dict) and all(c in row for c in META_COLUMNS):
                    out[(str(row["split"]), str(row["image_id"]))] = {c: row[c] for c in META_COLUMNS}
        return out

    def add(self, row: dict) -> None:
        if self.path is None:
            return
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8")
        self._fh.write(json.dumps({c: _plain(row[c]) for c in META_COLUMNS}) + "\n")
        self._fh.flush()  # in the OS's hands now: survives a kill of this process

    def close(self, remove: bool) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if remove and self.path is not None:
            self.path.unlink(missing_ok=True)


def remove_stale_temporaries(dests: list[Path]) -> int:
    """Delete temporary files that a killed writer left beside ``dests`` (``pipeline.io`` names them
    ``.<name>.<random>.tmp<suffix>``); one directory listing per folder. Returns how many."""
    by_dir: dict[Path, set[str]] = {}
    for dest in dests:
        by_dir.setdefault(dest.parent, set()).add(dest.name)
    removed = 0
    for folder, names in by_dir.items():
        try:
            entries = os.listdir(folder)
        except OSError:
            continue
        for entry in entries:
            if not entry.startswith(".") or ".tmp" not in entry:
                continue
            owner = entry[1:].rsplit(".tmp", 1)[0].rsplit(".", 1)[0]
            if owner in names:
                Path(folder, entry).unlink(missing_ok=True)
                removed += 1
    return removed


def _plain(v):
    return v.item() if isinstance(v, np.generic) else v


def _to_bool(v) -> bool:
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    return str(v).strip().lower() in ("true", "1", "yes")
