"""Score a Kaggle-format submission with the VinBigData metric (VOC 2010 mAP at IoU 0.4).

    python -m pipeline score --truth TRUTH.csv --submission SUB.csv [--iou-thr 0.4] [--json]

TRUTH is in ``train.csv`` form (``image_id, class_id, x_min, y_min, x_max, y_max``; other columns
ignored; "No finding" rows with empty boxes are the box 0,0,1,1), e.g. the real ``train.csv`` or a
run's ``boxes.csv``. The submission must cover exactly the truth's images: every truth image
present, no other id, no duplicate, six numbers per prediction, class ids 0..14. Any problem is an
error naming the file and line (exit status 2). The metric itself is :func:`pipeline.metrics.vinbigdata_map`.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from pipeline.classes import NORMAL_ID, VINBIGDATA
from pipeline.errors import DataError, PipelineError
from pipeline.metrics import TRUTH_COLUMNS, vinbigdata_map
from pipeline.submission import MAX_LISTED, read_submission_rows, submission_to_detections


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipeline score", description=__doc__.split("\n\n")[0])
    p.add_argument("--truth", required=True, type=Path, help="truth CSV in train.csv form (original pixels)")
    p.add_argument("--submission", required=True, type=Path, help="submission CSV: image_id,PredictionString")
    p.add_argument("--iou-thr", type=float, default=0.4, help="IoU a prediction needs to match (default 0.4)")
    p.add_argument("--json", action="store_true",
                   help='print only one JSON object {"map": float, "per_class": {"<class_id>": float}}')
    return p


def read_truth(path: Path) -> pd.DataFrame:
    """Read a truth CSV in train.csv form and check its columns and class ids (0..14)."""
    if not path.is_file():
        raise DataError(f"truth file {path} does not exist")
    try:
        truth = pd.read_csv(path, dtype={"image_id": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DataError(f"truth file {path} is not a readable CSV: {exc}") from None
    missing = [c for c in TRUTH_COLUMNS if c not in truth.columns]
    if missing:
        raise DataError(f"truth file {path} lacks column(s) {missing}; it has {list(truth.columns)}. "
                        f"Expected train.csv form: image_id, class_id, x_min, y_min, x_max, y_max")
    if len(truth) == 0:
        raise DataError(f"truth file {path} has no rows")
    cls = pd.to_numeric(truth["class_id"], errors="coerce")
    bad = cls.isna() | (cls != cls.round()) | (cls < 0) | (cls > NORMAL_ID)
    if bad.any():
        i = int(bad.to_numpy().nonzero()[0][0])
        raise DataError(f"truth file {path} line {i + 2}: class_id {truth['class_id'].iloc[i]!r} is not an "
                        f"integer in 0..{NORMAL_ID} ({int(bad.sum())} such row(s))")
    if truth["image_id"].isna().any():
        i = int(truth["image_id"].isna().to_numpy().nonzero()[0][0])
        raise DataError(f"truth file {path} line {i + 2}: empty image_id")
    return truth


def check_ids(rows: pd.DataFrame, truth_ids: set[str], sub_path: Path, truth_path: Path) -> None:
    """Every truth image in the submission and no other id (duplicates were caught when reading)."""
    problems = []
    unknown = rows[~rows["image_id"].isin(truth_ids)]
    for image_id, line in zip(unknown["image_id"].head(MAX_LISTED), unknown["line"].head(MAX_LISTED)):
        problems.append(f"{sub_path} line {line}: image_id {image_id!r} is not in the truth {truth_path}")
    if len(unknown) > MAX_LISTED:
        problems.append(f"... and {len(unknown) - MAX_LISTED} more unknown id(s)")
    missing = sorted(truth_ids - set(rows["image_id"]))
    if missing:
        problems.append(f"{sub_path}: {len(missing)} truth image(s) have no row, e.g. {missing[:5]}; "
                        f"every image must be present (a normal one as '14 1 0 0 1 1')")
    if problems:
        raise DataError(f"submission {sub_path} does not match the truth's images:\n  " + "\n  ".join(problems))


def repeated_normal_note(truth: pd.DataFrame) -> str | None:
    """A note when images have several whole-image ("No finding") rows, e.g. raw train.csv with 3 readers.

    Every truth row is one box, so such an image holds several identical 0,0,1,1 boxes and one
    ``14 p 0 0 1 1`` prediction can match only one of them: class 14's recall is capped well below 1.
    """
    normal = truth[pd.to_numeric(truth["class_id"], errors="coerce") == NORMAL_ID]
    per_image = normal.groupby("image_id").size()
    repeated = per_image[per_image > 1]
    if repeated.empty:
        return None
    cap = len(per_image) / len(normal)
    return (f"note: {len(repeated)} truth image(s) have several 'No finding' rows (one per reader); each "
            f"counts as its own 0,0,1,1 box, so class {NORMAL_ID} recall is at most {cap:.3f} with one normal "
            f"prediction per image. Score against fused truth (one row per image, e.g. a run's boxes.csv) "
            f"for a Kaggle-like figure.")


def score(truth_path: Path, sub_path: Path, iou_thr: float = 0.4) -> dict:
    """Validate and score; returns :func:`vinbigdata_map`'s dict. Raises DataError on bad input."""
    truth = read_truth(truth_path)
    rows = read_submission_rows(sub_path)
    check_ids(rows, set(truth["image_id"]), sub_path, truth_path)
    detections = submission_to_detections(rows, f"submission {sub_path}")
    result = vinbigdata_map(truth, detections, iou_thr=iou_thr)
    result["note"] = repeated_normal_note(truth)
    return result


def format_table(result: dict, iou_thr: float) -> str:
    lines = [f"{'id':>3}  {'class':<20} {'n_truth':>8} {'n_pred':>8} {'AP':>8}"]
    for cls, ap in result["per_class"].items():
        name = VINBIGDATA[cls] if 0 <= cls < len(VINBIGDATA) else "?"
        lines.append(f"{cls:>3}  {name:<20} {result['n_truth'][cls]:>8} "
                     f"{result['n_pred'].get(cls, 0):>8} {ap:>8.4f}")
    ignored = sorted(set(result["n_pred"]) - set(result["per_class"]))
    if ignored:
        lines.append(f"classes predicted but absent from the truth (not scored): {ignored}")
    lines.append(f"mAP@{iou_thr:g} over {len(result['per_class'])} classes: {result['map']:.4f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if not 0.0 < args.iou_thr <= 1.0:
            raise DataError(f"--iou-thr must be in (0, 1], got {args.iou_thr}")
        result = score(args.truth, args.submission, args.iou_thr)
    except PipelineError as exc:
        # caught here too (not only in __main__) so main() called in-process behaves like the CLI
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if result["note"]:
        print(result["note"], file=sys.stderr)
    if args.json:
        print(json.dumps({"map": result["map"],
                          "per_class": {str(k): v for k, v in result["per_class"].items()}}))
    else:
        print(format_table(result, args.iou_thr))
    return 0


if __name__ == "__main__":
    sys.exit(main())
