"""``run.device`` parsed once for every model: ultralytics detectors and the torch classifier."""
from __future__ import annotations

from typing import Any

from pipeline.errors import ConfigError

_HELP = "use auto, cpu, a GPU id (0) or several (0,1)"


def parse_device(device: Any) -> str | list[int]:
    """``run.device`` -> ``"cpu"``, ``"mps"`` or a non-empty list of CUDA ids.

    ``auto`` is ``[0]`` when CUDA is present, else ``"cpu"``; ``0``, ``"0"``, ``"cuda"``, ``"cuda:1"``,
    ``"0,1"``, ``"[0, 1]"`` and ``[0, 1]`` name GPUs. Whether they exist is checked by :func:`require_gpus`.
    """
    if isinstance(device, (list, tuple)):
        parts = [str(d) for d in device]
    else:
        text = "auto" if device is None else str(device).strip().lower()
        if text in ("auto", ""):
            import torch

            return [0] if torch.cuda.is_available() else "cpu"
        if text in ("cpu", "mps"):
            return text
        if text == "cuda":
            return [0]
        parts = text.replace("cuda:", "").replace(" ", "").strip("[]").split(",")
    try:
        ids = [int(p) for p in parts if p != ""]
    except ValueError:
        raise ConfigError(f"run.device={device!r} is not a device: {_HELP}.") from None
    if not ids or any(i < 0 for i in ids):
        raise ConfigError(f"run.device={device!r} names no GPU: {_HELP}.")
    return ids


def require_gpus(ids: list[int], device: Any) -> None:
    """Raise a ConfigError unless CUDA is available with every GPU id in ``ids``."""
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(f"run.device={device!r} asks for a GPU but CUDA is not available; use run.device=cpu or auto.")
    n = torch.cuda.device_count()
    if any(i >= n for i in ids):
        raise ConfigError(f"run.device={device!r}: only {n} GPU(s) present (ids 0..{n - 1}).")


def resolve_threads(value: Any) -> int:
    """``run.threads`` -> compute threads for torch: ``0`` = every core of this machine (or of the
    job's CPU allocation, where the OS limits the process to fewer cores); negative is an error."""
    import os

    n = int(value)
    if n < 0:
        raise ConfigError(f"run.threads must be >= 0 (0 = all cores), got {n}.")
    if n:
        return n
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def use_threads(value: Any) -> int:
    """Give torch ``run.threads`` compute threads, also across ultralytics, which resets torch to
    ``cpu_count - 1`` threads (one on a 2-core machine) whenever it selects a CPU device. Returns n."""
    import sys

    import torch

    n = resolve_threads(value)
    torch.set_num_threads(n)
    tu = sys.modules.get("ultralytics.utils.torch_utils")
    if tu is not None and hasattr(tu, "NUM_THREADS"):
        tu.NUM_THREADS = n  # what its select_device passes to torch.set_num_threads
    return n
