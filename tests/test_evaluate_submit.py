"""Fuse -> evaluate -> submit on a small hand-built run directory, and the submission for the 3,000 real
VinBigData test ids. Expected mAPs are worked out by hand in the comments."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.config import load_config
from pipeline.errors import DataError
from pipeline.paths import RunPaths
from pipeline.stages import evaluate, fuse, submit

W, H = 2000, 1600  # original size of every hand-built image (non-square on purpose)
TRAIN = ["t0", "t1", "t2", "t3", "t4", "t5"]
TEST = ["s0", "s1", "s2"]
# truth: t0, t3, t5 normal; t1 Aortic enlargement; t2 Cardiomegaly; t4 Aortic enlargement + Pleural effusion
TRUTH = [("t0", 14, None), ("t1", 0, (100, 100, 500, 400)), ("t2", 3, (600, 800, 1400, 1300)), ("t3", 14, None),
         ("t4", 0, (120, 90, 520, 420)), ("t4", 10, (1500, 1000, 1900, 1500)), ("t5", 14, None)]
# out-of-fold detections: perfect boxes plus one confident false positive on the normal image t0
OOF = [("t0", 0, 0.95, 100, 100, 500, 400), ("t1", 0, 0.9, 100, 100, 500, 400), ("t2", 3, 0.8, 600, 800, 1400, 1300),
       ("t4", 0, 0.7, 120, 90, 520, 420), ("t4", 10, 0.7, 1500, 1000, 1900, 1500)]
P_OOF = {"t0": 0.01, "t1": 0.99, "t2": 0.5, "t3": 0.02, "t4": 0.97, "t5": 0.3}
TEST_DETS = [("s1", 0, 0.8, 100, 100, 500, 400), ("s0", 10, 0.2, 1500, 1000, 1900, 1500)]
P_TEST = {"s0": 0.01, "s1": 0.99, "s2": 0.5}
NAMES = ["image_id", "class_id", "score", "x_min", "y_min", "x_max", "y_max"]


def _truth_rows(rows, rad):
    from pipeline.classes import VINBIGDATA

    out = []
    for image_id, cid, b in rows:
        x0, y0, x1, y1 = b if b else (np.nan,) * 4
        out.append({"image_id": image_id, "class_name": VINBIGDATA[cid], "class_id": cid, "rad_id": rad,
                    "x_min": x0, "y_min": y0, "x_max": x1, "y_max": y1})
    return pd.DataFrame(out)


def mark_predicted(paths, name: str, fold: int) -> None:
    """The done record the predict stage leaves beside a fold's prediction files."""
    from pipeline.work import Work

    Work("predict", paths.det_predict_record(name, fold), {}).finish()


