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
