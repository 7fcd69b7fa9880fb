"""Detector wrapper: device choice, model checks, coordinate mapping, and a tiny real CPU training
plus prediction on a hand-built run directory (original sizes 2x / 1.5x the PNGs)."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pandas as pd
import pytest
import yaml

from pipeline.config import load_config
from pipeline.errors import ConfigError, PipelineError
from pipeline.paths import RunPaths

# PNG size (what prepare wrote) and ORIGINAL size per image group: scale 2 and scale 1.5.
PNG_W, PNG_H = 96, 80
ORIG = [(192, 160), (144, 120)]


def _draw(rng, n_objects):
    """Noisy grey image with bright rectangles (class 0) and ellipses (class 1); boxes in PNG pixels."""
    im = rng.normal(60, 12, (PNG_H, PNG_W)).clip(0, 255).astype(np.uint8)
    boxes = []
    for _ in range(n_objects):
        cls = int(rng.integers(0, 2))
        w, h = int(rng.integers(18, 34)), int(rng.integers(16, 30))
        x0, y0 = int(rng.integers(0, PNG_W - w)), int(rng.integers(0, PNG_H - h))
        if cls == 0:
            cv2.rectangle(im, (x0, y0), (x0 + w - 1, y0 + h - 1), 230, -1)
        else:
            cv2.ellipse(im, (x0 + w // 2, y0 + h // 2), (w // 2, h // 2), 0, 0, 360, 200, -1)
        boxes.append((cls, x0, y0, x0 + w, y0 + h))
    return im, boxes


def build_run(root, n_train=24, n_test=4, n_splits=2, seed=0):
    """A run directory as prepare + folds leave it: PNGs, YOLO labels, images/meta/boxes.csv, dataset.yaml."""
    from pipeline.folds import make_folds

    paths = RunPaths(run_dir=root / "tiny")
    rng = np.random.default_rng(seed)
    images, meta, truth = [], [], []
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(n):
            image_id = f"{split}{i:03d}"
            width, height = ORIG[i % 2]
            im, boxes = _draw(rng, 1 + i % 2)
            paths.image(split, image_id).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(paths.image(split, image_id)), im)
            labels = sorted({b[0] for b in boxes})
            if split == "train":
                lines = []
                for cls, x0, y0, x1, y1 in boxes:
                    lines.append(f"{cls} {(x0 + x1) / 2 / PNG_W:.6f} {(y0 + y1) / 2 / PNG_H:.6f} "
                                 f"{(x1 - x0) / PNG_W:.6f} {(y1 - y0) / PNG_H:.6f}\n")
                    sx, sy = width / PNG_W, height / PNG_H
                    truth.append({"image_id": image_id, "class_name": ["rect", "ellipse"][cls], "class_id": cls,
                                  "rad_id": "fused", "x_min": x0 * sx, "y_min": y0 * sy, "x_max": x1 * sx,
                                  "y_max": y1 * sy, "n_readers": 1})
                paths.label(split, image_id).parent.mkdir(parents=True, exist_ok=True)
                paths.label(split, image_id).write_text("".join(lines))
            images.append({"image_id": image_id, "split": split, "patient_id": f"p{i // 2}" if split == "train" else "",
                           "width": width, "height": height,
                           "labels": "|".join(map(str, labels)) if split == "train" else "", "source": ""})
            meta.append({"image_id": image_id, "split": split, "height": height, "width": width,
                         "out_height": PNG_H, "out_width": PNG_W, "fingerprint": f"fp-{image_id}"})
    pd.DataFrame(images).to_csv(paths.images_csv, index=False)
    pd.DataFrame(meta).to_csv(paths.meta_csv, index=False)
    pd.DataFrame(truth).to_csv(paths.boxes_csv, index=False)
    paths.dataset_yaml.write_text(yaml.safe_dump({"path": str(paths.run_dir), "nc": 2,
                                                  "names": {0: "rect", 1: "ellipse"}}))
    table = pd.read_csv(paths.images_csv, dtype=str, keep_default_na=False)
    folds = make_folds(table, n_splits, seed)
    folds.to_csv(paths.folds_csv, index=False)
    from pipeline.roles import detection_roles

    detection_roles(table, pd.read_csv(paths.boxes_csv, dtype={"image_id": str}), 2, [0, 1]).to_csv(
        paths.detection_csv, index=False)
    return paths


def tiny_cfg(tmp_path, **extra):
    overrides = {"run.root": str(tmp_path), "run.name": "tiny", "run.device": "cpu", "run.workers": 1,
                 "det.model": "yolov8n.yaml", "det.imgsz": 64, "det.epochs": 1, "det.batch": 8, "det.folds": [0],
                 "det.conf": 0.0001, "det.predict_batch": 4, "det.tta_flip": True,
                 "det.train_args": {"mosaic": 0.0, "warmup_epochs": 0}}
    overrides.update(extra)
    return load_config(None, overrides)


# --- pure parts ---------------------------------------------------------------------------------

def test_png_to_original_known_values():
    from pipeline.frames import png_to_original

    def png_to_original_xyxy(b, pw, ph, w, h):
        return png_to_original(b, pw, ph, (0, 0, w, h), w, h)

    # PNG 96x80 of an original 192x160 (x2): a box (10, 20, 30, 40) becomes (20, 40, 60, 80).
    out = png_to_original_xyxy([[10, 20, 30, 40]], 96, 80, 192, 160)
    np.testing.assert_allclose(out, [[20, 40, 60, 80]])
    # Non-uniform scale (square PNG 100x100 of a 300x200 original): x * 3, y * 2; clipped to the image.
    out = png_to_original_xyxy([[90, 95, 120, 101], [-5, 0, 10, 10]], 100, 100, 300, 200)
    np.testing.assert_allclose(out, [[270, 190, 300, 200], [0, 0, 30, 20]])
    assert png_to_original_xyxy(np.zeros((0, 4)), 10, 10, 20, 20).shape == (0, 4)


def test_resolve_device():
    from pipeline.detector import resolve_detector_device as resolve_device

    assert resolve_device("cpu") == "cpu"
    assert resolve_device("0") == 0
    assert resolve_device(1) == 1
    assert resolve_device("0,1") == [0, 1]
    assert resolve_device([2, 3]) == [2, 3]
    import torch

    assert resolve_device("auto") == (0 if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="run.device"):
        resolve_device("gpu")


def test_check_model_spec(tmp_path):
    from pipeline.detector import check_model_spec

    assert check_model_spec("yolov8n.yaml") == "yolov8n.yaml"
    with pytest.raises(PipelineError, match=r"yolov8n\.yaml"):  # would download: refused, YAML suggested
        check_model_spec("yolov8n.pt")
    local = tmp_path / "mine.pt"
    local.write_bytes(b"x")
    assert check_model_spec(str(local)) == str(local.resolve())
    with pytest.raises(ConfigError):
        check_model_spec("yolov8n")


def test_build_train_args_fixed_dir_and_overrides(tmp_path):
    from pipeline.detector import build_train_args

    det_dir = tmp_path / "det" / "m" / "fold3"
    args = build_train_args(data_yaml=det_dir / "data.yaml", det_dir=det_dir, epochs=2, imgsz=64, batch=4,
                            device="cpu", seed=7, workers=1, extra={"lr0": 0.02, "amp": False})
    assert args["project"] == str((tmp_path / "det" / "m").resolve()) and args["name"] == "fold3"
    assert args["exist_ok"] is True and args["amp"] is False and args["lr0"] == 0.02 and args["seed"] == 7
    assert build_train_args(data_yaml=det_dir, det_dir=det_dir, epochs=1, imgsz=64, batch=4, device=0,
                            seed=0, workers=1)["amp"] is True


class _FakeCudaModel:
    """Stands in for a model on GPU 0: ``offline_check_amp`` only looks at its parameters' device."""

    def parameters(self):
        import torch

        class P:
            device = torch.device("cuda", 0)

        yield P()