def build_run(tmp_path: Path, with_cls: bool = True, images: bool = False, **overrides):
    """A run directory as prepare/folds/predict/train_cls leave it, plus data.root with the Kaggle CSVs.

    Returns (cfg, paths). ``images=True`` also writes small PNGs (for the notebooks)."""
    data = tmp_path / "data"
    data.mkdir(parents=True, exist_ok=True)
    cfg = load_config(None, {"run.root": str(tmp_path / "runs"), "run.name": "hand", "run.workers": 1,
                             "data.root": str(data), "folds.n_splits": 2, "det.name": "yolo",
                             "det.folds": [0, 1], **overrides})
    paths = RunPaths(run_dir=tmp_path / "runs" / "hand", submissions_dir=tmp_path / "submissions")
    paths.predictions_dir.mkdir(parents=True, exist_ok=True)
    ids = TRAIN + TEST
    split = ["train"] * len(TRAIN) + ["test"] * len(TEST)
    labels = {"t0": "14", "t1": "0", "t2": "3", "t3": "14", "t4": "0|10", "t5": "14"}
    pd.DataFrame({"image_id": ids, "split": split, "patient_id": "", "width": W, "height": H,
                  "labels": [labels.get(i, "") for i in ids], "source": [f"/x/{i}.dicom" for i in ids]}
                 ).to_csv(paths.images_csv, index=False)
    pd.DataFrame({"image_id": ids, "split": split, "height": H, "width": W, "out_height": 160, "out_width": 200,
                  "fingerprint": [f"fp{i}" for i in ids]}).to_csv(paths.meta_csv, index=False)
    from pipeline.roles import detection_roles

    images_table = pd.read_csv(paths.images_csv, dtype=str, keep_default_na=False)
    boxes = _truth_rows(TRUTH, "fused")
    boxes["n_readers"] = 3
    boxes.to_csv(paths.boxes_csv, index=False)
    from pipeline.classes import VINBIGDATA
    from pipeline.labels import dataset_yaml

    dataset_yaml(VINBIGDATA[:14], paths.dataset_yaml, VINBIGDATA[14])
    detection_roles(images_table, boxes, 14, list(range(14))).to_csv(paths.detection_csv, index=False)
    pd.DataFrame({"image_id": TRAIN, "fold": [0, 0, 0, 1, 1, 1]}).to_csv(paths.folds_csv, index=False)
    oof = pd.DataFrame(OOF, columns=NAMES)
    fold_of = {i: (0 if i in TRAIN[:3] else 1) for i in TRAIN}
    for k in (0, 1):
        part = oof[oof["image_id"].map(fold_of) == k]
        both = pd.concat([part.assign(tta="orig"), part.assign(tta="hflip")], ignore_index=True)
        both.to_csv(paths.det_predictions("yolo", k, "oof"), index=False)
        test = pd.DataFrame(TEST_DETS, columns=NAMES)
        pd.concat([test.assign(tta="orig"), test.assign(tta="hflip")]).to_csv(
            paths.det_predictions("yolo", k, "test"), index=False)
        mark_predicted(paths, "yolo", k)
    if with_cls:
        pd.DataFrame({"image_id": list(P_OOF), "fold": [fold_of[i] for i in P_OOF], "p_abnormal": list(P_OOF.values())}
                     ).to_csv(paths.cls_predictions(cfg.cls.name, "oof"), index=False)
        pd.DataFrame({"image_id": list(P_TEST), "p_abnormal": list(P_TEST.values())}
                     ).to_csv(paths.cls_predictions(cfg.cls.name, "test"), index=False)
    # Kaggle's files: the sample submission in its own order (not images.csv's)
    pd.DataFrame({"image_id": ["s2", "s1", "s0"], "PredictionString": "14 1 0 0 1 1"}).to_csv(
        data / "sample_submission.csv", index=False)
    _truth_rows([("s0", 14, None), ("s1", 0, (100, 100, 500, 400)), ("s2", 14, None)], "consensus").to_csv(
        data / "test_truth.csv", index=False)
    if images:
        from PIL import Image

        rng = np.random.default_rng(0)
        for image_id, s in zip(ids, split):
            p = paths.image(s, image_id)
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (160, 200), dtype=np.uint8)).save(p)
        _truth_rows(TRUTH, "R1").to_csv(paths.annotations_csv, index=False)
    return cfg, paths


