"""ChestX-ray14 localisation, out-of-fold: box prior, Grad-CAM, multiscale CAM, CLN and YOLOv8n compared.

    flock /tmp/cxr-heavy.lock .venv/bin/python benchmarks/nih_localise.py --methods prior,gradcam
    flock /tmp/cxr-heavy.lock .venv/bin/python benchmarks/nih_localise.py --methods cln --folds 0
    .venv/bin/python benchmarks/nih_localise.py --report          # combine what is cached, print, write JSON

Reads the real NIH files directly (no pipeline stages): ``BBox_List_2017.csv`` (the 984 boxes of 880
images, 1024-pixel space), ``Data_Entry_2017.csv`` (labels, Patient ID) and the PNGs found by name in
``bbox_256/``, ``images_256/`` or ``images/`` under ``--data`` (any size: boxes are scaled by
PNG size / 1024). Patient-grouped, label-stratified folds on the boxed images
(:func:`pipeline.folds.make_folds`); every method trains on the other folds and predicts the held-out
one; ``--extra`` adds the un-boxed images (``images_256/``) of patients outside the held-out fold as
classification data. Each (method, fold) is cached under ``--cache`` as ``<method>/fold<k>.csv``
(boxes, 1024 space), ``fold<k>_probs.csv`` and ``fold<k>.json`` (settings, timings, losses,
relevance weights), and skipped when its settings and fold match, so the comparison runs in pieces.
``--report`` scores all cached folds with :mod:`pipeline.localisation` (3 boxes per image and class,
IoU and IoBB at T = 0.1 .. 0.7, AUC) and writes ``<cache>/metrics.json`` (the contract block under
``"localisation"``) and ``<cache>/report.md``. Nothing is chosen on a held-out fold: fixed epochs,
last weights, the project's fixed CAM threshold 0.5.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import pipeline  # noqa: E402,F401  (offline environment first)
from pipeline.boxes import BOX_COLUMNS  # noqa: E402
from pipeline.classes import CHESTXRAY14, NORMAL_ID  # noqa: E402
from pipeline.errors import DataError  # noqa: E402
from pipeline.folds import make_folds, parse_labels  # noqa: E402
from pipeline.io import write_csv_atomic, write_text_atomic  # noqa: E402
from pipeline.models.cln import BOX_MODES  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = Path(os.environ.get("CXR_REAL_DATA", REPO.parent / "shared" / "real")) / "chestxray14"
IMAGE_DIRS = ("bbox_256", "images_256", "images")
SPACE = 1024.0  # BBox_List coordinates: NIH's 1024 x 1024 PNGs
ALL_METHODS = ("prior", "gradcam", "multiscale", "cln", "yolo")
K = 8           # boxed classes = CHESTXRAY14 ids 0..7
FINDINGS = CHESTXRAY14[:NORMAL_ID]


# ---------------------------------------------------------------------------------------------- data
def _index_pngs(root: Path) -> dict[str, Path]:
    found = {}
    for sub in IMAGE_DIRS:
        for p in sorted((root / sub).glob("*.png")) if (root / sub).is_dir() else []:
            found.setdefault(p.stem, p)
    return found


def _png_size(path: Path) -> tuple[int, int]:
    from pipeline.sources.chestxray14 import png_size

    return png_size(path)


def load_data(root: Path, extra: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(images, truth)``: images (image_id, path, patient_id, labels, boxed, png_w, png_h) and the truth
    boxes (image_id, class_id, x_min .. y_max in 1024 space)."""
    from pipeline.sources.chestxray14 import read_bbox_list, read_data_entry

    truth, _ = read_bbox_list(root / "BBox_List_2017.csv")
    entry = read_data_entry(root / "Data_Entry_2017.csv").set_index("image_id")
    pngs = _index_pngs(root)
    boxed = sorted(truth["image_id"].astype(str).unique())
    missing = [i for i in boxed if i not in pngs or i not in entry.index]
    if missing:
        raise DataError(f"{root}: {len(missing)} boxed image(s) lack a PNG (in {', '.join(IMAGE_DIRS)}) or a "
                        f"Data_Entry row, e.g. {missing[:3]}; point --data at the NIH folder.")
    ids = boxed + (sorted(i for i in pngs if i not in set(boxed) and i in entry.index) if extra else [])
    sizes = [_png_size(pngs[i]) for i in ids]
    images = pd.DataFrame({"image_id": ids, "path": [str(pngs[i]) for i in ids],
                           "patient_id": entry.loc[ids, "patient_id"].to_numpy(),
                           "labels": entry.loc[ids, "labels"].to_numpy(), "boxed": [i in set(boxed) for i in ids],
                           "png_w": [s[0] for s in sizes], "png_h": [s[1] for s in sizes]})
    return images, truth[["image_id", "class_id", *BOX_COLUMNS]].reset_index(drop=True)


