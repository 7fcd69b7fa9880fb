"""``./run.sh infer --run RUN_DIR --out OUT [--conf X] [--no-tta] INPUT...``: a finished run's models on new
images (files or folders of DICOM, PNG or JPEG). See :mod:`pipeline.infer` for what is written."""
from __future__ import annotations

import argparse

from pipeline.infer import run_infer


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="./run.sh infer", description="Apply a finished run's detector folds (fused as the run fuses them), "
        "classifier and 2-class filter to new images, with the run's own preprocessing. Writes OUT/detections.csv "
        "(input-file pixels), OUT/classifier.csv, OUT/overlays/, OUT/index.html, OUT/failures.csv (and "
        "OUT/lungs/, OUT/screen.csv when the run has those models). Exits 1 when an input could not be read "
        "(one the run's gate rejected is set aside instead).",
        epilog="example: ./run.sh infer --run runs/demo --out /tmp/out data/demo/test")
    p.add_argument("--run", required=True, help="a finished run directory (runs/<name>), also one copied from elsewhere")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--conf", type=float, default=None, help="detector confidence threshold (default: the run's det.conf)")
    p.add_argument("--no-tta", action="store_true", help="no horizontal-flip test-time augmentation")
    p.add_argument("--workers", type=int, default=None, help="conversion processes (default: the run's run.workers)")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders (searched recursively)")
    a = p.parse_args(argv)
    s = run_infer(a.run, a.out, a.inputs, conf=a.conf, tta=False if a.no_tta else None, workers=a.workers)
    print(f"[infer] {s['images']} image(s), {s['detections']} detection(s) -> {s['out']}/detections.csv; "
          f"overlays in {s['out']}/index.html")
    if s.get("ignored"):
        shown = ", ".join(s["ignored"][:5]) + (", ..." if len(s["ignored"]) > 5 else "")
        print(f"[infer] {len(s['ignored'])} file(s) in the input folders are not images and were not read: {shown}")
    if s.get("set_aside"):
        print(f"[infer] {s['set_aside']} input(s) the gate rejected could not be converted either: set aside "
              f"(see {s['out']}/screen.csv and failures.csv)")
    if s["failures"]:
        print(f"[infer] {s['failures']} input(s) could not be read: see {s['out']}/failures.csv")
        return 1
    return 0
