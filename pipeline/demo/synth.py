"""Synthetic chest radiographs with findings and lung masks: the one entry point the demo writers use.

The pieces live in their own modules (all pure numpy/OpenCV, no I/O):

* :mod:`pipeline.demo.geometry`: where the anatomy lies (:class:`Geometry`, :class:`Chest`), the
  drawing helpers, :func:`work_shape`, :func:`to_pixels`; the conventions (display intensities,
  normalised coordinates, PA orientation) are stated there;
* :mod:`pipeline.demo.anatomy`: :func:`render_chest` (a normal chest) and :func:`lung_mask`;
* :mod:`pipeline.demo.findings`: one renderer per finding, :func:`render_finding`, :func:`box_of`.

A chest is rendered on a small *working canvas* (the longer side is ``WORK_SIZE`` pixels; the
aspect ratio is that of the final image) and scaled up to the file's size afterwards, so a
2000-pixel DICOM costs little more than a 500-pixel one.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from pipeline.demo.anatomy import lung_mask, render_chest
from pipeline.demo.findings import BOX_FRACTION, RENDERABLE, RENDERERS, box_of, render_finding, spurious_box
from pipeline.demo.geometry import WORK_SIZE, Chest, Geometry, to_pixels, work_shape

__all__ = ["BOX_FRACTION", "RENDERABLE", "RENDERERS", "WORK_SIZE", "Chest", "Geometry", "Rendered", "box_of",
           "lung_mask", "render_chest", "render_finding", "render_image", "spurious_box", "to_pixels", "work_shape"]


@dataclass
class Rendered:
    """A rendered radiograph at its final size and the boxes of what was drawn on it."""

    image: np.ndarray                   # float32 display intensities in [0, 1], shape (rows, cols)
    findings: list                      # [(name, (x0, y0, x1, y1) normalised corners)]
    chest: Chest

    def lung_mask(self) -> np.ndarray:
        """Boolean lung-field mask at the image's size (see :func:`pipeline.demo.anatomy.lung_mask`)."""
        rows, cols = self.image.shape
        return lung_mask(self.chest, rows, cols)


def render_image(rng: np.random.Generator, rows: int, cols: int, findings: list[str],
                 work: int = WORK_SIZE) -> Rendered:
    """A chest radiograph of ``rows`` x ``cols`` pixels with the named findings drawn in.

    Rendered on the working canvas, scaled up with bilinear interpolation, then a fine grain at the
    final resolution (so the file does not look upsampled). A random gamma varies the contrast
    between "machines".
    """
    h, w = work_shape(rows, cols, work)
    ch = render_chest(rng, h, w)
    img = ch.base.copy()
    out = []
    for name in findings:
        delta, box = render_finding(ch, name, rng)
        img += delta
        out.append((name, box))
    img = np.clip(img, 0.0, 1.0)
    img = img ** np.float32(rng.uniform(0.85, 1.15))
    big = cv2.resize(img, (cols, rows), interpolation=cv2.INTER_LINEAR)
    big += rng.standard_normal((rows, cols), dtype=np.float32) * np.float32(0.006)
    np.clip(big, 0.0, 1.0, out=big)
    return Rendered(image=big, findings=out, chest=ch)
