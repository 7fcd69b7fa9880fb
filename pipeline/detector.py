"""Ultralytics YOLO, wrapped: device choice, offline-safe training of one fold, batched prediction.

Coordinates: ultralytics returns boxes in pixels of the image it was given (the PNG written by
prepare, ``out_width x out_height``); :func:`pipeline.frames.png_to_original` maps them to ORIGINAL pixels
(``width x height`` in meta.csv), the convention of every table in the run directory.

Offline: :func:`pipeline.offline.prepare_ultralytics` runs before ultralytics is imported (font in
place, sync off). Training uses :class:`OfflineDetectionTrainer` (built lazily by
:func:`offline_trainer_class`), whose AMP check trusts AMP on GPUs instead of downloading
``yolo26n.pt`` to compare FP32 and FP16 outputs (what ultralytics' ``check_amp`` does).
Models come from a YAML that ultralytics ships (trained from scratch) or a local ``.pt``; any other
``.pt`` name would make ultralytics download it, so it is refused up front.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pandas as pd

from pipeline.boxes import BOX_COLUMNS, hflip_xyxy
from pipeline.errors import ConfigError, PipelineError
from pipeline.frames import png_to_original

DET_COLUMNS = ["image_id", "class_id", "score", *BOX_COLUMNS, "tta"]

# GPUs on which ultralytics' own check disables AMP (NaN losses / zero mAP reported there).
_AMP_BAD_GPU = re.compile(r"(nvidia|geforce|quadro|tesla).*?(1660|1650|1630|t400|t550|t600|t1000|t1200|t2000|k40m)",
                          re.IGNORECASE)


# --- device and model -----------------------------------------------------------------------

def resolve_detector_device(device: Any) -> int | str | list[int]:
    """``run.device`` -> what ultralytics takes: 'auto' -> 0 when CUDA is present else 'cpu';
    'cpu' -> 'cpu'; '0' / 0 -> 0; '0,1' or [0, 1] -> [0, 1] (several GPUs: ultralytics runs DDP)."""
    from pipeline.device import parse_device

    parsed = parse_device(device)
    if isinstance(parsed, str):
        return parsed
    return parsed[0] if len(parsed) == 1 else parsed


def is_gpu(device: Any) -> bool:
    return device not in ("cpu", "mps")


def check_model_spec(model: str) -> str:
    """Validate ``det.model``: an existing local file, or a YAML name ultralytics ships.

    Returns the string to hand to ``YOLO(...)``. A ``*.pt`` that is not a local file is an error:
    ultralytics would try to download it (offline clusters fail, or hang on retries).
    """
    spec = str(model).strip()
    if not spec:
        raise ConfigError("det.model is empty; use a model YAML such as yolov8n.yaml or a local .pt file.")
    path = Path(spec).expanduser()
    if path.is_file():
        return str(path.resolve())
    suffix = path.suffix.lower()
    if suffix in (".pt", ".pth", ".onnx", ".engine"):
        stem = re.sub(r"\.(pt|pth|onnx|engine)$", "", path.name)
        raise PipelineError(
            f"det.model={spec!r} is not an existing file, and ultralytics would try to download it. "
            f"Train from scratch with a YAML (det.model={stem}.yaml), or download the weights once and "
            f"pass their local path (det.model=/path/to/{path.name}).")
    if suffix not in (".yaml", ".yml"):
        raise ConfigError(f"det.model={spec!r}: expected a model YAML (e.g. yolov8n.yaml, yolo11n.yaml) or a local .pt.")
    return spec


def _model_exists(spec: str) -> None:
    """Fail early, with a useful message, when a YAML name is not one ultralytics ships."""
    if Path(spec).is_file():
        return
    from ultralytics.nn.tasks import yaml_model_load  # resolves 'yolov8n.yaml' -> yolov8.yaml at scale n

    try:
        yaml_model_load(spec)
    except (FileNotFoundError, OSError):
        raise ConfigError(
            f"det.model={spec!r}: no such local file and not a model YAML shipped with ultralytics "
            "(examples: yolov8n.yaml, yolov8s.yaml, yolov5nu.yaml, yolo11n.yaml).") from None


# --- offline trainer ------------------------------------------------------------------------

def offline_check_amp(model) -> bool:
    """Stand-in for ultralytics' ``check_amp``: same GPU blacklist, no weight download.

    ultralytics compares a downloaded yolo26n.pt under FP32 and AMP; offline that download is
    attempted (and retried) on every GPU training. AMP is well supported on current GPUs; the GPUs
    ultralytics knows to misbehave still get it turned off.
    """
    import torch

    device = next(model.parameters()).device
    if device.type != "cuda":
        return False
    name = torch.cuda.get_device_name(device)
    if _AMP_BAD_GPU.search(name):
        print(f"[train_det] AMP disabled: {name} is known to give NaN losses under AMP")
        return False
    return True


_TRAINER_CLASS = None


def offline_trainer_class():
    """``DetectionTrainer`` whose AMP check never downloads (importable by reference: DDP workers
    unpickle the class by its module path, so it must live at module level once built)."""
    global _TRAINER_CLASS, OfflineDetectionTrainer
    if _TRAINER_CLASS is not None:
        return _TRAINER_CLASS
    from ultralytics.models.yolo.detect import DetectionTrainer
    import ultralytics.engine.trainer as trainer_module

    class _OfflineDetectionTrainer(DetectionTrainer):
        def _setup_train(self, *args, **kwargs):
            original = trainer_module.check_amp
            trainer_module.check_amp = offline_check_amp
            try:
                return super()._setup_train(*args, **kwargs)
            finally:
                trainer_module.check_amp = original

    _OfflineDetectionTrainer.__name__ = _OfflineDetectionTrainer.__qualname__ = "OfflineDetectionTrainer"
    _OfflineDetectionTrainer.__module__ = __name__
    OfflineDetectionTrainer = _TRAINER_CLASS = _OfflineDetectionTrainer
    return _TRAINER_CLASS


def __getattr__(name: str):
    # DDP workers unpickle ``pipeline.detector.OfflineDetectionTrainer`` by name: build it on demand.
    if name == "OfflineDetectionTrainer":
        return offline_trainer_class()
    raise AttributeError(name)


def import_ultralytics(threads: Any = None):
    """Import ultralytics after making it offline-safe; returns the ``YOLO`` class.

    ``threads`` (``run.threads``; None = leave as set earlier in this process): torch's compute threads,
    kept when ultralytics selects a CPU device (it would set cpu_count - 1, one thread on 2 cores).
    """
    from pipeline.offline import prepare_ultralytics

    prepare_ultralytics()
    from ultralytics import YOLO

    if threads is not None:
        from pipeline.device import use_threads

        use_threads(threads)
    return YOLO


# --- training one fold ----------------------------------------------------------------------

def write_fold_lists(paths, name: str, fold: int, train_images: Sequence[Path], val_images: Sequence[Path],
                     names: dict[int, str]) -> Path:
    """train.txt / val.txt (absolute PNG paths, one a line: images are never copied) and data.yaml."""
    import yaml

    from pipeline.io import write_text_atomic

    train_txt, val_txt, data_yaml = (paths.det_train_list(name, fold), paths.det_val_list(name, fold),
                                     paths.det_data_yaml(name, fold))
    write_text_atomic(train_txt, "".join(f"{Path(p).resolve()}\n" for p in train_images))
    write_text_atomic(val_txt, "".join(f"{Path(p).resolve()}\n" for p in val_images))
    data = {"path": str(paths.det_dir(name, fold).resolve()), "train": str(train_txt.resolve()),
            "val": str(val_txt.resolve()), "nc": len(names),
            "names": {int(k): str(v) for k, v in sorted(names.items())}}
    write_text_atomic(data_yaml, yaml.safe_dump(data, sort_keys=False))
    return data_yaml


def build_train_args(*, data_yaml: Path, det_dir: Path, epochs: int, imgsz: int, batch: int, device: Any,
                     seed: int, workers: int, extra: dict | None = None, select: str = "last") -> dict:
    """Keyword arguments for ``YOLO.train``: fixed output folder, offline-safe, ``extra`` merged last.

    With ``select="last"`` (the honest default) early stopping is off: ultralytics would stop on the
    fold's own validation fitness, which is choosing by looking at the fold that is then reported.
    """
    args = {
        "data": str(data_yaml), "project": str(det_dir.parent.resolve()), "name": det_dir.name,
        "exist_ok": True,           # fixed folder det/<name>/fold<k>, never fold<k>2
        "epochs": int(epochs), "imgsz": int(imgsz), "batch": int(batch), "device": device,
        "seed": int(seed), "deterministic": True, "workers": int(workers),
        "amp": is_gpu(device),      # AMP on GPU (checked offline by OfflineDetectionTrainer), off on CPU
        "plots": False,             # plots draw with fonts/matplotlib; the evaluate stage makes its own
        "verbose": False,
        "val": True,
    }
    args.update(dict(extra or {}))
    if select == "last":
        if int(args.get("patience") or 0) > 0 and "patience" in (extra or {}):
            raise ConfigError(
                f"det.train_args.patience={args['patience']}: early stopping watches the fold's own validation "
                "images, which makes its out-of-fold figures optimistic. Drop it, or set "
                "det.select=best_on_fold_optimistic to accept that.")
        args["patience"] = 0  # 0 = never stop early (ultralytics: patience or inf)
    return args


# Train arguments that do not change the weights (where they go, how loud, how many loader processes).
_NOT_TRAINING = ("data", "project", "name", "exist_ok", "device", "workers", "verbose", "plots")


def training_inputs(model_spec: str, train_args: dict) -> dict:
    """The model and argument part of a fold's training fingerprint: a local .pt counts by content."""
    from pipeline.fingerprint import file_digest

    model = {"file": file_digest(model_spec)} if Path(model_spec).is_file() else model_spec
    return {"model": model, "args": {k: v for k, v in train_args.items() if k not in _NOT_TRAINING}}