def test_offline_amp_check_has_no_download(monkeypatch):
    """The AMP stand-in: off on CPU, on for a current GPU, off for a GPU ultralytics blacklists;
    never loads weights (a download would also trip the autouse network guard)."""
    import torch

    import ultralytics.utils.checks as checks
    from pipeline.detector import offline_check_amp

    assert offline_check_amp(torch.nn.Linear(2, 2)) is False
    monkeypatch.setattr(checks, "check_amp", lambda *a, **k: pytest.fail("ultralytics' check_amp was called"))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    assert offline_check_amp(_FakeCudaModel()) is True
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA GeForce GTX 1660 Ti")
    assert offline_check_amp(_FakeCudaModel()) is False


def test_offline_trainer_swaps_check_amp_during_setup_only(monkeypatch):
    """Inside ``_setup_train`` the trainer module's ``check_amp`` is ours; afterwards (also after an
    error) ultralytics' own is back in place."""
    import torch

    import ultralytics.engine.trainer as trainer_module
    from pipeline import detector

    original = trainer_module.check_amp
    cls = detector.offline_trainer_class()
    assert detector.OfflineDetectionTrainer is cls and cls.__module__ == "pipeline.detector"
    seen = []

    def fake_setup(self):  # what BaseTrainer._setup_train does with AMP, minus everything else
        seen.append((trainer_module.check_amp, trainer_module.check_amp(_FakeCudaModel())))
        if len(seen) == 2:
            raise RuntimeError("setup failed")
        return "ok"

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100-SXM4-80GB")
    monkeypatch.setattr(trainer_module.BaseTrainer, "_setup_train", fake_setup)
    trainer = object.__new__(cls)  # no __init__: only the setup hook is under test
    assert trainer._setup_train() == "ok"
    assert seen[0] == (detector.offline_check_amp, True)
    assert trainer_module.check_amp is original
    with pytest.raises(RuntimeError, match="setup failed"):
        trainer._setup_train()
    assert seen[1][0] is detector.offline_check_amp and trainer_module.check_amp is original


