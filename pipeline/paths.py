"""The one place where artifact paths are spelled. Stages read and write only through these.

A run directory::

    runs/<exp>/config.yaml                   resolved config of the last invocation
    runs/<exp>/annotations.csv               radiologists' boxes, one table, original pixels
    runs/<exp>/images.csv                    image table: image_id, split, patient_id, width, height, labels
    runs/<exp>/images/<split>/<id>.png       converted images (once; folds are lists of paths)
    runs/<exp>/meta.csv  failures.csv        per-image conversion record; files that failed and why
    runs/<exp>/labels/<split>/<id>.txt       YOLO labels (ultralytics finds them by images->labels)
    runs/<exp>/boxes.csv  dataset.yaml       fused boxes in original pixels; ultralytics class names
    runs/<exp>/folds.csv                     image_id, fold
    runs/<exp>/det/<name>/fold<k>/           ultralytics project/name (fixed, exist_ok); train.txt, val.txt, data.yaml
    runs/<exp>/cls/<name>/fold<k>/           classifier checkpoints and logs
    runs/<exp>/predictions/*.csv             one long table per model/fold/split, original pixels
    runs/<exp>/metrics.json  report.html  plots/
    runs/<exp>/.done/<stage>.json            marker of a finished stage (skipped next time unless forced)
    submissions/<exp>.csv
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SPLITS = ("train", "test")

# Image ids become file names: letters, digits, '.', '_', '-'; no path separators, no '..'.
_SAFE_ID = re.compile(r"^[A-Za-z0-9_.\-]+$")


def is_safe_id(image_id: str) -> bool:
    """True when ``image_id`` can be used as a file name on its own (no separators, not '.' or '..')."""
    return bool(_SAFE_ID.match(image_id)) and image_id not in (".", "..") and ".." not in image_id


@dataclass(frozen=True)
class RunPaths:
    run_dir: Path
    submissions_dir: Path = PROJECT_ROOT / "submissions"

    @classmethod
    def from_config(cls, cfg) -> "RunPaths":
        root = Path(cfg.run.root)
        return cls(run_dir=root / cfg.run.name, submissions_dir=PROJECT_ROOT / "submissions")

    @property
    def name(self) -> str:
        return self.run_dir.name

    # --- run-level files ---------------------------------------------------------------
    @property
    def config(self) -> Path:
        return self.run_dir / "config.yaml"

    def done_marker(self, stage: str) -> Path:
        return self.run_dir / ".done" / f"{stage}.json"

    # --- prepare -------------------------------------------------------------------------
    @property
    def annotations_csv(self) -> Path:
        return self.run_dir / "annotations.csv"

    @property
    def images_csv(self) -> Path:
        return self.run_dir / "images.csv"

    def images_dir(self, split: str) -> Path:
        return self.run_dir / "images" / split

    def image(self, split: str, image_id: str) -> Path:
        return self.images_dir(split) / f"{image_id}.png"

    @property
    def meta_csv(self) -> Path:
        return self.run_dir / "meta.csv"

    @property
    def failures_csv(self) -> Path:
        return self.run_dir / "failures.csv"

    def labels_dir(self, split: str) -> Path:
        return self.run_dir / "labels" / split

    def label(self, split: str, image_id: str) -> Path:
        return self.labels_dir(split) / f"{image_id}.txt"

    @property
    def boxes_csv(self) -> Path:
        return self.run_dir / "boxes.csv"

    @property
    def dataset_yaml(self) -> Path:
        return self.run_dir / "dataset.yaml"

    # --- folds ---------------------------------------------------------------------------
    @property
    def folds_csv(self) -> Path:
        return self.run_dir / "folds.csv"

    # --- models --------------------------------------------------------------------------
    def det_dir(self, name: str, fold: int) -> Path:
        return self.run_dir / "det" / name / f"fold{fold}"

    def det_weights(self, name: str, fold: int) -> Path:
        return self.det_dir(name, fold) / "weights" / "best.pt"

    def cls_root(self, name: str) -> Path:
        """A classifier's folder: fold<k>/ plus its run-level metrics, ROC and Grad-CAM outputs."""
        return self.run_dir / "cls" / name

    def cls_dir(self, name: str, fold: int) -> Path:
        return self.cls_root(name) / f"fold{fold}"

    def cls_metrics(self, name: str) -> Path:
        return self.cls_root(name) / "metrics.json"

    def cls_roc(self, name: str) -> Path:
        return self.cls_root(name) / "roc.png"

    def cls_gradcam(self, name: str, image_id: str) -> Path:
        return self.cls_root(name) / "gradcam" / f"{image_id}.png"

    def cls_cam_boxes(self, name: str) -> Path:
        return self.cls_root(name) / "cam_boxes.csv"

    def cls_weights(self, name: str, fold: int) -> Path:
        return self.cls_dir(name, fold) / "best.pt"

    # --- predictions ---------------------------------------------------------------------
    @property
    def predictions_dir(self) -> Path:
        return self.run_dir / "predictions"

    def det_predictions(self, name: str, fold: int, split: str) -> Path:
        """``split`` is 'oof' (the fold's validation images) or 'test'."""
        return self.predictions_dir / f"det_{name}_fold{fold}_{split}.csv"

    def det_failures(self, name: str) -> Path:
        """Images a detector could not predict (missing or unreadable PNG, no meta row)."""
        return self.predictions_dir / f"det_{name}_failures.csv"

    def cls_predictions(self, name: str, split: str) -> Path:
        return self.predictions_dir / f"cls_{name}_{split}.csv"

    def fused_predictions(self, split: str) -> Path:
        return self.predictions_dir / f"fused_{split}.csv"

    def filtered_predictions(self, split: str) -> Path:
        return self.predictions_dir / f"final_{split}.csv"

    # --- evaluate / submit -----------------------------------------------------------------
    @property
    def metrics_json(self) -> Path:
        return self.run_dir / "metrics.json"

    @property
    def plots_dir(self) -> Path:
        return self.run_dir / "plots"

    @property
    def report(self) -> Path:
        return self.run_dir / "report.html"

    @property
    def submission(self) -> Path:
        return self.submissions_dir / f"{self.name}.csv"