def test_fuse_evaluate_submit_with_the_filter(tmp_path):
    cfg, paths = build_run(tmp_path)
    fuse.run(cfg, paths)
    info = json.loads(paths.fuse_summary.read_text())
    assert info["filter_oof"]["n_filtered"] == 6 and info["filter_test"]["n_filtered"] == 3
    final = pd.read_csv(paths.filtered_predictions("oof"))
    # t0 (p=0.01 < low): only "14 1 0 0 1 1"; t2 (mid): its box + 14 at 1-0.5; t1 (p >= high): as is
    t0 = final[final["image_id"] == "t0"]
    assert t0[["class_id", "score"]].values.tolist() == [[14, 1.0]]
    t2 = final[final["image_id"] == "t2"].sort_values("class_id")
    assert t2[["class_id", "score"]].values.tolist() == [[3, 0.8], [14, 0.5]]
    assert final.loc[final["image_id"] == "t1", "class_id"].tolist() == [0]
    fused = pd.read_csv(paths.fused_predictions("oof"))
    # orig and hflip agree, so WBF returns the boxes and scores unchanged, in original pixels
    np.testing.assert_allclose(fused.sort_values("score", ascending=False)["score"], [0.95, 0.9, 0.8, 0.7, 0.7])

    esum = evaluate.run(cfg, paths)
    m = json.loads(paths.metrics_json.read_text())
    assert {"summary", "oof", "classifier", "filter", "test", "class_names", "iou_thr"} <= set(m)
    assert {"final", "no_filter", "baseline_no_finding", "det_yolo"} <= set(m["oof"])
    # with the filter every class is perfect: mAP 1
    assert esum["oof_map"] == pytest.approx(1.0)
    assert m["oof"]["final"]["per_fold"] == {"0": pytest.approx(1.0), "1": pytest.approx(1.0)}
    # without it: Aortic enlargement AP 2/3 (the t0 false positive ranks first), No finding AP 5/6
    # (t0's detector p(normal) = 1 - 0.95 ranks last) -> (2/3 + 1 + 1 + 5/6) / 4 = 0.875
    assert esum["oof_map_no_filter"] == pytest.approx(0.875)
    assert m["oof"]["no_filter"]["per_class"]["Aortic enlargement"] == pytest.approx(2 / 3)
    # "No finding" everywhere, ties in file order t0..t5: AP(14) = 1/3 + 1/3 * 1/2 + 1/3 * 1/2 = 2/3, / 4 classes
    assert esum["baseline_map"] == pytest.approx(2 / 3 / 4)
    assert esum["cls_auc"] == pytest.approx(1.0)
    assert esum["test_map"] == pytest.approx(1.0)
    assert m["filter"]["oof"]["n_filtered"] == 6 and m["out_of_fold_rule"]["honest"]
    assert "2-class filter on 6 of 6" in esum["headline"]
    assert m["fusion"]["sources"]["oof"] == ["yolo all folds orig", "yolo all folds hflip"]
    # COCO AP by the library beside the VOC mAP: every finding found exactly, the t0 false positive removed
    assert m["coco"]["final"]["ap50"] == pytest.approx(1.0) and m["coco"]["final"]["agnostic"]["ap50"] == pytest.approx(1.0)
    assert m["coco"]["no_filter"]["ap50"] < 1.0  # the confident false positive on t0 costs AP50 without the filter
    assert set(m["coco"]["final"]["per_fold"]) == {"0", "1"}  # each fold's images alone: the spread
    assert all(v["ap50_agnostic"] == pytest.approx(1.0) for v in m["coco"]["final"]["per_fold"].values())
    assert "fold 1 alone (mean over classes)" in paths.report.read_text()
    assert "<th>class-agnostic AP50</th>" in paths.report.read_text()  # a column, not digits in a row label
    assert esum["headline_metric"] == "voc_map" and esum["headline_value"] == esum["oof_map"]
    other = evaluate.run(load_config(None, {**_flat(cfg), "evaluate.metric": "coco_ap50_agnostic"}), paths)
    assert other["headline_value"] == pytest.approx(1.0) and "COCO AP50" in paths.report.read_text()
    for name in ("per_class_ap", "precision_recall", "label_distribution", "normal_confusion", "classifier_roc"):
        assert (paths.plots_dir / f"{name}.png").stat().st_size > 1000
    page = paths.report.read_text()
    assert "data:image/png;base64," in page and "no_filter" in page and "baseline_no_finding" in page

    ssum = submit.run(cfg, paths)
    sub = pd.read_csv(ssum["submission"])
    assert sub["image_id"].tolist() == ["s2", "s1", "s0"]  # the sample submission's order
    assert sub["PredictionString"].str.strip().str.len().gt(0).all()
    strings = dict(zip(sub["image_id"], sub["PredictionString"]))
    assert strings["s0"] == "14 1 0 0 1 1"                   # p < low: normal only
    assert strings["s2"] == "14 0.5 0 0 1 1"                 # no detections, p in the middle
    assert strings["s1"] == "0 0.8 100 100 500 400"          # p >= high: the box alone, original pixels
    assert ssum["test_map"] == pytest.approx(1.0)


