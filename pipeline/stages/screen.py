"""Stage screen: train the input gate's image model and score it on held-out pictures.

Reads the ``screen:`` section: class -> folders (``screen.folders`` / ``screen.image_root``), the
bundled and synthetic not-X-ray pictures (``screen.extras``, ``screen.synthetic``). Holds out whole
groups (``screen.holdout_fraction`` of every source, and every ``screen.holdout_sources`` source) and
trains DenseNet-121 on the rest (:mod:`pipeline.gate`). Writes, under ``screen/`` (``RunPaths.screen_file``):

* ``model.pt``: the gate model (classes, accepted classes, input size, weights) for ``screen-images``,
  prepare (``screen.enabled``) and infer;
* ``dataset.csv``: every picture with ``label, source, group, kind, path, what, split, error``;
* ``heldout.csv``: the ``screen.csv`` columns for the held-out pictures (header rules + image model);
* ``metrics.json``, ``confusion.png``: held-out per-class accuracy and confusion matrix of the image
  model on real pictures, the same for the synthetic ones and for each held-out source, per source;
* ``log.csv``: loss and training accuracy per epoch; ``train.json``: the Work record.

Skipped (one rule, :mod:`pipeline.work`) when every output exists and the fingerprint of what it read
is unchanged: the ``screen`` keys that shape the model, ``run.seed``, the content digest of every
training file and bundled picture, and the synthetic pictures' seeds with :data:`GATE_VERSION`.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import ConfigError, DataError
from pipeline.io import write_csv_atomic, write_text_atomic

GATE_VERSION = 1  # bump when the gate's training or data code changes what a model learns
_OUTPUTS = ("model.pt", "metrics.json", "confusion.png", "heldout.csv", "dataset.csv", "log.csv")
# screen keys that do not change the model or its held-out figures
_NOT_TRAINING_KEYS = ("enabled", "model", "threads")


def check_screen_config(sc) -> None:
    classes = list(sc.classes)
    if not classes or len(set(classes)) != len(classes) or not all(isinstance(c, str) and c for c in classes):
        raise ConfigError(f"screen.classes must be distinct non-empty names, got {classes}")
    bad = [c for c in sc.accept if c not in classes]
    if bad:
        raise ConfigError(f"screen.accept: {bad} not in screen.classes {classes}")
    for key, low in (("imgsz", 32), ("epochs", 1), ("epoch_size", 1), ("batch", 2)):
        if int(sc[key]) < low:
            raise ConfigError(f"screen.{key} must be >= {low}, got {sc[key]}")
    if int(sc.synthetic) < 0:
        raise ConfigError(f"screen.synthetic must be >= 0, got {sc.synthetic}")
    if sc.weights and not Path(sc.weights).is_file():
        raise ConfigError(f"screen.weights: {sc.weights} is not a file; give a local DenseNet-121 state dict or null")


def _settings(cfg):
    from pipeline.device import resolve_threads
    from pipeline.gate.model import GateSettings

    sc = cfg.screen
    threads = resolve_threads(cfg.run.threads if sc.threads is None else sc.threads)
    return GateSettings(classes=list(sc.classes), imgsz=int(sc.imgsz), epochs=int(sc.epochs),
                        epoch_size=int(sc.epoch_size), batch=int(sc.batch), lr=float(sc.lr),
                        weight_decay=float(sc.weight_decay), balance=sc.source_balance, augment=bool(sc.augment),
                        weights=sc.weights, threads=threads, device=cfg.run.device, seed=int(cfg.run.seed))


def _work(cfg, paths, table: pd.DataFrame):
    from pipeline.fingerprint import file_digest
    from pipeline.work import Work

    keys = {k: v for k, v in cfg.screen.to_dict().items() if k not in _NOT_TRAINING_KEYS}
    digests = [[r.image_id, r.label, r.split, r.path if r.kind == "synthetic" else file_digest(r.path)]
               for r in table.itertuples(index=False)]
    inputs = {"screen": keys, "seed": int(cfg.run.seed), "version": GATE_VERSION, "pictures": digests}
    return Work("screen", paths.screen_file("train.json"), inputs, [paths.screen_file(n) for n in _OUTPUTS])


def _header_decisions(rows: pd.DataFrame) -> list:
    from pipeline.gate.header import decide_file
    from pipeline.gate.images import is_dicom

    out = []
    for r in rows.itertuples(index=False):
        try:
            out.append(decide_file(r.path) if r.kind != "synthetic" and is_dicom(r.path) else None)
        except DataError:
            out.append(None)
    return out


def _score(test: pd.DataFrame, probs: np.ndarray, classes: list[str]) -> dict:
    from pipeline.gate.evaluate import per_source, summarise

    y = test["label"].map({c: i for i, c in enumerate(classes)}).to_numpy()
    pred = probs.argmax(1)
    frame = test.assign(correct=(pred == y))
    real = (test["kind"] != "synthetic").to_numpy()
    cross = test["cross_source"].to_numpy()
    out = {"image_model_real": summarise(y[real], pred[real], classes),
           "image_model_synthetic": summarise(y[~real], pred[~real], classes),
           "per_source": per_source(frame)}
    if cross.any():
        out["cross_source"] = summarise(y[cross], pred[cross], classes)
        out["within_source_real"] = summarise(y[real & ~cross], pred[real & ~cross], classes)
    gate_ok = (test["gate_decision"] == test["label"]).to_numpy()
    out["gate_real_accuracy"] = float(gate_ok[real].mean()) if real.any() else None
    return out


def _greyscale_figures(model, test: pd.DataFrame, pics: list, probs: np.ndarray, classes: list[str], imgsz: int,
                       not_xray: str) -> dict:
    """Held-out real pictures of ``not_xray``: accuracy on those stored in grey, and on all of them
    shown in grey (colour removed: "not an X-ray" must not rest on colour)."""
    import cv2

    from pipeline.gate.model import predict_probs

    if not_xray not in classes:
        return {}
    k = classes.index(not_xray)
    rows = np.flatnonzero(((test["label"] == not_xray) & (test["kind"] != "synthetic")).to_numpy())
    if not len(rows):
        return {}
    grey = np.array([bool((pics[i][..., 0] == pics[i][..., 1]).all() and (pics[i][..., 1] == pics[i][..., 2]).all())
                     for i in rows])
    as_grey = [np.repeat(cv2.cvtColor(pics[i], cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2) for i in rows]
    grey_probs = predict_probs(model, as_grey, imgsz)
    stored = probs[rows[grey]].argmax(1) == k if grey.any() else np.array([])
    return {"stored_grey": {"n": int(grey.sum()), "accuracy": float(stored.mean()) if len(stored) else None},
            "all_shown_grey": {"n": int(len(rows)), "accuracy": float((grey_probs.argmax(1) == k).mean())}}


def _report(m: dict, classes: list[str], holdout_sources) -> list[str]:
    from pipeline.gate.evaluate import format_confusion

    r = m["image_model_real"]
    lines = [f"held-out real pictures: {r['n']}, accuracy {r['accuracy']:.4f}, balanced {r['balanced_accuracy']:.4f}"]
    lines += [f"  {c:<12} {v['accuracy']:.4f}  (n={v['n']})" if v["accuracy"] is not None else f"  {c:<12} -  (n=0)"
              for c, v in r["per_class"].items()]
    lines += ["confusion (rows = truth, columns = decision):", format_confusion(r["confusion"], classes)]
    if "cross_source" in m:
        lines.append(f"cross-source ({', '.join(holdout_sources)}, never trained on): accuracy "
                     f"{m['cross_source']['accuracy']:.4f} (n={m['cross_source']['n']})")
    g = m.get("greyscale") or {}
    if g:
        sg, ag = g["stored_grey"], g["all_shown_grey"]
        stored = "-" if sg["accuracy"] is None else f"{sg['accuracy']:.4f}"
        lines.append(f"held-out not_xray pictures stored in grey: accuracy {stored} (n={sg['n']}); all of them "
                     f"shown in grey: {ag['accuracy']:.4f} (n={ag['n']})")
    s = m["image_model_synthetic"]
    if s["n"]:
        lines.append(f"held-out synthetic pictures: accuracy {s['accuracy']:.4f} (n={s['n']})")
    return lines


def run(cfg, paths) -> dict:
    from pipeline.gate.dataset import assign_splits, build_table, load_pictures
    from pipeline.gate.evaluate import plot_confusion
    from pipeline.gate.model import predict_probs, save_gate, train_gate
    from pipeline.gate.screen import combine, screen_columns
    from pipeline.work import DONE

    # OpenMP threads that spin while they wait make torch 4x slower whenever another process wants the
    # cores (measured on the shared 2-core machine: 18.5 s vs 4.3 s per step); only takes effect when torch
    # is not imported yet in this process (the CLI), and a value the user set wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    sc = cfg.screen
    check_screen_config(sc)
    classes = list(sc.classes)
    t0 = time.perf_counter()
    from pipeline.demo import ensure_demo

    ensure_demo(cfg, "screen", need="other")
    table, notes = build_table(sc, int(cfg.run.seed), cfg.data.root)
    table["split"] = assign_splits(table, float(sc.holdout_fraction), list(sc.holdout_sources), int(cfg.run.seed))
    table["cross_source"] = table["source"].isin(list(sc.holdout_sources))
    for note in notes:
        print(f"[screen] note: {note}")
    work = _work(cfg, paths, table)
    if work.state(bool(cfg.run.force)) == DONE:
        print(f"[screen] gate model finished earlier with the same inputs: skipped ({paths.screen_model})")
        return {"skipped": True, **work.summary()}
    print(f"[screen] training the gate: {work.why_not_done()}")
    counts = table.groupby(["label", "split"]).size().unstack(fill_value=0)
    print(f"[screen] pictures per class and split:\n{counts.to_string()}")
    work.start()
    s = _settings(cfg)
    pictures, errors = load_pictures(table, int(round(s.imgsz * 1.5)))
    table["error"] = table["image_id"].map(errors).fillna("")
    if errors:
        print(f"[screen] {len(errors)} picture(s) could not be read and are left out (listed in dataset.csv, "
              f"column error), e.g. {next(iter(errors.values()))}")
    ok = (table["error"] == "").to_numpy()
    train_mask, test_mask = ok & (table["split"] == "train").to_numpy(), ok & (table["split"] == "test").to_numpy()
    missing = [c for c in classes if not (table.loc[train_mask, "label"] == c).any()]
    if missing:
        raise DataError(f"screen: no readable training pictures for class(es) {missing}")
    t_load = time.perf_counter() - t0
    idx = {c: i for i, c in enumerate(classes)}
    model, history = train_gate([pictures[i] for i in np.flatnonzero(train_mask)],
                                table.loc[train_mask, "label"].map(idx).to_numpy(),
                                table.loc[train_mask, "source"].to_numpy(), s, paths.screen_file("log.csv"))
    t_train = time.perf_counter() - t0 - t_load
    save_gate(model, paths.screen_model, classes, list(sc.accept), s.imgsz)
    test = table[test_mask].reset_index(drop=True)
    probs = predict_probs(model, [pictures[i] for i in np.flatnonzero(test_mask)], s.imgsz)
    decided = [combine(h, p, classes, list(sc.accept)) for h, p in zip(_header_decisions(test), probs)]
    test["gate_decision"] = [d[0] for d in decided]
    held = pd.DataFrame([[r.image_id, d, a, *p, why] for r, (d, a, why), p in
                         zip(test.itertuples(index=False), decided, probs)], columns=screen_columns(classes))
    metrics = _score(test, probs, classes)
    metrics["greyscale"] = _greyscale_figures(model, test, [pictures[i] for i in np.flatnonzero(test_mask)],
                                              probs, classes, s.imgsz, sc.extras_class)
    metrics.update({"classes": classes, "accept": list(sc.accept), "imgsz": s.imgsz, "epochs": s.epochs,
                    "epoch_size": s.epoch_size, "threads": s.threads, "seconds_loading": t_load,
                    "seconds_training": t_train, "final_train_loss": history[-1]["loss"],
                    "holdout_sources": list(sc.holdout_sources), "notes": notes,
                    "n_train": int(train_mask.sum()), "n_test": int(test_mask.sum()), "n_unreadable": len(errors)})
    write_csv_atomic(held, paths.screen_file("heldout.csv"))
    write_csv_atomic(table, paths.screen_file("dataset.csv"))
    write_text_atomic(paths.screen_file("metrics.json"), json.dumps(metrics, indent=2))
    real = metrics["image_model_real"]
    plot_confusion(real["confusion"], classes, paths.screen_file("confusion.png"),
                   f"gate, held-out real pictures (n={real['n']}, accuracy {real['accuracy']:.3f})")
    for line in "\n".join(_report(metrics, classes, list(sc.holdout_sources))).splitlines():
        print(f"[screen] {line}")
    per_class = ", ".join(f"{c} {v['accuracy']:.3f}" for c, v in real["per_class"].items() if v["accuracy"] is not None)
    cross = metrics.get("cross_source")
    headline = (f"gate held-out accuracy (real pictures, n={real['n']}): {per_class}"
                + (f"; cross-source chest ({', '.join(sc.holdout_sources)}) {cross['accuracy']:.3f}" if cross else ""))
    summary = {"headline": headline, "gate_model": str(paths.screen_model), "gate_heldout_accuracy": real["accuracy"],
               "gate_heldout_per_class": {c: v["accuracy"] for c, v in real["per_class"].items()},
               "gate_cross_source_accuracy": metrics.get("cross_source", {}).get("accuracy"),
               "gate_unreadable": len(errors)}
    work.finish(summary)
    return {"skipped": False, **summary}
