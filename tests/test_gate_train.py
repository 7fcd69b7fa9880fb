"""Training the gate's image model: a tiny run whose loss falls, and the screen stage end to end
(outputs, held-out figures, the Work skip rule)."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pandas as pd
import pytest

CLASSES = ["chest", "other_xray", "not_xray"]


def _pictures(n_per_class: int, seed: int = 0):
    """Three easy, different looks: a bright disc on black, vertical stripes, coloured noise."""
    rng = np.random.default_rng(seed)
    pics, labels = [], []
    for _ in range(n_per_class):
        disc = np.zeros((48, 48, 3), np.uint8)
        cv2.circle(disc, (int(rng.integers(18, 30)), int(rng.integers(18, 30))), int(rng.integers(8, 14)),
                   (230, 230, 230), -1)
        stripes = np.zeros((48, 48, 3), np.uint8)
        stripes[:, :: int(rng.integers(3, 6))] = 200
        pics += [disc, stripes, rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)]
        labels += [0, 1, 2]
    return pics, np.array(labels)


def test_tiny_training_loss_falls_and_predicts_probabilities(one_torch_thread):
    from pipeline.gate.model import GateSettings, predict_probs, train_gate

    pics, labels = _pictures(8)
    s = GateSettings(classes=CLASSES, imgsz=32, epochs=3, epoch_size=32, batch=16, lr=1e-3, augment=False,
                     threads=1, device="cpu", seed=0, label_smoothing=0.0)
    model, history = train_gate(pics, labels, np.array(["s"] * len(pics)), s)
    assert history[-1]["loss"] < 0.7 * history[0]["loss"], history
    probs = predict_probs(model, pics, 32)
    assert probs.shape == (len(pics), 3) and np.allclose(probs.sum(1), 1, atol=1e-5)


@pytest.mark.slow
def test_screen_stage_writes_its_outputs_and_skips_when_unchanged(tmp_path, real_dir, one_torch_thread):
    from pipeline.config import load_config
    from pipeline.gate.screen import screen_columns
    from pipeline.paths import RunPaths
    from pipeline.runner import run_stage

    data = tmp_path / "data"
    for label, source in (("chest", real_dir / "chestxray14" / "bbox_256"), ("hand", real_dir / "hands"),
                          ("photo", real_dir / "not_xray")):
        (data / label).mkdir(parents=True)
        for f in sorted(source.iterdir())[:8]:
            (data / label / f.name).write_bytes(f.read_bytes())
    cfg = load_config(None, {
        "run": {"name": "gate", "root": str(tmp_path / "runs"), "threads": 1, "device": "cpu"},
        "screen": {"folders": {"chest": [str(data / "chest")], "other_xray": [str(data / "hand")],
                               "not_xray": [str(data / "photo")]},
                   "extras": ["pydicom"], "synthetic": 6, "imgsz": 32, "epochs": 1, "epoch_size": 32,
                   "batch": 16}})
    first = run_stage("screen", cfg)
    paths = RunPaths.from_config(cfg)
    assert not first["skipped"]
    for name in ("model.pt", "metrics.json", "confusion.png", "heldout.csv", "dataset.csv", "log.csv"):
        assert paths.screen_file(name).is_file(), name
    metrics = json.loads(paths.screen_file("metrics.json").read_text())
    real = metrics["image_model_real"]
    assert real["n"] == sum(map(sum, real["confusion"])) > 0
    assert set(real["per_class"]) == set(CLASSES)
    held = pd.read_csv(paths.screen_file("heldout.csv"))
    dataset = pd.read_csv(paths.screen_file("dataset.csv"))
    assert list(held.columns) == screen_columns(CLASSES)
    assert set(held["image_id"]) == set(dataset.loc[dataset["split"] == "test", "image_id"])
    ct = held[held["image_id"].str.contains("CT_small|693_J2KI|J2K_pixelrep", regex=True)]
    assert (ct["decision"] == "not_xray").all() and ct["reason"].str.contains("Modality CT").all()

    assert run_stage("screen", cfg)["skipped"]  # same inputs: nothing redone
    changed = data / "chest" / sorted(p.name for p in (data / "chest").iterdir())[0]
    cv2.imwrite(str(changed), np.zeros((64, 64), np.uint8) + 50)  # new content, same name
    assert not run_stage("screen", cfg)["skipped"]
