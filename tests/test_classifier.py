"""DenseNet-121 classifier: letterbox, weights loading, checkpoints, training, the train_cls stage.

Everything runs on CPU with tiny images (DenseNet-121 at 224 px costs ~1.4 s per step of 8 images here).
"""
from __future__ import annotations

import json

import cv2
import numpy as np
import pandas as pd
import pytest
import torch

from pipeline import classifier as C
from pipeline.classifier import train as T
from pipeline.config import load_config
from pipeline.errors import ConfigError, PipelineError
from pipeline.paths import RunPaths



pytestmark = pytest.mark.usefixtures("one_torch_thread")

# ---------------------------------------------------------------------------------------------
# a tiny run directory: abnormal images carry a bright blob, normal ones do not
# ---------------------------------------------------------------------------------------------
def _image(rng, abnormal: bool, h: int = 48, w: int = 64) -> np.ndarray:
    img = rng.normal(60, 12, (h, w))
    if abnormal:
        cy, cx = rng.integers(12, h - 12), rng.integers(12, w - 12)
        yy, xx = np.mgrid[:h, :w]
        img += 170 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 4.0 ** 2))
    return np.clip(img, 0, 255).astype(np.uint8)


def make_run(root, n_train=24, n_test=6, seed=0, fmt="vinbigdata", test_labels=False):
    """images.csv, folds.csv (2 folds) and PNGs (48x64; 'original' size 4x that) under root/exp."""
    rng = np.random.default_rng(seed)
    paths = RunPaths(run_dir=root / "exp")
    rows, folds = [], []
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(n):
            iid = f"{split}{i:03d}"
            abnormal = bool(i % 2)
            p = paths.image(split, iid)
            p.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(p), _image(rng, abnormal))
            labels = ("0|3" if i % 4 == 1 else "2") if abnormal else "14"
            if split == "test" and not test_labels:
                labels = ""
            rows.append({"image_id": iid, "split": split, "patient_id": f"P{i}", "width": 256, "height": 192,
                         "labels": labels, "source": f"/raw/{iid}.dicom"})
            if split == "train":
                folds.append({"image_id": iid, "fold": (i // 2) % 2})  # both classes in both folds
    pd.DataFrame(rows).to_csv(paths.images_csv, index=False)
    pd.DataFrame(folds).to_csv(paths.folds_csv, index=False)
    from pipeline.classes import format_classes
    from pipeline.labels import dataset_yaml

    classes = format_classes(fmt)
    dataset_yaml(classes.findings, paths.dataset_yaml, classes.normal_name)
    pd.DataFrame({"image_id": [r["image_id"] for r in rows], "split": [r["split"] for r in rows], "height": 192,
                  "width": 256, "fingerprint": [f"fp-{r['image_id']}" for r in rows]}).to_csv(paths.meta_csv, index=False)
    return paths


def tiny_cfg(root, **over):
    base = {"run.root": str(root), "run.name": "exp", "run.device": "cpu", "cls.imgsz": 32, "cls.epochs": 1,
            "cls.batch": 8, "cls.folds": [0, 1], "cls.workers": 0, "cls.gradcam_n": 2, "cls.lr": 0.001,
            "cls.warmup_epochs": 0.0}
    base.update(over)
    return load_config(None, base)


# ---------------------------------------------------------------------------------------------
# pure helpers
# ---------------------------------------------------------------------------------------------
def test_letterbox_geometry_and_back_to_original():
    img = np.ones((50, 100), np.float32)
    out, lb = C.letterbox(img, 64)
    assert out.shape == (64, 64)
    assert (lb.new_w, lb.new_h, lb.pad_x, lb.pad_y) == (64, 32, 0, 16)
    assert out[:16].max() == 0 and out[48:].max() == 0 and out[16:48].min() == pytest.approx(1.0)  # black bands, centred
    # the whole picture area maps to the whole original image (here 1000 x 500 pixels)
    np.testing.assert_allclose(lb.to_source([[0, 16, 64, 48]], 1000, 500), [[0, 0, 1000, 500]])
    np.testing.assert_allclose(lb.to_source([[16, 24, 32, 40]], 1000, 500), [[250, 125, 500, 375]])


def test_read_gray_16bit(tmp_path):
    arr = np.full((8, 8), 65535, np.uint16)
    arr[0, 0] = 0
    cv2.imwrite(str(tmp_path / "a.png"), arr)
    g = C.read_gray(tmp_path / "a.png")
    assert g.dtype == np.float32 and g[0, 0] == 0 and g[1, 1] == pytest.approx(1.0)


def test_pos_weight_and_sampler_weights():
    t = np.array([[1, 0], [0, 0], [0, 0], [1, 1]], float)
    np.testing.assert_allclose(C.pos_weight_from_targets(t), [1.0, 3.0])  # 2/2, 3/1
    w = C.sample_weights(t)
    # row 0: label 0 (count 2) -> 1/2; rows 1-2: "none" group of 2 -> 1/2; row 3: max(1/2, 1/1) = 1
    np.testing.assert_allclose(w, [0.5, 0.5, 0.5, 1.0])
    wb = C.sample_weights(np.array([[1], [0], [0], [0]], float))
    np.testing.assert_allclose(wb, [1.0, 1 / 3, 1 / 3, 1 / 3])  # each class drawn half the time


def test_warmup_cosine_schedule():
    f = C.warmup_cosine(total_steps=10, warmup_steps=2)
    assert [round(f(i), 4) for i in (0, 1)] == [0.3333, 0.6667]
    assert f(2) == pytest.approx(1.0)
    assert f(6) == pytest.approx(0.5 * (1 + np.cos(np.pi * 0.5)))
    assert f(10) == pytest.approx(0.0)


def test_youden_threshold_and_metrics():
    from pipeline.metrics import metrics_at_threshold, roc_points, youden_threshold
    from sklearn.metrics import roc_curve

    y = np.array([0, 0, 0, 1, 1, 1])
    # J = TPR - FPR: 1 - 0 at 0.4 (every positive above, every negative below); 2/3 at 0.8; 1 - 1/3 at 0.3
    assert youden_threshold(y, np.array([0.1, 0.2, 0.3, 0.4, 0.8, 0.9])) == pytest.approx(0.4)
    assert youden_threshold(np.zeros(3), np.array([0.1, 0.2, 0.3])) == 0.5  # one class: undefined
    s = np.array([0.1, 0.2, 0.6, 0.4, 0.8, 0.9])
    m = metrics_at_threshold(y, s, 0.4)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (3, 1, 0, 2)
    assert m["precision"] == pytest.approx(0.75) and m["recall"] == 1.0
    assert m["f1"] == pytest.approx(2 * 0.75 / 1.75) and m["accuracy"] == pytest.approx(5 / 6)
    assert m["specificity"] == pytest.approx(2 / 3)
    # the one ROC helper agrees with scikit-learn's curve (ties included)
    s2 = np.array([0.1, 0.4, 0.4, 0.4, 0.8, 0.9])
    fpr, tpr, thr = roc_points(y, s2)
    f2, t2, th2 = roc_curve(y, s2, drop_intermediate=False)
    np.testing.assert_allclose(fpr, f2)
    np.testing.assert_allclose(tpr, t2)
    np.testing.assert_allclose(thr[1:], th2[1:])


def test_nested_youden_thresholds_come_from_the_other_folds():
    from pipeline.classifier.scoring import nested_thresholds, score_probabilities

    y = np.array([[0], [1], [0], [1], [0], [1]], float)
    p = np.array([[0.1], [0.9], [0.3], [0.5], [0.6], [0.7]])
    folds = np.array([0, 0, 1, 1, 2, 2])
    t = nested_thresholds(y, p, folds)
    # fold 0's threshold from folds 1 and 2 only: (0.3, 0), (0.5, 1), (0.6, 0), (0.7, 1) -> J is best at 0.7
    assert t[0, 0] == pytest.approx(0.7) and t[1, 0] == pytest.approx(0.7)
    res = score_probabilities(y, p, ["abnormal"], folds=folds)
    assert "nested" in res["at_threshold"]["abnormal"]["threshold_rule"]


def test_mean_auc_agrees_with_sklearn():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, (50, 3))
    p = rng.random((50, 3))
    y[:, 2] = 0  # undefined: left out of the mean
    expected = np.mean([roc_auc_score(y[:, j], p[:, j]) for j in range(2)])
    assert C.mean_auc(y, p) == pytest.approx(expected)


def test_augment_config_checked():
    assert C.build_augment({}, train=False) is None
    aug = C.build_augment({"hflip": 1.0, "shift_scale_rotate": 0, "brightness_contrast": 0})
    img = np.tile(np.linspace(0, 1, 8, dtype=np.float32), (4, 1))
    np.testing.assert_allclose(aug(image=img)["image"], img[:, ::-1])
    with pytest.raises(ConfigError, match="cls.augment: unknown key"):
        C.build_augment({"vflip": 0.5})
    with pytest.raises(ConfigError, match="cls.augment.hflip"):
        C.build_augment({"hflip": 2})


# ---------------------------------------------------------------------------------------------
# model, weights, checkpoints
# ---------------------------------------------------------------------------------------------
def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = C.build_model(3).eval()
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        before = model(x)
    path = C.save_checkpoint(model, tmp_path / "ck" / "best.pt")
    state = torch.load(path, weights_only=True)  # plain tensors only
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert "mean" not in state  # the normalisation constants are not weights
    loaded = C.load_checkpoint(path, 3)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), before)
    with pytest.raises(PipelineError, match="does not match a DenseNet-121 with 5 outputs"):
        C.load_checkpoint(path, 5)