def label_matrix(images: pd.DataFrame, truth: pd.DataFrame) -> np.ndarray:
    """(N, 14) image-level labels of the findings; a truth box makes its class present."""
    y = np.zeros((len(images), NORMAL_ID), np.float32)
    for i, text in enumerate(images["labels"]):
        y[i, [c for c in parse_labels(text) if c < NORMAL_ID]] = 1.0
    row = {iid: i for i, iid in enumerate(images["image_id"])}
    for iid, cid in zip(truth["image_id"], truth["class_id"]):
        y[row[iid], int(cid)] = 1.0
    return y


def png_boxes(images: pd.DataFrame, truth: pd.DataFrame) -> list[np.ndarray]:
    """Per image (n, 5): class_id and the box in that PNG's pixels."""
    by = {k: g for k, g in truth.groupby("image_id")}
    out = []
    for iid, w, h in zip(images["image_id"], images["png_w"], images["png_h"]):
        g = by.get(iid)
        if g is None:
            out.append(np.zeros((0, 5)))
            continue
        xyxy = g[BOX_COLUMNS].to_numpy(float) * np.array([w, h, w, h]) / SPACE
        out.append(np.column_stack([g["class_id"].to_numpy(float), xyxy]))
    return out


def assign_folds(images: pd.DataFrame, n_splits: int, seed: int) -> np.ndarray:
    """Fold of each boxed image (patient-grouped, stratified); -1 for the extra images."""
    boxed = images[images["boxed"]]
    f = make_folds(boxed.assign(split="train"), n_splits, seed, group_by_patient=True)
    fold = dict(zip(f["image_id"], f["fold"]))
    return np.array([fold.get(i, -1) for i in images["image_id"]], int)


INNER_SPLITS = 4


def fold_plan(images: pd.DataFrame, args) -> tuple[np.ndarray, list[int], Path]:
    """``(fold per image, folds to run, cache folder)``. With ``--inner`` (choosing settings for outer
    fold ``--inner-fold`` K, nested): the images of outer fold K are left out altogether (fold -2), the
    rest (K's training images) are split again into INNER_SPLITS patient-grouped folds and only inner
    fold 0 is held out, under ``<cache>/inner`` (K = 0) or ``<cache>/inner<K>``."""
    fold = assign_folds(images, args.n_splits, args.seed)
    if not args.inner:
        return fold, list(args.folds if args.folds is not None else range(args.n_splits)), Path(args.cache)
    k = args.inner_fold
    rest = images[(fold != k) & images["boxed"].to_numpy()]
    inner = assign_folds(rest, INNER_SPLITS, args.seed)
    out = np.where(fold == k, -2, -1)
    out[np.flatnonzero((fold != k) & images["boxed"].to_numpy())] = inner
    return out, [0], inner_cache(args)


def inner_cache(args) -> Path:
    return Path(args.cache) / ("inner" if args.inner_fold == 0 else f"inner{args.inner_fold}")


