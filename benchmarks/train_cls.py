"""Classifier throughput: DenseNet-121 training and inference images per second.

    .venv/bin/python benchmarks/train_cls.py --imgsz 128 --batch 8 --steps 5
    .venv/bin/python benchmarks/train_cls.py --devices cpu,0 --imgsz 384 --batch 32 --json bench.json
    .venv/bin/python benchmarks/train_cls.py --pngs 64 --imgsz 224   # also time the PNG -> tensor path

Model step: the same model (pipeline.classifier.build_model, grayscale front, 1 output) and the same
step as the train_cls stage (BCEWithLogits, AdamW, float16 autocast + GradScaler on CUDA), on random
tensors already in memory, so it measures the network alone. Inference: no_grad forward, with and
without the horizontal-flip TTA the stage uses. ``--pngs N`` also writes N synthetic 1024 x 1024
8-bit PNGs and times XrayDataset + DataLoader (read, letterbox, augment) without the model, which
tells whether loading or the network is the bottleneck. Warm-up steps are not timed (the first
CPU/cuDNN calls are several times slower). Devices default to the CPU plus GPU 0 when CUDA is
present. Nothing is downloaded.
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


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_model(device_spec: str, args) -> dict:
    import torch

    from pipeline.classifier import build_model, resolve_device

    device, _ = resolve_device(device_spec)
    torch.manual_seed(0)
    model = build_model(1).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    amp = device.type == "cuda" and not args.no_amp
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    crit = torch.nn.BCEWithLogitsLoss()
    x = torch.rand(args.batch, 1, args.imgsz, args.imgsz, device=device)
    y = (torch.rand(args.batch, 1, device=device) > 0.5).float()

    def train_step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=amp):
            logits = model(x)
        scaler.scale(crit(logits.float(), y)).backward()
        scaler.step(opt)
        scaler.update()

    def timed(fn, n):
        for _ in range(args.warmup):
            fn()
        _sync(device)
        start = time.perf_counter()
        for _ in range(n):
            fn()
        _sync(device)
        return time.perf_counter() - start

    model.train()
    t_train = timed(train_step, args.steps)
    model.eval()

    def infer(flip):
        with torch.no_grad(), torch.autocast(device_type="cuda", dtype=torch.float16, enabled=amp):
            p = torch.sigmoid(model(x))
            if flip:
                p = (p + torch.sigmoid(model(torch.flip(x, dims=[3])))) / 2
        return p

    t_inf = timed(lambda: infer(False), args.steps)
    t_tta = timed(lambda: infer(True), args.steps)
    n = args.batch * args.steps
    out = {"device": str(device), "imgsz": args.imgsz, "batch": args.batch, "steps": args.steps, "amp": amp,
           "train_img_per_s": n / t_train, "train_s_per_step": t_train / args.steps,
           "infer_img_per_s": n / t_inf, "infer_tta_img_per_s": n / t_tta}
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
        out["max_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
    return out


def bench_loading(args) -> dict:
    import cv2

    from pipeline.classifier import XrayDataset, build_augment, make_loader

    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        files = []
        for i in range(args.pngs):
            p = Path(tmp) / f"syn{i:04d}.png"
            cv2.imwrite(str(p), rng.normal(90, 25, (1024, 1024)).clip(0, 255).astype(np.uint8))
            files.append(p)
        ds = XrayDataset(files, np.zeros((len(files), 1)), args.imgsz, build_augment({}))
        loader = make_loader(ds, args.batch, args.workers, shuffle=True)
        start = time.perf_counter()
        n = sum(len(x) for x, _, _ in loader)
        secs = time.perf_counter() - start
    return {"what": "PNG 1024x1024 -> letterbox -> augment -> tensor", "imgsz": args.imgsz,
            "workers": args.workers, "images": n, "img_per_s": n / secs}


def main(argv=None) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--imgsz", type=int, default=224)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--steps", type=int, default=5, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--devices", default=None, help="comma list of cpu / GPU ids; default cpu (+0 with CUDA)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-amp", action="store_true", help="float32 on GPU too")
    p.add_argument("--pngs", type=int, default=0, help="also time the PNG loading path on N synthetic PNGs")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers for --pngs")
    p.add_argument("--json", default=None, help="write the results here too")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.devices.split(",") if args.devices else ["cpu"] + (["0"] if torch.cuda.is_available() else [])
    results = {"torch": torch.__version__, "cpu_threads": torch.get_num_threads(), "model": [], "loading": None}
    for d in devices:
        r = bench_model(d.strip(), args)
        results["model"].append(r)
        print(f"{r['device']:>7}  imgsz {r['imgsz']}  batch {r['batch']}:  train {r['train_img_per_s']:8.1f} img/s "
              f"({r['train_s_per_step']:.3f} s/step)  infer {r['infer_img_per_s']:8.1f} img/s  "
              f"infer+flip TTA {r['infer_tta_img_per_s']:8.1f} img/s")
    if args.pngs:
        r = bench_loading(args)
        results["loading"] = r
        print(f"loading  {r['what']}, imgsz {r['imgsz']}, workers {r['workers']}: {r['img_per_s']:.1f} img/s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