def test_local_weights_loaded_and_checked(tmp_path):
    import torchvision

    src = torchvision.models.densenet121(weights=None)  # stands in for the ImageNet file: 1000-class head
    torch.save(src.state_dict(), tmp_path / "dn121.pth")
    model = C.build_model(1, tmp_path / "dn121.pth")
    torch.testing.assert_close(model.net.features.conv0.weight, src.features.conv0.weight)
    assert model.net.classifier.out_features == 1
    # old torchvision key names (norm.1 instead of norm1), as in densenet121-a639ec97.pth
    old = {k.replace("denselayer1.norm1", "denselayer1.norm.1"): v for k, v in src.state_dict().items()}
    torch.save(old, tmp_path / "old.pth")
    m2 = C.build_model(1, tmp_path / "old.pth")
    torch.testing.assert_close(m2.net.features.denseblock1.denselayer1.norm1.weight,
                               src.features.denseblock1.denselayer1.norm1.weight)
    # wrong shapes: a clear error naming the tensor
    bad = dict(src.state_dict())
    bad["features.conv0.weight"] = torch.zeros(64, 1, 7, 7)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(PipelineError, match=r"features\.conv0\.weight"):
        C.build_model(1, tmp_path / "bad.pth")
    with pytest.raises(PipelineError, match="weights file not found"):
        C.build_model(1, tmp_path / "nope.pth")


