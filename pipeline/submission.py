"""Kaggle submission files: ``image_id,PredictionString``, one row per test image.

A PredictionString is ``class score x_min y_min x_max y_max`` repeated, separated by single spaces,
boxes in ORIGINAL image pixels (corners; x to the right, y down). A normal image is ``14 1 0 0 1 1``
(class 14, "No finding", on the box 0,0,1,1), which is also what an image with no detection becomes.

Formatting: class as an integer, score with 6 significant digits, coordinates rounded to 0.1 pixel
(".0" dropped), so the file is compact and the rounding moves a box by at most 0.05 pixel.

Every reader here reports all problems it finds (the first :data:`MAX_LISTED`, then a count) in one
:class:`~pipeline.errors.DataError` that names the file and line (the header is line 1).
"""
from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from pipeline.classes import NORMAL_ID
from pipeline.errors import DataError

HEADER = ["image_id", "PredictionString"]
DETECTION_COLUMNS = ["image_id", "class_id", "score", "x_min", "y_min", "x_max", "y_max"]
NORMAL_PREDICTION = f"{NORMAL_ID} 1 0 0 1 1"
MAX_LISTED = 10


def _raise_problems(problems: list[str], what: str) -> None:
    if not problems:
        return
    if len(problems) == 1 and problems[0].startswith(what):
        raise DataError(problems[0])  # the one message already names the file and line
    shown = problems[:MAX_LISTED]
    more = len(problems) - len(shown)
    tail = f"\n  ... and {more} more" if more else ""
    raise DataError(f"{what}: {len(problems)} problem(s):\n  " + "\n  ".join(shown) + tail)


# --------------------------------------------------------------------------------------------------
# one PredictionString
# --------------------------------------------------------------------------------------------------
def _fmt_coord(v: float) -> str:
    r = round(float(v), 1)
    if r == 0:
        r = 0.0  # no "-0"
    return str(int(r)) if r == int(r) else f"{r:.1f}"


def _row_string(row: Sequence[float]) -> str:
    cls, score, x0, y0, x1, y1 = row
    return f"{int(cls)} {score:.6g} {_fmt_coord(x0)} {_fmt_coord(y0)} {_fmt_coord(x1)} {_fmt_coord(y1)}"


def format_prediction_string(rows: Iterable[Sequence[float]]) -> str:
    """``(class_id, score, x_min, y_min, x_max, y_max)`` tuples -> one PredictionString.

    Boxes are original pixels. No rows gives :data:`NORMAL_PREDICTION` (``"14 1 0 0 1 1"``): an image
    with nothing predicted is submitted as normal, never as an empty string (Kaggle rejects those).
    Raises ``ValueError`` on a non-integer class id or a non-finite number.
    """
    parts = []
    for row in rows:
        if len(row) != 6:
            raise ValueError(f"a prediction needs 6 values (class, score, x_min, y_min, x_max, y_max), got {row!r}")
        values = [float(v) for v in row]
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"prediction has a non-finite value: {row!r}")
        if values[0] != int(values[0]):
            raise ValueError(f"class id must be an integer, got {row[0]!r}")
        parts.append(_row_string(values))
    return " ".join(parts) if parts else NORMAL_PREDICTION


