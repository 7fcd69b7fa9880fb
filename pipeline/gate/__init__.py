"""The input gate: is this input a chest X-ray at all? (issue 12; after Urinbayev et al. 2020,
"End-to-End Deep Diagnosis", arXiv 2003.08605, whose DenseNet-121 gates reach 0.987 on "X-ray or not"
and 0.976 on "which X-ray").

* :mod:`.header` -- DICOM header rules (Modality, BodyPartExamined, ViewPosition) with a one-line reason;
* :mod:`.images` -- any input (DICOM, PNG, JPEG, 16-bit, colour, palette) as an RGB picture;
* :mod:`.dataset` -- ImageFolder-style training table from a class -> folders map, group-wise held-out split;
* :mod:`.extras`, :mod:`.synthetic` -- offline "not an X-ray" pictures: bundled in installed packages, or drawn;
* :mod:`.model` -- DenseNet-121 from scratch: augmentation, training, prediction, checkpoint;
* :mod:`.evaluate` -- per-class accuracy, confusion matrix, per-source figures;
* :mod:`.screen` -- header and image combined: :func:`screen_files` -> the ``screen.csv`` table.

Used by the ``screen`` stage (training and held-out figures), the ``screen-images`` tool, and by
prepare (``screen.enabled``) and infer through :func:`screen_files`. torch is imported inside functions.
"""
from pipeline.gate.header import CHEST, HEADER_CLASSES, NOT_XRAY, OTHER_XRAY, HeaderDecision, decide_dataset, decide_file
from pipeline.gate.screen import UNDECIDED, UNREADABLE, combine, configured_model, screen_columns, screen_files

__all__ = ["CHEST", "HEADER_CLASSES", "NOT_XRAY", "OTHER_XRAY", "HeaderDecision", "UNDECIDED", "UNREADABLE",
           "combine", "configured_model", "decide_dataset", "decide_file", "screen_columns", "screen_files"]