def test_tiny_training_loss_falls(tmp_path):
    paths = make_run(tmp_path, n_train=20, n_test=0)
    imgs = pd.read_csv(paths.images_csv)
    tr = imgs[imgs["split"] == "train"]
    y = (tr["labels"].astype(str) != "14").to_numpy(float)[:, None]
    files = [paths.image("train", i) for i in tr["image_id"]]
    train_ds = C.XrayDataset(files[:16], y[:16], 32)
    val_ds = C.XrayDataset(files[16:], y[16:], 32)
    s = C.TrainSettings(imgsz=32, epochs=3, batch=8, lr=1e-3, warmup_epochs=0, device="cpu", workers=0,
                        patience=10, augment={"hflip": 0, "shift_scale_rotate": 0, "brightness_contrast": 0})
    res = C.train_model(train_ds, val_ds, s, tmp_path / "fold")
    losses = res["train_losses"]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert (tmp_path / "fold" / "best.pt").is_file()
    log = pd.read_csv(tmp_path / "fold" / "log.csv")
    assert list(log["epoch"]) == [0, 1, 2] and log["best"].sum() >= 1


def _tiny_sets(paths, n_val=4):
    imgs = pd.read_csv(paths.images_csv)
    tr = imgs[imgs["split"] == "train"]
    y = (tr["labels"].astype(str) != "14").to_numpy(float)[:, None]
    files = [paths.image("train", i) for i in tr["image_id"]]
    return C.XrayDataset(files[:-n_val], y[:-n_val], 32), C.XrayDataset(files[-n_val:], y[-n_val:], 32)


