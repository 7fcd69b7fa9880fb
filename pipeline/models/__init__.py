"""Networks for ChestX-ray14 classification with localisation (issue 13).

* :mod:`pipeline.models.trunks` -- torchvision DenseNet / ResNet trunks returning stride-8/16/32 features;
* :mod:`pipeline.models.multiscale` -- the plain classifier (Grad-CAM) and multiscale CAM (Sedai et al. 2018);
* :mod:`pipeline.models.cln` -- CLN: classification + per-class centre-heatmap localisation (after Okolo et al. 2025);
* :mod:`pipeline.models.data` -- images with labels and boxes, box-aware augmentation;
* :mod:`pipeline.models.fit` -- training (fixed epochs, last weights) and prediction of boxes and probabilities.

Scored with :mod:`pipeline.localisation`. torch is imported inside functions only.
"""
