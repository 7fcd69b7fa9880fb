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
    runs/<exp>/localise/<method>/fold<k>/    ChestX-ray14 localisation models (model.pt, model.json, train.json, oof_*.csv)
    runs/<exp>/localisation.json             the localisation comparison the evaluate stage puts into metrics.json
    runs/<exp>/metrics.json  report.html  plots/
    runs/<exp>/det/<name>/fold<k>/train.json, predict.json   Work records (pipeline.work): what was read, what was written
    runs/<exp>/.cache/hashes.sqlite          content-digest cache of input files (never decides, only saves reading)
    runs/<exp>/segment/                      lung model and its scoring (model.pt, metrics.json, per_image.csv, masks/, overlays/)
    runs/<exp>/screen/  screen.csv           the input gate (model.pt, metrics.json, heldout.csv); prepare's decisions
    runs/<exp>/detection.csv  fuse.json      each train image's detector role; what fuse combined and the filter's coverage
    runs/<exp>/parallel/                     run.parallel_folds: the fold processes' config and logs
    runs/<exp>/slurm/                        run.sh slurm: config.yaml, <job>.sh, jobs.json, <job>_<id>[_<fold>].{out,err}
    submissions/<exp>.csv
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
IMAGE_SPLITS = ("train", "test")  # the splits of images.csv (predictions use oof | test)

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
    def meta_journal(self) -> Path:
        """Rows of images converted by a batch that has not written meta.csv yet (resume after a kill)."""
        return self.run_dir / ".meta-journal.jsonl"

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

    # --- detection eligibility (prepare) --------------------------------------------------
    @property
    def detection_csv(self) -> Path:
        """image_id, split, role (truth | negative | excluded), reason: which images the detector trains
        and is scored on (ChestX-ray14 images with findings but no box are excluded, for example)."""
        return self.run_dir / "detection.csv"

    @property
    def cache_dir(self) -> Path:
        """Content-digest cache of input files (pipeline.fingerprint); safe to delete."""
        return self.run_dir / ".cache"

    # --- detectors ---------------------------------------------------------------------------
    def det_dir(self, name: str, fold: int) -> Path:
        return self.run_dir / "det" / name / f"fold{fold}"

    def det_train_list(self, name: str, fold: int) -> Path:
        return self.det_dir(name, fold) / "train.txt"

    def det_val_list(self, name: str, fold: int) -> Path:
        return self.det_dir(name, fold) / "val.txt"

    def det_data_yaml(self, name: str, fold: int) -> Path:
        return self.det_dir(name, fold) / "data.yaml"

    def det_train_record(self, name: str, fold: int) -> Path:
        """The Work record of a fold's training (pipeline.work)."""
        return self.det_dir(name, fold) / "train.json"

    def det_predict_record(self, name: str, fold: int) -> Path:
        return self.det_dir(name, fold) / "predict.json"

    def det_last_weights(self, name: str, fold: int) -> Path:
        return self.det_dir(name, fold) / "weights" / "last.pt"

    def det_best_weights(self, name: str, fold: int) -> Path:
        """ultralytics' best.pt: chosen on the fold's own validation images (det.select=best_on_fold_optimistic)."""
        return self.det_dir(name, fold) / "weights" / "best.pt"

    def det_weights(self, name: str, fold: int, select: str = "last") -> Path:
        """The weights a fold predicts with: last.pt by default (nothing chosen by looking at the fold)."""
        return self.det_last_weights(name, fold) if select == "last" else self.det_best_weights(name, fold)

    def det_results_csv(self, name: str, fold: int) -> Path:
        return self.det_dir(name, fold) / "results.csv"

    # --- classifiers ---------------------------------------------------------------------------
    def cls_root(self, name: str) -> Path:
        """A classifier's folder: fold<k>/ plus its run-level metrics, ROC and Grad-CAM outputs."""
        return self.run_dir / "cls" / name

    def cls_dir(self, name: str, fold: int) -> Path:
        return self.cls_root(name) / f"fold{fold}"

    def cls_weights(self, name: str, fold: int) -> Path:
        return self.cls_dir(name, fold) / "best.pt"

    def cls_log(self, name: str, fold: int) -> Path:
        return self.cls_dir(name, fold) / "log.csv"

    def cls_train_record(self, name: str, fold: int) -> Path:
        return self.cls_dir(name, fold) / "train.json"

    def cls_predict_record(self, name: str, fold: int) -> Path:
        return self.cls_dir(name, fold) / "predict.json"

    def cls_fold_predictions(self, name: str, fold: int, split: str) -> Path:
        """A fold's own probabilities (``split`` oof | test) before the folds are combined."""
        return self.cls_dir(name, fold) / f"{split}.csv"

    def cls_skipped(self, name: str) -> Path:
        """Images the classifier left out, and why."""
        return self.cls_root(name) / "skipped.csv"

    def cls_metrics(self, name: str) -> Path:
        return self.cls_root(name) / "metrics.json"

    def cls_roc(self, name: str) -> Path:
        return self.cls_root(name) / "roc.png"

    def cls_gradcam(self, name: str, image_id: str) -> Path:
        return self.cls_gradcam_dir(name) / f"{image_id}.png"

    def cls_gradcam_dir(self, name: str) -> Path:
        return self.cls_root(name) / "gradcam"

    def cls_cam_boxes(self, name: str) -> Path:
        return self.cls_root(name) / "cam_boxes.csv"

    # --- ChestX-ray14 localisation (localise stage; pipeline.models, pipeline.localisation) ------
    @property
    def localise_root(self) -> Path:
        """One folder per method (prior, gradcam, multiscale, cln), one per fold inside."""
        return self.run_dir / "localise"

    def localise_dir(self, method: str, fold: int) -> Path:
        return self.localise_root / method / f"fold{fold}"

    def localise_weights(self, method: str, fold: int) -> Path:
        """The fold's network (state dict; the prior's boxes as JSON in ``localise_model_info``)."""
        return self.localise_dir(method, fold) / "model.pt"

    def localise_model_info(self, method: str, fold: int) -> Path:
        """What rebuilds the fold's network: method, label names, settings (and the prior's boxes)."""
        return self.localise_dir(method, fold) / "model.json"

    def localise_record(self, method: str, fold: int) -> Path:
        """The Work record of a fold's training and out-of-fold prediction (pipeline.work)."""
        return self.localise_dir(method, fold) / "train.json"

    def localise_fold_boxes(self, method: str, fold: int) -> Path:
        """The fold's out-of-fold boxes: image_id, class_id, score, x_min .. y_max (ORIGINAL pixels)."""
        return self.localise_dir(method, fold) / "oof_boxes.csv"

    def localise_fold_probs(self, method: str, fold: int) -> Path:
        """The fold's out-of-fold probabilities: image_id, fold, p_<label>..."""
        return self.localise_dir(method, fold) / "oof_probs.csv"

    def localise_predictions(self, method: str, what: str = "boxes") -> Path:
        """Every finished fold's out-of-fold ``boxes`` or ``probs`` of a method, combined."""
        return self.predictions_dir / f"loc_{method}_oof_{what}.csv"

    @property
    def localisation_json(self) -> Path:
        """The localisation comparison (metrics.json's "localisation" block, references, run details)."""
        return self.run_dir / "localisation.json"

    # --- lung segmentation (segment stage; pipeline.lungs) ------------------------------------
    @property
    def segment_dir(self) -> Path:
        """The lung model's folder: model.pt, last.pt, log.csv, metrics.json, per_image.csv, robustness.csv,
        skipped.csv, train.json / eval.json (Work records), masks/, overlays/."""
        return self.run_dir / "segment"

    def segment_file(self, name: str) -> Path:
        """A file of the segment folder by name (see :attr:`segment_dir`)."""
        return self.segment_dir / name

    @property
    def segment_model(self) -> Path:
        return self.segment_file("model.pt")

    def segment_mask(self, image_id: str) -> Path:
        """A predicted lung mask of the evaluated split, PNG in the image's ORIGINAL pixels (255 = lung)."""
        return self.segment_dir / "masks" / f"{image_id}.png"

    def segment_overlay(self, image_id: str) -> Path:
        return self.segment_dir / "overlays" / f"{image_id}.png"

    # --- the input gate (screen stage; pipeline.gate) ---------------------------------------
    @property
    def screen_dir(self) -> Path:
        """The gate model's folder: model.pt, metrics.json, confusion.png, heldout.csv, dataset.csv, log.csv."""
        return self.run_dir / "screen"

    def screen_file(self, name: str) -> Path:
        """A file of the gate's folder by name: ``model.pt``, ``metrics.json``, ``confusion.png``,
        ``heldout.csv`` (screen.csv columns, held-out pictures), ``dataset.csv``, ``log.csv``, ``train.json``."""
        return self.screen_dir / name

    @property
    def screen_model(self) -> Path:
        return self.screen_file("model.pt")

    @property
    def screen_csv(self) -> Path:
        """The gate's decisions on this run's own input images (prepare with screen.enabled, infer)."""
        return self.run_dir / "screen.csv"

    # --- predictions ---------------------------------------------------------------------
    @property
    def predictions_dir(self) -> Path:
        return self.run_dir / "predictions"

    def det_predictions(self, name: str, fold: int, split: str) -> Path:
        """``split`` is 'oof' (the fold's validation images) or 'test'."""
        return self.predictions_dir / f"det_{name}_fold{fold}_{split}.csv"

    def det_failures(self, name: str, fold: int) -> Path:
        """Images a fold's detector could not predict (missing or unreadable PNG, no meta row)."""
        return self.predictions_dir / f"det_{name}_fold{fold}_failures.csv"

    def cls_predictions(self, name: str, split: str) -> Path:
        return self.predictions_dir / f"cls_{name}_{split}.csv"

    def fused_predictions(self, split: str) -> Path:
        return self.predictions_dir / f"fused_{split}.csv"

    def filtered_predictions(self, split: str) -> Path:
        return self.predictions_dir / f"final_{split}.csv"

    @property
    def fuse_summary(self) -> Path:
        """What fuse did (sources fused, filter coverage), read by evaluate and the report."""
        return self.run_dir / "fuse.json"

    # --- evaluate / submit -----------------------------------------------------------------
    @property
    def metrics_json(self) -> Path:
        return self.run_dir / "metrics.json"

    @property
    def plots_dir(self) -> Path:
        return self.run_dir / "plots"

    def plot(self, name: str) -> Path:
        """A figure of the report (``name`` without extension)."""
        return self.plots_dir / f"{name}.png"

    @property
    def report(self) -> Path:
        return self.run_dir / "report.html"

    @property
    def submission(self) -> Path:
        return self.submissions_dir / f"{self.name}.csv"

    # --- SLURM job graph (run.sh slurm; pipeline.slurm) -------------------------------------
    @property
    def parallel_dir(self) -> Path:
        """run.parallel_folds: the config the fold processes read and one log per fold process."""
        return self.run_dir / "parallel"

    @property
    def slurm_dir(self) -> Path:
        return self.run_dir / "slurm"

    @property
    def slurm_config(self) -> Path:
        """The config resolved at submission, which every job of the graph reads."""
        return self.slurm_dir / "config.yaml"

    @property
    def slurm_jobs(self) -> Path:
        """The last submission's job ids (JSON)."""
        return self.slurm_dir / "jobs.json"

    def slurm_script(self, job: str) -> Path:
        return self.slurm_dir / f"{job}.sh"

    def slurm_log(self, job: str, stream: str, array: bool = True) -> Path:
        """sbatch --output (stream 'out') / --error ('err') pattern: ``<job>_%A_%a.<stream>`` for an
        array (%A job id, %a task id = fold), ``<job>_%j.<stream>`` for a single job."""
        return self.slurm_dir / (f"{job}_%A_%a.{stream}" if array else f"{job}_%j.{stream}")