_NO_AUG = {"hflip": 0, "shift_scale_rotate": 0, "brightness_contrast": 0}


def test_nan_loss_from_the_start_is_a_clear_error(tmp_path, monkeypatch):
    """A model that outputs NaN (what a far too high learning rate ends in): no checkpoint, and an
    error that says training diverged and which setting to lower."""
    paths = make_run(tmp_path, n_train=12, n_test=0)
    train_ds, val_ds = _tiny_sets(paths)
    real_build = C.build_model

    def nan_model(n_out, weights=None):
        model = real_build(n_out, weights)
        with torch.no_grad():
            model.net.classifier.bias.fill_(float("nan"))
        return model

    monkeypatch.setattr(T, "build_model", nan_model)
    s = C.TrainSettings(imgsz=32, epochs=2, batch=8, lr=0.05, warmup_epochs=0, device="cpu", workers=0,
                        augment=_NO_AUG)
    with pytest.raises(PipelineError, match=r"training diverged in epoch 1 .*Lower cls\.lr \(now 0\.05, e\.g\. to 0\.005\)"):
        C.train_model(train_ds, val_ds, s, tmp_path / "fold", log=lambda m: None)
    assert not (tmp_path / "fold" / "best.pt").exists()
    log = pd.read_csv(tmp_path / "fold" / "log.csv")
    assert len(log) == 1 and np.isnan(log["val_loss"][0]) and not log["best"][0]


def test_divergence_after_a_good_epoch_keeps_that_checkpoint(tmp_path, monkeypatch):
    paths = make_run(tmp_path, n_train=12, n_test=0)
    train_ds, val_ds = _tiny_sets(paths)
    real_predict, calls = C.predict_probs, []

    def nan_after_first(*a, **k):  # validation outputs turn NaN from the second epoch on
        calls.append(1)
        p = real_predict(*a, **k)
        return p if len(calls) == 1 else np.full_like(p, np.nan)

    monkeypatch.setattr(T, "predict_probs", nan_after_first)
    s = C.TrainSettings(imgsz=32, epochs=3, batch=8, lr=1e-3, warmup_epochs=0, device="cpu", workers=0,
                        augment=_NO_AUG)
    res = C.train_model(train_ds, val_ds, s, tmp_path / "fold", log=lambda m: None,
                        checkpoint=tmp_path / "elsewhere" / "w.pt", log_csv=tmp_path / "elsewhere" / "log.csv")
    assert res["best_epoch"] == 0 and res["diverged_epoch"] == 1 and res["epochs_run"] == 2
    assert res["checkpoint"] == str(tmp_path / "elsewhere" / "w.pt")
    C.load_checkpoint(tmp_path / "elsewhere" / "w.pt", 1)  # loadable
    assert list(pd.read_csv(tmp_path / "elsewhere" / "log.csv")["best"]) == [True, False]