def _parse(text: str, where: str) -> tuple[list[tuple], list[str]]:
    """Parse one PredictionString; returns (predictions, problems) instead of raising."""
    if not isinstance(text, str) or not text.strip():
        return [], [f"{where}: empty PredictionString (a normal image is '{NORMAL_PREDICTION}')"]
    tokens = text.split()
    if len(tokens) % 6:
        return [], [f"{where}: {len(tokens)} numbers, not a multiple of 6 (each prediction is "
                    f"'class score x_min y_min x_max y_max')"]
    out, problems = [], []
    for k in range(0, len(tokens), 6):
        n = k // 6 + 1
        group = tokens[k:k + 6]
        try:
            values = [float(t) for t in group]
        except ValueError:
            bad = next(t for t in group if not _is_float(t))
            problems.append(f"{where}: prediction {n}: {bad!r} is not a number")
            continue
        if not all(math.isfinite(v) for v in values):
            problems.append(f"{where}: prediction {n}: non-finite number in {' '.join(group)!r}")
            continue
        cls, score, x0, y0, x1, y1 = values
        if cls != int(cls) or not 0 <= cls <= NORMAL_ID:
            problems.append(f"{where}: prediction {n}: class id {group[0]!r} is not an integer in 0..{NORMAL_ID}")
            continue
        if x1 < x0 or y1 < y0:
            problems.append(f"{where}: prediction {n}: box {' '.join(group[2:])!r} has x_max < x_min or "
                            f"y_max < y_min (the order is x_min y_min x_max y_max)")
            continue
        out.append((int(cls), score, x0, y0, x1, y1))
    return out, problems


def _is_float(token: str) -> bool:
    try:
        float(token)
    except ValueError:
        return False
    return True


def parse_prediction_string(text: str, where: str) -> list[tuple]:
    """One PredictionString -> ``[(class_id, score, x_min, y_min, x_max, y_max), ...]``.

    ``where`` names the source in errors, e.g. ``"sub.csv line 17"``. Raises DataError when the string
    is empty, its token count is not a multiple of 6, a token is not a finite number, a class id is
    not an integer in 0..14, or a box has x_max < x_min or y_max < y_min.
    """
    out, problems = _parse(text, where)
    _raise_problems(problems, where)
    return out


