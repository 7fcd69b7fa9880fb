"""The localise stage end to end on the synthetic ChestX-ray14 demo: prepare -> folds -> localise -> evaluate,
the metrics.json contract, the report, skipping finished units, retraining only what a setting changes."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from pipeline import localisation as L
from pipeline.config import load_config
from pipeline.errors import ConfigError, PipelineError
from pipeline.paths import RunPaths
from pipeline.runner import run_stage

NETS = ["gradcam", "multiscale", "cln"]
TINY = {"localise.imgsz": 64, "localise.epochs": 1, "localise.batch": 8, "localise.width": 16,
        "localise.backbone": "resnet18", "localise.labels": 8}


def _cfg(root, name="r", **over):
    base = {"run.root": str(root / "runs"), "run.name": name, "data.root": str(root / "demo"),
            "data.format": "chestxray14", "data.official_split": False, "image.size": 64, "folds.n_splits": 2,
            "labels.classes": list(range(8)), "labels.fuse": "none", "run.workers": 1, "run.threads": 1,
            "evaluate.plots": True, **TINY}
    return load_config(None, {**base, **over})


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A demo ChestX-ray14 run after prepare and folds (10 boxed images of 40, 128 px files, 64 px PNGs)."""
    from pipeline.demo import make_demo

    root = tmp_path_factory.mktemp("loc")
    make_demo(root / "demo", "chestxray14", n_train=10, n_test=30, seed=5, image_size=128, other_per_kind=0)
    cfg = _cfg(root)
    run_stage("prepare", cfg)
    run_stage("folds", cfg)
    return root


def _copy_run(prepared, tmp_path, name):
    """A private copy of the prepared run directory (tests change it)."""
    shutil.copytree(prepared / "runs" / "r", tmp_path / "runs" / name)
    (tmp_path / "demo").symlink_to(prepared / "demo")
    return tmp_path


def _records(paths, methods, folds=(0, 1)):
    return {(m, k): json.loads(paths.localise_record(m, k).read_text())["time"] for m in methods for k in folds}


