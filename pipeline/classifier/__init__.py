"""DenseNet-121 image classifier: inputs (:mod:`.data`), network and checkpoints (:mod:`.model`),
training of one fold (:mod:`.train`).

Used by :mod:`pipeline.stages.train_cls` (normal vs abnormal for the VinBigData 2-class filter, or the
findings of ChestX-ray14 / VinBigData) and by :mod:`pipeline.gradcam`. torch, torchvision,
albumentations and cv2 are imported inside functions, so ``import pipeline.classifier`` stays light.
"""
from pipeline.classifier.data import (AUGMENT_DEFAULTS, Letterbox, XrayDataset, build_augment, letterbox,
                                      make_loader, read_gray)
from pipeline.classifier.model import (IMAGENET_MEAN, IMAGENET_STD, build_model, load_backbone_weights,
                                       load_checkpoint, model_outputs, save_checkpoint, torch_device)
from pipeline.classifier.train import (TrainSettings, env_workers, mean_auc, pos_weight_from_targets, predict_probs,
                                       sample_weights, seed_everything, train_model, warmup_cosine)

__all__ = [
    "AUGMENT_DEFAULTS", "IMAGENET_MEAN", "IMAGENET_STD", "Letterbox", "TrainSettings", "XrayDataset",
    "build_augment", "build_model", "env_workers", "letterbox", "load_backbone_weights", "load_checkpoint",
    "make_loader", "mean_auc", "model_outputs", "pos_weight_from_targets", "predict_probs", "read_gray",
    "sample_weights", "save_checkpoint", "seed_everything", "torch_device", "train_model", "warmup_cosine",
]