# --- tiny real training and prediction ------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One CPU epoch of yolov8n.yaml at 64 px on 12 images, then prediction of fold 0 (oof + test)."""
    import socket

    tmp_path = tmp_path_factory.mktemp("det")
    build_run(tmp_path)
    cfg = tiny_cfg(tmp_path)
    paths = RunPaths.from_config(cfg)
    # Module-scoped: guard the network here too (the autouse guard is per test).
    attempts = []
    real_connect, real_gai = socket.socket.connect, socket.getaddrinfo

    def connect(sock, address):
        if isinstance(address, tuple) and address and not str(address[0]).startswith("127."):
            attempts.append(address)
            raise AssertionError(f"network connection attempted: {address!r}")
        return real_connect(sock, address)

    def gai(host, *a, **k):
        if host not in ("localhost", None) and not str(host).startswith("127."):
            attempts.append(host)
            raise AssertionError(f"DNS lookup attempted: {host!r}")
        return real_gai(host, *a, **k)

    mp = pytest.MonkeyPatch()
    mp.setattr(socket.socket, "connect", connect)
    mp.setattr(socket, "getaddrinfo", gai)
    try:
        from pipeline.stages import predict, train_det

        train_summary = train_det.run(cfg, paths)
        predict_summary = predict.run(cfg, paths)
    finally:
        mp.undo()
    assert not attempts, attempts
    return cfg, paths, train_summary, predict_summary


def test_train_writes_fixed_fold_dir(trained):
    cfg, paths, summary, _ = trained
    det_dir = paths.det_dir("yolov8n", 0)
    assert summary["fold0"] == "trained"
    assert paths.det_weights("yolov8n", 0).is_file()
    assert json.loads(paths.det_train_record("yolov8n", 0).read_text())["status"] == "done"
    assert not (det_dir.parent / "fold02").exists()  # exist_ok: never an auto-incremented folder
    train_list = (det_dir / "train.txt").read_text().split()
    val_list = (det_dir / "val.txt").read_text().split()
    folds = pd.read_csv(paths.folds_csv, dtype={"image_id": str})
    assert sorted(val_list) == sorted(str(paths.image("train", i).resolve()) for i in folds[folds.fold == 0].image_id)
    assert len(train_list) + len(val_list) == 24 and not set(train_list) & set(val_list)
    data = yaml.safe_load((det_dir / "data.yaml").read_text())
    assert data["names"] == {0: "rect", 1: "ellipse"} and data["nc"] == 2
    # the YAML's nc was replaced by the data's: 2 classes in the trained head
    import torch

    ckpt = torch.load(paths.det_weights("yolov8n", 0), map_location="cpu", weights_only=False)
    assert ckpt["model"].nc == 2 and ckpt["train_args"]["amp"] is False
    assert ckpt["train_args"]["patience"] == 0  # det.select=last: no early stop on the fold's own images