def test_stage_end_to_end_contract_report_skip_and_retrain_one_method(prepared, tmp_path, one_torch_thread):
    root = _copy_run(prepared, tmp_path, "e2e")
    cfg = _cfg(root, "e2e", **{"localise.methods": ["prior", *NETS]})
    paths = RunPaths.from_config(cfg)
    first = run_stage("localise", cfg)
    assert first["skipped"] is False and first["loc_methods"] == ["prior", *NETS]
    run_stage("evaluate", cfg)

    metrics = json.loads(paths.metrics_json.read_text())
    L.check_block(metrics["localisation"])
    assert list(metrics["localisation"]) == ["prior", *NETS]
    assert metrics["localisation_reference"]["wang2017_table7"]["iou"]["0.1"]["mean"] == pytest.approx(0.568, abs=1e-3)
    assert metrics["localisation_reference"]["cln2025"]["auc_mean"] == 0.918
    run = metrics["localisation_run"]
    truth = pd.read_csv(paths.annotations_csv).dropna(subset=["x_min"])
    truth = truth[truth["class_id"] < 8]
    assert run["n_boxes"] == len(truth) and run["n_images"] == truth["image_id"].nunique() and run["n_splits"] == 2
    assert all(run["methods"][m]["folds"] == [0, 1] for m in ["prior", *NETS])
    # the multiscale relevance weights: per boxed class one convex combination of the 3 stages, per fold
    rel = run["methods"]["multiscale"]
    assert len(rel["relevance_per_fold"]) == 2 and list(rel["relevance_mean"]) == list(L.BOX_CLASSES)
    for row in rel["relevance_mean"].values():
        assert sum(row.values()) == pytest.approx(1.0, abs=1e-5) and list(row) == ["stride8", "stride16", "stride32"]
    # prior: a constant score, AUC 0.5 where the class has both labels
    assert {v for v in metrics["localisation"]["prior"]["auc"].values() if v is not None} == {0.5}

    # predictions: every held-out boxed image once, boxes in ORIGINAL pixels (128 px files), <= 3 per class
    probs = pd.read_csv(paths.localise_predictions("cln", "probs"), dtype={"image_id": str})
    assert sorted(probs["image_id"]) == sorted(truth["image_id"].astype(str).unique())
    assert list(probs.columns) == ["image_id", "fold", *[f"p_{n}" for n in L.BOX_CLASSES]]
    boxes = pd.read_csv(paths.localise_predictions("gradcam", "boxes"), dtype={"image_id": str})
    assert len(boxes) and boxes[["x_min", "y_min", "x_max", "y_max"]].max().max() <= 128
    assert (boxes[["x_min", "y_min"]].to_numpy() >= 0).all()
    assert boxes.groupby(["image_id", "class_id"]).size().max() <= 3
    page = paths.report.read_text()
    assert "beside Wang et al. 2017 Table 7" in page and "relevance weights per class" in page and "CLN 2025" in page

    # the same config again: every unit skipped, nothing rewritten
    before = _records(paths, ["prior", *NETS])
    mtime = paths.localise_weights("cln", 0).stat().st_mtime_ns
    again = run_stage("localise", cfg)
    assert again["skipped"] is True and _records(paths, ["prior", *NETS]) == before
    assert paths.localise_weights("cln", 0).stat().st_mtime_ns == mtime

    # one network's settings changed (CLN's epochs, and the CLN-only key cln_box at the top level): CLN alone
    # retrains, with the dense box head that infer below then applies
    cfg2 = _cfg(root, "e2e", **{"localise.methods": ["prior", *NETS], "localise.method_args": {"cln": {"epochs": 2}},
                                "localise.cln_box": "dense"})
    third = run_stage("localise", cfg2)
    now = _records(paths, ["prior", *NETS])
    changed = {m for (m, _k), t in now.items() if t != before[(m, _k)]}
    assert third["skipped"] is False and changed == {"cln"}
    cln_rec = json.loads(paths.localise_record("cln", 0).read_text())["summary"]
    assert len(cln_rec["history"]) == 2 and "box" in cln_rec["history"][0] and "offset" not in cln_rec["history"][0]
    assert paths.localise_weights("gradcam", 0).stat().st_mtime_ns <= mtime

    # infer applies the run's networks (every fold) to new files: boxes in the INPUT file's pixels
    from PIL import Image

    from pipeline.infer import run_infer

    src = Image.open(sorted((root / "demo").rglob("*.png"))[0]).convert("L")
    new = tmp_path / "new"
    new.mkdir()
    src.resize((200, 150)).save(new / "wide.png")
    summary = run_infer(paths.run_dir, tmp_path / "inf", [str(new)])
    assert summary["localisation_methods"] == NETS
    loc = pd.read_csv(tmp_path / "inf" / "localisation.csv", dtype={"image_id": str})
    assert list(loc.columns) == ["image_id", "method", "class_id", "class_name", "score", "x_min", "y_min", "x_max",
                                 "y_max"]
    assert set(loc["method"]) <= set(NETS) and set(loc["image_id"]) == {"wide"}
    assert loc["class_name"].isin(L.BOX_CLASSES).all() and loc.groupby(["method", "class_id"]).size().max() <= 3
    assert (loc[["x_min", "x_max"]].to_numpy() <= 200 + 1e-6).all() and (loc[["y_min", "y_max"]].to_numpy() <= 150 + 1e-6).all()
    lp = pd.read_csv(tmp_path / "inf" / "localisation_probs.csv", dtype={"image_id": str})
    assert sorted(lp["method"]) == sorted(NETS) and lp.filter(like="p_").to_numpy().max() <= 1
    assert (tmp_path / "inf" / "overlays" / "wide.png").is_file()


