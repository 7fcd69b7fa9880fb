"""Class lists of the two datasets. Index in the list is the ``class_id`` used everywhere.

Both lists put the 14 findings at 0..13 and "no finding" at 14, so the normal class and the
2-class filter work the same way on either dataset.
"""
from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class ClassList:
    """A run's classes: findings at ids 0..n-1, the normal class last at id n (14 for VinBigData and
    ChestX-ray14; 2 for TBX11K's two TB classes). Read with :func:`run_classes`."""

    names: tuple

    @property
    def normal_id(self) -> int:
        return len(self.names) - 1

    @property
    def findings(self) -> list[str]:
        return list(self.names[:-1])

    @property
    def normal_name(self) -> str:
        return self.names[-1]


def run_classes(paths) -> ClassList:
    """The classes prepare wrote to ``dataset.yaml`` (``names``: the findings; ``normal``: the normal class)."""
    import yaml

    from pipeline.errors import DataError

    path = paths.dataset_yaml
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        raise DataError(f"{path}: the run's class list is missing or unreadable; run the prepare stage.") from None
    names = data.get("names")
    if isinstance(names, dict):
        names = [names[k] for k in sorted(names, key=int)]
    if not isinstance(names, list) or not names:
        raise DataError(f"{path}: 'names' must list the finding classes; run the prepare stage again.")
    return ClassList(tuple(str(n) for n in names) + (str(data.get("normal", "No finding")),))


def format_classes(fmt: str) -> ClassList:
    """The fixed class list of a dataset format that has one (vinbigdata, chestxray14)."""
    return ClassList(tuple(class_names(fmt)))
