"""Seconds per training step of the localise stage's networks, NCHW against channels_last, in one run.

    .venv/bin/python benchmarks/localise_step.py                       # ResNet-18 at 192 px, batch 16, 2 threads
    .venv/bin/python benchmarks/localise_step.py --backbone densenet121 --imgsz 256 --steps 5

For each network of ``pipeline.models`` (the plain classifier behind Grad-CAM, multiscale CAM, CLN with
either box regression) one training step (forward, loss, backward, AdamW) on random grey images with
random boxes, median of ``--steps`` after a warm-up step, first in the default memory format, then with
model and inputs in ``torch.channels_last``; prints both and the ratio (above 1: channels_last is faster).
A ratio, not a wall time: it holds on a slow day as on a fast one. The localise stage trains in the
default format (channels_last was no faster here, docs/notes/localisation.md).
"""
from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

import pipeline  # noqa: E402,F401  (offline environment first)


def _batch(method: str, box_mode: str, imgsz: int, n: int, seed: int = 0) -> dict:
    import torch

    from pipeline.models.cln import encode_targets

    rng = np.random.default_rng(seed)
    out = {"x": torch.rand(n, 1, imgsz, imgsz, generator=torch.Generator().manual_seed(seed)),
           "labels": torch.from_numpy((rng.random((n, 14)) < 0.3).astype(np.float32)), "label_mask": torch.ones(n, 14)}
    if method == "cln":
        items = []
        for _ in range(n):
            xy = rng.uniform(0, imgsz * 0.6, 2)
            box = np.r_[xy, xy + rng.uniform(8, imgsz * 0.4, 2)][None]
            items.append(encode_targets(box, [int(rng.integers(8))], np.zeros(8), imgsz, box_mode=box_mode))
        out.update({k: torch.from_numpy(np.stack([t[k] for t in items])) for k in items[0]})
    return out


def step_seconds(method: str, box_mode: str, backbone: str, imgsz: int, batch: int, steps: int,
                 channels_last: bool) -> float:
    import torch

    from pipeline.models import fit as F
    from pipeline.models import runners as R

    torch.manual_seed(0)
    s = R.MethodSettings(backbone=backbone, imgsz=imgsz, cln_box=box_mode)
    net = R.build(method, 14, s).train()
    b = _batch(method, box_mode, imgsz, batch)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        b["x"] = b["x"].contiguous(memory_format=torch.channels_last)
    loss_fn = F.cln_loss_fn() if method == "cln" else F.classification_loss()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss, _ = loss_fn(net, b)
        loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> int:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--imgsz", type=int, default=192)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--methods", default="gradcam,multiscale,cln:centre,cln:dense")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.backbone} at {args.imgsz} px, batch {args.batch}")
    ratios = []
    for spec in args.methods.split(","):
        method, _, box_mode = spec.partition(":")
        run = functools.partial(step_seconds, method, box_mode or "centre", args.backbone, args.imgsz, args.batch,
                                args.steps)
        nchw, cl = run(False), run(True)
        ratios.append(nchw / cl)
        print(f"{spec:<12} NCHW {nchw:6.2f} s   channels_last {cl:6.2f} s   speed-up {nchw / cl:4.2f}x", flush=True)
    print(f"mean speed-up of channels_last: {statistics.mean(ratios):.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