# --------------------------------------------------------------------------------------------------
# whole files / tables
# --------------------------------------------------------------------------------------------------
def read_submission_rows(path) -> pd.DataFrame:
    """Read a submission CSV without parsing its strings: ``image_id, PredictionString, line``.

    Checks the header (exactly ``image_id,PredictionString``), two fields per row, a non-empty id, no
    duplicate id and no empty PredictionString; every problem names its line (the header is line 1).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"submission file {path} does not exist")
    problems: list[str] = []
    ids, strings, lines = [], [], []
    seen: dict[str, int] = {}
    # utf-8-sig: a file saved by Excel starts with a byte-order mark that must not end up in the header
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: the file is empty; expected the header 'image_id,PredictionString'")
        if [h.strip() for h in header] != HEADER:
            raise DataError(f"{path} line 1: header is {','.join(header)!r}; expected 'image_id,PredictionString'")
        for row in reader:
            line = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank line (e.g. a trailing newline twice)
            if len(row) != 2:
                problems.append(f"{path} line {line}: {len(row)} fields; expected 2 (image_id,PredictionString)")
                continue
            image_id, text = row[0].strip(), row[1]
            if not image_id:
                problems.append(f"{path} line {line}: empty image_id")
                continue
            if image_id in seen:
                problems.append(f"{path} line {line}: duplicate image_id {image_id!r} (first on line {seen[image_id]})")
                continue
            seen[image_id] = line
            if not text.strip():
                problems.append(f"{path} line {line}: empty PredictionString for {image_id!r} "
                                f"(a normal image is '{NORMAL_PREDICTION}')")
                continue
            ids.append(image_id)
            strings.append(text)
            lines.append(line)
    _raise_problems(problems, f"submission {path}")
    return pd.DataFrame({"image_id": pd.Series(ids, dtype=str), "PredictionString": pd.Series(strings, dtype=str),
                         "line": pd.Series(lines, dtype=np.int64)})


def _where(where: str, sub: pd.DataFrame, i: int) -> str:
    if "line" in sub.columns:
        return f"{where} line {int(sub['line'].iloc[i])}"
    return f"{where} row {i + 1} (image {sub['image_id'].iloc[i]!r})"


def _fast_parse(texts: list) -> tuple[np.ndarray, np.ndarray] | None:
    """All strings at once: (N, 6) values and per-string counts, or None when anything is off
    (the caller then runs the per-string parser, which names each problem)."""
    try:
        token_lists = [t.split() for t in texts]
    except AttributeError:  # a non-string (NaN) cell
        return None
    counts = np.fromiter((len(t) for t in token_lists), dtype=np.int64, count=len(token_lists))
    if (counts == 0).any() or (counts % 6).any():
        return None
    try:
        values = np.array([tok for toks in token_lists for tok in toks], dtype=np.float64).reshape(-1, 6)
    except ValueError:
        return None
    cls = values[:, 0]
    ok = (np.isfinite(values).all()
          and ((cls == np.round(cls)) & (cls >= 0) & (cls <= NORMAL_ID)).all()
          and (values[:, 4] >= values[:, 2]).all() and (values[:, 5] >= values[:, 3]).all())
    return (values, counts // 6) if ok else None


def submission_to_detections(sub: pd.DataFrame, where: str) -> pd.DataFrame:
    """Parse every PredictionString of ``sub`` (image_id, PredictionString[, line]) into the long
    detections table ``image_id, class_id, score, x_min, y_min, x_max, y_max`` (original pixels).
    All parse problems are collected and raised as one DataError naming ``where`` and the line.

    A valid file is parsed in one numpy pass (100,000 predictions in a fraction of a second); only a
    file with problems goes through the per-string parser that words the messages.
    """
    texts = sub["PredictionString"].tolist()
    image_ids = sub["image_id"].astype(str).tolist()
    fast = _fast_parse(texts)
    if fast is not None:
        arr, per_row = fast
        det_ids = np.repeat(np.asarray(image_ids, dtype=object), per_row)
    else:
        problems: list[str] = []
        ids_out, rows = [], []
        for i, (image_id, text) in enumerate(zip(image_ids, texts)):
            parsed, probs = _parse(text, _where(where, sub, i))
            problems.extend(probs)
            ids_out.extend([image_id] * len(parsed))
            rows.extend(parsed)
        _raise_problems(problems, where)
        arr = np.asarray(rows, dtype=np.float64).reshape(-1, 6)
        det_ids = ids_out
    det = pd.DataFrame(arr[:, 1:], columns=DETECTION_COLUMNS[2:])
    det.insert(0, "class_id", arr[:, 0].astype(np.int64))
    det.insert(0, "image_id", pd.Series(det_ids, dtype=str))
    return det


def read_submission(path) -> pd.DataFrame:
    """Read and check a submission CSV into the long detections table
    ``image_id, class_id, score, x_min, y_min, x_max, y_max`` (original pixels), in file order.

    Every row of a valid file holds at least one prediction, so the set of ``image_id`` of the result
    is the set of ids of the file. Problems (header, duplicates, empty or malformed strings) are
    raised as one DataError naming each line.
    """
    return submission_to_detections(read_submission_rows(path), f"submission {path}")


def _check_detections(det: pd.DataFrame) -> None:
    """Vectorised sanity check of a detections table before it is written (same rules as the parser)."""
    values = det[DETECTION_COLUMNS[1:]].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64,
                                                                                     na_value=np.nan)
    cls = values[:, 0]
    checks = [
        (~np.isfinite(values).all(axis=1), "a missing or non-finite class, score or coordinate"),
        ((cls != np.round(cls)) | (cls < 0) | (cls > NORMAL_ID), f"a class_id that is not an integer in 0..{NORMAL_ID}"),
        ((values[:, 4] < values[:, 2]) | (values[:, 5] < values[:, 3]), "x_max < x_min or y_max < y_min"),
    ]
    problems = []
    for bad, what in checks:
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            problems.append(f"{int(bad.sum())} detection(s) have {what}, e.g. row {i}: "
                            f"{det[DETECTION_COLUMNS].iloc[i].tolist()}")
    _raise_problems(problems, "to_submission")


def to_submission(detections: pd.DataFrame, image_ids: Sequence[str], normal_id: int = NORMAL_ID) -> pd.DataFrame:
    """Long detections table -> ``image_id, PredictionString`` with every id of ``image_ids`` once, in order.

    Within an image, predictions are written by score, highest first (equal scores keep row order).
    An image without detections gets ``"<normal_id> 1 0 0 1 1"`` (``"14 1 0 0 1 1"`` for VinBigData). Raises DataError when ``image_ids`` has
    duplicates, ``detections`` holds images that are not in ``image_ids``, or a detection would not
    parse back (class outside 0..14, non-finite value, x_max < x_min or y_max < y_min).
    Formats about 100,000 detections per second (one string per row, joined per image by position).
    """
    ids = pd.Index([str(i) for i in image_ids])
    dup = ids[ids.duplicated()].unique().tolist()
    if dup:
        raise DataError(f"to_submission: {len(dup)} duplicate image id(s) in the id list, e.g. {dup[:5]}")
    missing_cols = [c for c in DETECTION_COLUMNS if c not in detections.columns]
    if missing_cols:
        raise DataError(f"to_submission: detections lack column(s) {missing_cols}; expected {DETECTION_COLUMNS}")
    codes = ids.get_indexer(detections["image_id"].astype(str))
    if (codes < 0).any():
        unknown = sorted(set(detections["image_id"].astype(str)[codes < 0]))
        raise DataError(f"to_submission: detections for {len(unknown)} image(s) that are not in the submission's "
                        f"id list, e.g. {unknown[:5]}; check that the predictions belong to this split")
    _check_detections(detections)
    values = detections[DETECTION_COLUMNS[1:]].to_numpy(dtype=np.float64)
    # image (in id order), then score descending; both sorts stable so equal scores keep row order
    order = np.argsort(-values[:, 1], kind="stable")
    order = order[np.argsort(codes[order], kind="stable")]
    tokens = [_row_string(row) for row in values[order].tolist()]
    bounds = np.searchsorted(codes[order], np.arange(len(ids) + 1)).tolist()
    normal = f"{int(normal_id)} 1 0 0 1 1"
    strings = [" ".join(tokens[bounds[k]:bounds[k + 1]]) or normal for k in range(len(ids))]
    return pd.DataFrame({"image_id": pd.Series(list(ids), dtype=str),
                         "PredictionString": pd.Series(strings, dtype=str)})


def validate_submission(sub: pd.DataFrame, expected_ids: Sequence[str], where: str) -> None:
    """Raise DataError unless ``sub`` has the columns ``image_id, PredictionString`` and exactly
    ``expected_ids``, in that order, each once, every PredictionString non-empty and parseable."""
    missing_cols = [c for c in HEADER if c not in sub.columns]
    if missing_cols:
        raise DataError(f"{where}: missing column(s) {missing_cols}; a submission has exactly {HEADER}")
    ids = sub["image_id"].astype(str).tolist()
    expected = [str(i) for i in expected_ids]
    problems: list[str] = []
    counts = pd.Series(ids).value_counts()
    dups = counts[counts > 1]
    for image_id, n in dups.items():
        problems.append(f"{where}: image_id {image_id!r} appears {n} times")
    expected_set, got_set = set(expected), set(ids)
    missing = [i for i in expected if i not in got_set]
    extra = [i for i in ids if i not in expected_set]
    if missing:
        problems.append(f"{where}: {len(missing)} expected image(s) missing, e.g. {missing[:5]}")
    if extra:
        problems.append(f"{where}: {len(extra)} image(s) not expected, e.g. {extra[:5]}")
    if not problems and ids != expected:
        k = next(i for i, (a, b) in enumerate(zip(ids, expected)) if a != b)
        problems.append(f"{where}: ids are not in the expected order; row {k + 1} is {ids[k]!r}, "
                        f"expected {expected[k]!r}")
    for i, text in enumerate(sub["PredictionString"].tolist()):
        _, probs = _parse(text if isinstance(text, str) else "", _where(where, sub, i))
        problems.extend(probs)
    _raise_problems(problems, where)
