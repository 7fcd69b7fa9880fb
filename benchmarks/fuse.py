"""Weighted-box fusion at competition scale: seconds per image of ``fuse_detections``, 1 and 2 workers.

    flock /tmp/cxr-heavy.lock .venv/bin/python benchmarks/fuse.py                  # 3,000 images x 10 sources x 100 boxes
    .venv/bin/python benchmarks/fuse.py --images 200 --ref-images 50 --workers 1   # a quick look
    .venv/bin/python benchmarks/fuse.py --boxes 300 --json fuse.json

The detections are synthetic but shaped like a YOLO model's on VinBigData test images (original pixels
of ~2000-3000 x 2300-3400 images, 14 classes): a few objects per image (none on some), each found by
most sources with several jittered boxes whose score falls with their overlap to the object, a few
"hard negative" regions that every source fires on with low scores, and background false positives
filling each source up to ``--boxes`` (a detector run at conf 0.001 with max_det hits its cap). Scores
and coordinates are float32, as a detector writes them. 10 sources = 5 folds x (original, flipped).

Settings are configs/vinbigdata.yaml's ``fuse`` keys (WBF, iou_thr 0.4, skip_box_thr 0, conf_type avg).
Timed: ``fuse_detections`` (the batched engine) over all images with each worker count; the
reference engine (ensemble-boxes' ``weighted_boxes_fusion``, one call per image, the pipeline's path
before the batched engine) over the first ``--ref-images`` images, plus the library's calls alone on
prepared per-image lists; and an equality check of the two engines' tables on those images.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import pipeline  # noqa: E402,F401  (offline environment first)

N_CLASSES = 14


def _jitter(rng, base: np.ndarray, n: int, spread: float) -> np.ndarray:
    """``n`` boxes around each row of ``base`` (k, 4) xyxy: centre shifted by ``spread`` x size,
    width/height scaled log-normally. Returns (k * n, 4), rows of one base box consecutive."""
    base = np.repeat(base, n, axis=0)
    cx, cy = (base[:, 0] + base[:, 2]) / 2, (base[:, 1] + base[:, 3]) / 2
    w, h = base[:, 2] - base[:, 0], base[:, 3] - base[:, 1]
    cx = cx + rng.normal(0, spread, len(base)) * w
    cy = cy + rng.normal(0, spread, len(base)) * h
    w = w * np.exp(rng.normal(0, spread, len(base)))
    h = h * np.exp(rng.normal(0, spread, len(base)))
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)


def _iou_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of a[i] with b[i]."""
    iw = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = iw * ih
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / (area(a) + area(b) - inter)


def _random_boxes(rng, n: int, width: float, height: float, small: float = 0.03, large: float = 0.45) -> np.ndarray:
    """``n`` boxes anywhere in the image, side log-uniform in [small, large] x the image side."""
    w = width * np.exp(rng.uniform(np.log(small), np.log(large), n))
    h = w * np.exp(rng.uniform(np.log(0.5), np.log(2.0), n)) * height / width
    x = rng.uniform(-0.05 * width, width - 0.5 * w)  # some boxes cross the edge: clipped later
    y = rng.uniform(-0.05 * height, height - 0.5 * h)
    return np.stack([x, y, x + w, y + h], axis=1)


