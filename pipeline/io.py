"""Atomic file writes: a reader (or a resumed run) never sees half a file; :func:`locked` for a file that
concurrent jobs of one run rewrite from each other's outputs."""
from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable


def make_dirs(folder: Path) -> Path:
    """``folder`` and its parents (``mkdir -p``). When something is in the way -- a symbolic link to a folder
    that is gone (e.g. a ``.cache`` or ``runs`` link), or a file where a folder should be -- a PipelineError
    names it and says what to do, instead of mkdir's bare FileExistsError. Nothing extra when mkdir succeeds."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        from pipeline.errors import PipelineError

        for part in [*reversed(folder.parents), folder]:
            if part.is_symlink() and not part.exists():
                raise PipelineError(f"{part} is a symbolic link to {os.readlink(part)}, which does not exist: "
                                    f"create that folder, or remove the link") from exc
            if part.exists() and not part.is_dir():
                raise PipelineError(f"cannot create the folder {folder}: {part} is a file: a file of that name "
                                    f"is in the way: move it, or choose another folder") from exc
        raise PipelineError(f"cannot create the folder {folder}: {exc}") from exc
    return folder


def _atomic(path: Path, write: Callable[[Path], None]) -> Path:
    path = Path(path)
    make_dirs(path.parent)
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


LOCK_TIMEOUT = 1800.0  # seconds a job waits for another job of the run to finish its read-modify-write


def lock_path(path: Path) -> Path:
    """The lock file of ``path``: ``.<name>.lock`` beside it (hidden: no reader's pattern matches it)."""
    path = Path(path)
    return path.with_name(f".{path.name}.lock")


@contextmanager
def locked(path: Path, timeout: float = LOCK_TIMEOUT):
    """Hold the exclusive lock of ``path`` while a job reads what other jobs of the run wrote and
    rewrites ``path`` from it (the classifier's combined tables): concurrent fold jobs take turns, so the
    last one always writes from everything finished and nothing is lost.

    An OS lock (``filelock``: ``flock`` on Unix): a job killed with kill -9 releases it at once; the empty
    lock file stays and means nothing. Not re-entrant across processes, re-entrant in one process.
    After ``timeout`` seconds a :class:`~pipeline.errors.PipelineError` names the lock file.
    """
    from filelock import FileLock, Timeout

    from pipeline.errors import PipelineError

    lock_file = lock_path(path)
    make_dirs(lock_file.parent)
    lock = FileLock(str(lock_file), timeout=timeout)
    try:
        lock.acquire()
    except Timeout:
        raise PipelineError(
            f"{lock_file}: still locked after {timeout:g} s by another job of this run that is writing "
            f"{Path(path).name}. Wait for that job to finish and run this one again; if no job of this run is "
            "running, the file system keeps locks of dead processes (some network mounts): delete the lock "
            "file and run again.") from None
    try:
        yield lock_file
    finally:
        lock.release()