def test_finished_fold_is_skipped(trained):
    from pipeline.stages import train_det

    cfg, paths, _, _ = trained
    before = paths.det_weights("yolov8n", 0).stat().st_mtime
    summary = train_det.run(cfg, paths)
    assert summary["fold0"] == "skipped"
    assert paths.det_weights("yolov8n", 0).stat().st_mtime == before


def test_predictions_in_original_pixels(trained):
    cfg, paths, _, summary = trained
    oof = pd.read_csv(paths.det_predictions("yolov8n", 0, "oof"), dtype={"image_id": str})
    test = pd.read_csv(paths.det_predictions("yolov8n", 0, "test"), dtype={"image_id": str})
    cols = ["image_id", "class_id", "score", "x_min", "y_min", "x_max", "y_max", "tta"]
    assert list(oof.columns) == cols and list(test.columns) == cols
    assert set(oof["tta"]) == {"orig", "hflip"} and set(test["tta"]) == {"orig", "hflip"}
    folds = pd.read_csv(paths.folds_csv, dtype={"image_id": str})
    assert set(oof["image_id"]) <= set(folds.loc[folds.fold == 0, "image_id"])
    assert set(test["image_id"]) <= {f"test{i:03d}" for i in range(4)}
    meta = pd.read_csv(paths.meta_csv, dtype={"image_id": str}).set_index("image_id")
    for df in (oof, test):
        w = meta.loc[df["image_id"], "width"].to_numpy()
        h = meta.loc[df["image_id"], "height"].to_numpy()
        assert (df.x_min >= 0).all() and (df.y_min >= 0).all()
        assert (df.x_max <= w).all() and (df.y_max <= h).all() and (df.x_min <= df.x_max).all()
        # an untrained-ish model still puts boxes everywhere: some must lie beyond the PNG's own width,
        # which only happens when they were scaled up to the original size
        assert (df.x_max > PNG_W).any()
    assert set(oof["class_id"]) <= {0, 1}
    # the oof score against boxes.csv (findings only), when pipeline.metrics is there
    try:
        import pipeline.metrics  # noqa: F401
    except ImportError:
        return
    assert 0.0 <= summary["fold0_oof_map_findings"] <= 1.0


def test_predict_flip_maps_back(trained):
    """TTA on a mirrored copy M of image A: its hflip rows are the model's boxes on mirror(M) = A,
    mapped into M's frame, so they must equal A's orig rows mirrored (x -> 192 - x, in original pixels)."""
    from pipeline.detector import import_ultralytics, predict_images

    cfg, paths, _, _ = trained
    YOLO = import_ultralytics()
    model = YOLO(str(paths.det_weights("yolov8n", 0)))
    src = paths.image("test", "test000")
    mirrored = src.parent / "mirror.png"
    cv2.imwrite(str(mirrored), np.ascontiguousarray(cv2.imread(str(src), cv2.IMREAD_UNCHANGED)[:, ::-1]))
    opts = dict(imgsz=64, conf=0.0001, iou=0.5, max_det=20, batch=2, device="cpu", tta_flip=True)
    a, fa = predict_images(model, [("a", src, 192, 160)], **opts)
    b, fb = predict_images(model, [("b", mirrored, 192, 160)], **opts)
    mirrored.unlink()
    assert not fa and not fb
    orig_a = a[a.tta == "orig"].copy()
    orig_a["x_min"], orig_a["x_max"] = 192 - orig_a["x_max"], 192 - orig_a["x_min"]
    flip_b = b[b.tta == "hflip"]
    assert len(orig_a) == len(flip_b) > 0
    key = ["score", "x_min", "y_min", "x_max", "y_max"]
    np.testing.assert_allclose(orig_a.sort_values(key)[key].to_numpy(), flip_b.sort_values(key)[key].to_numpy(),
                               atol=1e-3)


