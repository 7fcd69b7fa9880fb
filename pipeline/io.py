"""Atomic file writes: a reader (or a resumed run) never sees half a file."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def _atomic(path: Path, write: Callable[[Path], None]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    return _atomic(path, lambda p: p.write_bytes(data))


def write_text_atomic(path: Path, text: str) -> Path:
    return _atomic(path, lambda p: p.write_text(text))


def write_csv_atomic(df, path: Path, **kwargs) -> Path:
    """``DataFrame.to_csv`` to a temporary file, then rename: never a truncated CSV."""
    kwargs.setdefault("index", False)
    return _atomic(path, lambda p: df.to_csv(p, **kwargs))


def write_with(path: Path, writer: Callable[[Path], None]) -> Path:
    """Run ``writer(tmp_path)`` (which must write a file there) and move the result into place."""
    return _atomic(path, writer)


def json_safe(obj):
    """A value ready for strict JSON: NaN/inf -> None, numpy scalars and arrays -> Python, keys -> str,
    Paths -> str. The one sanitiser every metrics file goes through."""
    import math
    from pathlib import PurePath

    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):  # numpy scalar or array
        return json_safe(obj.tolist())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, PurePath):
        return str(obj)
    return obj


def write_json_atomic(path: Path, obj, indent: int = 2) -> Path:
    """``obj`` through :func:`json_safe`, written as JSON atomically."""
    import json

    return write_text_atomic(path, json.dumps(json_safe(obj), indent=indent, allow_nan=False))
