"""The one rule for skipping work (docs/DESIGN.md, "Finished work"):

    a unit of work is skipped only when every output it records exists and the content fingerprint of
    what it read (the config keys it uses, its input files' content, upstream outputs' fingerprints)
    equals the recorded one.

A unit is a stage's expensive part: a fold's training, a fold's prediction, one image's conversion.
Cheap stages (folds, fuse, evaluate, submit) simply always run. Fingerprints come from
:mod:`pipeline.fingerprint` (content, never mtimes or paths), so a touched input or a dataset copied
to another disk redoes nothing, and a deleted output is rebuilt without redoing what it came from.

Two forms of record, one rule (:func:`is_current`):

* :class:`Work`: a JSON record file per unit (``status`` started|done, ``fingerprint``, ``outputs``,
  ``summary``). ``state()`` is ``done`` (skip), ``started`` (same inputs, interrupted: resume if the
  unit can) or ``new`` (run from the start);
* a row per image in ``meta.csv`` whose ``fingerprint`` column is the record (prepare's conversion).

Records are written atomically after the outputs, so a killed process never leaves a record that
claims outputs it did not finish.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from pipeline.fingerprint import digest
from pipeline.io import write_text_atomic

DONE, STARTED, NEW = "done", "started", "new"


def is_current(recorded: str | None, fingerprint: str, outputs: Iterable[Path]) -> bool:
    """The rule itself: recorded fingerprint equal to this one, and every output on disk."""
    return bool(recorded) and recorded == fingerprint and all(Path(p).exists() for p in outputs)


@dataclass
class Work:
    """A unit of work with a JSON record.

    ``inputs`` is everything the unit read, as JSON-able values: config values, file digests
    (:func:`pipeline.fingerprint.file_digest`), id lists with their images' fingerprints, upstream
    units' fingerprints. ``outputs`` are the files it must leave behind.
    """

    name: str
    record: Path
    inputs: dict
    outputs: list[Path] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.record = Path(self.record)
        self.outputs = [Path(p) for p in self.outputs]
        self.fingerprint = digest(self.inputs)

    def read(self) -> dict | None:
        """The record on disk, or None (missing, unreadable or half-written by a killed process)."""
        try:
            data = json.loads(self.record.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def state(self, force: bool = False) -> str:
        if force:
            return NEW
        rec = self.read()
        if not rec or rec.get("fingerprint") != self.fingerprint:
            return NEW
        if rec.get("status") == DONE and is_current(rec.get("fingerprint"), self.fingerprint, self.outputs):
            return DONE
        return STARTED

    def why_not_done(self) -> str:
        """One line for the log: why this unit runs."""
        rec = self.read()
        if rec is None:
            return "never finished"
        if rec.get("fingerprint") != self.fingerprint:
            now, then = _brief(self.inputs), rec.get("inputs") or {}
            changed = sorted(k for k in set(now) | set(then) if digest(now.get(k)) != digest(then.get(k)))
            return f"inputs changed ({', '.join(changed) or 'record from an older version'})"
        missing = [p.name for p in self.outputs if not p.exists()]
        if missing:
            return f"output(s) missing: {', '.join(missing[:3])}"
        return "interrupted earlier"

    def start(self) -> None:
        """Record that this unit began with these inputs (what a resume checks)."""
        self._write(STARTED, {})

    def finish(self, summary: dict | None = None) -> None:
        missing = [str(p) for p in self.outputs if not p.exists()]
        if missing:
            raise RuntimeError(f"{self.name}: finished without its outputs {missing}")
        self._write(DONE, summary or {})

    def summary(self) -> dict:
        rec = self.read() or {}
        return rec.get("summary") or {}

    def _write(self, status: str, summary: dict) -> None:
        rec = {"unit": self.name, "status": status, "fingerprint": self.fingerprint, "time": time.time(),
               "outputs": [str(p) for p in self.outputs], "summary": summary, "inputs": _brief(self.inputs)}
        write_text_atomic(self.record, json.dumps(rec, indent=2, default=str))


def _brief(inputs: dict) -> dict[str, Any]:
    """Inputs as stored in the record: small values as they are, big ones (id lists) as their digest,
    so the record stays readable and ``why_not_done`` can name what changed."""
    out = {}
    for k, v in inputs.items():
        text = json.dumps(v, sort_keys=True, default=str)
        out[k] = v if len(text) <= 400 else {"digest": digest(v)}
    return out
