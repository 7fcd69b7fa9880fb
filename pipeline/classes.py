"""Class lists of the two datasets. Index in the list is the ``class_id`` used everywhere.

Both lists put the 14 findings at 0..13 and "no finding" at 14, so the normal class and the
2-class filter work the same way on either dataset.
"""
from __future__ import annotations

NORMAL_ID = 14

VINBIGDATA = [
    "Aortic enlargement", "Atelectasis", "Calcification", "Cardiomegaly", "Consolidation", "ILD",
    "Infiltration", "Lung Opacity", "Nodule/Mass", "Other lesion", "Pleural effusion",
    "Pleural thickening", "Pneumothorax", "Pulmonary fibrosis", "No finding",
]

# ChestX-ray14 in the order of Wang et al. 2017; the 8 classes of BBox_List_2017.csv are 0..7.
CHESTXRAY14 = [
    "Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule", "Pneumonia",
    "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis", "Pleural_Thickening",
    "Hernia", "No Finding",
]

CLASSES = {"vinbigdata": VINBIGDATA, "chestxray14": CHESTXRAY14}


def class_names(fmt: str) -> list[str]:
    """All class names of a dataset format, findings first and the normal class last (id 14)."""
    try:
        return CLASSES[fmt]
    except KeyError:
        raise ValueError(f"unknown dataset format {fmt!r}; expected one of {sorted(CLASSES)}") from None


def finding_names(fmt: str) -> list[str]:
    """The 14 finding classes (ids 0..13), without the normal class."""
    return class_names(fmt)[:NORMAL_ID]
