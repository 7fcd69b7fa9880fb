"""The classifier network: torchvision DenseNet-121 with a grey front and an ``n_outputs`` head;
local weights, checkpoints (state dicts only, loaded with ``weights_only=True``: loading never runs
pickled code) and the torch device of ``run.device``.

The model takes ``(B, 1, H, W)`` in [0, 1]. Inside, the single channel is repeated to 3 and normalised
with the ImageNet mean/std, so the first convolution of ImageNet (or any RGB) weights stays usable
unchanged; from scratch it costs nothing measurable.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping

from pipeline.errors import PipelineError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _model_class():
    import torch
    from torch import nn

    class ChestClassifier(nn.Module):
        """torchvision DenseNet-121 (``self.net``) with a grayscale front and an ``n_outputs`` head.

        ``forward`` takes (B, 1, H, W) in [0, 1] and returns logits (B, n_outputs).
        ``self.net.features`` is the convolutional trunk whose output (before the final ReLU and
        pooling) Grad-CAM hooks.
        """

        def __init__(self, net: nn.Module):
            super().__init__()
            self.net = net
            # Not persistent: the checkpoint holds only learned weights.
            self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
            self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

        @property
        def n_outputs(self) -> int:
            return self.net.classifier.out_features

        def forward(self, x):
            if x.shape[1] == 1:
                x = x.expand(-1, 3, -1, -1)  # repeat gray to RGB: pretrained first conv stays usable
            return self.net((x - self.mean) / self.std)

    return ChestClassifier


# Old torchvision DenseNet files (e.g. densenet121-a639ec97.pth, the ImageNet weights) name layers
# "norm.1"/"conv.2"; current torchvision names them "norm1"/"conv2".
_OLD_DENSENET_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")


def _clean_state_dict(state: Mapping) -> dict:
    if "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    out = {}
    for key, value in state.items():
        for prefix in ("module.", "net."):  # DataParallel; our own ChestClassifier checkpoints
            if key.startswith(prefix):
                key = key[len(prefix):]
        m = _OLD_DENSENET_KEY.match(key)
        if m:
            key = m.group(1) + m.group(2)
        out[key] = value
    return out


def load_backbone_weights(net, path: Path) -> list[str]:
    """Load a local DenseNet-121 state dict into ``net`` (a torchvision densenet121).

    Every trunk tensor (``features.*``) must be present with the same shape (else PipelineError
    naming the first mismatches). The classifier head is loaded only when its shape matches
    (an ImageNet 1000-class head is skipped). Returns the names of skipped head tensors.
    """
    from pipeline.checkpoints import SAVE_HINT, plain_state_dict, read_torch_file

    path = Path(path)
    raw = read_torch_file(
        path, f"cls.weights: weights file not found: {path}. Pass the path of a local DenseNet-121 state dict "
              "(e.g. torchvision's densenet121-a639ec97.pth downloaded elsewhere), 'imagenet' (needs internet), "
              "or null to train from scratch.",
        what=f"a readable PyTorch state dict (cls.weights); {SAVE_HINT}")
    state = _clean_state_dict(plain_state_dict(raw, f"cls.weights: {path}"))
    own = net.state_dict()
    problems, skipped = [], []
    for key, tensor in own.items():
        if key not in state:
            # num_batches_tracked is a counter, not a weight: files from old torchvision lack it
            if not key.startswith("classifier.") and not key.endswith("num_batches_tracked"):
                problems.append(f"missing {key}")
            continue
        if tuple(state[key].shape) != tuple(tensor.shape):
            if key.startswith("classifier."):
                skipped.append(key)
                continue
            problems.append(f"{key}: file {tuple(state[key].shape)} vs DenseNet-121 {tuple(tensor.shape)}")
    unexpected = [k for k in state if k not in own]
    if problems or unexpected:
        shown = problems[:5] + [f"unexpected {k}" for k in unexpected[:5]]
        raise PipelineError(
            f"cls.weights: {path} does not fit DenseNet-121 ({len(problems)} mismatched/missing, "
            f"{len(unexpected)} unexpected tensors), e.g. {'; '.join(shown)}. "
            "Pass a torchvision densenet121 state dict.")
    # A head of another size (ImageNet's 1000 classes) is dropped whole: build_model replaces it.
    load = {k: v for k, v in state.items() if not (skipped and k.startswith("classifier."))}
    net.load_state_dict(load, strict=False)
    return skipped


def build_model(n_outputs: int, weights: str | Path | None = None):
    """A DenseNet-121 ChestClassifier with ``n_outputs`` logits.

    ``weights``: None = random init (torchvision ``weights=None``: nothing is downloaded);
    a path = a local DenseNet-121 state dict (trunk loaded with a strict shape check; the head is
    replaced when its size differs); ``"imagenet"`` = torchvision's DEFAULT weights, which are
    downloaded unless already in the torch hub cache (fails offline with a PipelineError).
    """
    import torchvision
    from torch import nn

    if weights is None or str(weights).strip() == "":
        net = torchvision.models.densenet121(weights=None)
    elif str(weights).lower() == "imagenet":
        try:
            net = torchvision.models.densenet121(weights=torchvision.models.DenseNet121_Weights.DEFAULT)
        except Exception as exc:  # noqa: BLE001 (URLError, OSError, hash errors...)
            raise PipelineError(
                f"cls.weights=imagenet: could not get torchvision's DenseNet-121 ImageNet weights ({exc}). "
                "This machine is offline: download densenet121-a639ec97.pth on a machine with internet "
                "(https://download.pytorch.org/models/densenet121-a639ec97.pth), copy it here and set "
                "cls.weights=<path to the file>.") from None
    else:
        net = torchvision.models.densenet121(weights=None)
        load_backbone_weights(net, Path(weights))
    net.classifier = nn.Linear(net.classifier.in_features, n_outputs)
    return _model_class()(net)


def save_checkpoint(model, path: Path) -> Path:
    """State dict only (no pickled objects), written atomically."""
    import torch

    from pipeline.io import write_with

    target = model.module if hasattr(model, "module") else model
    state = {k: v.detach().cpu() for k, v in target.state_dict().items()}
    return write_with(Path(path), lambda p: torch.save(state, p))


def load_checkpoint(path: Path, n_outputs: int, device="cpu"):
    """Build a ChestClassifier and load a checkpoint written by :func:`save_checkpoint` (weights_only)."""
    from pipeline.checkpoints import read_torch_file

    path = Path(path)
    state = read_torch_file(path, f"classifier checkpoint not found: {path}; run the train_cls stage first.",
                            what="a classifier checkpoint of the train_cls stage (re-run train_cls)")
    model = build_model(n_outputs, None)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise PipelineError(f"{path}: checkpoint does not match a DenseNet-121 with {n_outputs} outputs "
                            f"({str(exc).splitlines()[0]}); retrain with the current cls settings.") from None
    return model.to(device).eval()


def torch_device(spec: str | int | None):
    """``run.device`` -> ``(torch.device, [gpu ids])`` (see :func:`pipeline.device.parse_device`);
    several ids mean DataParallel over them. GPUs that are not there are a ConfigError."""
    import torch

    from pipeline.device import parse_device, require_gpus

    parsed = parse_device(spec)
    if isinstance(parsed, str):
        return torch.device(parsed), []
    require_gpus(parsed, spec)
    return torch.device(f"cuda:{parsed[0]}"), parsed


def model_outputs(model) -> int:
    return (model.module if hasattr(model, "module") else model).n_outputs