# --------------------------------------------------------------------------------------------- cache
def _fold_key(method: str, settings: dict, val_ids) -> str:
    blob = json.dumps({"method": method, "settings": settings, "val": sorted(val_ids)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _cached(cache: Path, method: str, k: int, key: str) -> bool:
    meta = cache / method / f"fold{k}.json"
    try:
        return json.loads(meta.read_text()).get("key") == key and (cache / method / f"fold{k}.csv").is_file()
    except (OSError, ValueError):
        return False


def _save(cache: Path, method: str, k: int, key: str, boxes: pd.DataFrame, probs: pd.DataFrame, info: dict) -> None:
    d = cache / method
    write_csv_atomic(boxes, d / f"fold{k}.csv")
    write_csv_atomic(probs, d / f"fold{k}_probs.csv")
    write_text_atomic(d / f"fold{k}.json", json.dumps({"key": key, **info}, indent=1, default=str))


def _to_space(df: pd.DataFrame, images: pd.DataFrame) -> pd.DataFrame:
    """Boxes in PNG pixels -> 1024 space."""
    size = images.set_index("image_id")[["png_w", "png_h"]]
    w = size.loc[df["image_id"], "png_w"].to_numpy(float)
    h = size.loc[df["image_id"], "png_h"].to_numpy(float)
    out = df.copy()
    out[["x_min", "x_max"]] = out[["x_min", "x_max"]].to_numpy() * (SPACE / w)[:, None]
    out[["y_min", "y_max"]] = out[["y_min", "y_max"]].to_numpy() * (SPACE / h)[:, None]
    return out


# ------------------------------------------------------------------------------------------- methods
def run_prior(images, truth, tr, va, args):
    from pipeline.models.prior import fit_prior, predict_prior

    t = truth[truth["image_id"].isin(set(images.loc[tr, "image_id"]))].copy()
    t[BOX_COLUMNS] = t[BOX_COLUMNS] / SPACE
    ids = images.loc[va, "image_id"].tolist()
    boxes = predict_prior(fit_prior(t, 3, args.seed), ids, [SPACE] * len(ids), [SPACE] * len(ids))
    probs = np.full((len(ids), K), 0.5)  # a constant score: AUC 0.5
    return boxes, probs, {}


def run_network(method, images, truth, tr, va, args, y, boxes_png):
    from pipeline.models.runners import Items, boxes_table, train_fold

    s = method_settings(args)
    n_labels = K if args.labels == 8 else NORMAL_ID
    lab = y[:, :n_labels]
    train = Items(images.loc[tr, "path"].tolist(), lab[tr], [boxes_png[i] for i in np.flatnonzero(tr)])
    pred = Items(images.loc[va, "path"].tolist(), lab[va], None)
    res = train_fold(method, s, train, pred, label_names=FINDINGS[:n_labels])
    vimg = images[va]
    table = boxes_table(res, vimg["image_id"].tolist(), vimg["png_w"].tolist(), vimg["png_h"].tolist())
    return _to_space(table, images), res.probs[:, :K], res.info


def method_settings(args):
    from pipeline.models.runners import MethodSettings

    return MethodSettings(backbone=args.backbone, imgsz=args.imgsz, epochs=args.epochs, batch=args.batch,
                          lr=args.lr, seed=args.seed, width=args.width, augment=not args.no_augment,
                          cln_box=args.cln_box)


def settings_of(method: str, args) -> dict:
    base = {"n_splits": args.n_splits, "seed": args.seed, "extra": args.extra, "data": str(args.data)}
    if method == "prior":
        return base
    if method == "yolo":
        return {**base, "imgsz": args.imgsz, "epochs": args.yolo_epochs, "batch": args.batch}
    return {**base, **method_settings(args).as_dict(), "labels": args.labels}


def run_methods(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    images, truth = load_data(Path(args.data), args.extra)
    y = label_matrix(images, truth)
    fold, run_folds, cache = fold_plan(images, args)
    boxes_png = png_boxes(images, truth)
    patients_of = images.groupby("patient_id")["image_id"].apply(set)
    for method in args.methods:
        for k in run_folds:
            va = fold == k
            held_patients = set(images.loc[va | (fold == -2), "patient_id"])
            tr = (fold != k) & (fold != -2) & ~images["patient_id"].isin(held_patients).to_numpy()
            key = _fold_key(method, settings_of(method, args), images.loc[va, "image_id"])
            if _cached(cache, method, k, key) and not args.force:
                print(f"[{method}] fold {k}: cached, skipped")
                continue
            print(f"[{method}] fold {k}: train {int(tr.sum())} images ({int((tr & ~images['boxed']).sum())} extra), "
                  f"predict {int(va.sum())} ({len(patients_of)} patients in all)", flush=True)
            start, cpu = time.perf_counter(), time.process_time()
            if method == "prior":
                boxes, probs, info = run_prior(images, truth, tr, va, args)
            elif method == "yolo":
                from benchmarks.nih_localise_yolo import train_predict_yolo

                boxes, probs, info = train_predict_yolo(images, truth, tr, va, args, k, cache)
            else:
                boxes, probs, info = run_network(method, images, truth, tr, va, args, y, boxes_png)
            info = {**info, "seconds": round(time.perf_counter() - start, 1),
                    "cpu_seconds": round(time.process_time() - cpu, 1), "settings": settings_of(method, args),
                    "date": datetime.date.today().isoformat(), "command": " ".join(sys.argv)}
            p = pd.DataFrame(probs, columns=[f"p_{n}" for n in FINDINGS[:K]])
            p.insert(0, "image_id", images.loc[va, "image_id"].to_numpy())
            _save(cache, method, k, key, boxes, p, info)
            print(f"[{method}] fold {k}: {info['seconds']:.0f} s", flush=True)


# -------------------------------------------------------------------------------------------- report
def report(args) -> dict:
    from pipeline import localisation as L

    cache = inner_cache(args) if args.inner else Path(args.cache)
    images, truth = load_data(Path(args.data), False)
    y = label_matrix(images, truth)[:, :K]
    n_splits = 1 if args.inner else args.n_splits
    blocks, run_info = {}, {}
    for method in ALL_METHODS:
        parts = [(k, cache / method / f"fold{k}.csv") for k in range(n_splits)]
        if not all(p.is_file() for _, p in parts):
            if any(p.is_file() for _, p in parts):
                print(f"[report] {method}: only folds {[k for k, p in parts if p.is_file()]} cached; left out")
            continue
        boxes = pd.concat([pd.read_csv(p, dtype={"image_id": str}) for _, p in parts], ignore_index=True)
        probs = pd.concat([pd.read_csv(cache / method / f"fold{k}_probs.csv", dtype={"image_id": str})
                           for k in range(n_splits)], ignore_index=True).set_index("image_id")
        infos = [json.loads((cache / method / f"fold{k}.json").read_text()) for k in range(n_splits)]
        keep = probs.index.intersection(images["image_id"])
        row = {iid: i for i, iid in enumerate(images["image_id"])}
        yy = y[[row[i] for i in keep]]
        scored = truth[truth["image_id"].isin(set(keep))]  # all of them unless --inner
        blocks[method] = L.method_block(boxes, scored, yy, probs.loc[keep].to_numpy(float))
        run_info[method] = {"seconds": sum(i["seconds"] for i in infos), "per_fold_seconds": [i["seconds"] for i in infos],
                            "cpu_seconds": sum(i.get("cpu_seconds", 0) for i in infos),
                            "settings": infos[0]["settings"], "dates": sorted({i["date"] for i in infos}),
                            "commands": sorted({i["command"] for i in infos}), "n_images": int(len(keep)),
                            "n_boxes": int(len(scored))}
        if "relevance" in infos[0]:
            run_info[method]["relevance_per_fold"] = [{n: i["relevance"][n] for n in FINDINGS[:K]} for i in infos]
    if not blocks:
        raise SystemExit(f"nothing cached under {cache}: run some --methods first")
    L.check_block(blocks)
    out = {"localisation": blocks, "localisation_reference": L.references(),
           "localisation_run": {"n_boxes": int(len(truth)), "n_images": int(truth["image_id"].nunique()),
                                "n_splits": n_splits, "max_boxes": L.MAX_BOXES, "methods": run_info,
                                "total_seconds": round(sum(r["seconds"] for r in run_info.values()), 1)}}
    write_text_atomic(cache / "metrics.json", json.dumps(out, indent=1))
    md = ["## IoU > T (share of truth boxes found, <= 3 boxes per image and class, out-of-fold)",
          L.format_table(blocks, "iou"), "", "## IoBB > T", L.format_table(blocks, "iobb"), "",
          "## AUC (out-of-fold, the boxed images)", L.format_auc(blocks), "",
          f"CLN 2025 (published): mean AUC {L.CLN2025['auc_mean']}, mean IoU accuracy {L.CLN2025['iou_accuracy_mean']}"]
    if "multiscale" in run_info:
        md += ["", "## Multiscale CAM: learned layer relevance weights (mean over folds)",
               relevance_markdown(run_info["multiscale"]["relevance_per_fold"])]
    md.append("")
    for m, r in run_info.items():
        md.append(f"- {m}: {r['seconds']:.0f} s wall, {r['cpu_seconds']:.0f} CPU-s over {n_splits} folds; "
                  f"{r['dates']}; {r['settings']}")
    write_text_atomic(cache / "report.md", "\n".join(md) + "\n")
    print("\n".join(md))
    return out


def relevance_markdown(per_fold: list[dict]) -> str:
    """Class x stage table of the relevance weights, averaged over the folds."""
    strides = list(per_fold[0][FINDINGS[0]])
    lines = [f"| class | {' | '.join(strides)} |", "|---|" + "---|" * len(strides)]
    for n in FINDINGS[:K]:
        lines.append(f"| {n} | " + " | ".join(f"{np.mean([f[n][st] for f in per_fold]):.3f}" for st in strides) + " |")
    return "\n".join(lines)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with BBox_List_2017.csv, Data_Entry_2017.csv, PNGs")
    ap.add_argument("--cache", default="/tmp/nih_localise", help="where fold predictions and the report go")
    ap.add_argument("--methods", default="", help=f"comma-separated, from {','.join(ALL_METHODS)}")
    ap.add_argument("--folds", default=None, help="comma-separated folds to run (default all)")
    ap.add_argument("--report", action="store_true", help="score the cached folds, write metrics.json and report.md")
    ap.add_argument("--inner", action="store_true",
                    help="choose settings: train and score on an inner split of outer fold K's training images")
    ap.add_argument("--inner-fold", type=int, default=0, help="with --inner: K, the outer fold whose training images are split")
    ap.add_argument("--n-splits", type=int, default=3)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--imgsz", type=int, default=256)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--yolo-epochs", type=int, default=20)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--width", type=int, default=64, help="CLN neck channels")
    ap.add_argument("--cln-box", default="centre", choices=BOX_MODES, help="CLN box regression")
    ap.add_argument("--labels", type=int, choices=(8, 14), default=14, help="classification outputs")
    ap.add_argument("--extra", action="store_true", help="add images_256/ (no boxes) as classification data")
    ap.add_argument("--no-augment", action="store_true")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--force", action="store_true", help="recompute cached folds")
    args = ap.parse_args(argv)
    args.methods = [m for m in args.methods.split(",") if m]
    bad = [m for m in args.methods if m not in ALL_METHODS]
    if bad:
        ap.error(f"unknown method(s) {bad}; choose from {list(ALL_METHODS)}")
    args.folds = None if args.folds is None else [int(f) for f in args.folds.split(",")]
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.methods:
        run_methods(args)
    if args.report:
        report(args)
    if not args.methods and not args.report:
        print("nothing to do: pass --methods and/or --report")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