def train_fold(model_spec: str, work, det_dir: Path, train_args: dict, *, force: bool = False,
               threads: Any = None) -> dict:
    """Train one fold into ``det_dir`` (= ``project/name``) under the :class:`pipeline.work.Work` ``work``.

    * done (last.pt there, same fingerprint): skipped unless ``force``;
    * started with the same fingerprint and a readable ``last.pt`` (killed mid-training): resumed from it;
      when that checkpoint already holds the last epoch (killed after training, before the record), the
      record is finished without training (status ``completed``);
    * otherwise, a ``last.pt`` cut short by a kill included (ultralytics writes it in place): trained
      from the start in the same folder (old weights and logs removed first).
    ``threads``: ``run.threads`` (torch compute threads, kept across ultralytics' device selection).
    Returns a summary dict (status, weights, epochs, seconds).
    """
    import time

    from pipeline.work import DONE, STARTED

    last = det_dir / "weights" / "last.pt"
    state = work.state(force)
    if state == DONE:
        return {"status": "skipped", "weights": str(last)}
    YOLO = import_ultralytics(threads)
    trainer = offline_trainer_class()
    model = _interrupted_model(YOLO, det_dir) if state == STARTED and last.is_file() else None
    if model is not None and _holds_last_epoch(getattr(model, "ckpt", None)):
        print(f"[train_det] {last} already holds the last epoch (killed before its record): finishing it")
        return _finish_fold(work, det_dir, "completed", 0.0)
    resume = model is not None
    if not resume:  # a fresh start: old weights and logs must not be mistaken for this run's
        for stale in ("weights", "results.csv", "args.yaml"):
            target = det_dir / stale
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
        work.start()

    start = time.perf_counter()
    if resume:
        print(f"[train_det] resuming {det_dir} from {last}")
        keep = {k: train_args[k] for k in ("data", "device", "workers", "batch", "imgsz") if k in train_args}
        model.train(trainer=trainer, resume=True, **keep)
    else:
        _model_exists(model_spec)
        model = YOLO(model_spec)
        try:
            model.train(trainer=trainer, **train_args)
        except SyntaxError as exc:  # ultralytics reports unknown/invalid train arguments this way
            raise ConfigError(f"det.train_args: {exc}") from None
    return _finish_fold(work, det_dir, "resumed" if resume else "trained", time.perf_counter() - start)


