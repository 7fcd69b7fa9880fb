"""Chest X-ray detection pipeline: DICOMs and radiologists' boxes to a scored, fused Kaggle submission.

Importing the package first makes every library it may load offline (see :mod:`pipeline.offline`).
"""
from pipeline import offline as _offline

_offline.apply()

__version__ = "0.1.0"
