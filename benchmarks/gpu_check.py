"""Throughput of both models on synthetic full-size data, for benchmarks/gpu_check.sh.

YOLOv8 (ultralytics, through the pipeline's offline trainer) at ``--det-imgsz`` and DenseNet-121 (the
pipeline's classifier) at ``--cls-imgsz``, each for a fixed amount of work with mixed precision on CUDA;
prints images per second for training and prediction, and for the classifier the share of each step
spent waiting for the data loader (the GPU is idle then). ``--cpu`` runs the same code at tiny sizes on
the CPU, so the script is exercised by the test suite on machines without a GPU.

    .venv/bin/python benchmarks/gpu_check.py --json out.json              # on a GPU machine (defaults)
    .venv/bin/python benchmarks/gpu_check.py --cpu --json out.json        # the CPU mode (seconds)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def synthetic_images(root: Path, n: int, size: int, seed: int = 0) -> list[Path]:
    """n grey PNGs of size x size with bright blobs and YOLO labels beside them (images/, labels/)."""
    import cv2

    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    out = []
    base = cv2.GaussianBlur(rng.normal(90, 25, (size, size)).astype(np.float32), (0, 0), size / 64)
    for i in range(n):
        im = base + rng.normal(0, 8, base.shape).astype(np.float32)
        lines = []
        for _ in range(1 + i % 3):
            w, h = rng.uniform(0.05, 0.25, 2)
            cx, cy = rng.uniform(0.2, 0.8, 2)
            cv2.ellipse(im, (int(cx * size), int(cy * size)), (int(w * size / 2), int(h * size / 2)), 0, 0, 360, 220, -1)
            lines.append(f"{i % 2} {cx:.5f} {cy:.5f} {w:.5f} {h:.5f}")
        p = root / "images" / f"im{i:04d}.png"
        cv2.imwrite(str(p), np.clip(im, 0, 255).astype(np.uint8))
        (root / "labels" / f"im{i:04d}.txt").write_text("\n".join(lines) + "\n")
        out.append(p)
    return out


def detector(images: list[Path], root: Path, imgsz: int, batch: int, epochs: int, model: str, device) -> dict:
    import yaml

    from pipeline.detector import build_train_args, import_ultralytics, offline_trainer_class, predict_images

    YOLO = import_ultralytics(0)
    (root / "train.txt").write_text("".join(f"{p.resolve()}\n" for p in images))
    data = root / "data.yaml"
    data.write_text(yaml.safe_dump({"path": str(root), "train": str(root / "train.txt"), "val": str(root / "train.txt"),
                                    "nc": 2, "names": {0: "a", 1: "b"}}))
    args = build_train_args(data_yaml=data, det_dir=root / "det" / "fold0", epochs=epochs, imgsz=imgsz, batch=batch,
                            device=device, seed=0, workers=4 if device != "cpu" else 1,
                            extra={"val": False, "nbs": batch, "warmup_epochs": 0})
    t0 = time.perf_counter()
    YOLO(model).train(trainer=offline_trainer_class(), **args)
    train_s = time.perf_counter() - t0
    net = YOLO(str(root / "det" / "fold0" / "weights" / "last.pt"))
    items = [(p.stem, p, imgsz, imgsz) for p in images]
    predict_images(net, items[:batch], imgsz=imgsz, conf=0.01, iou=0.5, max_det=100, batch=batch, device=device,
                   tta_flip=False, desc="warm-up")
    t0 = time.perf_counter()
    predict_images(net, items, imgsz=imgsz, conf=0.01, iou=0.5, max_det=100, batch=batch, device=device,
                   tta_flip=True, desc="predict")
    pred_s = time.perf_counter() - t0
    return {"model": model, "imgsz": imgsz, "batch": batch, "images": len(images), "epochs": epochs,
            "train_images_per_s": round(len(images) * epochs / train_s, 2),
            "predict_images_per_s_with_flip": round(len(images) / pred_s, 2), "train_seconds": round(train_s, 1)}


def classifier(images: list[Path], imgsz: int, batch: int, steps: int, device_spec: str, workers: int) -> dict:
    import torch

    from pipeline import classifier as C

    device, _ = C.torch_device(device_spec)
    y = np.array([[i % 2] for i in range(len(images))], np.float32)
    ds = C.XrayDataset(images, y, imgsz, C.build_augment({}))
    loader = C.make_loader(ds, batch, workers, shuffle=True, device_type=device.type)
    model = C.build_model(1).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    wait = compute = 0.0
    done = 0
    model.train()
    t_total = time.perf_counter()
    while done < steps:
        t_wait = time.perf_counter()
        for x, t, _ in loader:
            got = time.perf_counter()
            x, t = x.to(device, non_blocking=True), t.to(device, non_blocking=True)
            with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=amp):
                loss = loss_fn(model(x).float(), t)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            if device.type == "cuda":
                torch.cuda.synchronize()
            end = time.perf_counter()
            if done > 0:  # the first step pays for start-up (workers, cuDNN autotune)
                wait += got - t_wait
                compute += end - got
            done += 1
            t_wait = time.perf_counter()
            if done >= steps:
                break
    total = time.perf_counter() - t_total
    t0 = time.perf_counter()
    C.predict_probs(model, C.XrayDataset(images, None, imgsz), batch * 2, workers, device, tta_flip=True, amp=amp)
    pred_s = time.perf_counter() - t0
    busy = compute / max(wait + compute, 1e-9)
    return {"imgsz": imgsz, "batch": batch, "steps": steps, "workers": workers,
            "train_images_per_s": round(steps * batch / total, 2),
            "predict_images_per_s_with_flip": round(len(images) / pred_s, 2),
            "loader_wait_share": round(1 - busy, 3), "compute_share": round(busy, 3)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu", action="store_true", help="tiny sizes on the CPU (what the test suite runs)")
    ap.add_argument("--work", default="/tmp/cxr_gpu_check", help="folder for the synthetic images")
    ap.add_argument("--json", default=None, help="also write the figures here")
    ap.add_argument("--det-model", default="yolov8s.yaml")
    a = ap.parse_args(argv)
    cpu = a.cpu
    size, n = (96, 8) if cpu else (2048, 256)
    det_imgsz, det_batch, det_epochs = (64, 4, 1) if cpu else (1024, 16, 2)
    cls_imgsz, cls_batch, cls_steps = (64, 4, 3) if cpu else (384, 32, 60)
    device = "cpu" if cpu else 0
    root = Path(a.work)
    t0 = time.perf_counter()
    images = synthetic_images(root / "data", n, size)
    out = {"device": "cpu" if cpu else _gpu_name(), "synthetic_image_size": size, "images": n,
           "make_data_seconds": round(time.perf_counter() - t0, 1)}
    out["detector"] = detector(images, root, det_imgsz, det_batch, det_epochs, a.det_model, device)
    out["classifier"] = classifier(images, cls_imgsz, cls_batch, cls_steps, "cpu" if cpu else "0",
                                   0 if cpu else 8)
    print(json.dumps(out, indent=2))
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))
    return 0


def _gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA"


if __name__ == "__main__":
    sys.exit(main())