def test_without_classifier_final_is_fused_plus_detector_normal(tmp_path):
    cfg, paths = build_run(tmp_path, with_cls=False)
    fuse.run(cfg, paths)
    assert json.loads(paths.fuse_summary.read_text())["filter_oof"]["n_filtered"] == 0
    final = pd.read_csv(paths.filtered_predictions("oof"))
    p14 = final[final["class_id"] == 14].set_index("image_id")["score"]
    assert p14.to_dict() == pytest.approx({"t0": 0.05, "t1": 0.1, "t2": 0.2, "t3": 1.0, "t4": 0.3, "t5": 1.0})
    esum = evaluate.run(cfg, paths)
    assert esum["oof_map"] == pytest.approx(esum["oof_map_no_filter"]) == pytest.approx(0.875)
    assert "cls_auc" not in esum and "not applied" in esum["headline"]


def test_filter_on_some_folds_only_is_said_in_the_headline_and_warnings(tmp_path):
    cfg, paths = build_run(tmp_path)
    oof = pd.read_csv(paths.cls_predictions(cfg.cls.name, "oof"), dtype={"image_id": str})
    oof[oof["fold"] == 0].to_csv(paths.cls_predictions(cfg.cls.name, "oof"), index=False)  # fold 1 lacks p
    fsum = fuse.run(cfg, paths)
    assert "folds [1]" in " ".join(fsum["warnings"])
    esum = evaluate.run(cfg, paths)
    assert "on 3 of 6 out-of-fold images" in esum["headline"]
    assert json.loads(paths.metrics_json.read_text())["filter"]["oof"]["folds_without_classifier"] == [1]


def test_tuned_filter_is_nested_by_default_and_optimistic_only_by_name(tmp_path):
    cfg, paths = build_run(tmp_path, **{"filter.tune": "nested"})
    fuse.run(cfg, paths)
    info = json.loads(paths.fuse_summary.read_text())
    per_fold = info["filter_oof"]["per_fold_thresholds"]
    assert set(per_fold) == {"0", "1"} and "nested" in info["filter_oof"]["thresholds"]
    # test images use the pair chosen on every out-of-fold image: low must drop t0's false positive
    assert info["filter_test"]["low"] > 0.01
    # fold 0's pair is chosen on fold 1 (t3, t4, t5), where no low threshold matters, so it is not fitted to
    # t0's false positive the way the optimistic pair is
    cfg2, paths2 = build_run(tmp_path / "b", **{"filter.tune": "on_oof_optimistic"})
    fuse.run(cfg2, paths2)
    info2 = json.loads(paths2.fuse_summary.read_text())
    assert "optimistic" in info2["filter_oof"]["thresholds"] and info2["filter_oof"]["low"] > 0.01
    assert not evaluate.oof_rule(cfg2)["honest"] and evaluate.oof_rule(cfg)["honest"]
    with pytest.raises(Exception, match="filter.tune"):
        fuse.run(load_config(None, {**_flat(cfg), "filter.tune": "yes"}), paths)


def _flat(cfg):
    return {"run.root": cfg.run.root, "run.name": cfg.run.name, "data.root": cfg.data.root, "det.name": "yolo",
            "det.folds": [0, 1], "folds.n_splits": 2}


