"""Lung segmentation: UNet++ (segmentation-models-pytorch) with a classification head at the encoder's
end, trained jointly, as InfLocNet; masks always in the ORIGINAL image's pixels.

Modules: :mod:`.data` (readers of the mask layouts), :mod:`.preprocess` (the one input pipeline of
training and inference), :mod:`.augment` (mask-consistent augmentation), :mod:`.model` (network and
checkpoints), :mod:`.train` (training loop), :mod:`.predict` (masks, clean-up, crop box),
:mod:`.metrics`, :mod:`.robustness` (synthetic domain-shift proxies). The stage is
:mod:`pipeline.stages.segment`; usage and measured figures: docs/notes/lungs.md.

The API for other stages (prepare's lung crop, ``infer``)::

    from pipeline.lungs import load_lung_model, predict_masks, lung_crop_box
    model = load_lung_model("runs/lungs_shenzhen/segment/model.pt", device="cpu")
    masks = predict_masks(model, images)       # list of (H, W) arrays of any size -> bool masks, same sizes
    box = lung_crop_box(masks[0], margin=0.05) # (x0, y0, x1, y1) pixel edges or None

torch and smp are imported inside functions: importing this package is light.
"""
from pipeline.lungs.data import MaskDataset, MaskItem, read_image, read_mask, read_mask_dataset
from pipeline.lungs.model import LungModel, load_lung_model
from pipeline.lungs.predict import LungPrediction, clean_mask, lung_crop_box, predict_lungs, predict_masks

__all__ = ["LungModel", "LungPrediction", "MaskDataset", "MaskItem", "clean_mask", "load_lung_model",
           "lung_crop_box", "predict_lungs", "predict_masks", "read_image", "read_mask", "read_mask_dataset"]
