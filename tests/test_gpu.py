"""GPU paths: mixed-precision training (autocast + GradScaler), autocast inference, ultralytics on CUDA with
the offline AMP check, and the DDP trainer class that worker processes unpickle by name.

Marked ``gpu``: deselected by default; ``./run.sh test -m gpu`` runs them, and without CUDA every test
here is skipped with that reason (exit status 0). ``benchmarks/gpu_check.sh`` runs them on a GPU machine.
"""
from __future__ import annotations

import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")]


def _blob_data(tmp_path, n=32, size=64):
    import cv2

    rng = np.random.default_rng(0)
    paths, y = [], []
    for i in range(n):
        im = rng.normal(80, 10, (size, size)).clip(0, 255).astype(np.uint8)
        if i % 2:
            cv2.circle(im, (int(rng.integers(16, 48)), int(rng.integers(16, 48))), 8, 230, -1)
        p = tmp_path / f"{i}.png"
        cv2.imwrite(str(p), im)
        paths.append(p)
        y.append([i % 2])
    return paths, np.array(y, np.float32)


def test_amp_training_uses_the_grad_scaler_and_autocast_inference(tmp_path):
    from pipeline import classifier as C

    paths, y = _blob_data(tmp_path)
    ds = C.XrayDataset(paths, y, 64)
    s = C.TrainSettings(imgsz=64, epochs=2, batch=8, lr=1e-3, device="0", amp=True, workers=0, patience=5)
    res = C.train_model(ds, ds, s, tmp_path / "out")
    assert res["device"].startswith("cuda") and np.isfinite(res["train_losses"]).all()
    model = C.load_checkpoint(tmp_path / "out" / "best.pt", 1, torch.device("cuda:0"))
    p = C.predict_probs(model, C.XrayDataset(paths, None, 64), 8, 0, torch.device("cuda:0"), tta_flip=True, amp=True)
    assert p.dtype == np.float32 and np.isfinite(p).all() and p.shape == (len(paths), 1)
    with torch.autocast("cuda", dtype=torch.float16):
        out = model(torch.zeros(2, 1, 64, 64, device="cuda"))
    assert out.dtype == torch.float16  # autocast really ran in half precision


def test_offline_amp_check_trusts_current_gpus_without_download():
    from pipeline.detector import offline_check_amp

    model = torch.nn.Linear(2, 2).cuda()
    name = torch.cuda.get_device_name(0)
    assert offline_check_amp(model) is (not any(b in name for b in ("1660", "1650", "T400", "K40")))


def test_ddp_trainer_pickles_by_reference():
    from pipeline import detector

    cls = detector.offline_trainer_class()
    assert pickle.loads(pickle.dumps(cls)) is cls
    assert cls.__module__ == "pipeline.detector" and detector.OfflineDetectionTrainer is cls


def test_yolo_trains_one_amp_step_on_cuda(tmp_path):
    from tests.test_detector import build_run, tiny_cfg

    from pipeline.paths import RunPaths
    from pipeline.stages import predict, train_det

    build_run(tmp_path, n_train=16, n_test=2)
    cfg = tiny_cfg(tmp_path, **{"run.device": "0"})
    summary = train_det.run(cfg, RunPaths.from_config(cfg))
    assert summary["fold0"] == "trained"
    ckpt = torch.load(RunPaths.from_config(cfg).det_last_weights("yolov8n", 0), map_location="cpu", weights_only=False)
    assert ckpt["train_args"]["amp"] is True
    assert predict.run(cfg, RunPaths.from_config(cfg))["failures"] == 0
