"""Choose detector settings NESTED: variants trained and scored on an inner split of one outer fold's
training images, never on the images an out-of-fold figure is later reported for.

    .venv/bin/python benchmarks/det_inner.py --prepared /tmp/exp/tbx_prep --config configs/tbx11k.yaml \\
        --outer-fold 0 --cache /tmp/det_inner --variant plain --variant adamw:det.train_args.optimizer=auto

``--prepared`` is a run directory that prepare and folds have filled for the same config (its images
and labels are linked, its tables copied; it is never changed). For outer fold K of its folds.csv the
images of fold K are left out altogether; the others (K's training images) are split again by the
pipeline's own folds (``--inner-splits``, seeded by ``--seed``) and inner fold 0 is held out (with
``--score-folds N``: inner folds 0..N-1 in turn, scored together). Each ``--variant NAME[:KEY=VALUE,...]``
is then the pipeline itself on that split, in its own run directory ``<cache>/inner<K>_<NAME>``:

    python -m pipeline run --config CONFIG run.root=<cache> run.name=inner<K>_<NAME> det.folds=[0,..,N-1]
        "run.stages=[train_det,predict,fuse,evaluate]" run.parallel_folds=1 run.threads=T KEY=VALUE ...

One held-out inner fold of a few hundred images is a noisy judge: on TBX11K (2026-12-02) a gain of 0.16
AP50 on 74 inner images did not hold out of fold (docs/notes/tbx11k.md); ``--score-folds 4`` scores every
training image of fold K once, at 4x the cost.

The variants run side by side, ``--threads`` each (two 1-thread processes use this 2-core CPU better
than one 2-thread one). Prints each variant's headline metric (``evaluate.metric``) and its seconds,
and adds them to ``<cache>/inner<K>.json`` (variants measured there earlier are kept). A rule for
choosing belongs in the config's comment BEFORE the figures are seen; this script only measures.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd  # noqa: E402

TABLES = ("images.csv", "meta.csv", "boxes.csv", "annotations.csv", "detection.csv", "dataset.yaml")


def parse_variant(text: str) -> tuple[str, list[str]]:
    name, _, rest = text.partition(":")
    if not name.isidentifier():
        raise SystemExit(f"--variant {text!r}: the name before ':' must be a plain word (it names a folder).")
    overrides = [o for o in rest.split(",") if o] if rest else []
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise SystemExit(f"--variant {text!r}: {bad[0]!r} is not KEY=VALUE.")
    return name, overrides


def inner_folds(prepared: Path, outer: int, n_splits: int, seed: int) -> pd.DataFrame:
    """folds.csv of the inner split: K's training images in inner folds 0..n-1 (fold K's own left out)."""
    from pipeline.folds import make_folds
    from pipeline.tables import read_folds, read_images

    folds = read_folds(prepared / "folds.csv")
    if outer not in set(folds["fold"]):
        raise SystemExit(f"--outer-fold {outer}: {prepared / 'folds.csv'} has folds {sorted(set(folds['fold']))}.")
    keep = set(folds.loc[folds["fold"] != outer, "image_id"])
    images = read_images(prepared / "images.csv")
    images = images[images["image_id"].astype(str).isin(keep)]
    return make_folds(images, n_splits, seed, source=str(prepared / "images.csv"))


def make_run_dir(prepared: Path, run_dir: Path, folds: pd.DataFrame) -> None:
    """A run directory holding the prepared tables, links to its images and labels, and the inner folds."""
    for sub in ("images", "labels"):
        (run_dir / sub).mkdir(parents=True, exist_ok=True)
        for split in (prepared / sub).iterdir():
            link = run_dir / sub / split.name
            if split.is_dir() and not link.exists():
                os.symlink(split.resolve(), link)
    for name in TABLES:
        if (prepared / name).is_file():
            shutil.copy2(prepared / name, run_dir / name)
    folds.to_csv(run_dir / "folds.csv", index=False)


def variant_command(args, run_name: str, overrides: list[str]) -> list[str]:
    """The pipeline run of one variant: inner folds 0..score_folds-1 trained (each on the other inner folds)
    and scored together, one after the other inside the variant's process."""
    folds = ",".join(str(k) for k in range(args.score_folds))
    return [sys.executable, "-m", "pipeline", "run", "--config", args.config, f"run.root={args.cache}",
            f"run.name={run_name}", f"det.folds=[{folds}]", "run.stages=[train_det,predict,fuse,evaluate]",
            "run.parallel_folds=1", f"run.threads={args.threads}", *args.overrides, *overrides]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--prepared", type=Path, required=True, help="run directory after prepare + folds")
    ap.add_argument("--config", required=True)
    ap.add_argument("--outer-fold", type=int, required=True)
    ap.add_argument("--inner-splits", type=int, default=4)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--score-folds", type=int, default=1,
                    help="inner folds held out in turn and scored together (1 = inner fold 0 only; up to "
                         "--inner-splits: every training image scored once, that many times the cost, less noise)")
    ap.add_argument("--cache", type=Path, required=True)
    ap.add_argument("--variant", action="append", required=True, help="NAME or NAME:KEY=VALUE,KEY=VALUE")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("overrides", nargs="*", help="KEY=VALUE for every variant (e.g. det.epochs=2)")
    args = ap.parse_args(argv)
    variants = [parse_variant(v) for v in args.variant]
    if not 1 <= args.score_folds <= args.inner_splits:
        raise SystemExit(f"--score-folds {args.score_folds}: must be 1 .. --inner-splits ({args.inner_splits}).")
    folds = inner_folds(args.prepared, args.outer_fold, args.inner_splits, args.seed)
    n_val = int((folds["fold"] < args.score_folds).sum())
    print(f"outer fold {args.outer_fold}: {len(folds)} training images, inner folds 0..{args.score_folds - 1} hold "
          f"{n_val} out in turn")
    procs = {}
    for name, overrides in variants:
        run_name = f"inner{args.outer_fold}_{name}"
        make_run_dir(args.prepared, args.cache / run_name, folds)
        cmd = variant_command(args, run_name, overrides)
        log = open(args.cache / f"{run_name}.log", "w")
        procs[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT), time.time(), log, run_name,
                       overrides)
        print(f"{name}: {' '.join(cmd[1:])}  (log {log.name})", flush=True)
    results, failed = {}, []
    for name, (proc, t0, log, run_name, overrides) in procs.items():
        rc = proc.wait()
        log.close()
        if rc:
            failed.append(name)
            print(f"{name}: exit {rc}, see {log.name}")
            continue
        metrics = json.loads((args.cache / run_name / "metrics.json").read_text())
        s = metrics["summary"]
        results[name] = {"headline_metric": s["headline_metric"], "headline": s["headline_value"],
                         "coco_ap50_agnostic": s.get("oof_coco_ap50_agnostic"), "coco_ap50": s.get("oof_coco_ap50"),
                         "seconds": round(time.time() - t0, 1), "overrides": dict(o.split("=", 1) for o in overrides)}
        print(f"{name}: {s['headline_metric']} {s['headline_value']:.4f} on {n_val} inner held-out images, "
              f"{results[name]['seconds']:.0f} s", flush=True)
    out = args.cache / f"inner{args.outer_fold}.json"  # variants measured earlier on this split are kept
    earlier = json.loads(out.read_text()) if out.is_file() else {}
    split = {"outer_fold": args.outer_fold, "n_inner_images": len(folds), "inner_splits": args.inner_splits,
             "seed": args.seed, "score_folds": args.score_folds, "n_scored": n_val}
    if all(earlier.get(k) == v for k, v in split.items()):
        results = {**earlier.get("variants", {}), **results}
    out.write_text(json.dumps({**split, "variants": results, "failed": failed}, indent=1))
    print(f"written {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