# ---------------------------------------------------------------------------------------------
# the stage
# ---------------------------------------------------------------------------------------------
def test_stage_writes_predictions_metrics_and_plots(tmp_path):
    from pipeline.stages import train_cls

    paths = make_run(tmp_path, n_train=16, n_test=4)
    cfg = tiny_cfg(tmp_path)
    summary = train_cls.run(cfg, paths)
    oof = pd.read_csv(paths.cls_predictions("densenet121", "oof"), dtype={"image_id": str})
    test = pd.read_csv(paths.cls_predictions("densenet121", "test"), dtype={"image_id": str})
    assert list(oof.columns) == ["image_id", "fold", "p_abnormal"]
    assert list(test.columns) == ["image_id", "p_abnormal"]
    assert sorted(oof["image_id"]) == [f"train{i:03d}" for i in range(16)]
    assert list(test["image_id"]) == [f"test{i:03d}" for i in range(4)]
    folds = pd.read_csv(paths.folds_csv, dtype={"image_id": str}).set_index("image_id")["fold"]
    assert (oof.set_index("image_id")["fold"] == folds.loc[oof["image_id"]]).all()
    assert oof["p_abnormal"].between(0, 1).all() and test["p_abnormal"].between(0, 1).all()
    # the test probability is the mean of the two folds' test predictions
    f0 = pd.read_csv(paths.cls_dir("densenet121", 0) / "test.csv")["p_abnormal"]
    f1 = pd.read_csv(paths.cls_dir("densenet121", 1) / "test.csv")["p_abnormal"]
    np.testing.assert_allclose(test["p_abnormal"], (f0 + f1) / 2, rtol=1e-5)
    root = paths.cls_dir("densenet121", 0).parent
    metrics = json.loads((root / "metrics.json").read_text())
    assert metrics["labels"] == ["abnormal"] and metrics["n_oof"] == 16
    assert summary["cls_oof_auc"] == metrics["oof"]["auc"]["mean"]
    assert 0 <= summary["cls_oof_auc"] <= 1
    assert (root / "roc.png").stat().st_size > 1000
    assert len(list((root / "gradcam").glob("*.png"))) == 2
    for k in (0, 1):
        assert paths.cls_weights("densenet121", k).is_file()
    # a rerun with the same config reuses the finished folds
    again = train_cls.run(cfg, paths)
    assert again["cls_oof_auc"] == summary["cls_oof_auc"]


def test_stage_runs_with_every_epoch_rule(tmp_path, capsys):
    """cls.select=last and best_on_fold_optimistic train and predict too (last has no selection images:
    the stage once crashed building its log line)."""
    from pipeline.stages import train_cls

    paths = make_run(tmp_path, n_train=16, n_test=0)
    for select, words in (("last", "last epoch kept"), ("best_on_fold_optimistic", "on the fold itself")):
        summary = train_cls.run(tiny_cfg(tmp_path, **{"cls.select": select, "cls.folds": [0],
                                                      "cls.name": f"m_{select}", "cls.gradcam_n": 0}), paths)
        assert words in capsys.readouterr().out
        oof = pd.read_csv(paths.cls_predictions(f"m_{select}", "oof"), dtype={"image_id": str})
        assert len(oof) == 8 and oof["p_abnormal"].between(0, 1).all()
        assert 0 <= summary["cls_oof_auc"] <= 1 or np.isnan(summary["cls_oof_auc"])


