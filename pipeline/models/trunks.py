"""CNN trunks that return the feature maps of three stages (strides 8, 16, 32), for CAM and CLN models.

``build_trunk(name)`` -> :class:`Trunk` (a torch module, built lazily so importing this file costs
nothing). ``forward(x)`` takes (B, 1, H, W) in [0, 1] (the pipeline's grayscale input, see
:mod:`pipeline.classifier`): the channel is repeated to 3 and normalised with the ImageNet mean/std, so
a local ImageNet state dict stays usable unchanged. It returns ``[f8, f16, f32]``:

* DenseNet (``densenet121``, ``densenet169``): the outputs of dense blocks 2, 3 and 4, each after a
  BatchNorm + ReLU (blocks 2 and 3: the transition layer's own norm/ReLU, taken before its conv and
  pooling; block 4: ``norm5`` + ReLU, what the classifier head pools);
* ResNet (``resnet18``, ``resnet34``, ``resnet50``): the outputs of ``layer2``, ``layer3``, ``layer4``.

``trunk.channels`` holds the three channel counts; ``trunk.cam_layer`` is the module whose output
Grad-CAM hooks (DenseNet: ``norm5``, as :func:`pipeline.gradcam.grad_cam`; ResNet: ``layer4``).
Weights: None = random init (nothing is downloaded), or the path of a local torchvision state dict
of the same architecture (a head of another size is skipped).
"""
from __future__ import annotations

from pathlib import Path

from pipeline.classifier import IMAGENET_MEAN, IMAGENET_STD
from pipeline.errors import ConfigError, PipelineError

DENSENETS = ("densenet121", "densenet169")
RESNETS = ("resnet18", "resnet34", "resnet50")
TRUNKS = DENSENETS + RESNETS
STRIDES = (8, 16, 32)


def _load_local(net, path: Path, head_prefixes: tuple[str, ...]) -> None:
    """Load a local state dict into ``net``: every trunk tensor must be there with the same shape."""
    from pipeline.checkpoints import SAVE_HINT, plain_state_dict, read_torch_file

    path = Path(path)
    raw = read_torch_file(path, f"trunk weights file not found: {path}; pass a local state dict path or null "
                                "(train from scratch). Nothing is downloaded.",
                          what=f"a readable PyTorch state dict; {SAVE_HINT}")
    state = plain_state_dict(raw, path)
    own = net.state_dict()
    bad = [k for k, v in own.items() if not k.startswith(head_prefixes) and not k.endswith("num_batches_tracked")
           and (k not in state or tuple(state[k].shape) != tuple(v.shape))]
    if bad:
        raise PipelineError(f"{path}: does not fit this trunk ({len(bad)} missing or mismatched tensors, "
                            f"e.g. {bad[:3]}); pass a torchvision state dict of the same architecture.")
    net.load_state_dict({k: v for k, v in state.items() if k in own and not k.startswith(head_prefixes)},
                        strict=False)


def build_trunk(name: str = "densenet121", weights: str | Path | None = None):
    """A :class:`Trunk` of the named torchvision architecture (see module doc)."""
    import torch
    import torch.nn.functional as F
    import torchvision
    from torch import nn

    if name not in TRUNKS:
        raise ConfigError(f"backbone {name!r} is not one of {list(TRUNKS)}")
    net = getattr(torchvision.models, name)(weights=None)
    if weights is not None and str(weights).strip():
        if name == "densenet121":
            from pipeline.classifier import load_backbone_weights

            load_backbone_weights(net, Path(weights))
        else:
            _load_local(net, Path(weights), ("classifier.", "fc."))

    class Trunk(nn.Module):
        def __init__(self):
            super().__init__()
            self.name = name
            if name in DENSENETS:
                f = net.features
                self.stem = nn.Sequential(f.conv0, f.norm0, f.relu0, f.pool0, f.denseblock1, f.transition1)
                self.block2, self.trans2 = f.denseblock2, f.transition2
                self.block3, self.trans3 = f.denseblock3, f.transition3
                self.block4, self.norm5 = f.denseblock4, f.norm5
                self.channels = (self.trans2.norm.num_features, self.trans3.norm.num_features, self.norm5.num_features)
                self.cam_layer = self.norm5
            else:
                self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1)
                self.layer2, self.layer3, self.layer4 = net.layer2, net.layer3, net.layer4
                ch = [m.out_channels for m in self.layer4.modules() if isinstance(m, nn.Conv2d)][-1]
                self.channels = (ch // 4, ch // 2, ch)
                self.cam_layer = self.layer4
            self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

        @staticmethod
        def _transition(t, x):
            a = t.relu(t.norm(x))  # the stage's normalised features, reused by the transition
            return a, t.pool(t.conv(a))

        def forward(self, x):
            if x.shape[1] == 1:
                x = x.expand(-1, 3, -1, -1)
            x = self.stem((x - self.mean) / self.std)
            if name in DENSENETS:
                f8, x = self._transition(self.trans2, self.block2(x))
                f16, x = self._transition(self.trans3, self.block3(x))
                f32 = F.relu(self.norm5(self.block4(x)))
                return [f8, f16, f32]
            f8 = self.layer2(x)
            f16 = self.layer3(f8)
            return [f8, f16, self.layer4(f16)]

    return Trunk()


__all__ = ["DENSENETS", "RESNETS", "STRIDES", "TRUNKS", "build_trunk"]
