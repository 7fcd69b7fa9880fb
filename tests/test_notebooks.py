"""Both notebooks execute top to bottom on run directories built by hand (a VinBigData-style run, a
classifier-only run, a 2-class VOC run like TBX11K), and 01 on the real train.csv. Expected counts of the
error analysis are worked out by hand in the comments."""
from __future__ import annotations

import re
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest

from pipeline.config import load_config, save_config
from pipeline.paths import RunPaths
from pipeline.stages import evaluate, fuse
from tests.test_evaluate_submit import NAMES, build_run, mark_predicted

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NO_PLOTS = {"evaluate.plots": False}  # the notebooks read metrics.json and the tables, not the report's figures


def execute(name: str, monkeypatch, **env) -> nbformat.NotebookNode:
    """Run a notebook in a fresh kernel (the venv's python3 spec) with parameters from the environment."""
    from jupyter_client.kernelspec import KernelSpecManager
    from nbclient import NotebookClient

    if "python3" not in KernelSpecManager().find_kernel_specs():
        pytest.skip("no python3 Jupyter kernel spec (install ipykernel into the venv)")
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))  # the kernel inherits this process's environment
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    NotebookClient(nb, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(NOTEBOOKS)}}).execute()
    return nb


def outputs(nb) -> str:
    text = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            text.append(out.get("text", "") or str(out.get("data", {}).get("text/plain", "")))
    return "\n".join(text)


def images(nb) -> int:
    return sum("image/png" in out.get("data", {}) for cell in nb.cells for out in cell.get("outputs", []))


def test_notebooks_are_valid_nbformat_v4():
    for name in ("01_explore.ipynb", "02_results.ipynb"):
        nb = nbformat.read(NOTEBOOKS / name, as_version=4)
        nbformat.validate(nb)
        assert nb.nbformat == 4
        assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code")  # stored without outputs


def test_notebooks_spell_no_run_path_and_no_class_count():
    """Artifact paths come from RunPaths, classes from the run (no RUN_DIR / "x.csv", no 14, no NORMAL_ID)."""
    for name in ("01_explore.ipynb", "02_results.ipynb"):
        code = "\n".join(c.source for c in nbformat.read(NOTEBOOKS / name, as_version=4).cells if c.cell_type == "code")
        assert "RunPaths(run_dir=RUN_DIR)" in code
        assert "RUN_DIR /" not in code and '.csv"' not in code and "NORMAL_ID" not in code
        assert not re.search(r"(?<![\w-])14\b", code)  # "ChestX-ray14" in a comment is fine


@pytest.fixture
def hand_run(tmp_path):
    cfg, paths = build_run(tmp_path, images=True, **NO_PLOTS)
    fuse.run(cfg, paths)
    evaluate.run(cfg, paths)
    return paths


def test_explore_on_a_run_directory(hand_run, monkeypatch):
    nb = execute("01_explore.ipynb", monkeypatch, RUN_DIR=hand_run.run_dir, TRAIN_CSV="", META_CSV="")
    text = outputs(nb)
    assert "7 rows, 6 images" in text and "normal class 14 = 'No finding'" in text
    assert "one reader per image" in text  # the hand-built annotations have one reader (R1)
    assert "unlabelled" in text  # the detection roles table (test images)
    assert images(nb) >= 4  # distribution, boxes per image, box shares, sample images


def test_results_on_a_run_directory(hand_run, monkeypatch):
    nb = execute("02_results.ipynb", monkeypatch, RUN_DIR=hand_run.run_dir)
    text = outputs(nb)
    assert "oof_map" in text and "no_filter" in text
    assert "Honest out-of-fold" in text and "oof: filter on 6 of 6 images" in text
    # no config.yaml in the hand-built run: det.folds come from what fuse recorded
    assert "6 out-of-fold detector images in folds [0, 1] (det.folds from metrics.json fusion.folds)" in text
    # final at score >= 0.3: the 7 truth boxes are found (t0's false box is replaced by "normal 1"); one
    # false positive: t2 (p = 0.5, between the thresholds) gets "normal 0.5", and t2 is abnormal
    assert "7 true positives, 1 false positives, 0 missed of 7 truth boxes" in text
    assert "abnormal image called normal" in text
    # the sweep at the configured pair reproduces the reported final mAP (filter.tune=none)
    assert "at the configured pair (0.08, 0.95): 1.0000" in text and "reported final 1.0000" in text
    # low = 0 replaces no image, so t0 keeps its 0.95 false box: Aortic enlargement AP 2/3, the rest 1
    # ("normal" p = 0.99, 0.98, 0.7 on t0, t3, t5 rank above t2's 0.5) -> (2/3 + 3) / 4 = 0.9167 at every high
    low0 = [line for line in text.splitlines() if line.startswith("0.00 ")]
    assert low0 and low0[0].split()[1:] == ["0.9167"] * 7
    assert "optimistic" in text
    assert images(nb) >= 6  # fold spread, per-class AP, errors, images, threshold heatmap, ROC


