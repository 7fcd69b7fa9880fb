"""Real "not an X-ray" pictures that ship inside installed packages (no download), named with their source.

Two built-in sources for the gate's ``not_xray`` class (``screen.extras``):

* ``packages``: sample photographs and graphics bundled with the project's own dependencies:
  matplotlib (``mpl-data/sample_data``: Grace Hopper's portrait, a present, a logo; an elevation
  map, a topography/bathymetry grid and an MRI slice rendered in grey), scikit-learn
  (``datasets/images``: a Chinese temple, a flower), ultralytics (``assets``: a bus in a street,
  two people), networkx and sympy (test baseline plots of graphs and regions);
* ``pydicom``: pydicom's bundled test DICOMs that are not radiographs, rendered as pictures: CT
  slices (thorax, head), MR slices (brain, abdomen), ultrasound frames (colour Doppler, cardiac,
  palette), a nuclear-medicine whole-body scan, a text capture, a geometric secondary capture, a
  segmentation mask.

Each entry has a ``group``: pictures that are versions of one image (the same ultrasound in two
encodings, pages of one test set) share it, so a held-out split never sees a twin of a training
picture. An entry whose file is missing (a package not installed) is reported as missing by
:func:`list_extras`, never silently dropped.
"""
from __future__ import annotations

import gzip
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

EXTRA_SOURCES = ("packages", "pydicom")


@dataclass(frozen=True)
class Extra:
    source: str       # packages | pydicom
    package: str      # the installed package the file ships in
    relpath: str      # path inside the package
    group: str        # twins share a group
    what: str         # one line: what the picture shows
    render: str = ""  # "" = an image file; npz:<key> | npy | ima256 = a numeric grid drawn in grey

    def path(self) -> Path | None:
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            return None
        p = Path(list(spec.submodule_search_locations)[0]) / self.relpath
        return p if p.is_file() else None


_MPL = "mpl-data/sample_data/"
_NX = "drawing/tests/baseline/"
_DCM = "data/test_files/"
EXTRAS: tuple[Extra, ...] = (
    Extra("packages", "matplotlib", _MPL + "grace_hopper.jpg", "mpl_grace_hopper", "photograph: portrait"),
    Extra("packages", "matplotlib", _MPL + "Minduka_Present_Blue_Pack.png", "mpl_present", "photograph: wrapped present"),
    Extra("packages", "matplotlib", _MPL + "logo2.png", "mpl_logo", "logo"),
    Extra("packages", "matplotlib", _MPL + "jacksboro_fault_dem.npz", "mpl_dem", "elevation map in grey", "npz:elevation"),
    Extra("packages", "matplotlib", _MPL + "topobathy.npz", "mpl_topobathy", "topography/bathymetry in grey", "npz:topo"),
    Extra("packages", "matplotlib", _MPL + "s1045.ima.gz", "mpl_mri", "MRI slice (head), grey", "ima256"),
    Extra("packages", "sklearn", "datasets/images/china.jpg", "sk_china", "photograph: temple"),
    Extra("packages", "sklearn", "datasets/images/flower.jpg", "sk_flower", "photograph: flower"),
    Extra("packages", "ultralytics", "assets/bus.jpg", "ul_bus", "photograph: street with a bus"),
    Extra("packages", "ultralytics", "assets/zidane.jpg", "ul_zidane", "photograph: two people"),
    Extra("packages", "networkx", _NX + "test_display_complex.png", "nx_drawings", "graph drawing"),
    Extra("packages", "networkx", _NX + "test_display_house_with_colors.png", "nx_drawings", "graph drawing"),
    Extra("packages", "networkx", _NX + "test_display_labels_and_colors.png", "nx_drawings", "graph drawing"),
    Extra("packages", "networkx", _NX + "test_display_shortest_path.png", "nx_drawings", "graph drawing"),
    Extra("packages", "sympy", "plotting/tests/test_region_or.png", "sympy_regions", "region plot"),
    Extra("packages", "sympy", "plotting/tests/test_region_xor.png", "sympy_regions", "region plot"),
    Extra("pydicom", "pydicom", _DCM + "CT_small.dcm", "dcm_ct_small", "CT slice (thorax, vertebra)"),
    Extra("pydicom", "pydicom", _DCM + "693_J2KI.dcm", "dcm_ct_693", "CT slice (head)"),
    Extra("pydicom", "pydicom", _DCM + "J2K_pixelrep_mismatch.dcm", "dcm_ct_head", "CT slice (head, skull base)"),
    Extra("pydicom", "pydicom", _DCM + "MR_small.dcm", "dcm_mr_small", "MR slice"),
    Extra("pydicom", "pydicom", _DCM + "examples_overlay.dcm", "dcm_mr_abdomen", "MR slice (abdomen)"),
    Extra("pydicom", "pydicom", _DCM + "examples_jpeg2k.dcm", "dcm_us_doppler", "ultrasound, colour Doppler"),
    Extra("pydicom", "pydicom", _DCM + "examples_palette.dcm", "dcm_us_palette", "ultrasound, palette colour"),
    Extra("pydicom", "pydicom", _DCM + "examples_ybr_color.dcm", "dcm_us_cardiac", "ultrasound, cardiac (frame 1)"),
    Extra("pydicom", "pydicom", _DCM + "JPEG2000.dcm", "dcm_nm_wholebody", "nuclear medicine whole-body scan"),
    Extra("pydicom", "pydicom", _DCM + "JPGExtended.dcm", "dcm_nm_wholebody", "nuclear medicine whole-body scan"),
    Extra("pydicom", "pydicom", _DCM + "GDCMJ2K_TextGBR.dcm", "dcm_text", "captured text on grey"),
    Extra("pydicom", "pydicom", _DCM + "image_dfl.dcm", "dcm_squares", "secondary capture: nested squares"),
    Extra("pydicom", "pydicom", _DCM + "liver_1frame.dcm", "dcm_seg_liver", "segmentation mask"),
)


def list_extras(sources) -> tuple[list[tuple[Extra, Path]], list[Extra]]:
    """The entries of the named sources: (found entries with their file, entries whose file is missing)."""
    unknown = sorted(set(sources) - set(EXTRA_SOURCES))
    if unknown:
        raise ValueError(f"unknown extra source(s) {unknown}; known: {list(EXTRA_SOURCES)}")
    found, missing = [], []
    for e in EXTRAS:
        if e.source in sources:
            p = e.path()
            (found.append((e, p)) if p is not None else missing.append(e))
    return found, missing


def read_extra(extra: Extra, path: Path, max_side: int | None = None) -> np.ndarray:
    """The entry as uint8 (H, W, 3): image files through :func:`pipeline.gate.images.read_rgb`,
    numeric grids (elevation, MRI raw data) stretched to grey."""
    from pipeline.gate.images import as_rgb, read_rgb, shrink, to_uint8

    if not extra.render:
        return read_rgb(path, max_side)
    if extra.render.startswith("npz:"):
        with np.load(path) as data:
            grid = data[extra.render[4:]]
    elif extra.render == "ima256":  # 256 x 256 big-endian uint16 (matplotlib's MRI example)
        grid = np.frombuffer(gzip.decompress(path.read_bytes()), dtype=">u2").reshape(256, 256)
    else:
        raise ValueError(f"unknown render {extra.render!r}")
    return shrink(as_rgb(to_uint8(grid.astype(np.float32), 0.5, 99.5)), max_side)
