"""Reading local PyTorch files (weights a user passes by path, checkpoints a stage wrote) with clear errors.

One place for what every model loader here needs: nothing is downloaded, a missing file says what to do,
an unreadable one (truncated, not a torch file, pickled code) says so in one line, and
``torch.load(weights_only=True)`` means loading never runs pickled code.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from pipeline.errors import PipelineError

SAVE_HINT = "save it with torch.save(model.state_dict())"


def read_torch_file(path: str | Path, missing: str, what: str = "a readable PyTorch file",
                    missing_error: type[Exception] = PipelineError, error: type[Exception] = PipelineError) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``.

    ``missing``: the whole message when there is no such file (say what to pass or run instead);
    ``what``: what the file should have been, for the unreadable case (``"<path>: not <what> (<why>)"``).
    The two error classes let each caller keep its own kind (a wrong setting vs a bad file)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise missing_error(missing)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 (zip, pickle and EOF errors vary; the user's fix is the same)
        why = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise error(f"{path}: not {what} ({why})") from None


def plain_state_dict(raw: Any, path: str | Path, hint: str = SAVE_HINT,
                     error: type[Exception] = PipelineError) -> dict:
    """The state dict inside ``raw``: ``raw`` itself or its ``"state_dict"`` entry, with DataParallel's
    ``module.`` prefix taken off every key; anything else is ``error`` naming the file."""
    if isinstance(raw, Mapping) and isinstance(raw.get("state_dict"), Mapping):
        raw = raw["state_dict"]
    if not isinstance(raw, Mapping):
        raise error(f"{path}: holds a {type(raw).__name__}, not a state dict; {hint}.")
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in raw.items()}