def test_explore_on_the_real_train_csv(real_dir, monkeypatch, tmp_path):
    vin = real_dir / "vinbigdata"
    nb = execute("01_explore.ipynb", monkeypatch, RUN_DIR=tmp_path / "none", TRAIN_CSV=vin / "train.csv",
                 META_CSV=vin / "train_meta.csv", MAX_GROUPS=200)
    text = outputs(nb)
    assert "67,914 rows, 15,000 images, 17 readers" in text
    assert "31818" in text  # "No finding" readings in the label table
    assert "readers per image: {3: 15000}" in text  # the agreement section runs on three readers
    assert "no PNGs" in text  # no run directory: the sample-image cell says so instead of failing


def test_results_on_a_classifier_only_run(tmp_path, monkeypatch):
    cfg, paths = build_run(tmp_path, images=True, **NO_PLOTS)
    for p in paths.predictions_dir.glob("det_*"):
        p.unlink()
    evaluate.run(cfg, paths)  # classifier-only metrics.json
    nb = execute("02_results.ipynb", monkeypatch, RUN_DIR=paths.run_dir)
    text = outputs(nb)
    assert "classifier metrics only" in text and "cls_auc" in text
    assert "no detector predictions in this run: the 2-class filter sweep is skipped" in text
    assert images(nb) == 1  # the ROC only


# --- a TBX11K-like run in VOC form: 2 finding classes, the normal class at id 2 ---------------------------
TB = ["ActiveTuberculosis", "ObsoletePulmonaryTuberculosis"]
VOC_TRAIN, VOC_TEST = ["v0", "v1", "v2", "v3", "v4", "v5"], ["w0", "w1"]
VOC_TRUTH = [("v0", 0, (50, 60, 200, 260)), ("v1", 1, (300, 100, 450, 300)), ("v2", 2, None),
             ("v3", 0, (40, 40, 160, 200)), ("v3", 0, (300, 50, 460, 220)), ("v4", 1, (100, 300, 300, 450)),
             ("v5", 2, None)]
# At IoU 0.5 and score >= 0.3, each kind of error once:
VOC_OOF = [("v0", 0, 0.9, 50, 60, 200, 260),    # true positive
           ("v0", 0, 0.6, 80, 60, 230, 260),    # IoU 2/3 with the taken box: duplicate (apart at fuse.iou_thr 0.8)
           ("v1", 1, 0.8, 300, 100, 450, 180),      # IoU 0.4: poor localisation; v1's box is missed
           ("v2", 0, 0.4, 200, 200, 300, 300),  # on a normal image; v2's normal box 1 - 0.4 = 0.6 is found
           ("v3", 0, 0.65, 40, 40, 160, 200),   # true positive; the second box is missed, and v3 is called
                                                # normal at 1 - 0.65 = 0.35 (abnormal image called normal)
           ("v4", 0, 0.5, 100, 300, 300, 450),  # class not on image (v4 has class 1 only)
           ("v4", 1, 0.85, 100, 300, 300, 450)]  # true positive; v5 has no box: normal 1, found
# -> 5 true positives, 5 false positives, 2 missed of 7 truth boxes


