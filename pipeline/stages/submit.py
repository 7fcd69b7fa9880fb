"""Submit stage: ``final_test.csv`` -> ``submissions/<run.name>.csv`` in Kaggle form.

Ids and their order come from the sample submission (``submit.sample_submission``, else
``<data.root>/sample_submission.csv``); without one (ChestX-ray14 has no competition, the demo may
lack it) from the test images of ``images.csv`` in file order. Every image gets at least one
prediction (``14 1 0 0 1 1`` when it has none), coordinates are original pixels, and the table is
checked with :func:`pipeline.submission.validate_submission` before it is written atomically.
With ``<data.root>/test_truth.csv`` the written file is read back and scored.
"""
from __future__ import annotations

from pathlib import Path

from pipeline.errors import DataError, PipelineError
from pipeline.evaluation import test_truth_path
from pipeline.io import write_csv_atomic
from pipeline.metrics import TRUTH_COLUMNS
from pipeline.paths import RunPaths
from pipeline.stages.fuse import read_detections
from pipeline.tables import read_images, read_table


def sample_submission_path(cfg) -> Path | None:
    """The configured sample submission (relative: to the working directory, else to data.root), or the
    default ``<data.root>/sample_submission.csv`` when it exists; None when there is none."""
    value = cfg.submit.sample_submission
    root = Path(cfg.data.root)
    if value:
        p = Path(value).expanduser()
        if not p.is_absolute() and not p.exists():
            p = root / p
        if not p.is_file():
            raise DataError(f"submit.sample_submission: {value} not found (looked at {p}). Give the path of "
                            "Kaggle's sample_submission.csv, or null to use <data.root>/sample_submission.csv.")
        return p
    p = root / "sample_submission.csv"
    return p if p.is_file() else None


def expected_ids(cfg, paths: RunPaths) -> tuple[list[str], str]:
    """(ids in submission order, where they came from)."""
    sample = sample_submission_path(cfg)
    if sample is not None:
        df = read_table(sample, "sample submission", ["image_id"])
        ids = df["image_id"].astype("str").str.strip().tolist()
        if not ids:
            raise DataError(f"{sample}: the sample submission has no rows.")
        return ids, str(sample)
    im = read_images(paths.images_csv)
    ids = im.loc[im["split"] == "test", "image_id"].astype(str).tolist()
    if not ids:
        raise DataError(f"{paths.images_csv}: no test images and no sample submission "
                        f"({Path(cfg.data.root) / 'sample_submission.csv'} not found); nothing to submit.")
    return ids, f"{paths.images_csv} (test split)"


def run(cfg, paths: RunPaths) -> dict:
    from pipeline.submission import read_submission, to_submission, validate_submission

    src = paths.filtered_predictions("test")
    if not src.is_file():
        raise PipelineError(f"{src}: final test predictions not found. Run the fuse stage first "
                            "(it needs test predictions from the predict stage).")
    dets = read_detections(src, "final test predictions")
    ids, ids_from = expected_ids(cfg, paths)
    id_set = set(ids)
    stray = sorted(set(dets["image_id"]) - id_set)
    if stray:
        raise DataError(f"{src}: predictions for {len(stray)} image(s) that are not in the submission's ids "
                        f"({ids_from}), e.g. {stray[:5]}. Check that data.root and the sample submission belong "
                        "to this run's test set.")
    from pipeline.classes import run_classes

    normal_id = run_classes(paths).normal_id
    sub = to_submission(dets, ids, normal_id)
    validate_submission(sub, ids, where=f"submission for {paths.submission}")
    write_csv_atomic(sub, paths.submission)
    covered = set(dets["image_id"])
    n_default = sum(1 for i in ids if i not in covered)
    out = {"submission": str(paths.submission), "rows": len(sub), "ids_from": ids_from}
    if n_default:
        out["images_without_predictions"] = n_default
        print(f"[submit] {n_default} of {len(ids)} images have no prediction (not predicted, e.g. data.limit): "
              f"written as '{normal_id} 1 0 0 1 1'")
    if cfg.data.format == "chestxray14":
        out["note"] = "ChestX-ray14 has no Kaggle competition: the same format, written for the test split"
        print(f"[submit] {out['note']}")
    tpath = test_truth_path(cfg)
    if tpath.is_file():
        from pipeline.metrics import vinbigdata_map

        truth = read_table(tpath, "test truth", TRUTH_COLUMNS)
        truth["image_id"] = truth["image_id"].astype("str")
        truth = truth[truth["image_id"].isin(id_set)]
        if len(truth):
            back = read_submission(paths.submission)  # score exactly what was written
            out["test_map"] = float(vinbigdata_map(truth, back, iou_thr=cfg.evaluate.iou_thr)["map"])
            print(f"[submit] {paths.submission}: test mAP@{cfg.evaluate.iou_thr:g} = {out['test_map']:.4f}")
    print(f"[submit] wrote {paths.submission} ({len(sub)} images, ids from {ids_from})")
    return out