def test_one_fold_per_job_combines_every_finished_fold(tmp_path, monkeypatch, capsys):
    """The README's scale-out recipe: job 1 trains cls.folds=[0], job 2 cls.folds=[1]. After job 2 the
    prediction files cover both folds (oof) and average both models (test); fold 0 is not retrained."""
    from pipeline.runner import run_stage
    from pipeline.stages import train_cls

    paths = make_run(tmp_path, n_train=16, n_test=4)
    run_stage("train_cls", tiny_cfg(tmp_path, **{"cls.folds": [0]}))
    oof1 = pd.read_csv(paths.cls_predictions("densenet121", "oof"), dtype={"image_id": str})
    assert set(oof1["fold"]) == {0} and len(oof1) == 8
    w0 = paths.cls_weights("densenet121", 0)
    w0_mtime = w0.stat().st_mtime_ns

    summary = run_stage("train_cls", tiny_cfg(tmp_path, **{"cls.folds": [1]}))
    assert not summary["skipped"] and summary["cls_folds"] == [0, 1] and "warnings" not in summary
    assert w0.stat().st_mtime_ns == w0_mtime  # job 2 did not touch fold 0
    oof = pd.read_csv(paths.cls_predictions("densenet121", "oof"), dtype={"image_id": str})
    assert sorted(oof["image_id"]) == [f"train{i:03d}" for i in range(16)]
    folds = pd.read_csv(paths.folds_csv, dtype={"image_id": str}).set_index("image_id")["fold"]
    assert (oof.set_index("image_id")["fold"] == folds.loc[oof["image_id"]]).all()
    f0 = pd.read_csv(paths.cls_dir("densenet121", 0) / "test.csv", dtype={"image_id": str})
    f1 = pd.read_csv(paths.cls_dir("densenet121", 1) / "test.csv", dtype={"image_id": str})
    test = pd.read_csv(paths.cls_predictions("densenet121", "test"), dtype={"image_id": str})
    assert list(test["image_id"]) == list(f0["image_id"]) == [f"test{i:03d}" for i in range(4)]
    assert not np.allclose(f0["p_abnormal"], f1["p_abnormal"])  # two different models
    np.testing.assert_allclose(test["p_abnormal"], (f0["p_abnormal"] + f1["p_abnormal"]) / 2, rtol=1e-6)
    metrics = json.loads(paths.cls_metrics("densenet121").read_text())
    assert metrics["folds"] == [0, 1] and metrics["n_oof"] == 16

    # reporting keys (gradcam_n) and prediction keys (tta_flip) never retrain a fold
    def no_training(*a, **k):
        raise AssertionError("a fold was retrained")

    monkeypatch.setattr(C, "train_model", no_training)  # the stage calls it through the package
    train_cls.run(tiny_cfg(tmp_path, **{"cls.gradcam_n": 1, "cls.cam_threshold": 0.3}), paths)
    test_again = pd.read_csv(paths.cls_predictions("densenet121", "test"), dtype={"image_id": str})
    np.testing.assert_allclose(test_again["p_abnormal"], test["p_abnormal"])
    capsys.readouterr()
    summary = train_cls.run(tiny_cfg(tmp_path, **{"cls.folds": [1], "cls.tta_flip": False}), paths)
    out = capsys.readouterr().out
    assert "fold 1: trained earlier with the same inputs: skipped" in out  # predicted again, not retrained
    # fold 0 still holds tta_flip=true predictions: not mixed in, and the warning names it
    assert summary["cls_folds"] == [1] and "fold(s) [0]" in out and "[0]" in summary["warnings"][0]
    assert w0.stat().st_mtime_ns == w0_mtime
    oof_noflip = pd.read_csv(paths.cls_predictions("densenet121", "oof"), dtype={"image_id": str})
    assert set(oof_noflip["fold"]) == {1} and len(oof_noflip) == 8


