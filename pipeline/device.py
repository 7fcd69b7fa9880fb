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