def test_folds_side_by_side_in_their_own_processes(prepared, tmp_path):
    """run.parallel_folds on the CPU: one process per fold runs every method of that fold, then the stage
    here finds every unit finished and writes the table over both folds."""
    root = _copy_run(prepared, tmp_path, "par")
    cfg = _cfg(root, "par", **{"localise.methods": ["prior", "gradcam"], "run.parallel_folds": 2, "run.threads": 2,
                               "run.device": "cpu"})
    paths = RunPaths.from_config(cfg)
    out = run_stage("localise", cfg)
    assert out["parallel_folds"] == 2 and out["parallel_failed"] == [] and out["skipped"] is False
    for k in (0, 1):
        log = (paths.parallel_dir / f"localise_fold{k}.log").read_text()
        assert f"gradcam fold {k}: train on" in log and f"folds [{k}] of 2" in log, log[-2000:]
        assert f"gradcam fold {1 - k}" not in log
    run = json.loads(paths.localisation_json.read_text())["localisation_run"]
    assert run["methods"]["gradcam"]["folds"] == [0, 1] and run["methods"]["gradcam"]["folds_missing"] == []


def test_force_retrains_the_weights(prepared, tmp_path, one_torch_thread):
    root = _copy_run(prepared, tmp_path, "force")
    cfg = _cfg(root, "force", **{"localise.methods": ["gradcam"], "localise.folds": [0]})
    paths = RunPaths.from_config(cfg)
    run_stage("localise", cfg)
    before = paths.localise_weights("gradcam", 0).stat().st_mtime_ns
    run_stage("localise", _cfg(root, "force", **{"localise.methods": ["gradcam"], "localise.folds": [0],
                                                 "localise.cam_threshold": 0.4}))  # predict-only: weights reused
    assert paths.localise_weights("gradcam", 0).stat().st_mtime_ns == before
    out = run_stage("localise", cfg, force=True)
    assert out["skipped"] is False and paths.localise_weights("gradcam", 0).stat().st_mtime_ns > before


def test_yolo_reads_the_runs_detector_oof_predictions(prepared, tmp_path):
    """A detector whose out-of-fold boxes equal the truth finds every box at every T; its AUC comes from
    the best box score of each class; flipped (tta) rows are not used."""
    root = _copy_run(prepared, tmp_path, "yolo")
    cfg = _cfg(root, "yolo", **{"localise.methods": ["yolo"]})
    paths = RunPaths.from_config(cfg)
    truth = pd.read_csv(paths.annotations_csv, dtype={"image_id": str}).dropna(subset=["x_min"])
    truth = truth[truth["class_id"] < 8]
    folds = pd.read_csv(paths.folds_csv, dtype={"image_id": str}).set_index("image_id")["fold"]
    with pytest.raises(PipelineError, match="train_det and predict"):
        run_stage("localise", cfg)
    for k in (0, 1):
        t = truth[truth["image_id"].map(folds) == k]
        det = t[["image_id", "class_id", "x_min", "y_min", "x_max", "y_max"]].assign(score=0.9, tta="orig")
        flipped = det.assign(x_min=0.0, x_max=1.0, score=0.99, tta="hflip")  # would miss every box
        paths.predictions_dir.mkdir(parents=True, exist_ok=True)
        pd.concat([det, flipped])[["image_id", "class_id", "score", "x_min", "y_min", "x_max", "y_max", "tta"]] \
            .to_csv(paths.det_predictions(cfg.det.name, k, "oof"), index=False)
    run_stage("localise", cfg)
    block = json.loads(paths.localisation_json.read_text())["localisation"]["yolo"]
    present = set(truth["class_id"].map(dict(enumerate(L.BOX_CLASSES))))
    for measure in ("iou", "iobb"):
        row = block[measure]["0.7"]
        assert all(row[c] == 1.0 for c in present) and all(row[c] is None for c in set(L.BOX_CLASSES) - present)
    probs = pd.read_csv(paths.localise_predictions("yolo", "probs"))
    assert set(np.unique(probs.filter(like="p_").to_numpy())) <= {0.0, 0.9}
    # localise.methods null: taken from cls.cam / cls.model, and yolo because the predictions are there
    from pipeline.stages.localise import chosen_methods

    assert chosen_methods(_cfg(root, "yolo", **{"cls.cam": "multiscale", "cls.model": "cln"}), paths, 2) == \
        ["prior", "multiscale", "cln", "yolo"]
    paths.det_predictions(cfg.det.name, 1, "oof").unlink()
    assert chosen_methods(_cfg(root, "yolo"), paths, 2) == ["prior", "gradcam"]
    assert chosen_methods(_cfg(root, "yolo", **{"cls.cam": "none"}), paths, 2) == ["prior"]