def test_missing_png_is_recorded_not_fatal(trained):
    from pipeline.detector import import_ultralytics, predict_images

    cfg, paths, _, _ = trained
    model = import_ultralytics()(str(paths.det_weights("yolov8n", 0)))
    det, failures = predict_images(model, [("gone", paths.run_dir / "nope.png", 10, 10),
                                           ("test001", paths.image("test", "test001"), 144, 120)],
                                   imgsz=64, conf=0.0001, iou=0.5, max_det=5, batch=2, device="cpu", tta_flip=False)
    assert [f["image_id"] for f in failures] == ["gone"]
    assert set(det["image_id"]) == {"test001"} and set(det["tta"]) == {"orig"}


def test_predict_rerun_follows_options_and_weights_content(trained, tmp_path):
    """Same inputs: skipped. Other det.conf: predicted again, fewer boxes. Touched weights: skipped (content
    rule); weights with other content: predicted again. Each fold has its own failures file."""
    import os
    import shutil

    import torch

    from pipeline.stages import predict

    cfg0, paths0, _, _ = trained
    shutil.copytree(paths0.run_dir, tmp_path / "tiny")  # another folder: paths differ, content does not
    cfg = tiny_cfg(tmp_path)
    paths = RunPaths.from_config(cfg)
    oof_path = paths.det_predictions("yolov8n", 0, "oof")
    record = json.loads(paths.det_predict_record("yolov8n", 0).read_text())
    assert record["status"] == "done" and record["inputs"]["options"]["conf"] == pytest.approx(0.0001)
    assert list(pd.read_csv(paths.det_failures("yolov8n", 0)).columns) == ["fold", "image_id", "path", "error"]
    mtime = oof_path.stat().st_mtime_ns
    assert predict.run(cfg, paths)["skipped"]
    assert oof_path.stat().st_mtime_ns == mtime
    n_before = len(pd.read_csv(oof_path))

    cfg2 = tiny_cfg(tmp_path, **{"det.conf": 0.2})
    summary = predict.run(cfg2, paths)
    assert not summary["skipped"] and oof_path.stat().st_mtime_ns != mtime
    oof = pd.read_csv(oof_path)
    assert len(oof) < n_before and (oof["score"] >= 0.2).all()
    assert summary["failures"] == 0
    mtime2 = oof_path.stat().st_mtime_ns
    w = paths.det_weights("yolov8n", 0)
    os.utime(w, ns=(w.stat().st_atime_ns, w.stat().st_mtime_ns + 10**9))
    predict.run(cfg2, paths)
    assert oof_path.stat().st_mtime_ns == mtime2  # touched, same bytes: nothing redone
    ckpt = torch.load(w, map_location="cpu", weights_only=False)
    ckpt["date"] = "another training"
    torch.save(ckpt, w)
    predict.run(cfg2, paths)
    assert oof_path.stat().st_mtime_ns != mtime2  # other weights: predicted again
    # a deleted prediction file is rebuilt without training
    oof_path.unlink()
    predict.run(cfg2, paths)
    assert oof_path.is_file()


