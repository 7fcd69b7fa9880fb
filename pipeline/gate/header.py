"""What a DICOM header says about "is this a chest X-ray?", with a one-line reason naming the element.

Rules, in order (the first that decides wins):

1. ``Modality`` (0008,0060); when absent, the modality implied by ``SOPClassUID`` (0008,0016), e.g.
   "Computed Radiography Image Storage" -> CR. VinBigData's DICOMs carry neither: undecided.
2. Projection radiography, ``CR`` / ``DX`` (and ``DR``, not a DICOM code but written by some digital
   radiography systems) -> an X-ray; go on to the body part.
   X-ray modalities that never give a diagnostic chest radiograph -> ``other_xray``: ``MG``
   (mammography), ``RF`` (fluoroscopy: dynamic, low-dose frames, not a chest film), ``XA``
   (angiography), ``PX``/``IO`` (dental), ``DF`` (retired fluoroscopy code), ``BMD`` (bone
   densitometry), ``RG`` (retired radiographic imaging). Everything else (``CT``, ``MR``, ``US``,
   ``NM``, ``PT``, ``OT``, ``SC``, ``SEG``, ``RT*``, ``SR``, ``XC``, ...) -> ``not_xray``: CT is made
   with X-rays but is a cross-sectional reconstruction, not a radiograph; ``OT`` (other) and ``SC``
   written as a Modality say the device is not a radiography system. (Without a Modality, a Secondary
   Capture SOP class decides nothing: SIIM-ACR's chest films are secondary captures.)
3. For CR/DX/DR, ``BodyPartExamined`` (0018,0015): a value naming the chest (``CHEST``,
   ``THORAX``, ``TORAX``, ``LUNG``, ...) -> ``chest``; any other value (``HAND``, ``CSPINE``,
   ``SKULL``, ...) -> ``other_xray``; absent or empty -> an X-ray whose body part the header does
   not give: the image model decides among the X-ray classes (without a model: taken as chest).
4. ``ViewPosition`` (0018,5101; PA, AP, LL, RL, LATERAL...) is recorded in the reason, never decides:
   a lateral chest film is a chest X-ray.

Pure functions over a pydicom dataset read without pixel data; no config.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import DataError

CHEST, OTHER_XRAY, NOT_XRAY = "chest", "other_xray", "not_xray"
HEADER_CLASSES = (CHEST, OTHER_XRAY, NOT_XRAY)

RADIOGRAPHY = {"CR": "computed radiography", "DX": "digital radiography",
               "DR": "digital radiography (non-standard code)"}
XRAY_NOT_CHEST = {"MG": "mammography", "RF": "fluoroscopy", "XA": "X-ray angiography",
                  "PX": "panoramic dental X-ray", "IO": "intra-oral dental X-ray",
                  "DF": "digital fluoroscopy (retired code)", "BMD": "bone densitometry",
                  "RG": "radiographic imaging (retired code)"}
NOT_RADIOGRAPH = {"CT": "computed tomography: cross-sectional, not a radiograph", "MR": "magnetic resonance",
                  "US": "ultrasound", "NM": "nuclear medicine", "PT": "positron emission tomography",
                  "OT": "other: the header does not say radiograph", "SC": "secondary capture",
                  "XC": "external-camera photograph", "OP": "ophthalmic photograph", "ES": "endoscopy",
                  "SM": "slide microscopy", "GM": "general microscopy", "SEG": "segmentation",
                  "SR": "structured report", "DOC": "document", "ECG": "electrocardiogram",
                  "RTDOSE": "radiotherapy dose", "RTSTRUCT": "radiotherapy structures",
                  "RTPLAN": "radiotherapy plan", "RTIMAGE": "radiotherapy portal image", "OPT": "optical tomography"}

# SOP class name fragments (pydicom's UID names) -> the modality they imply, for files without Modality.
_SOP_MODALITY = [("Computed Radiography", "CR"), ("Digital X-Ray", "DX"), ("Mammography", "MG"),
                 ("Intra-oral", "IO"), ("X-Ray Angiographic", "XA"), ("X-Ray Radiofluoroscopic", "RF"),
                 ("Enhanced XA", "XA"), ("Enhanced XRF", "RF"), ("CT Image", "CT"), ("MR Image", "MR"),
                 ("MR Spectroscopy", "MR"), ("Ultrasound", "US"), ("Nuclear Medicine", "NM"),
                 ("Positron Emission", "PT"), ("Segmentation", "SEG"), ("RT ", "RTIMAGE"),
                 ("VL ", "XC"), ("Ophthalmic", "OP")]

# BodyPartExamined values that name the chest: the DICOM defined term CHEST plus common local spellings.
_CHEST_WORDS = re.compile(r"(CHEST|THORAX|THORAC|TORAX|TORACE|THORAKS|LUNG|PULMON|POUMON)")


@dataclass(frozen=True)
class HeaderDecision:
    """``decision``: a class of :data:`HEADER_CLASSES`, or None when the header does not decide.
    ``xray``: True when the header says radiograph but not the body part (the image model then chooses
    among the X-ray classes). ``reason`` is one line naming the elements used."""

    decision: str | None
    xray: bool
    reason: str
    modality: str = ""
    body_part: str = ""
    view: str = ""


def _text(ds, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if not isinstance(value, str) and hasattr(value, "__iter__"):
        value = "\\".join(str(v) for v in value)
    return str(value).strip().upper()


def _sop_modality(ds) -> tuple[str, str]:
    uid = ds.get("SOPClassUID")
    if not uid:
        return "", ""
    name = getattr(uid, "name", "") or str(uid)
    if "Secondary Capture" in name:
        return "", name  # a capture of anything (SIIM's chest films are secondary captures): says nothing
    for fragment, modality in _SOP_MODALITY:
        if fragment in name:
            return modality, name
    return "", name


def is_chest_body_part(value: str) -> bool:
    """True when a BodyPartExamined value names the chest (CHEST, THORAX, 'PORT CHEST', 'TORAX', ...)."""
    return bool(_CHEST_WORDS.search(value.upper()))


def decide_dataset(ds) -> HeaderDecision:
    """Apply the module's rules to a pydicom dataset (pixel data not needed)."""
    modality, body, view = _text(ds, "Modality"), _text(ds, "BodyPartExamined"), _text(ds, "ViewPosition")
    view_note = f", ViewPosition {view}" if view else ""
    source = f"Modality {modality}"
    if not modality:
        modality, sop_name = _sop_modality(ds)
        if not modality:
            sop = f" (SOPClassUID {sop_name})" if sop_name else " or SOPClassUID"
            return HeaderDecision(None, False, f"DICOM without Modality{sop}", "", body, view)
        source = f"no Modality; SOPClassUID {sop_name} implies {modality}"
    if modality in XRAY_NOT_CHEST:
        return HeaderDecision(OTHER_XRAY, True, f"DICOM {source} ({XRAY_NOT_CHEST[modality]}): an X-ray but not a "
                              f"chest radiograph{view_note}", modality, body, view)
    if modality not in RADIOGRAPHY:
        what = NOT_RADIOGRAPH.get(modality, "not CR/DX/DR")
        return HeaderDecision(NOT_XRAY, False, f"DICOM {source} ({what}): not a radiograph", modality, body, view)
    if not body:
        return HeaderDecision(None, True, f"DICOM {source}, no BodyPartExamined{view_note}", modality, body,
                              view)
    if is_chest_body_part(body):
        return HeaderDecision(CHEST, True, f"DICOM {source}, BodyPartExamined {body}{view_note}: chest X-ray",
                              modality, body, view)
    return HeaderDecision(OTHER_XRAY, True, f"DICOM {source}, BodyPartExamined {body}{view_note}: an X-ray of "
                          "another body part", modality, body, view)


def decide_file(path: str | Path) -> HeaderDecision:
    """Read a DICOM header (no pixels) and decide; DataError naming the file when it cannot be read."""
    import warnings

    import pydicom

    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            ds = pydicom.dcmread(path, stop_before_pixels=True)
    except Exception as exc:  # noqa: BLE001 (InvalidDicomError, EOFError, struct.error, OSError...)
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{path}: cannot read the DICOM header ({first}); the file is not a DICOM or is "
                        "truncated") from None
    return decide_dataset(ds)