def test_stage_multilabel_chestxray14_with_test_labels_and_localisation(tmp_path):
    from pipeline.classes import finding_names
    from pipeline.stages import train_cls

    paths = make_run(tmp_path, n_train=12, n_test=4, fmt="chestxray14", test_labels=True)
    # BBox_List-like boxes (original 256x192 pixels) on two test images
    pd.DataFrame([
        {"image_id": "test001", "class_id": 0, "class_name": "Atelectasis", "rad_id": "NIH",
         "x_min": 40, "y_min": 40, "x_max": 120, "y_max": 100},
        {"image_id": "test003", "class_id": 3, "class_name": "Infiltration", "rad_id": "NIH",
         "x_min": 10, "y_min": 20, "x_max": 60, "y_max": 80},
        {"image_id": "train000", "class_id": 14, "class_name": "No Finding", "rad_id": "NIH",
         "x_min": None, "y_min": None, "x_max": None, "y_max": None},
    ]).to_csv(paths.annotations_csv, index=False)
    cfg = tiny_cfg(tmp_path, **{"cls.task": "multilabel", "data.format": "chestxray14", "cls.folds": [0],
                                "cls.tta_flip": False, "cls.balance": "sampler", "cls.optimizer": "radam"})
    summary = train_cls.run(cfg, paths)
    oof = pd.read_csv(paths.cls_predictions("densenet121", "oof"))
    expected = ["image_id", "fold"] + [f"p_{n}" for n in finding_names("chestxray14")]
    assert list(oof.columns) == expected and len(oof) == 6 and set(oof["fold"]) == {0}
    metrics = json.loads((paths.cls_dir("densenet121", 0).parent / "metrics.json").read_text())
    assert "test" in metrics and "cls_test_auc" in summary
    assert metrics["oof"]["auc"]["Cardiomegaly"] is None or 0 <= metrics["oof"]["auc"]["Cardiomegaly"] <= 1
    loc = metrics["localization"]
    assert loc["n_boxes"] == 2 and set(loc["overall"]) == {"0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7"}
    assert set(loc["per_class"]) == {"Atelectasis", "Infiltration"}
    cam = pd.read_csv(paths.cls_dir("densenet121", 0).parent / "cam_boxes.csv")
    assert set(zip(cam["image_id"], cam["class_id"])) <= {("test001", 0), ("test003", 3)}
    assert (cam["x_max"] <= 256).all() and (cam["y_max"] <= 192).all()  # original pixels


def test_stage_missing_weights_file_is_a_clear_error(tmp_path):
    from pipeline.stages import train_cls

    paths = make_run(tmp_path, n_train=4, n_test=0)
    cfg = tiny_cfg(tmp_path, **{"cls.weights": str(tmp_path / "missing.pth")})
    with pytest.raises(ConfigError, match="cls.weights: weights file not found: .*missing.pth"):
        train_cls.run(cfg, paths)


def test_stage_reports_missing_pngs_and_bad_folds(tmp_path):
    from pipeline.stages import train_cls

    paths = make_run(tmp_path, n_train=8, n_test=0)
    with pytest.raises(ConfigError, match=r"cls.folds: fold\(s\) \[3\]"):
        train_cls.run(tiny_cfg(tmp_path, **{"cls.folds": [3]}), paths)
    with pytest.raises(ConfigError, match="cls.task"):
        train_cls.run(tiny_cfg(tmp_path, **{"cls.task": "multiclass"}), paths)
    (paths.run_dir / "folds.csv").unlink()
    with pytest.raises(PipelineError, match="folds.csv: fold table not found; run the folds stage"):
        train_cls.run(tiny_cfg(tmp_path), paths)