def test_predict_imgsz_predicts_at_its_own_size_without_retraining(trained, tmp_path, monkeypatch):
    """det.predict_imgsz: the predict record says that size, the model is asked for it, training is untouched."""
    import shutil

    from pipeline import detector
    from pipeline.stages import predict

    _, paths0, _, _ = trained
    shutil.copytree(paths0.run_dir, tmp_path / "tiny")
    sizes = []
    real = detector.predict_images

    def spy(model, items, **kw):
        sizes.append(kw["imgsz"])
        return real(model, items, **kw)

    monkeypatch.setattr(detector, "predict_images", spy)
    cfg = tiny_cfg(tmp_path, **{"det.predict_imgsz": 96})
    paths = RunPaths.from_config(cfg)
    train_record = paths.det_train_record("yolov8n", 0).read_bytes()
    assert not predict.run(cfg, paths)["skipped"] and set(sizes) == {96}
    record = json.loads(paths.det_predict_record("yolov8n", 0).read_text())
    assert record["inputs"]["options"]["imgsz"] == 96
    assert paths.det_train_record("yolov8n", 0).read_bytes() == train_record
    assert detector.predict_imgsz(tiny_cfg(tmp_path).det) == 64  # null: the training size
    for bad in (100, "big", 0):
        with pytest.raises(ConfigError, match="det.predict_imgsz"):
            detector.predict_imgsz(tiny_cfg(tmp_path, **{"det.predict_imgsz": bad}).det)


class FakeYOLO:
    """Stands in for ultralytics.YOLO in the bookkeeping tests: records calls, writes weights/last.pt."""
    calls: list = []

    def __init__(self, spec):
        FakeYOLO.calls.append(("init", str(spec)))
        self.spec = spec

    def train(self, **kw):
        FakeYOLO.calls.append(("train", kw))
        from pathlib import Path

        out = Path(kw["project"]) / kw["name"] if "project" in kw else Path(self.spec).parent.parent
        (out / "weights").mkdir(parents=True, exist_ok=True)
        (out / "weights" / "last.pt").write_bytes(json.dumps(kw, default=str).encode())


@pytest.fixture
def fake_yolo(monkeypatch):
    from pipeline import detector

    FakeYOLO.calls = []
    monkeypatch.setattr(detector, "import_ultralytics", lambda threads=None: FakeYOLO)
    monkeypatch.setattr(detector, "offline_trainer_class", lambda: object)
    monkeypatch.setattr(detector, "_model_exists", lambda spec: None)
    return FakeYOLO


def test_interrupted_fold_resumes(tmp_path, fake_yolo):
    """A started record with the same inputs and a last.pt -> ultralytics resumes; other inputs -> fresh start."""
    from pipeline import detector
    from pipeline.work import Work

    det_dir = tmp_path / "det" / "m" / "fold0"
    (det_dir / "weights").mkdir(parents=True)
    (det_dir / "weights" / "last.pt").write_bytes(b"x")
    args = detector.build_train_args(data_yaml=det_dir / "data.yaml", det_dir=det_dir, epochs=3, imgsz=64,
                                     batch=4, device="cpu", seed=0, workers=1)

    def work(a):
        return Work("t", det_dir / "train.json", detector.training_inputs("yolov8n.yaml", a),
                    outputs=[det_dir / "weights" / "last.pt"])

    work(args).start()  # killed mid-training: started, never finished
    result = detector.train_fold("yolov8n.yaml", work(args), det_dir, args)
    assert result["status"] == "resumed"
    assert fake_yolo.calls[0] == ("init", str(det_dir / "weights" / "last.pt")) and fake_yolo.calls[1][1]["resume"]
    assert detector.train_fold("yolov8n.yaml", work(args), det_dir, args)["status"] == "skipped"
    fake_yolo.calls.clear()
    args2 = {**args, "epochs": 5}
    result = detector.train_fold("yolov8n.yaml", work(args2), det_dir, args2)
    assert result["status"] == "trained" and fake_yolo.calls[0] == ("init", "yolov8n.yaml")
    assert "resume" not in fake_yolo.calls[1][1]


def test_patience_is_refused_unless_optimistic_selection(tmp_path):
    from pipeline import detector

    kw = dict(data_yaml=tmp_path / "d.yaml", det_dir=tmp_path / "f", epochs=1, imgsz=64, batch=4, device="cpu",
              seed=0, workers=1, extra={"patience": 5})
    with pytest.raises(ConfigError, match="optimistic"):
        detector.build_train_args(**kw)
    assert detector.build_train_args(**kw, select="best_on_fold_optimistic")["patience"] == 5