def _finish_fold(work, det_dir: Path, status: str, seconds: float) -> dict:
    last = det_dir / "weights" / "last.pt"
    if not last.is_file():
        raise PipelineError(f"training finished without {last}; see {det_dir} (results.csv) for what happened.")
    summary = {"seconds": round(seconds, 1), "epochs_run": _epochs_in_results(det_dir / "results.csv")}
    work.finish(summary)
    return {"status": status, "weights": str(last), **summary}


def _interrupted_model(YOLO, det_dir: Path):
    """The model in ``weights/last.pt`` of a fold killed mid-training, or None when that file cannot be
    read (ultralytics writes it in place, so a kill can cut it short). A ``best.pt`` cut short is removed,
    so the resumed training cannot end by validating it."""
    last, best = det_dir / "weights" / "last.pt", det_dir / "weights" / "best.pt"
    try:
        model = YOLO(str(last))
    except Exception as exc:  # noqa: BLE001  (torch, zip and pickle errors of a truncated file)
        print(f"[train_det] {last} cannot be read ({type(exc).__name__}; cut short by a kill?): training from the start")
        return None
    if best.is_file():
        try:
            YOLO(str(best))
        except Exception:  # noqa: BLE001
            print(f"[train_det] {best} cannot be read (cut short by a kill?): removed")
            best.unlink()
    return model