def clustered_image(rng, width: float, height: float, n_sources: int = 10, boxes_per_source: int = 100,
                    n_classes: int = N_CLASSES, mean_objects: float = 2.5, mean_hard: float = 20.0,
                    mean_per_site: float = 3.0, miss_rate: float = 0.15, confuse_rate: float = 0.3):
    """Detections of one image by ``n_sources`` sources: a list of (boxes (n, 4) xyxy pixels, scores,
    labels), each source exactly ``boxes_per_source`` boxes (the highest scores of what it found).

    Sites: ``mean_objects`` true objects and ``mean_hard`` hard negatives (regions every source fires
    on at low scores) per image, Poisson. Each source misses a site with ``miss_rate``, else puts
    1 + Poisson(``mean_per_site``) jittered boxes on it, scored (site confidence) x IoU(box, site)^2 x
    log-normal noise; ``confuse_rate`` of them carry another class at half the score. Background
    boxes anywhere, scored near the 0.001 floor, fill each source to its cap."""
    n_obj, n_hard = rng.poisson(mean_objects), rng.poisson(mean_hard)
    sites = _random_boxes(rng, n_obj + n_hard, width, height, 0.05, 0.45)
    site_cls = rng.integers(0, n_classes, len(sites))
    site_q = np.r_[rng.uniform(0.3, 0.95, n_obj), rng.uniform(0.01, 0.25, n_hard)]  # how sure a detector is
    out = []
    for _ in range(n_sources):
        per_site = (1 + rng.poisson(mean_per_site, len(sites))) * (rng.random(len(sites)) > miss_rate)
        idx = np.repeat(np.arange(len(sites)), per_site)
        found = _jitter(rng, sites[idx], 1, 0.06)
        score = site_q[idx] * _iou_rows(found, sites[idx]) ** 2 * np.exp(rng.normal(0, 0.2, len(idx)))
        cls = site_cls[idx].copy()
        confused = rng.random(len(idx)) < confuse_rate  # the same place, scored for another class
        cls[confused] = rng.integers(0, n_classes, confused.sum())
        score[confused] *= 0.5
        n_bg = max(boxes_per_source - len(idx), 0) + boxes_per_source // 10
        bg = _random_boxes(rng, n_bg, width, height)
        boxes = np.concatenate([found, bg])
        score = np.concatenate([score, 0.001 + rng.exponential(0.003, n_bg)])
        cls = np.concatenate([cls, rng.integers(0, n_classes, n_bg)])
        top = np.argsort(-score, kind="stable")[:boxes_per_source]
        boxes = np.clip(boxes[top], 0, [width, height, width, height]).astype(np.float32).astype(np.float64)
        out.append((boxes, np.clip(score[top], 0.001, 1.0).astype(np.float32).astype(np.float64), cls[top]))
    return out


def clustered_detections(n_images: int, n_sources: int = 10, boxes_per_source: int = 100, seed: int = 0,
                         **kw) -> tuple[list[pd.DataFrame], pd.DataFrame]:
    """``n_sources`` detections tables (pipeline contract, original pixels) and the size table."""
    rng = np.random.default_rng(seed)
    ids = [f"img{i:05d}" for i in range(n_images)]
    width = rng.integers(2000, 3000, n_images).astype(float)
    height = rng.integers(2300, 3400, n_images).astype(float)
    rows: list[list] = [[] for _ in range(n_sources)]
    for image_id, w, h in zip(ids, width, height):
        for s, (b, sc, lab) in enumerate(clustered_image(rng, w, h, n_sources, boxes_per_source, **kw)):
            rows[s].append((np.full(len(sc), image_id), lab, sc, b))
    frames = []
    for per_image in rows:
        img, lab, sc, b = (np.concatenate(x) for x in zip(*per_image))
        frames.append(pd.DataFrame({"image_id": img, "class_id": lab.astype("int64"), "score": sc,
                                    "x_min": b[:, 0], "y_min": b[:, 1], "x_max": b[:, 2], "y_max": b[:, 3]}))
    return frames, pd.DataFrame({"image_id": ids, "width": width, "height": height})


def _cpu() -> np.ndarray:
    """CPU seconds of this process and of its finished children (pool workers)."""
    t = os.times()
    return np.array([t.user + t.system, t.children_user + t.children_system])


def _timed(fn, cpu: bool = False):
    """(result, wall seconds) or, with ``cpu``, (result, wall seconds, [own, children's] CPU seconds)."""
    t0, c0 = time.perf_counter(), _cpu()
    out = fn()
    wall = time.perf_counter() - t0
    return (out, wall, _cpu() - c0) if cpu else (out, wall)