def test_training_skips_follow_content_not_paths_or_mtimes(tmp_path, fake_yolo):
    """train_det skips a fold only when its inputs' content is unchanged: same run -> skipped; workers -> skipped;
    batch -> trained; an image's conversion fingerprint or a label's text -> trained; touched files -> skipped."""
    import os

    from pipeline.stages import train_det

    paths = build_run(tmp_path, n_train=8, n_test=0)
    cfg = tiny_cfg(tmp_path, **{"det.folds": [0, 1]})

    def statuses(c=cfg):
        out = train_det.run(c, paths)
        return [out["fold0"], out["fold1"]]

    assert statuses() == ["trained", "trained"]
    assert statuses() == ["skipped", "skipped"]
    assert statuses(tiny_cfg(tmp_path, **{"det.folds": [0, 1], "run.workers": 2})) == ["skipped", "skipped"]
    assert statuses(tiny_cfg(tmp_path, **{"det.folds": [0, 1], "det.batch": 4})) == ["trained", "trained"]
    assert statuses() == ["trained", "trained"]  # back to batch 8: the batch-4 weights are not reused
    for p in list(paths.images_dir("train").iterdir()) + list(paths.labels_dir("train").iterdir()):
        os.utime(p, ns=(0, 10**9))
    assert statuses() == ["skipped", "skipped"]
    folds = pd.read_csv(paths.folds_csv, dtype={"image_id": str})
    one = folds.loc[folds.fold == 0, "image_id"].iloc[0]  # in fold 0's val list and fold 1's train list
    meta = pd.read_csv(paths.meta_csv, dtype={"image_id": str})
    meta.loc[meta.image_id == one, "fingerprint"] = "fp-new-source-bytes"
    meta.to_csv(paths.meta_csv, index=False)
    assert statuses() == ["trained", "trained"]
    paths.label("train", one).write_text("0 0.5 0.5 0.2 0.2\n")
    assert statuses() == ["trained", "trained"]
    assert statuses() == ["skipped", "skipped"]
    paths.det_last_weights("yolov8n", 1).unlink()  # a deleted output is rebuilt, the other fold untouched
    assert statuses() == ["skipped", "trained"]


def test_image_fingerprints_from_meta(tmp_path):
    from pipeline.tables import image_fingerprints, read_meta

    paths = RunPaths(run_dir=tmp_path / "r")
    paths.run_dir.mkdir()
    pd.DataFrame({"image_id": ["a", "b"], "split": ["train", "test"], "height": 1, "width": 1}).to_csv(paths.meta_csv, index=False)
    with pytest.raises(Exception, match="fingerprint"):
        read_meta(paths.meta_csv)  # an older meta.csv: prepare must run again
    pd.DataFrame({"image_id": ["a", "b", "c"], "split": ["train", "test", "train"], "height": 1, "width": 1,
                  "fingerprint": ["f1", "f2", "f3"]}).to_csv(paths.meta_csv, index=False)
    assert image_fingerprints(read_meta(paths.meta_csv), "train") == {"a": "f1", "c": "f3"}


def test_pt_name_that_would_download_is_refused(tmp_path):
    build_run(tmp_path, n_train=8, n_test=0)
    cfg = tiny_cfg(tmp_path, **{"det.model": "yolo11n.pt"})
    from pipeline.stages import train_det

    with pytest.raises(PipelineError, match="download"):
        train_det.run(cfg, RunPaths.from_config(cfg))


@pytest.mark.slow
def test_detector_learns_synthetic_task(tmp_path):
    """~150 optimizer steps of yolov8n.yaml at 96 px: out-of-fold mAP@0.4 of the last epoch clearly above chance."""
    build_run(tmp_path, n_train=160, n_test=4, n_splits=4)
    cfg = tiny_cfg(tmp_path, **{"det.imgsz": 96, "det.epochs": 12, "det.batch": 8, "det.train_args": {"mosaic": 0.0}})
    from pipeline.stages import predict, train_det

    train_det.run(cfg, RunPaths.from_config(cfg))
    summary = predict.run(cfg, RunPaths.from_config(cfg))
    assert summary["fold0_oof_map_findings"] > 0.3, summary
