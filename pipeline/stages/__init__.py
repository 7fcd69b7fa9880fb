"""The pipeline's stages: ``pipeline.stages.<name>.run(cfg, paths) -> dict | None``.

``STAGES`` is the registry the runner, the CLI and its help read: the order ``run`` uses, one line of
what each stage does, what it reads and writes (run-directory names, see :mod:`pipeline.paths`), and the
config sections it uses. A new stage adds its entry to the list below, where it belongs in the order.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StageInfo:
    name: str
    summary: str
    reads: str
    writes: str
    keys: str
    example: str


STAGES: dict[str, StageInfo] = {s.name: s for s in [
    StageInfo("segment", "train the lung segmentation (UNet++ + classification head) and score it in original pixels",
              "segment.data_root (images + lung masks: images/+masks/, CXR_png/+masks/, Montgomery ManualMask/)",
              "segment/ (model.pt, metrics.json, per_image.csv, masks/, overlays/, robustness.csv, log.csv)",
              "segment.*, run.seed, run.device, run.threads",
              "./run.sh segment --config configs/lungs_shenzhen.yaml segment.epochs=4"),
    StageInfo("screen", "train and score the input gate (DenseNet-121: chest / other X-ray / not X-ray) on held-out pictures",
              "screen.folders / screen.image_root (class -> image folders), bundled and synthetic not-X-ray pictures",
              "screen/model.pt, metrics.json, confusion.png, heldout.csv (screen.csv columns), dataset.csv, log.csv",
              "screen.*, run.seed, run.device, run.threads",
              "./run.sh run --config configs/gate.yaml screen.epochs=5"),
    StageInfo("prepare", "read the dataset, convert images to PNG, fuse radiologists' boxes, write YOLO labels",
              "data.root (DICOM/PNG/JPEG images and the format's annotation files)",
              "annotations.csv, images.csv, images/<split>/*.png, meta.csv, failures.csv, boxes.csv, "
              "detection.csv, labels/, dataset.yaml",
              "data.*, image.*, labels.*, run.workers",
              "./run.sh prepare --config configs/vinbigdata.yaml image.size=1024"),
    StageInfo("folds", "patient-grouped, multilabel-stratified k folds of the train images",
              "images.csv", "folds.csv", "folds.*, run.seed",
              "./run.sh folds --config configs/demo.yaml folds.n_splits=5"),
    StageInfo("train_det", "train one ultralytics YOLO detector per fold (resumes an interrupted fold)",
              "folds.csv, detection.csv, images/train/*.png, labels/train/*.txt, dataset.yaml",
              "det/<det.name>/fold<k>/ (weights/last.pt, results.csv, train.json)",
              "det.*, run.seed, run.device, run.threads, run.workers",
              "./run.sh train_det --config configs/demo.yaml det.folds=[0] det.epochs=30"),
    StageInfo("predict", "each fold's detector on its held-out images and on the test images, with flip TTA",
              "det/<det.name>/fold<k>/weights/last.pt, meta.csv, folds.csv",
              "predictions/det_<det.name>_fold<k>_{oof,test}.csv (original pixels), det/<name>/fold<k>/predict.json",
              "det.conf, det.iou, det.imgsz, det.max_det, det.tta_flip, det.predict_batch, det.select",
              "./run.sh predict --config configs/demo.yaml det.conf=0.001"),
    StageInfo("train_cls", "DenseNet-121 per fold (binary normal/abnormal or multi-label); AUC, ROC, Grad-CAM",
              "images.csv, folds.csv, images/*/*.png",
              "cls/<cls.name>/fold<k>/, predictions/cls_<cls.name>_{oof,test}.csv, cls/<cls.name>/metrics.json",
              "cls.*, run.seed, run.device, run.threads, run.workers",
              "./run.sh train_cls --config configs/demo.yaml cls.folds=[1] cls.epochs=10"),
    StageInfo("localise", "ChestX-ray14 localisation out of fold: box prior, Grad-CAM, multiscale CAM, CLN, the run's YOLO; "
              "Wang 2017's IoU/IoBB table and AUC",
              "images.csv, folds.csv, meta.csv, annotations.csv (BBox_List boxes), images/train/*.png, "
              "predictions/det_<det.name>_fold<k>_oof.csv (yolo)",
              "localise/<method>/fold<k>/ (model.pt, model.json, train.json, oof_boxes.csv, oof_probs.csv), "
              "predictions/loc_<method>_oof_{boxes,probs}.csv, localisation.json",
              "localise.*, cls.model, cls.cam, det.name, run.seed, run.device, run.threads",
              "./run.sh run --config configs/nih_localise.yaml data.root=../shared/real/chestxray14"),
    StageInfo("fuse", "weighted-box fusion across folds, flips and models; the 2-class filter",
              "predictions/det_*_{oof,test}.csv, predictions/cls_*_{oof,test}.csv, meta.csv",
              "predictions/fused_{oof,test}.csv, predictions/final_{oof,test}.csv, fuse.json",
              "fuse.*, filter.*, det.name, det.folds",
              "./run.sh fuse --config configs/demo.yaml fuse.iou_thr=0.5"),
    StageInfo("evaluate", "score out-of-fold predictions (VinBigData mAP, COCO AP), classifier AUC, report page",
              "predictions/final_oof.csv, boxes.csv, detection.csv, classifier predictions",
              "metrics.json, plots/, report.html", "evaluate.*",
              "./run.sh evaluate --config configs/demo.yaml"),
    StageInfo("submit", "the Kaggle submission: the sample submission's ids, in order, validated",
              "predictions/final_test.csv, sample_submission.csv", "submissions/<run.name>.csv", "submit.*",
              "./run.sh submit --config configs/vinbigdata.yaml"),
]}