def library_calls(frames, sizes, image_ids, opts) -> tuple[float, float]:
    """Wall and CPU seconds of ensemble-boxes' weighted_boxes_fusion alone, one call per image, on lists prepared
    beforehand (normalised boxes; preparing them is not timed)."""
    from ensemble_boxes import weighted_boxes_fusion

    size = sizes.set_index("image_id")
    inputs = []
    for image_id in image_ids:
        w, h = size.loc[image_id, ["width", "height"]]
        per = [f[f["image_id"] == image_id] for f in frames]
        inputs.append(([np.clip(p[["x_min", "y_min", "x_max", "y_max"]].to_numpy() / [w, h, w, h], 0, 1) for p in per],
                       [p["score"].to_numpy() for p in per], [p["class_id"].to_numpy(float) for p in per]))
    def run():
        for b, s, lab in inputs:
            weighted_boxes_fusion(b, s, lab, iou_thr=opts["iou_thr"], skip_box_thr=opts["skip_box_thr"],
                                  conf_type=opts["conf_type"])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, wall, cpu = _timed(run, cpu=True)
    return wall, cpu[0]


def compare(a: pd.DataFrame, b: pd.DataFrame) -> dict:
    """Equality of two fused tables: same rows in the same order, max absolute differences."""
    same_shape = a.shape == b.shape and (a["image_id"].to_numpy() == b["image_id"].to_numpy()).all()
    if not same_shape:
        return {"equal": False, "rows": [len(a), len(b)]}
    box = ["x_min", "y_min", "x_max", "y_max"]
    d_box = float(np.abs(a[box].to_numpy() - b[box].to_numpy()).max()) if len(a) else 0.0
    d_score = float(np.abs(a["score"].to_numpy() - b["score"].to_numpy()).max()) if len(a) else 0.0
    labels = bool((a["class_id"].to_numpy() == b["class_id"].to_numpy()).all())
    return {"equal": bool(labels and d_box == 0.0 and d_score == 0.0), "rows": len(a), "labels_equal": labels,
            "max_abs_box_px": d_box, "max_abs_score": d_score}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=3000, help="test images (VinBigData: 3,000)")
    ap.add_argument("--sources", type=int, default=10, help="sources per image (5 folds x flip = 10)")
    ap.add_argument("--boxes", type=int, default=100, help="boxes per source and image")
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts to time")
    ap.add_argument("--ref-images", type=int, default=300,
                    help="images (the first ones) to time the ensemble-boxes engine on and to compare; 0 = skip")
    ap.add_argument("--config", default=str(Path(__file__).resolve().parent.parent / "configs" / "vinbigdata.yaml"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args(argv)

    from pipeline.config import load_config
    from pipeline.fusion import fuse_detections

    fc = load_config(args.config).fuse
    opts = dict(method=fc.method, iou_thr=float(fc.iou_thr), skip_box_thr=float(fc.skip_box_thr),
                conf_type=fc.conf_type)
    (frames, sizes), t_gen = _timed(lambda: clustered_detections(args.images, args.sources, args.boxes, args.seed))
    n_rows = sum(len(f) for f in frames)
    print(f"data: {args.images} images x {args.sources} sources x {args.boxes} boxes = {n_rows:,} boxes "
          f"(generated in {t_gen:.1f} s); settings from {Path(args.config).name}: {opts}")
    result: dict = {"images": args.images, "sources": args.sources, "boxes_per_source": args.boxes,
                    "settings": opts, "runs": []}
    fused = None
    for n in [int(x) for x in args.workers.split(",")]:
        load = os.getloadavg()[0]
        fused, sec, cpu = _timed(lambda: fuse_detections(frames, sizes, workers=n, **opts), cpu=True)
        run = {"engine": "batched", "workers": n, "images": args.images, "seconds": round(sec, 3),
               "ms_per_image": round(1000 * sec / args.images, 3), "cpu_main_s": round(cpu[0], 3),
               "cpu_workers_s": round(cpu[1], 3), "load_before": round(load, 2)}
        result["runs"].append(run)
        print(f"batched engine, {n} worker(s): {sec:.2f} s for {args.images} images = "
              f"{run['ms_per_image']:.2f} ms/image; CPU s: {cpu[0]:.2f} main process + {cpu[1]:.2f} pool workers; "
              f"load average {load:.1f} before ({len(fused):,} fused boxes, "
              f"{n_rows / max(len(fused), 1):.2f} input boxes per fused box)")
    if bool(fc.source_nms):  # the pipeline's default: NMS inside each source first (pipeline.source_nms)
        _, sec, _ = _timed(lambda: fuse_detections(frames, sizes, workers=1, source_nms=True, **opts), cpu=True)
        result["source_nms_1_worker_seconds"] = round(sec, 3)
        print(f"with fuse.source_nms (the config's setting), 1 worker: {sec:.2f} s = "
              f"{1000 * sec / args.images:.2f} ms/image")
    one = {r["workers"]: r["seconds"] for r in result["runs"]}
    if 1 in one and 2 in one:
        result["speedup_2_workers"] = round(one[1] / one[2], 2)
        print(f"2 workers vs 1: {result['speedup_2_workers']:.2f}x")

    if args.ref_images > 0:
        ids = sorted(sizes["image_id"])[:args.ref_images]
        sub = [f[f["image_id"].isin(ids)].reset_index(drop=True) for f in frames]
        ref, t_ref, c_ref = _timed(lambda: fuse_detections(sub, sizes, workers=1, engine="ensemble_boxes", **opts),
                                   cpu=True)
        new, t_new, c_new = _timed(lambda: fuse_detections(sub, sizes, workers=1, **opts), cpu=True)
        t_lib, c_lib = library_calls(sub, sizes, ids, opts)
        k = len(ids)
        ms = lambda s: round(1000 * s / k, 3)  # noqa: E731
        # CPU time of this one process: the fairer ratio on a shared machine (wall time is printed too)
        result["reference"] = {
            "images": k,
            "ensemble_boxes_engine_ms_per_image": {"wall": ms(t_ref), "cpu": ms(c_ref[0])},
            "library_calls_only_ms_per_image": {"wall": ms(t_lib), "cpu": ms(c_lib)},
            "batched_engine_ms_per_image": {"wall": ms(t_new), "cpu": ms(c_new[0])},
            "speedup_vs_ensemble_boxes_engine_cpu": round(c_ref[0] / c_new[0], 1),
            "speedup_vs_library_calls_only_cpu": round(c_lib / c_new[0], 1),
            "ensemble_boxes_engine_3000_images_cpu_s": round(3000 * c_ref[0] / k, 1),
            "equality": compare(ref, new)}
        r = result["reference"]
        print(f"on the first {k} images, 1 worker, ms/image CPU (wall): ensemble-boxes engine "
              f"{ms(c_ref[0]):.2f} ({ms(t_ref):.2f}), its weighted_boxes_fusion calls alone {ms(c_lib):.2f} "
              f"({ms(t_lib):.2f}), batched engine {ms(c_new[0]):.2f} ({ms(t_new):.2f}): "
              f"{r['speedup_vs_ensemble_boxes_engine_cpu']}x faster than the ensemble-boxes engine, "
              f"{r['speedup_vs_library_calls_only_cpu']}x than the library calls alone; the ensemble-boxes "
              f"engine would need {r['ensemble_boxes_engine_3000_images_cpu_s']:.0f} CPU s for 3,000 images")
        print(f"equality on those images: {r['equality']}")
        if not r["equality"]["equal"]:
            print("ERROR: the batched engine differs from ensemble-boxes", file=sys.stderr)
            return 1
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
