"""Apply a finished run's models to new images (``./run.sh infer``).

The run directory is all it needs (it can be copied to another machine): ``config.yaml`` (the run's
resolved settings), ``dataset.yaml`` (its classes), the detector folds' weights (``det.select``: last.pt by
default) and the classifier folds' ``best.pt``. Each input is converted exactly as prepare converted the
run's images (``image.*``), every trained fold predicts it (with flip TTA unless ``--no-tta``), the folds
and flips are fused with the run's ``fuse`` settings, and the run's 2-class filter is applied when it has
a binary classifier. Coordinates are written in the INPUT file's pixels.

Writes, under OUT: ``detections.csv`` (image_id, class_id, class_name, score, x_min, y_min, x_max, y_max;
finding classes only), ``classifier.csv`` (image_id, p_<label>...), ``overlays/<id>.png``, ``index.html``,
``failures.csv`` (inputs that could not be read, as in prepare; one the run's gate rejected is only set
aside). Lung masks and the input gate's ``screen.csv`` (a row for every input) are added by
:mod:`pipeline.infer_extras` when the run has those models, and a localise run's networks'
``localisation.csv`` by :mod:`pipeline.infer_localise` (its boxes on the overlays when the run has no
detector).
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from pipeline.errors import DataError, PipelineError

DETECTION_OUT = ["image_id", "class_id", "class_name", "score", "x_min", "y_min", "x_max", "y_max"]


def load_run(run_dir: Path):
    """(cfg, paths) of a finished run directory, wherever it now lies."""
    from pipeline.config import load_config
    from pipeline.paths import RunPaths

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise DataError(f"{run_dir}: not a run directory (no config.yaml). Pass the folder a run wrote, e.g. "
                        "--run runs/demo.")
    cfg = load_config(run_dir / "config.yaml")
    return cfg, RunPaths(run_dir=run_dir)


def find_inputs(inputs: list[str], ignored: list[Path] | None = None) -> tuple[list[tuple[str, Path]], list[dict]]:
    """(image_id, path) for every file given, and every image found (recursively, as dicom2png finds them:
    DICOM, PNG, JPEG, BMP, TIFF, WebP, and DICOM by content whatever the name) in a folder given; other
    files in those folders go to ``ignored``. The id is the file name without its extension
    (:func:`pipeline.tools.dicom2png.image_id`). Inputs that do not exist become failures. Two inputs with
    one id are an error naming both."""
    from pipeline.tools.dicom2png import collect_sources, image_id

    found, failures, seen = [], [], {}
    for raw in inputs:
        p = Path(raw)
        if not p.exists():
            failures.append({"image_id": image_id(p), "split": "infer", "source": str(p), "reason": "file not found"})
            continue
        for f, _ in collect_sources([p], ignored):
            i = image_id(f)
            if i in seen:
                raise DataError(f"two inputs have the image id {i!r}: {seen[i]} and {f}; rename one "
                                "(the id is the file name without its extension).")
            seen[i] = f
            found.append((i, f))
    return found, failures


def _detector_weights(cfg, paths) -> dict[str, dict[int, Path]]:
    models = list(cfg.fuse.models) if cfg.fuse.models is not None else [str(cfg.det.name)]
    out = {}
    for m in models:
        folds = {k: paths.det_weights(m, k, str(cfg.det.select)) for k in cfg.det.folds}
        folds = {k: w for k, w in folds.items() if w.is_file()}
        if folds:
            out[m] = folds
    return out


def _classifier_weights(cfg, paths) -> dict[int, Path]:
    root = paths.cls_root(cfg.cls.name)
    ks = sorted(int(d.name[4:]) for d in root.glob("fold*") if d.name[4:].isdigit()) if root.is_dir() else []
    return {k: paths.cls_weights(cfg.cls.name, k) for k in ks if paths.cls_weights(cfg.cls.name, k).is_file()}


def detect(cfg, det_weights: dict, items: list[tuple], conf: float, tta: bool, sizes: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """Fused detections (original pixels) of every model x fold x flip on ``items`` (id, png, w, h)."""
    from pipeline.detector import import_ultralytics, predict_images, predict_imgsz, resolve_detector_device
    from pipeline.fusion import DET_COLUMNS, fuse_detections, fuse_options

    YOLO = import_ultralytics(cfg.run.threads)
    device = resolve_detector_device(cfg.run.device)
    frames, weights, names = [], [], []
    for m, folds in det_weights.items():
        for k, w in sorted(folds.items()):
            dets, _ = predict_images(YOLO(str(w)), items, imgsz=predict_imgsz(cfg.det), conf=conf, iou=float(cfg.det.iou),
                                     max_det=int(cfg.det.max_det), batch=int(cfg.det.predict_batch), device=device,
                                     tta_flip=tta, desc=f"{m} fold {k}")
            for flip in (["orig", "hflip"] if tta else ["orig"]):
                frames.append(dets.loc[dets["tta"] == flip, DET_COLUMNS].reset_index(drop=True))
                weights.append(float((cfg.fuse.weights or {}).get(m, 1.0)))
                names.append(f"{m} fold{k} {flip}")
    fused = fuse_detections(frames, sizes, weights=weights, workers=1, **fuse_options(cfg.fuse))
    return fused, names


def classify(cfg, classes, cls_weights: dict[int, Path], pngs: list[tuple[str, Path]]) -> pd.DataFrame:
    """Mean probability over the classifier folds: image_id, p_<label>..."""
    import numpy as np

    from pipeline import classifier as C
    from pipeline.classifier.targets import label_names, prob_columns

    names = label_names(cfg, classes)
    device, _ = C.torch_device(cfg.run.device)
    ds = C.XrayDataset([p for _, p in pngs], None, int(cfg.cls.imgsz), n_outputs=len(names))
    probs = []
    for k, w in sorted(cls_weights.items()):
        model = C.load_checkpoint(w, len(names), device)
        probs.append(C.predict_probs(model, ds, int(cfg.cls.batch) * 2, 0, device, bool(cfg.cls.tta_flip), bool(cfg.cls.amp)))
    out = pd.DataFrame(np.mean(probs, axis=0), columns=prob_columns(names))
    out.insert(0, "image_id", [i for i, _ in pngs])
    return out


def _filter_thresholds(cfg, paths) -> tuple[float, float]:
    """The (low, high) the run applied to its test images (fuse.json), else the configured pair."""
    try:
        info = json.loads(paths.fuse_summary.read_text()).get("filter_test") or {}
    except (OSError, ValueError):
        info = {}
    return float(info.get("low", cfg.filter.low)), float(info.get("high", cfg.filter.high))


def run_infer(run_dir: Path, out: Path, inputs: list[str], conf: float | None = None, tta: bool | None = None,
              workers: int | None = None) -> dict:
    from pipeline.classes import run_classes
    from pipeline.convert import ConvertJob, ConvertOptions, convert_images
    from pipeline.device import use_threads
    from pipeline.fingerprint import set_cache_dir
    from pipeline.fusion import apply_two_class_filter
    from pipeline.infer_extras import extras
    from pipeline.io import write_csv_atomic

    cfg, paths = load_run(run_dir)
    out = Path(out)
    work = out / ".work"
    set_cache_dir(work / "cache")
    from pipeline.infer_extras import gate_model_path, lung_model_path
    from pipeline.infer_localise import localise, localise_models, overlay_boxes

    det_weights, cls_weights = _detector_weights(cfg, paths), _classifier_weights(cfg, paths)
    if not (det_weights or cls_weights or localise_models(paths) or lung_model_path(cfg, paths)
            or gate_model_path(cfg, paths)):
        raise PipelineError(f"{paths.run_dir}: no trained detector fold (det/<name>/fold<k>/weights), no "
                            "classifier fold (cls/<name>/fold<k>/best.pt), no localisation network "
                            "(localise/<method>/fold<k>/model.pt), no lung model (segment/model.pt) and no gate "
                            "(screen/model.pt); run train_det, train_cls, localise, segment or screen first.")
    # the class list (dataset.yaml, written by prepare) only matters to the detector and the classifier: a
    # lung-model or gate run (configs/lungs_shenzhen.yaml, configs/gate.yaml) has none
    classes = run_classes(paths) if det_weights or cls_weights else None
    ignored: list[Path] = []
    found, failures = find_inputs(inputs, ignored)
    if not found and not failures:
        raise DataError(f"no image files in {inputs} (DICOM, PNG, JPEG, BMP, TIFF or WebP)"
                        + (f"; {len(ignored)} other file(s) there, e.g. {ignored[0]}" if ignored else "") + ".")
    use_threads(cfg.run.threads)
    jobs = [ConvertJob(i, "infer", src, work / "images" / f"{i}.png") for i, src in found]
    options = ConvertOptions.from_config(cfg.image)
    if options.lung_crop:  # the run's own lung model travels with the run directory
        from pipeline.lung_crop import check_model

        given = options.lung_model if options.lung_model and Path(options.lung_model).is_file() else None
        options.lung_model = check_model(given or str(paths.segment_model))
    meta, conv_failures = convert_images(jobs, options,
                                         workers=workers if workers is not None else cfg.run.workers, force=True)
    failures += conv_failures.to_dict("records")
    ok = meta["image_id"].astype(str).tolist()
    pngs = [(i, work / "images" / f"{i}.png") for i in ok]
    from pipeline.frames import frame_table

    size = meta.set_index("image_id")[["width", "height"]].astype(float)
    frames = frame_table(meta)
    items = [(i, p, size.at[i, "width"], size.at[i, "height"], tuple(frames.loc[i, ["x0", "y0", "x1", "y1"]]))
             for i, p in pngs]
    summary: dict = {"run": str(paths.run_dir), "images": len(ok), "out": str(out),
                     "ignored": [str(p) for p in ignored]}

    dets = pd.DataFrame(columns=DETECTION_OUT)
    if det_weights and items:
        conf = float(cfg.det.conf if conf is None else conf)
        tta = bool(cfg.det.tta_flip if tta is None else tta)
        dets, sources = detect(cfg, det_weights, items, conf, tta, meta[["image_id", "width", "height"]])
        summary["sources"] = sources
    probs = classify(cfg, classes, cls_weights, pngs) if cls_weights and pngs else None
    if probs is not None:
        write_csv_atomic(probs, out / "classifier.csv")
        if cfg.filter.enabled and "p_abnormal" in probs.columns and len(dets):
            low, high = _filter_thresholds(cfg, paths)
            dets = apply_two_class_filter(dets, probs.set_index("image_id")["p_abnormal"], low, high,
                                          multiply=bool(cfg.filter.multiply), normal_id=classes.normal_id)
            summary["filter"] = {"low": low, "high": high}
    if len(dets):
        dets = dets[dets["class_id"] != classes.normal_id].copy()
        dets["class_name"] = [classes.names[int(c)] for c in dets["class_id"]]
    write_csv_atomic(dets.reindex(columns=DETECTION_OUT), out / "detections.csv")
    summary.update(extras(cfg, paths, out, pngs, meta, found))
    # an input the gate decided is not a chest X-ray and that conversion refused (a colour photograph) is
    # set aside, as prepare sets rejected images aside: listed in failures.csv with the gate's word, and
    # not an error; every other input that could not be read still is
    set_aside = set(summary.pop("gate_rejected_ids", []))
    for f in failures:
        if f["image_id"] in set_aside:
            f["reason"] = f"set aside by the gate (screen.csv: not a chest X-ray); {f['reason']}"
    summary["set_aside"] = sum(f["image_id"] in set_aside for f in failures)
    summary["failures"] = len(failures) - summary["set_aside"]
    write_csv_atomic(pd.DataFrame(failures, columns=["image_id", "split", "source", "reason"]), out / "failures.csv")
    loc = localise(cfg, paths, out, items)
    loc_boxes = loc.pop("_boxes", None)
    summary.update(loc)
    shown = dets if len(dets) or loc_boxes is None else overlay_boxes(loc_boxes)
    _overlays(out, pngs, meta, shown, probs, summary.get("lung_masks") or {})
    summary["detections"] = int(len(dets))
    return summary


def _overlays(out: Path, pngs, meta, dets: pd.DataFrame, probs: pd.DataFrame | None, lungs: dict) -> None:
    """One picture per input: the converted PNG (the lung crop, when the run crops) with the boxes moved
    into its frame, the lung outline, the top classifier probability."""
    import cv2

    from pipeline.frames import frame_table
    from pipeline.overlay import draw, gallery, write_png

    frames = frame_table(meta)
    by_image = {i: g for i, g in dets.groupby("image_id")} if len(dets) else {}
    p = probs.set_index("image_id") if probs is not None else None
    items = []
    for image_id, png in pngs:
        g = by_image.get(image_id)
        x0, y0, x1, y1 = frames.loc[image_id, ["x0", "y0", "x1", "y1"]]
        boxes = [] if g is None else [(r.class_name, r.score, r.x_min - x0, r.y_min - y0, r.x_max - x0, r.y_max - y0)
                                      for r in g.sort_values("score", ascending=False).head(10).itertuples()]
        corner = None
        if p is not None:
            top = p.loc[image_id].sort_values(ascending=False)
            corner = f"{top.index[0][2:]} {top.iloc[0]:.2f}"
        grey = cv2.imread(str(png), cv2.IMREAD_UNCHANGED)
        mask = lungs.get(image_id)
        if mask is not None:
            mask = mask[int(y0):int(y1), int(x0):int(x1)]
        pic = draw(grey, (x1 - x0, y1 - y0), boxes, corner=corner, lungs=mask)
        write_png(out / "overlays" / f"{image_id}.png", pic)
        best = f"top box {boxes[0][0]} {boxes[0][1]:.2f}" if boxes else "no box"
        items.append((f"overlays/{image_id}.png", image_id, best + (f"; {corner}" if corner else "")))
    gallery(out / "index.html", f"infer: {len(pngs)} image(s)", items)
