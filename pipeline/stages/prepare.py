"""Stage ``prepare``: raw dataset -> annotation and image tables, PNGs, fused boxes, YOLO labels.

Steps (every output through ``paths``, written atomically):

1. demo data: with ``data.demo: true`` and no dataset in ``data.root``, generate the synthetic one;
2. read the dataset (``pipeline.sources.load_dataset``): ``annotations.csv``, ``images.csv``;
3. convert every image to PNG (``pipeline.convert``): ``images/<split>/<id>.png``, ``meta.csv``,
   ``failures.csv`` (always written, empty when all converted). Images converted earlier with the same
   pixel-affecting ``image.*`` options from an unchanged source file are skipped (meta ``fingerprint``);
   any other image is converted again, so changing e.g. ``image.size`` rewrites the PNGs;
4. fuse the radiologists' boxes (``labels:`` section): ``boxes.csv`` (original pixels);
5. YOLO labels for every converted train image (``labels/train/<id>.txt``; empty = normal) and
   ``dataset.yaml`` (the 14 finding names).

A file that cannot be converted does not stop the batch: everything good is written first, then the
stage fails with a PipelineError that counts the failures and points at failures.csv. Running the
stage again after fixing (or removing) those files converts only what is missing.
"""
from __future__ import annotations

import time
from pathlib import Path

import pandas as pd

from pipeline.classes import ClassList
from pipeline.config import resolve_workers
from pipeline.errors import PipelineError
from pipeline.io import write_csv_atomic

_SHOWN_FAILURES = 3  # failures quoted in the error message; the rest are in failures.csv


