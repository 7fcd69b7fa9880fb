"""Stage segment: train the lung segmentation (UNet++ with a classification head) and score it.

Reads the ``segment:`` section and a lung-mask dataset (``segment.data_root``, any layout of
:mod:`pipeline.lungs.data`; null = ``<data.root>/lungs``, the demo's set, generated first when
``data.demo`` is on and it is missing). Trains on ``segment.train_splits``, scores ``segment.eval_split``.
Writes, under ``segment/`` (``RunPaths.segment_file``):

* ``model.pt``: the lung model (:func:`pipeline.lungs.load_lung_model`), ``log.csv`` (loss per epoch),
  ``last.pt`` (resume point), ``train.json`` (the training's Work record);
* ``metrics.json``: Dice and IoU of the evaluated split in ORIGINAL pixels (mean, median, 10th
  percentile, minimum), the head's AUC / accuracy / sensitivity / specificity (threshold 0.5: no
  held-out images are left to choose one), the synthetic-shift proxies, timings, the InfLocNet reference;
* ``per_image.csv`` (``image_id, split, width, height, dice, iou, label, p_label, lung_share, crop_*``),
  ``masks/<id>.png`` (predicted masks, original pixels), ``overlays/<id>.png``, ``robustness.csv``
  (``shift, image_id, dice, iou``), ``skipped.csv`` (files left out and why), ``eval.json``.

Skipping (one rule, :mod:`pipeline.work`): the training is skipped when ``model.pt`` exists and the
fingerprint of what it read is unchanged: the segment keys that shape the weights, ``run.seed``,
:data:`LUNGS_VERSION` and every training image and mask file by content; an interrupted training
with the same fingerprint resumes from ``last.pt``. The scoring is its own unit (the model's
fingerprint, the scoring keys, the evaluated files by content). Images without a mask are listed in
``skipped.csv``; files that cannot be read are listed too and make the stage fail at the end, after
everything else is written.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from pipeline.errors import ConfigError, DataError
from pipeline.io import write_csv_atomic, write_text_atomic

LUNGS_VERSION = 2   # bump when pipeline.lungs changes what a model learns
# segment keys that do not change the weights (scoring and reporting only)
_SCORING_KEYS = ("eval_split", "threshold", "clean", "tta_flip", "robustness", "overlays_n", "write_masks", "crop_margin")
INFLOCNET = {"source": "InfLocNet, arXiv 2408.06459 (UNet++ with a VGG-16 encoder)", "iou": 0.9359, "dice": 0.9761}


def data_root(cfg) -> Path:
    sc = cfg.segment
    if sc.data_root:
        return Path(sc.data_root)
    from pipeline.demo import ensure_demo

    ensure_demo(cfg, "segment", need="lungs")
    root = Path(cfg.data.root) / "lungs"
    return root


def settings(cfg):
    from pipeline.classifier import torch_device
    from pipeline.lungs.augment import augment_probs
    from pipeline.lungs.model import ModelSpec
    from pipeline.lungs.preprocess import in_channels
    from pipeline.lungs.train import TrainSettings

    sc = cfg.segment
    for key, low in (("imgsz", 32), ("cache_size", 32), ("epochs", 1), ("batch", 2), ("encoder_depth", 3)):
        if int(sc[key]) < low:
            raise ConfigError(f"segment.{key} must be >= {low}, got {sc[key]}")
    if int(sc.imgsz) % 32:
        raise ConfigError(f"segment.imgsz must be a multiple of 32 (the encoder halves it 5 times), got {sc.imgsz}")
    spec = ModelSpec(arch=str(sc.arch), encoder=str(sc.encoder), encoder_depth=int(sc.encoder_depth),
                     decoder_channels=tuple(int(c) for c in sc.decoder_channels), in_channels=in_channels(sc.input),
                     cls_head=bool(sc.cls_head))
    device, _ = torch_device(cfg.run.device)
    return TrainSettings(spec=spec, imgsz=int(sc.imgsz), cache_size=max(int(sc.cache_size), int(sc.imgsz)),
                         input=str(sc.input), epochs=int(sc.epochs), batch=int(sc.batch), lr=float(sc.lr),
                         weight_decay=float(sc.weight_decay), warmup_epochs=float(sc.warmup_epochs),
                         cls_weight=float(sc.cls_weight), probs=augment_probs(sc.augment, sc.augment_strength),
                         seed=int(cfg.run.seed), weights=sc.weights, device=str(device))


def _digests(items) -> list:
    from pipeline.fingerprint import file_digest

    return [[it.image_id, it.split, it.label, file_digest(it.image), [file_digest(m) for m in it.masks]]
            for it in items]


def _train_work(cfg, paths, items):
    from pipeline.fingerprint import file_digest
    from pipeline.work import Work

    keys = {k: v for k, v in cfg.segment.to_dict().items() if k not in _SCORING_KEYS + ("data_root",)}
    inputs = {"segment": keys, "seed": int(cfg.run.seed), "version": LUNGS_VERSION, "files": _digests(items),
              "weights": file_digest(cfg.segment.weights) if cfg.segment.weights else None}
    return Work("segment train", paths.segment_file("train.json"), inputs,
                [paths.segment_model, paths.segment_file("log.csv")])


def _eval_work(cfg, paths, train_fp: str, items):
    from pipeline.work import Work

    keys = {k: cfg.segment[k] for k in _SCORING_KEYS}
    outs = [paths.segment_file(n) for n in ("metrics.json", "per_image.csv")]
    if cfg.segment.robustness:
        outs.append(paths.segment_file("robustness.csv"))
    return Work("segment eval", paths.segment_file("eval.json"), {"model": train_fp, "scoring": keys,
                                                                   "files": _digests(items)}, outs)


def _train(cfg, paths, work, train_items, label_name: str | None, bad: list):
    import pandas as pd

    from pipeline.device import use_threads
    from pipeline.lungs.model import save_lung_model
    from pipeline.lungs.train import load_cache, train
    from pipeline.work import STARTED

    s = settings(cfg)
    threads = use_threads(cfg.run.threads)
    resume = work.state(bool(cfg.run.force)) == STARTED
    print(f"[segment] {work.why_not_done()}: training ({threads} threads, device {s.device})")
    work.start()
    t0 = time.perf_counter()
    cache = load_cache(train_items, s.cache_size, on_error=lambda it, e: bad.append((str(it.image), str(e))))
    if not cache.ids:
        raise DataError(f"segment: none of the {len(train_items)} training images could be read; see skipped.csv.")
    log_rows: list[dict] = []

    def log(row):
        log_rows.append(row)
        extra = f", monitor IoU {row['monitor_iou']:.4f}" if "monitor_iou" in row else ""
        print(f"[segment] epoch {row['epoch']}/{s.epochs}: loss {row['loss']:.4f} ({row['seconds']:.0f} s){extra}")

    net, rows = train(cache, s, paths.segment_file("last.pt"), work.fingerprint, log=log, resume=resume)
    seconds = time.perf_counter() - t0
    write_csv_atomic(pd.DataFrame(rows), paths.segment_file("log.csv"))
    info = {"trained_on": len(cache.ids), "splits": list(cfg.segment.train_splits), "epochs": s.epochs,
            "seconds": seconds, "threads": threads, "fingerprint": work.fingerprint}
    save_lung_model(paths.segment_model, net, s.spec, s.imgsz, s.input, label_name, info)
    work.finish({"seconds": seconds, "trained_on": len(cache.ids)})
    return info


def _evaluate(cfg, paths, eval_items, bad: list) -> dict:
    import pandas as pd

    from pipeline.lungs import load_lung_model
    from pipeline.lungs.evaluate import load_items, score_items, summary_of, write_overlays
    from pipeline.lungs.robustness import evaluate_shifts, summarise_shifts

    sc = cfg.segment
    device = settings(cfg).device
    model = load_lung_model(paths.segment_model, device)
    loaded = load_items(eval_items, lambda it, e: bad.append((str(it.image), str(e))))
    t0 = time.perf_counter()
    rows, preds = score_items(model, loaded, threshold=float(sc.threshold), clean=bool(sc.clean),
                              tta_flip=bool(sc.tta_flip), margin=float(sc.crop_margin),
                              mask_path=paths.segment_mask if sc.write_masks else None)
    per_image_s = (time.perf_counter() - t0) / max(1, len(rows))
    write_csv_atomic(pd.DataFrame(rows), paths.segment_file("per_image.csv"))
    write_overlays(loaded, preds, rows, int(sc.overlays_n), paths.segment_overlay)
    metrics = {"split": sc.eval_split, **summary_of(rows), "seconds_per_image": per_image_s}
    if sc.robustness and loaded:
        shift_rows = evaluate_shifts(model, [img for _, img, _ in loaded], [m for _, _, m in loaded],
                                     [it.image_id for it, _, _ in loaded], threshold=float(sc.threshold),
                                     clean=bool(sc.clean), tta_flip=bool(sc.tta_flip))
        write_csv_atomic(pd.DataFrame(shift_rows), paths.segment_file("robustness.csv"))
        metrics["robustness"] = summarise_shifts(shift_rows)
    return metrics


def run(cfg, paths) -> dict:
    from pipeline.lungs.data import read_mask_dataset
    from pipeline.work import DONE

    sc = cfg.segment
    root = data_root(cfg)
    ds = read_mask_dataset(root, sc.layout, sc.split_csv, sc.label_column, float(sc.valid_fraction),
                           float(sc.test_fraction))
    train_items = ds.split(*sc.train_splits)
    eval_items = ds.split(sc.eval_split)
    if not train_items:
        raise ConfigError(f"segment.train_splits={list(sc.train_splits)}: no images of {root} in those splits "
                          f"(splits there: {sorted({it.split for it in ds.items})}).")
    counts = {s: len(ds.split(s)) for s in ("train", "valid", "test")}
    print(f"[segment] {root} ({ds.layout}, split from {ds.split_source}): {counts}, labels: {ds.label_name}, "
          f"{len(ds.skipped)} file(s) skipped")
    bad: list[tuple[str, str]] = []
    work = _train_work(cfg, paths, train_items)
    if work.state(bool(cfg.run.force)) == DONE:
        info = work.summary()
        print(f"[segment] training finished earlier with the same inputs: skipped ({paths.segment_model})")
        trained = False
    else:
        info = _train(cfg, paths, work, train_items, ds.label_name, bad)
        trained = True
    ework = _eval_work(cfg, paths, work.fingerprint, eval_items)
    scored = False
    if not eval_items:
        print(f"[segment] no images in segment.eval_split={sc.eval_split!r}: nothing scored")
        metrics = {}
    elif not trained and ework.state(bool(cfg.run.force)) == DONE:
        metrics = json.loads(paths.segment_file("metrics.json").read_text())
    else:
        scored = True
        ework.start()
        metrics = _evaluate(cfg, paths, eval_items, bad)
        metrics.update(dataset={"root": str(root), "layout": ds.layout, "split_source": ds.split_source,
                                "counts": counts, "label": ds.label_name, "skipped": len(ds.skipped)},
                       train=info, inflocnet_reference=INFLOCNET)
        write_text_atomic(paths.segment_file("metrics.json"), json.dumps(metrics, indent=2, default=str))
        ework.finish({"iou": metrics.get("iou", {}).get("mean")})
    skipped = [(f, r) for f, r in ds.skipped] + bad
    import pandas as pd

    write_csv_atomic(pd.DataFrame(skipped, columns=["file", "reason"]), paths.segment_file("skipped.csv"))
    if bad:
        raise DataError(f"segment: {len(bad)} file(s) could not be read (e.g. {bad[0][0]}: {bad[0][1]}); the rest "
                        f"was trained and scored. The list is in {paths.segment_file('skipped.csv')}.")
    return _summary(metrics, redone=trained or scored)


def _summary(m: dict, redone: bool) -> dict:
    out = {"skipped": not redone}
    if m.get("iou"):
        out.update(lung_iou=m["iou"]["mean"], lung_dice=m["dice"]["mean"], lung_eval_split=m.get("split"))
    head = m.get("head") or {}
    if head.get("auc") is not None:
        out["lung_head_auc"] = head["auc"]
    rob = (m.get("robustness") or {}).get("_mean_over_shifts")
    if rob:
        out["lung_iou_shifted"] = rob["iou"]
    return out
