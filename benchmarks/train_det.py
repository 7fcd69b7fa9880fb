"""Detector throughput: training and prediction images per second on synthetic chest-like images.

    .venv/bin/python benchmarks/train_det.py --model yolov8n.yaml --imgsz 256 --images 64 --epochs 2
    .venv/bin/python benchmarks/train_det.py --devices cpu,0 --imgsz 640 --batch 16 --json bench.json

Generates noisy grey PNGs with bright rectangles/ellipses (2 classes) and their YOLO labels in a
temporary folder, trains with the same offline-safe wrapper as the train_det stage, and times the
training epochs alone (ultralytics callbacks around each epoch; validation excluded), then times
batched prediction (pipeline.detector.predict_images, boxes mapped to original pixels, no TTA).
Devices default to the CPU plus GPU 0 when CUDA is present. Nothing is downloaded.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

import pipeline  # noqa: E402,F401  (offline environment first)


def make_synthetic(folder: Path, n: int, size: int, seed: int = 0) -> list[Path]:
    """n PNGs of size x size with 1-3 objects each, YOLO labels beside them under labels/."""
    import cv2

    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        im = rng.normal(70, 15, (size, size)).clip(0, 255).astype(np.uint8)
        lines = []
        for _ in range(int(rng.integers(1, 4))):
            cls = int(rng.integers(0, 2))
            w, h = (int(v) for v in rng.integers(size // 10, size // 4, 2))
            x0, y0 = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
            if cls == 0:
                cv2.rectangle(im, (x0, y0), (x0 + w - 1, y0 + h - 1), 220, -1)
            else:
                cv2.ellipse(im, (x0 + w // 2, y0 + h // 2), (w // 2, h // 2), 0, 0, 360, 200, -1)
            lines.append(f"{cls} {(x0 + w / 2) / size:.6f} {(y0 + h / 2) / size:.6f} {w / size:.6f} {h / size:.6f}\n")
        path = folder / "images" / f"syn{i:05d}.png"
        cv2.imwrite(str(path), im)
        (folder / "labels" / f"syn{i:05d}.txt").write_text("".join(lines))
        paths.append(path)
    return paths


def bench_device(device, args, images: list[Path], work: Path) -> dict:
    from pipeline.detector import (build_train_args, check_model_spec, import_ultralytics, offline_trainer_class,
                                   predict_images, write_fold_lists)

    from pipeline.paths import RunPaths

    paths, name = RunPaths(run_dir=work), f"dev_{str(device).replace(',', '_')}"
    det_dir = paths.det_dir(name, 0)
    data_yaml = write_fold_lists(paths, name, 0, images, images[: max(2, len(images) // 8)], {0: "rect", 1: "ellipse"})
    train_args = build_train_args(data_yaml=data_yaml, det_dir=det_dir, epochs=args.epochs, imgsz=args.imgsz,
                                  batch=args.batch, device=device, seed=0, workers=args.workers,
                                  extra={"val": False, "mosaic": 1.0})
    YOLO = import_ultralytics()
    model = YOLO(check_model_spec(args.model))
    epoch_times: list[float] = []
    marks: dict = {}

    def _sync():
        if device != "cpu":
            import torch

            torch.cuda.synchronize()

    model.add_callback("on_train_epoch_start", lambda trainer: (_sync(), marks.__setitem__("t", time.perf_counter())))
    model.add_callback("on_train_epoch_end",
                       lambda trainer: (_sync(), epoch_times.append(time.perf_counter() - marks["t"])))
    start = time.perf_counter()
    model.train(trainer=offline_trainer_class(), **train_args)
    total = time.perf_counter() - start
    steady = epoch_times[1:] or epoch_times  # the first epoch includes dataloader start-up
    train_ips = len(images) / float(np.mean(steady))

    predictor = YOLO(str(det_dir / "weights" / "last.pt"))
    items = [(p.stem, p, args.imgsz * 2, args.imgsz * 2) for p in images]
    predict_images(predictor, items[: args.predict_batch], imgsz=args.imgsz, conf=0.001, iou=0.5, max_det=100,
                   batch=args.predict_batch, device=device, tta_flip=False, desc="warm-up")
    _sync()
    t0 = time.perf_counter()
    predict_images(predictor, items, imgsz=args.imgsz, conf=0.001, iou=0.5, max_det=100,
                   batch=args.predict_batch, device=device, tta_flip=False, desc="predict")
    _sync()
    pred_s = time.perf_counter() - t0
    return {"device": str(device), "model": args.model, "imgsz": args.imgsz, "batch": args.batch,
            "images": len(images), "epochs": args.epochs, "train_images_per_s": round(train_ips, 2),
            "train_wall_s": round(total, 1), "predict_images_per_s": round(len(images) / pred_s, 2),
            "predict_ms_per_image": round(1000 * pred_s / len(images), 1)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="yolov8n.yaml", help="model YAML or local .pt (default yolov8n.yaml)")
    p.add_argument("--imgsz", type=int, default=256, help="training and inference size (default 256)")
    p.add_argument("--images", type=int, default=64, help="synthetic training images (default 64)")
    p.add_argument("--epochs", type=int, default=2, help="epochs; the first is excluded from the rate when >1")
    p.add_argument("--batch", type=int, default=16, help="training batch size (default 16)")
    p.add_argument("--predict-batch", type=int, default=16, help="images per prediction batch (default 16)")
    p.add_argument("--workers", type=int, default=2, help="dataloader workers (default 2)")
    p.add_argument("--devices", default="auto", help="auto (cpu, plus 0 when CUDA is present) or e.g. cpu,0")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = p.parse_args(argv)

    import torch

    if args.devices == "auto":
        devices = ["cpu"] + ([0] if torch.cuda.is_available() else [])
    else:
        devices = [d if d == "cpu" else int(d) for d in args.devices.split(",")]
    results = []
    with tempfile.TemporaryDirectory(prefix="bench_det_") as tmp:
        work = Path(tmp)
        images = make_synthetic(work / "data", args.images, args.imgsz)
        for device in devices:
            results.append(bench_device(device, args, images, work))
    print(f"\n{'device':<8}{'model':<16}{'imgsz':>6}{'batch':>6}{'train img/s':>13}{'predict img/s':>15}{'ms/img':>8}")
    for r in results:
        print(f"{r['device']:<8}{r['model']:<16}{r['imgsz']:>6}{r['batch']:>6}{r['train_images_per_s']:>13}"
              f"{r['predict_images_per_s']:>15}{r['predict_ms_per_image']:>8}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
