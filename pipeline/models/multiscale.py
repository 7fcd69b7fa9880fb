"""Image classifiers on a :mod:`pipeline.models.trunks` trunk: the plain one (Grad-CAM) and the
multiscale CAM of Sedai et al. 2018 (arXiv 1808.08280).

* :func:`build_plain` -- global average pooling of the last stage and one linear layer: the
  architecture of :class:`pipeline.classifier` ChestClassifier on any trunk; explained with
  :func:`pipeline.gradcam.grad_cams` on ``trunk.cam_layer``.
* :func:`build_multiscale` -- a class-wise 1x1 convolution on each chosen stage gives that stage's
  class activation maps ``A_s`` (B, L, h_s, w_s) and, by global average pooling, its logits
  ``z_s = GAP(A_s)``. Per class c, layer relevance weights ``w_c = softmax(r_c)`` (one learned logit
  ``r_cs`` per stage, started equal) form a convex combination:

      logit_c = sum_s w_cs * z_cs                      (classification)
      CAM_c   = sum_s w_cs * upsample(A_cs)            (localisation; bilinear to the input size)

  Average pooling commutes with the combination, so the classification logit is the mean of the very
  map that localises (up to the interpolation): the weights that make the classifier prefer the
  shallow, high-resolution stage for small findings (nodule, mass) are the ones that sharpen its map.
  ``relevance_weights()`` returns the (L, S) matrix, each row summing to 1, for the report.

The relevance logits are multiplied by :data:`RELEVANCE_SCALE` before the softmax: Adam moves a
parameter by about ``lr`` per step whatever its gradient, so a unit-scale logit would barely move in
the few hundred steps a CPU run trains; the scale is the usual "larger learning rate for a few
parameters" without a second optimizer group.
"""
from __future__ import annotations

from typing import Sequence

RELEVANCE_SCALE = 10.0


def build_plain(trunk, n_labels: int):
    """``trunk`` + global average pooling of its last stage + Linear(n_labels); forward -> logits."""
    from torch import nn

    class PlainClassifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.trunk = trunk
            self.fc = nn.Linear(trunk.channels[-1], n_labels)

        @property
        def n_outputs(self) -> int:
            return self.fc.out_features

        @property
        def cam_layer(self):
            return self.trunk.cam_layer

        def forward(self, x):
            return self.fc(self.trunk(x)[-1].mean((2, 3)))

    return PlainClassifier()


def build_multiscale(trunk, n_labels: int, stages: Sequence[int] = (0, 1, 2)):
    """Multiscale CAM classifier on the trunk's stages ``stages`` (indices into [stride 8, 16, 32])."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    stages = tuple(int(s) for s in stages)
    if not stages or any(s not in (0, 1, 2) for s in stages) or len(set(stages)) != len(stages):
        raise ValueError(f"stages must be distinct indices among 0, 1, 2 (strides 8, 16, 32), got {stages}")

    class MultiScaleCAM(nn.Module):
        def __init__(self):
            super().__init__()
            self.trunk = trunk
            self.stages = stages
            self.heads = nn.ModuleList(nn.Conv2d(trunk.channels[s], n_labels, 1) for s in stages)
            self.relevance = nn.Parameter(torch.zeros(n_labels, len(stages)))

        @property
        def n_outputs(self) -> int:
            return self.relevance.shape[0]

        def relevance_weights(self):
            """(L, S) softmax-normalised layer relevance weights; each row sums to 1."""
            return torch.softmax(self.relevance * RELEVANCE_SCALE, dim=1)

        def stage_cams(self, x) -> list:
            feats = self.trunk(x)
            return [head(feats[s]) for head, s in zip(self.heads, self.stages)]

        def forward(self, x):
            z = torch.stack([a.mean((2, 3)) for a in self.stage_cams(x)], dim=-1)  # (B, L, S)
            return (z * self.relevance_weights()[None]).sum(-1)

        def cams(self, x, size=None):
            """Combined class activation maps (B, L, H, W) at ``size`` (default: the input's), in logit
            units (not normalised; ReLU and divide by the maximum to draw or box them)."""
            size = tuple(x.shape[-2:]) if size is None else tuple(size)
            w = self.relevance_weights()
            out = 0
            for j, a in enumerate(self.stage_cams(x)):
                out = out + w[None, :, j, None, None] * F.interpolate(a, size=size, mode="bilinear",
                                                                      align_corners=False)
            return out

    return MultiScaleCAM()


__all__ = ["RELEVANCE_SCALE", "build_multiscale", "build_plain"]