def _holds_last_epoch(ckpt) -> bool:
    """Whether an ultralytics checkpoint is final: stripped at the end of training (epoch -1) or saved
    after its last epoch (epoch = epochs - 1; ultralytics refuses to resume it). No checkpoint: False."""
    if not isinstance(ckpt, dict) or ckpt.get("epoch") is None:
        return False
    epoch, planned = int(ckpt["epoch"]), int((ckpt.get("train_args") or {}).get("epochs") or 0)
    return epoch < 0 or 0 < planned <= epoch + 1


def _epochs_in_results(path: Path) -> int | None:
    try:
        return int(len(pd.read_csv(path)))
    except (OSError, ValueError, pd.errors.EmptyDataError):
        return None


# --- prediction -------------------------------------------------------------------------------

def _chunks(items: Sequence, size: int) -> Iterable[Sequence]:
    for i in range(0, len(items), max(1, size)):
        yield items[i:i + size]


def predict_imgsz(det_cfg) -> int:
    """Inference image size: ``det.predict_imgsz`` when set, else the training size ``det.imgsz``."""
    value = det_cfg.get("predict_imgsz", None)
    if value in (None, ""):
        return int(det_cfg.imgsz)
    try:
        size = int(value)
    except (TypeError, ValueError):
        size = 0
    if size < 32 or size % 32:
        raise ConfigError(f"det.predict_imgsz={value!r}: expected a whole number of pixels, a multiple of 32 "
                          f"(e.g. 320), or null to predict at det.imgsz ({det_cfg.imgsz}).")
    return size


def predict_images(model, items: Sequence[tuple[str, Path, float, float]], *, imgsz: int, conf: float, iou: float,
                   max_det: int, batch: int, device: Any, tta_flip: bool, desc: str = "predict",
                   ) -> tuple[pd.DataFrame, list[dict]]:
    """Detect on PNGs; boxes come back in ORIGINAL pixels.

    ``items``: (image_id, png_path, original_width, original_height). With ``tta_flip`` every image
    is also predicted mirrored and those boxes are mirrored back (rows tagged ``tta='hflip'``).
    Returns (detections with :data:`DET_COLUMNS`, failures [{image_id, path, error}]).
    An unreadable image is recorded as a failure; the others are still predicted.
    """
    from tqdm.auto import tqdm
    from ultralytics.utils.patches import imread

    rows: list[pd.DataFrame] = []
    failures: list[dict] = []
    if isinstance(device, list):  # prediction runs on one GPU
        device = device[0]
    bar = tqdm(total=len(items), desc=desc, unit="img")
    for chunk in _chunks(list(items), batch):
        arrays, kept = [], []
        for item in chunk:
            image_id, path, width, height = item[:4]
            frame = item[4] if len(item) > 4 else (0.0, 0.0, width, height)  # the part of the image the PNG shows
            im = imread(str(path))  # the same reader (and 16 -> 8 bit handling) as ultralytics training
            if im is None:
                failures.append({"image_id": image_id, "path": str(path), "error": "missing or unreadable PNG"})
                continue
            arrays.append(im)
            kept.append((image_id, width, height, im.shape[1], im.shape[0], frame))
        variants = [("orig", arrays)]
        if tta_flip and arrays:
            variants.append(("hflip", [np.ascontiguousarray(a[:, ::-1]) for a in arrays]))
        for tag, batch_arrays in variants:
            if not batch_arrays:
                continue
            results = model.predict(batch_arrays, imgsz=imgsz, conf=conf, iou=iou, max_det=max_det,
                                    device=device, verbose=False, batch=len(batch_arrays))
            for (image_id, width, height, png_w, png_h, frame), res in zip(kept, results):
                data = res.boxes.data.cpu().numpy() if res.boxes is not None else np.zeros((0, 6))
                if len(data) == 0:
                    continue
                xyxy = data[:, :4].astype(np.float64)
                if tag == "hflip":
                    xyxy = hflip_xyxy(xyxy, png_w)
                xyxy = png_to_original(xyxy, png_w, png_h, frame, width, height)
                rows.append(pd.DataFrame({
                    "image_id": image_id, "class_id": data[:, 5].astype(int), "score": data[:, 4].astype(float),
                    "x_min": xyxy[:, 0], "y_min": xyxy[:, 1], "x_max": xyxy[:, 2], "y_max": xyxy[:, 3],
                    "tta": tag}))
        bar.update(len(chunk))
    bar.close()
    if rows:
        out = pd.concat(rows, ignore_index=True)[DET_COLUMNS]
    else:
        out = pd.DataFrame({c: pd.Series(dtype=t) for c, t in zip(
            DET_COLUMNS, [str, int, float, float, float, float, float, str])})
    return out, failures