def build_voc_run(tmp_path: Path):
    """A run as prepare/folds/predict leave it for a VOC dataset with 2 classes and no classifier."""
    from pipeline.labels import dataset_yaml
    from pipeline.roles import detection_roles

    cfg = load_config(None, {"run.root": str(tmp_path / "runs"), "run.name": "voc", "run.workers": 1,
                             "data.format": "voc", "data.root": str(tmp_path / "data"), "folds.n_splits": 2,
                             "det.name": "yolo", "det.folds": [0, 1], "fuse.iou_thr": 0.8, "filter.enabled": False,
                             "evaluate.iou_thr": 0.5, "evaluate.metric": "coco_ap50_agnostic", **NO_PLOTS})
    paths = RunPaths(run_dir=tmp_path / "runs" / "voc", submissions_dir=tmp_path / "submissions")
    paths.predictions_dir.mkdir(parents=True)
    ids, split = VOC_TRAIN + VOC_TEST, ["train"] * len(VOC_TRAIN) + ["test"] * len(VOC_TEST)
    labels = {"v0": "0", "v1": "1", "v2": "2", "v3": "0", "v4": "1", "v5": "2"}
    pd.DataFrame({"image_id": ids, "split": split, "patient_id": "", "width": 512, "height": 512,
                  "labels": [labels.get(i, "") for i in ids], "source": [f"/x/{i}.jpg" for i in ids]}
                 ).to_csv(paths.images_csv, index=False)
    pd.DataFrame({"image_id": ids, "split": split, "height": 512, "width": 512, "out_height": 128, "out_width": 128,
                  "fingerprint": [f"fp{i}" for i in ids]}).to_csv(paths.meta_csv, index=False)
    names = TB + ["No finding"]
    rows = [{"image_id": i, "class_name": names[c], "class_id": c, "rad_id": "voc",
             **dict(zip(["x_min", "y_min", "x_max", "y_max"], b or (np.nan,) * 4))} for i, c, b in VOC_TRUTH]
    pd.DataFrame(rows).to_csv(paths.annotations_csv, index=False)
    boxes = pd.DataFrame(rows).assign(rad_id="fused", n_readers=1)
    boxes.to_csv(paths.boxes_csv, index=False)
    dataset_yaml(TB, paths.dataset_yaml, "No finding")
    images_table = pd.read_csv(paths.images_csv, dtype=str, keep_default_na=False)
    detection_roles(images_table, boxes, 2, [0, 1]).to_csv(paths.detection_csv, index=False)
    fold_of = {i: int(n >= 3) for n, i in enumerate(VOC_TRAIN)}
    pd.DataFrame({"image_id": VOC_TRAIN, "fold": [fold_of[i] for i in VOC_TRAIN]}).to_csv(paths.folds_csv, index=False)
    oof = pd.DataFrame(VOC_OOF, columns=NAMES)
    test = pd.DataFrame([("w0", 0, 0.7, 50, 60, 200, 260)], columns=NAMES)
    for k in (0, 1):
        part = oof[oof["image_id"].map(fold_of) == k]
        for df, s in ((part, "oof"), (test, "test")):
            pd.concat([df.assign(tta="orig"), df.assign(tta="hflip")]).to_csv(paths.det_predictions("yolo", k, s),
                                                                              index=False)
        mark_predicted(paths, "yolo", k)
    from PIL import Image

    rng = np.random.default_rng(0)
    for image_id, s in zip(ids, split):
        paths.image(s, image_id).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (128, 128), dtype=np.uint8)).save(paths.image(s, image_id))
    save_config(cfg, paths.config)  # as the runner leaves it: the notebook reads det.folds from it
    return cfg, paths


@pytest.fixture
def voc_run(tmp_path):
    cfg, paths = build_voc_run(tmp_path)
    fuse.run(cfg, paths)
    evaluate.run(cfg, paths)
    return paths


def test_explore_on_a_two_class_voc_run(voc_run, monkeypatch):
    nb = execute("01_explore.ipynb", monkeypatch, RUN_DIR=voc_run.run_dir, TRAIN_CSV="", META_CSV="")
    text = outputs(nb)
    assert "7 rows, 6 images, 1 readers" in text and "2 finding classes (ids 0..1), normal class 2" in text
    assert "ObsoletePulmonaryTuberculosis" in text and "Pleural effusion" not in text
    assert images(nb) >= 4


def test_results_on_a_two_class_voc_run(voc_run, monkeypatch):
    nb = execute("02_results.ipynb", monkeypatch, RUN_DIR=voc_run.run_dir)
    text = outputs(nb)
    assert "2 finding classes, normal class 2 = 'No finding'" in text
    assert "oof: filter on 0 of 6 images (filter.enabled is false)" in text
    assert "6 out-of-fold detector images in folds [0, 1] (det.folds from config.yaml)" in text
    assert "final predictions at IoU 0.5 and score >= 0.3 on 6 images: " \
           "5 true positives, 5 false positives, 2 missed of 7 truth boxes" in text
    for kind in ("poor localisation", "duplicate", "on a normal image", "class not on image",
                 "abnormal image called normal"):
        assert kind in text
    assert "COCO AP of final" in text and "class-agnostic" in text
    assert "no binary classifier (p_abnormal)" in text and "sweep is skipped" in text
    assert images(nb) >= 4  # fold spread, per-class AP, errors, images (no heatmap, no ROC)
