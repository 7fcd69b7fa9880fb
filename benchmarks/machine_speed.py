"""How fast this machine trains today, against the per-step figures the issues quote.

    .venv/bin/python benchmarks/machine_speed.py              # 2 threads, 3 timed steps per model
    .venv/bin/python benchmarks/machine_speed.py --threads 1 --steps 5

The same 2-core machine ran the same training step up to 3x slower on some days than on others (see
docs/notes/session_2026-12-01c.md). A wall-time figure (a recipe's minutes, the demo's seconds) means little
without the machine's speed on the day; this prints it: seconds per training step (forward, backward,
AdamW) of torchvision networks on 8 random images, BCE over 14 outputs, median of ``--steps`` after one
warm-up step, and the ratio to the figures measured when the issues were written (issue 13: "one training
step of 8 images with 2 threads: DenseNet-121 at 128 px 0.49 s, at 256 px 1.76 s; ResNet-18 at 256 px
0.74 s"). A ratio of 2 means: expect wall times about twice what those figures predict.
"""
from __future__ import annotations

import argparse
import statistics
import time

REFERENCE = [("resnet18", 256, 0.74), ("densenet121", 128, 0.49), ("densenet121", 256, 1.76)]  # 2 threads


def step_seconds(arch: str, size: int, steps: int, batch: int = 8) -> float:
    import torch
    import torchvision

    torch.manual_seed(0)
    net = getattr(torchvision.models, arch)(weights=None, num_classes=14)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x, y = torch.randn(batch, 3, size, size), torch.rand(batch, 14)
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.binary_cross_entropy_with_logits(net(x), y).backward()
        opt.step()
        if i:  # the first step allocates and warms up
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {time.strftime('%Y-%m-%d %H:%M %Z')}")
    ratios = []
    for arch, size, ref in REFERENCE:
        sec = step_seconds(arch, size, args.steps)
        note = ""
        if args.threads == 2:
            ratios.append(sec / ref)
            note = f"  reference {ref:.2f} s, ratio {sec / ref:.2f}"
        print(f"{arch} at {size} px, 8 images: {sec:.2f} s per training step{note}")
    if ratios:
        print(f"machine slowdown against the issues' figures: {statistics.mean(ratios):.2f}x (mean ratio)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