def test_zero_detections_still_give_a_scored_valid_submission(tmp_path):
    cfg, paths = build_run(tmp_path, with_cls=False)
    for k in (0, 1):
        for split in ("oof", "test"):
            pd.DataFrame(columns=NAMES + ["tta"]).to_csv(paths.det_predictions("yolo", k, split), index=False)
    fsum = fuse.run(cfg, paths)
    assert [w for w in fsum["warnings"] if "no box" in w] == [
        f"the detector predicted no box on any {split} image (undertrained, or det.conf too high): every image "
        "gets only its class-14 box" for split in ("oof", "test")]
    esum = evaluate.run(cfg, paths)
    assert esum["oof_map"] == pytest.approx(esum["baseline_map"])  # only the normal boxes, all scored 1
    sub = pd.read_csv(submit.run(cfg, paths)["submission"])
    assert sub["PredictionString"].tolist() == ["14 1 0 0 1 1"] * 3


def test_submit_rejects_predictions_for_unknown_ids_and_validator_catches_a_missing_id(tmp_path):
    from pipeline.submission import validate_submission

    cfg, paths = build_run(tmp_path)
    fuse.run(cfg, paths)
    pd.DataFrame({"image_id": ["s1", "s0"], "PredictionString": "14 1 0 0 1 1"}).to_csv(
        Path(cfg.data.root) / "sample_submission.csv", index=False)
    with pytest.raises(DataError, match="not in the submission's ids.*s2"):
        submit.run(cfg, paths)
    sub = pd.DataFrame({"image_id": ["s2", "s0"], "PredictionString": ["14 1 0 0 1 1"] * 2})
    with pytest.raises(DataError, match="missing.*s1"):
        validate_submission(sub, ["s2", "s1", "s0"], where="test")


def test_submit_without_sample_uses_the_test_ids_of_images_csv(tmp_path):
    cfg, paths = build_run(tmp_path)
    fuse.run(cfg, paths)
    (Path(cfg.data.root) / "sample_submission.csv").unlink()
    out = submit.run(cfg, paths)
    assert pd.read_csv(out["submission"])["image_id"].tolist() == TEST


def test_submission_for_the_real_test_ids_validates_against_the_real_sample(tmp_path, real_dir):
    from pipeline.submission import read_submission, validate_submission

    vin = real_dir / "vinbigdata"
    meta = pd.read_csv(vin / "test_meta.csv")
    cfg = load_config(None, {"run.root": str(tmp_path), "run.name": "real", "data.root": str(tmp_path / "none"),
                             "submit.sample_submission": str(vin / "sample_submission.csv")})
    paths = RunPaths(run_dir=tmp_path / "real", submissions_dir=tmp_path / "submissions")
    paths.predictions_dir.mkdir(parents=True)
    from pipeline.classes import VINBIGDATA
    from pipeline.labels import dataset_yaml

    dataset_yaml(VINBIGDATA[:14], paths.dataset_yaml, VINBIGDATA[14])
    pd.DataFrame({"image_id": meta["image_id"], "split": "test", "patient_id": "", "width": meta["dim1"],
                  "height": meta["dim0"], "labels": "", "source": ""}).to_csv(paths.images_csv, index=False)
    # synthetic final predictions on half the images: a box inside each image, and a normal box
    rng = np.random.default_rng(1)
    half = meta.iloc[::2]
    x0 = rng.uniform(0, 0.5, len(half)) * half["dim1"].to_numpy()
    y0 = rng.uniform(0, 0.5, len(half)) * half["dim0"].to_numpy()
    dets = pd.concat([
        pd.DataFrame({"image_id": half["image_id"], "class_id": rng.integers(0, 14, len(half)),
                      "score": rng.uniform(0.01, 1, len(half)), "x_min": x0, "y_min": y0,
                      "x_max": x0 + 0.3 * half["dim1"].to_numpy(), "y_max": y0 + 0.3 * half["dim0"].to_numpy()}),
        pd.DataFrame({"image_id": half["image_id"], "class_id": 14, "score": 0.3, "x_min": 0.0, "y_min": 0.0,
                      "x_max": 1.0, "y_max": 1.0})], ignore_index=True)
    dets.to_csv(paths.filtered_predictions("test"), index=False)
    out = submit.run(cfg, paths)
    assert out["rows"] == 3000 and out["images_without_predictions"] == 1500
    sub = pd.read_csv(out["submission"], dtype=str)
    sample = pd.read_csv(vin / "sample_submission.csv", dtype=str)
    assert sub["image_id"].tolist() == sample["image_id"].tolist()
    validate_submission(sub, sample["image_id"].tolist(), where=out["submission"])
    back = read_submission(out["submission"])
    assert back["image_id"].nunique() == 3000
    assert len(back) == 2 * 1500 + 1500  # a box and a normal box on half, "14 1 0 0 1 1" on the rest
    # coordinates stay in original pixels (to 0.1 px)
    first = back[(back["image_id"] == half["image_id"].iloc[0]) & (back["class_id"] != 14)].iloc[0]
    assert first["x_min"] == pytest.approx(x0[0], abs=0.06)