def test_epoch_is_never_chosen_on_the_reported_fold(tmp_path):
    """cls.select=inner: the epoch-choosing images are a patient-grouped part of the TRAINING folds; the
    optimistic option (named so) uses the reported fold itself; last uses none."""
    from pipeline.stages.train_cls import _Folds, _tables

    paths = make_run(tmp_path, n_train=40, n_test=0)
    for select, expect in (("inner", "inner"), ("last", None), ("best_on_fold_optimistic", "fold")):
        cfg = tiny_cfg(tmp_path, **{"cls.select": select})
        train, test, targets, known, fps, _ = _tables(cfg, paths)
        f = _Folds(cfg, paths, train, test, targets, fps, 1)
        for k in (0, 1):
            fit, sel, oof = f.rows(k)
            assert not (fit & oof).any() and (fit | oof).sum() <= len(train)
            if expect is None:
                assert sel is None and (fit | oof).all()
            elif expect == "fold":
                assert (sel == oof).all()
            else:
                assert sel.any() and not (sel & oof).any() and not (sel & fit).any()
                pats = set(train.loc[sel, "patient_id"])
                assert not pats & set(train.loc[fit, "patient_id"])  # grouped by patient
    with pytest.raises(ConfigError, match="cls.select"):
        from pipeline.classifier.targets import check_cls_config

        check_cls_config(tiny_cfg(tmp_path, **{"cls.select": "best"}))


@pytest.mark.slow
def test_stage_learns_the_blob_task(tmp_path):
    """A real (small) training: 64 images, 64 px, 6 epochs, one fold; the blob must be found."""
    from pipeline.stages import train_cls

    paths = make_run(tmp_path, n_train=64, n_test=0, seed=3)
    cfg = tiny_cfg(tmp_path, **{"cls.imgsz": 64, "cls.epochs": 6, "cls.folds": [0], "cls.lr": 0.001,
                                "cls.gradcam_n": 0})
    summary = train_cls.run(cfg, paths)
    assert summary["cls_oof_auc"] > 0.8


def test_targets_from_labels_and_fused_boxes(tmp_path):
    from pipeline.errors import DataError
    from pipeline.classifier.targets import build_targets

    images = pd.DataFrame({"image_id": ["a", "b", "c", "d"], "labels": ["0|3", "14", "", "13"]})
    t, known = build_targets(images, tiny_cfg(tmp_path), None, tmp_path / "images.csv")
    np.testing.assert_array_equal(t[:, 0], [1, 0, 0, 1])
    np.testing.assert_array_equal(known, [True, True, False, True])  # empty labels: unknown
    t, _ = build_targets(images, tiny_cfg(tmp_path, **{"cls.task": "multilabel"}), None, tmp_path / "images.csv")
    assert t.shape == (4, 14) and t[0].nonzero()[0].tolist() == [0, 3] and t[3].nonzero()[0].tolist() == [13]
    assert t[1].sum() == 0
    # fused: abnormal only where boxes.csv keeps a finding box (a's readers disagreed; fusion dropped it)
    boxes = pd.DataFrame({"image_id": ["a", "b", "d"], "class_id": [14, 14, 13]})
    t, known = build_targets(images, tiny_cfg(tmp_path, **{"cls.binary_source": "fused"}), boxes, tmp_path / "i.csv")
    np.testing.assert_array_equal(t[:, 0], [0, 0, 0, 1])
    np.testing.assert_array_equal(known, [True, True, False, True])  # c: unlabelled, not in boxes.csv
    bad = pd.DataFrame({"image_id": ["x"], "labels": ["0|cat"]})
    with pytest.raises(DataError, match=r"row 2 \(image x\)"):
        build_targets(bad, tiny_cfg(tmp_path), None, tmp_path / "images.csv")


def test_training_with_augmentation_is_repeatable(tmp_path):
    """albumentations draws from its own generator: seeded, two trainings give the same weights."""
    paths = make_run(tmp_path, n_train=12, n_test=0)
    train_ds, val_ds = _tiny_sets(paths)
    train_ds.transform = C.build_augment({"hflip": 0.5, "shift_scale_rotate": 1.0, "brightness_contrast": 1.0}, seed=5)
    s = C.TrainSettings(imgsz=32, epochs=1, batch=4, lr=1e-3, warmup_epochs=0, device="cpu", workers=0, seed=5)
    weights = []
    for run in ("a", "b"):
        C.train_model(train_ds, val_ds, s, tmp_path / run, log=lambda m: None)
        weights.append(torch.load(tmp_path / run / "best.pt", weights_only=True))
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