def test_prior_with_classification_only_images_and_one_fold(prepared, tmp_path):
    root = _copy_run(prepared, tmp_path, "all")
    cfg = _cfg(root, "all", **{"localise.methods": ["prior"], "localise.images": "all", "localise.folds": [1]})
    paths = RunPaths.from_config(cfg)
    run_stage("localise", cfg)
    run = json.loads(paths.localisation_json.read_text())["localisation_run"]
    n_images = len(pd.read_csv(paths.images_csv))
    assert run["n_classification_only"] == n_images - run["n_images"] > 0
    assert run["methods"]["prior"]["folds"] == [1] and run["methods"]["prior"]["folds_missing"] == [0]
    rec = json.loads(paths.localise_record("prior", 1).read_text())
    assert rec["summary"]["n_train"] > 0 and rec["status"] == "done"


@pytest.mark.parametrize("over, match", [
    ({"data.format": "vinbigdata"}, "data.format: chestxray14"),
    ({"localise.methods": ["prior", "detr"]}, "localise.methods"),
    ({"localise.methods": ["cln"], "localise.method_args": {"cln": {"epoch": 3}}}, "unknown key.*epoch"),
    ({"localise.methods": ["cln"], "localise.method_args": {"prior": {"epochs": 3}}}, "not networks"),
    ({"localise.methods": ["gradcam"], "localise.labels": 9}, "localise.labels"),
    ({"localise.methods": ["cln"], "localise.cln_box": "anchors"}, "localise.cln_box"),
    ({"localise.methods": ["prior"], "localise.folds": [5]}, r"localise.folds: fold\(s\) \[5\]"),
    ({"localise.methods": None, "cls.cam": "scorecam"}, "cls.cam"),
])
def test_bad_settings_are_config_errors_naming_the_key(prepared, over, match):
    with pytest.raises(ConfigError, match=match):
        run_stage("localise", _cfg(prepared, "r", **over))


def test_a_broken_localisation_json_is_a_clear_error_and_sections_follow_the_methods(tmp_path):
    from pipeline.localise_report import read_localisation, sections

    paths = RunPaths(tmp_path / "run")
    assert read_localisation(paths) == {}  # a run without the localise stage: nothing merged
    paths.run_dir.mkdir()
    block = {"iou": {L.key(t): {**{c: 0.5 for c in L.BOX_CLASSES}, "mean": 0.5} for t in L.THRESHOLDS}}
    block["iobb"] = block["iou"]
    block["auc"] = {**{c: None for c in L.BOX_CLASSES}, "mean": None}
    bad = {"iou": block["iou"], "auc": block["auc"]}  # no iobb
    paths.localisation_json.write_text(json.dumps({"localisation": {"m": bad}, "localisation_reference": {},
                                                   "localisation_run": {}}))
    with pytest.raises(PipelineError, match="localisation.json.*run the localise stage again"):
        read_localisation(paths)
    paths.localisation_json.write_text(json.dumps({"localisation": {"m": block}, "localisation_reference": {},
                                                   "localisation_run": {"methods": {}}}))
    got = read_localisation(paths)
    heads = [h for h, _ in sections(got)]
    assert len(heads) == 3 and "Wang et al. 2017 Table 7" in heads[0]  # no multiscale: no relevance table
    assert sections({}) == []
