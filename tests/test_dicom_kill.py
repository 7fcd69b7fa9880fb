"""kill -9 in the middle of a real ``python -m pipeline dicom2png`` run, then the same command again: the
images are byte-identical to an uninterrupted run's, and nothing half-written ever looks finished."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def _dataset(real_dir: Path, folder: Path, copies: int = 6) -> int:
    folder.mkdir(parents=True)
    sources = sorted(real_dir.glob("vinbigdata/dicom/*.dicom")) + [
        real_dir / "dicom/1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm",
        real_dir / "dicom/header_modified/Fake_MONOHR1.dcm"]
    for k in range(copies):
        for src in sources:
            (folder / f"{k}_{src.stem[:12]}{src.suffix}").write_bytes(src.read_bytes())
    return copies * len(sources)


def _command(data: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "pipeline", "dicom2png", str(data), "--out", str(out), "--size", "256", "--quiet"]


def _journal_lines(out: Path) -> list[str]:
    try:
        return (out / ".meta-journal.jsonl").read_text().splitlines()
    except OSError:
        return []


def _pngs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.glob("*.png") if not p.name.startswith(".")}


def test_sigkill_mid_conversion_then_rerun_gives_the_same_images(real_dir, tmp_path):
    n = _dataset(real_dir, tmp_path / "data")
    ref_out, out = tmp_path / "ref", tmp_path / "out"
    subprocess.run(_command(tmp_path / "data", ref_out), cwd=ROOT, check=True, capture_output=True)
    reference = _pngs(ref_out)
    assert len(reference) == n

    proc = subprocess.Popen(_command(tmp_path / "data", out), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(_journal_lines(out)) < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    finished = [json.loads(line) for line in _journal_lines(out) if line.endswith("}")]
    assert 3 <= len(finished) < n, "the kill must land in the middle of the conversion"
    assert not (out / "meta.csv").exists()  # the table is written at the end only
    # what is there under a final name is complete: each PNG equals the uninterrupted run's
    partial = _pngs(out)
    assert partial and all(reference[name] == data for name, data in partial.items())
    assert {f"{row['image_id']}.png" for row in finished} <= set(partial)

    again = subprocess.run(_command(tmp_path / "data", out), cwd=ROOT, capture_output=True, text=True)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"{n - len(finished)} converted, {len(finished)} skipped" in again.stdout  # finished work kept
    assert _pngs(out) == reference
    left = sorted(p.name for p in out.iterdir() if p.name.startswith(".") and p.name != ".cache")
    assert left == []  # no journal, no temporary file of the killed run
    meta = pd.read_csv(out / "meta.csv", dtype=str).sort_values("image_id", ignore_index=True)
    ref_meta = pd.read_csv(ref_out / "meta.csv", dtype=str).sort_values("image_id", ignore_index=True)
    pd.testing.assert_frame_equal(meta, ref_meta)