def test_evaluate_without_detector_reports_the_classifier_alone(tmp_path):
    # A classification-only run (ChestX-ray14 recipe): no detector predictions, no fuse stage.
    cfg, paths = build_run(tmp_path)
    for p in paths.predictions_dir.glob("det_*"):
        p.unlink()
    out = evaluate.run(cfg, paths)
    # P_OOF vs labels: abnormal t1 0.99, t2 0.5, t4 0.97; normal t0 0.01, t3 0.02, t5 0.3 -> every abnormal
    # outranks every normal: AUC 1.0
    assert out["cls_auc"] == pytest.approx(1.0)
    metrics = json.loads(paths.metrics_json.read_text())
    assert metrics["detector"] is None and metrics["summary"]["cls_auc"] == pytest.approx(1.0)
    assert paths.report.is_file() and (paths.plots_dir / "classifier_roc.png").is_file()


def test_evaluate_without_any_predictions_says_what_to_run(tmp_path):
    cfg, paths = build_run(tmp_path, with_cls=False)
    for p in paths.predictions_dir.glob("det_*"):
        p.unlink()
    with pytest.raises(Exception, match="Run the fuse stage first"):
        evaluate.run(cfg, paths)


def test_fuse_takes_exactly_the_configured_models_and_folds(tmp_path):
    # files of folds 0 and 1 are on disk (an earlier config); this config uses only fold 0
    cfg, paths = build_run(tmp_path, **{"det.folds": [0]})
    fuse.run(cfg, paths)
    final = pd.read_csv(paths.filtered_predictions("oof"))
    assert set(final["image_id"]) == set(TRAIN[:3])  # fold 0's images only
    # a renamed detector: the old model's files on disk are not fused, its own are required
    with pytest.raises(DataError, match="yolo11n"):
        fuse.run(load_config(None, {**_flat(cfg), "det.name": "yolo11n"}), paths)
    # an unfinished prediction (no done record) is refused, not fused
    paths.det_predict_record("yolo", 1).unlink()
    with pytest.raises(DataError, match="not finished"):
        fuse.run(load_config(None, _flat(cfg)), paths)


def test_a_run_without_test_images_is_not_warned_about_them(tmp_path):
    """TBX11K has a train split only: no test predictions is no finding about the detector."""
    cfg, paths = build_run(tmp_path, with_cls=False)
    meta = pd.read_csv(paths.meta_csv)
    test_ids = set(meta.loc[meta["split"] == "test", "image_id"])
    meta[meta["split"] != "test"].to_csv(paths.meta_csv, index=False)
    for k in (0, 1):
        pred = pd.read_csv(paths.det_predictions("yolo", k, "test"))
        pred[~pred["image_id"].isin(test_ids)].to_csv(paths.det_predictions("yolo", k, "test"), index=False)
    fsum = fuse.run(cfg, paths)
    assert not any("test image" in w for w in fsum.get("warnings", []))