def _sizes_for_labels(images: pd.DataFrame, meta: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Original sizes (image_id, width, height) of the converted images, from meta.csv (the pixels that were
    actually decoded), with a note when they differ from images.csv (the sizes the boxes were checked against)."""
    sizes = meta[["image_id", "split", "width", "height"]]
    both = sizes.merge(images[["image_id", "split", "width", "height"]], on=["image_id", "split"],
                       suffixes=("", "_table"))
    differ = both[(both["width"] != both["width_table"]) | (both["height"] != both["height_table"])]
    notes = []
    if len(differ):
        eg = differ.iloc[0]
        notes.append(f"{len(differ)} image(s) decode to a size other than images.csv gives (e.g. {eg['image_id']}: "
                     f"{eg['width']}x{eg['height']} decoded, {eg['width_table']}x{eg['height_table']} in the table); "
                     "labels use the decoded size. Check data.meta_csv against the DICOM headers.")
    return sizes[["image_id", "width", "height"]], notes


def _screen(cfg, paths, ds):
    """screen.enabled: the input gate decides for every image; rejected ones (not a chest X-ray, or
    unreadable) are set aside: left out of the tables, listed in screen.csv, counted in the log."""
    from pipeline.gate import configured_model, screen_files

    table = screen_files(ds.images["source"].tolist(), configured_model(cfg), device="cpu", progress=True)
    table["image_id"] = ds.images["image_id"].astype(str).to_numpy()
    write_csv_atomic(table, paths.screen_csv)
    rejected = set(table.loc[~table["accepted"].astype(bool), "image_id"])
    if rejected:
        why = table[~table["accepted"].astype(bool)]["decision"].value_counts().to_dict()
        eg = table[~table["accepted"].astype(bool)].iloc[0]
        print(f"[prepare] screen: {len(rejected)} of {len(table)} image(s) set aside ({why}), e.g. {eg['image_id']}: "
              f"{eg['reason']}; all decisions in {paths.screen_csv}")
    else:
        print(f"[prepare] screen: all {len(table)} image(s) are chest X-rays ({paths.screen_csv})")
    ds.images = ds.images[~ds.images["image_id"].isin(rejected)].reset_index(drop=True)
    ds.annotations = ds.annotations[~ds.annotations["image_id"].isin(rejected)].reset_index(drop=True)
    return ds, len(rejected)


def run(cfg, paths) -> dict:
    from pipeline.convert import (ConvertJob, ConvertOptions, convert_images, needs_conversion, read_meta,
                                  with_journal)
    from pipeline.labels import dataset_yaml, fuse_annotations, write_yolo_labels
    from pipeline.roles import describe_roles, detection_roles
    from pipeline.demo import ensure_demo
    from pipeline.sources import load_dataset

    ensure_demo(cfg, "prepare")
    options = ConvertOptions.from_config(cfg.image)  # bad image.* values fail before any work
    if options.lung_crop:
        from pipeline.lung_crop import check_model

        options.lung_model = check_model(options.lung_model or str(paths.segment_model))

    # --- tables ----------------------------------------------------------------------------------
    ds = load_dataset(cfg)
    for line in ds.report:
        print(f"[prepare] {line}")
    n_rejected = 0
    if (cfg.get("screen") or {}).get("enabled"):
        ds, n_rejected = _screen(cfg, paths, ds)
    write_csv_atomic(ds.annotations, paths.annotations_csv)
    write_csv_atomic(ds.images, paths.images_csv)
    images = ds.images
    classes = ClassList(tuple(ds.classes))

    # --- images ----------------------------------------------------------------------------------
    jobs = [ConvertJob(i, s, Path(src), paths.image(s, i))
            for i, s, src in zip(images["image_id"], images["split"], images["source"])]
    # meta.csv plus the journal a killed prepare left (the images it finished before the kill)
    previous = None if cfg.run.force else with_journal(read_meta(paths.meta_csv), paths.meta_journal)
    # Skipped: PNG present and its meta row's fingerprint matches these image.* options and the source
    # file's size/mtime; a PNG made with another image.size/clahe/... or from an edited file is redone.
    n_skip = len(jobs) - sum(needs_conversion(jobs, options, previous, force=bool(cfg.run.force)))
    workers = resolve_workers(cfg.run.workers)
    print(f"[prepare] converting {len(jobs) - n_skip} image(s) with {workers} worker(s)"
          + (f"; {n_skip} converted earlier: skipped" if n_skip else ""))
    t0 = time.perf_counter()
    meta, failures = convert_images(jobs, options, workers=workers, force=bool(cfg.run.force),
                                    journal=paths.meta_journal,
                                    previous_meta=previous)
    t_convert = time.perf_counter() - t0
    write_csv_atomic(meta, paths.meta_csv)
    write_csv_atomic(failures, paths.failures_csv)

    # --- boxes and labels --------------------------------------------------------------------------
    t0 = time.perf_counter()
    boxes = fuse_annotations(ds.annotations, images[["image_id", "width", "height"]], method=str(cfg.labels.fuse),
                             iou_thr=float(cfg.labels.iou_thr), classes=cfg.labels.classes,
                             class_names=list(classes.names), normal_id=classes.normal_id)
    write_csv_atomic(boxes, paths.boxes_csv)
    sizes, notes = _sizes_for_labels(images, meta)
    for line in notes:
        print(f"[prepare] warning: {line}")
    train_ok = meta.loc[meta["split"] == "train", "image_id"].tolist()
    label_boxes, crop_counts = boxes[boxes["image_id"].isin(set(train_ok))], None
    if options.lung_crop:  # labels describe the picture the PNG shows: the crop
        from pipeline.frames import boxes_in_frames, frame_table

        label_boxes, sizes, crop_counts = boxes_in_frames(label_boxes, frame_table(meta))
        n_crop = int(meta["crop_x0"].astype(str).str.len().gt(0).sum())
        print(f"[prepare] lung crop: {n_crop} of {len(meta)} image(s) cropped to their lungs (the others kept whole, "
              f"see meta.csv notes); {crop_counts['cut']} truth box(es) cut by the crop, {crop_counts['outside']} "
              "outside it (left out of the YOLO labels, still in boxes.csv and scored)"
              + (f", e.g. on {crop_counts['outside_ids'][:3]}" if crop_counts["outside"] else ""))
    # labels for the converted images only (a failed one has no decoded size; it is in failures.csv)
    n_labels = write_yolo_labels(label_boxes, sizes, lambda i: paths.label("train", i), train_ok, classes.normal_id)
    dataset_yaml(classes.findings, paths.dataset_yaml, classes.normal_name)
    t_labels = time.perf_counter() - t0

    finding = boxes["class_id"] != classes.normal_id
    kept = list(cfg.labels.classes) if cfg.labels.classes is not None else list(range(classes.normal_id))
    roles = detection_roles(images, boxes, classes.normal_id, kept, str(cfg.labels.excluded_only), cfg.labels.negatives,
                            int(cfg.run.seed))
    write_csv_atomic(roles, paths.detection_csv)
    for line in describe_roles(roles):
        print(f"[prepare] detector images, {line}")
    n_per_split = meta["split"].value_counts().to_dict()
    print(f"[prepare] {int(finding.sum())} boxes (labels.fuse={cfg.labels.fuse}) from {int(ds.annotations['x_min'].notna().sum())} "
          f"drawn; {n_labels} label files; convert {t_convert:.1f} s, labels {t_labels:.1f} s")

    summary = {
        "n_train": int(n_per_split.get("train", 0)),
        "n_test": int(n_per_split.get("test", 0)),
        "n_boxes": int(finding.sum()),
        "n_failures": int(len(failures)),
        "n_converted": int(len(jobs) - n_skip),
        "n_rejected_by_screen": n_rejected,
        **({"boxes_outside_crop": crop_counts["outside"], "boxes_cut_by_crop": crop_counts["cut"]} if crop_counts else {}),
        "skipped": n_skip == len(jobs) and not len(failures),
    }
    if len(failures):
        shown = "; ".join(f"{r.image_id} ({r.source}): {r.reason}"
                          for r in failures.head(_SHOWN_FAILURES).itertuples())
        more = f" and {len(failures) - _SHOWN_FAILURES} more" if len(failures) > _SHOWN_FAILURES else ""
        raise PipelineError(
            f"{len(failures)} of {len(jobs)} image(s) could not be converted, listed in {paths.failures_csv}: "
            f"{shown}{more}. Everything else is written (images, meta.csv, boxes.csv, labels). Replace or remove "
            "those files and run prepare again: images converted already are skipped.")
    return summary
