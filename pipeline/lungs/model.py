"""The lung network: a segmentation-models-pytorch UNet++ (or U-Net) with an optional classification
head at the encoder's end (smp ``aux_params``), as in InfLocNet; its checkpoint file; loading.

A checkpoint (``segment/model.pt``) is one dict, read back with ``torch.load(weights_only=True)``
(plain values and tensors only: loading never runs pickled code)::

    {"format": "cxr-lungs/1", "spec": {...ModelSpec...}, "preprocess": {"imgsz", "input", "percentiles"},
     "label_name": "tuberculosis" | None, "state_dict": {...}}

so :func:`load_lung_model` rebuilds the network and its input pipeline without any config.
Nothing is downloaded: encoders start from scratch (``encoder_weights=None``) or from a local state
dict (``segment.weights``: a whole model's, or an encoder's, e.g. converted ImageNet VGG-16 weights).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline.errors import ConfigError, DataError

FORMAT = "cxr-lungs/1"
ARCHS = {"unetplusplus": "UnetPlusPlus", "unet": "Unet"}


@dataclass(frozen=True)
class ModelSpec:
    arch: str = "unetplusplus"
    encoder: str = "mobilenet_v2"
    encoder_depth: int = 5
    decoder_channels: tuple = (64, 32, 16, 16, 8)
    in_channels: int = 1
    cls_head: bool = True
    cls_dropout: float = 0.2

    def to_dict(self) -> dict:
        d = asdict(self)
        d["decoder_channels"] = list(self.decoder_channels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        d = dict(d)
        d["decoder_channels"] = tuple(d.get("decoder_channels", cls.decoder_channels))
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


@dataclass
class LungModel:
    """A loaded lung network with what it needs to prepare inputs (see :mod:`pipeline.lungs.predict`)."""

    net: object                     # torch.nn.Module, in eval mode on ``device``
    spec: ModelSpec
    imgsz: int
    input: str
    device: object = "cpu"
    label_name: str | None = None
    info: dict = field(default_factory=dict)


def build_net(spec: ModelSpec):
    """The smp network of ``spec``, randomly initialised (never downloads weights)."""
    import segmentation_models_pytorch as smp

    if spec.arch not in ARCHS:
        raise ConfigError(f"segment.arch={spec.arch!r}: use one of {', '.join(ARCHS)}.")
    if len(spec.decoder_channels) != spec.encoder_depth:
        raise ConfigError(f"segment.decoder_channels has {len(spec.decoder_channels)} entries but "
                          f"segment.encoder_depth is {spec.encoder_depth}; give one width per decoder stage.")
    aux = {"classes": 1, "dropout": spec.cls_dropout} if spec.cls_head else None
    try:
        return getattr(smp, ARCHS[spec.arch])(
            encoder_name=spec.encoder, encoder_weights=None, encoder_depth=spec.encoder_depth,
            decoder_channels=list(spec.decoder_channels), in_channels=spec.in_channels, classes=1, aux_params=aux)
    except (KeyError, ValueError) as exc:
        raise ConfigError(f"segment.encoder={spec.encoder!r} with depth {spec.encoder_depth}: {exc} "
                          "(smp encoders: resnet18, resnet34, mobilenet_v2, efficientnet-b0, vgg16, ...).") from None


def load_init_weights(net, path: str | Path) -> str:
    """Load a local state dict into ``net``: a whole model's, or an encoder's (keys with or without the
    ``encoder.`` prefix). Tensors whose shape differs are left out. Returns what was loaded, in words."""
    from pipeline.checkpoints import plain_state_dict, read_torch_file

    path = Path(path)
    raw = read_torch_file(path, f"segment.weights={str(path)!r}: no such file (weights are never downloaded; "
                                "give a local state-dict file, or null to train from scratch).",
                          what="a readable state dict", missing_error=ConfigError, error=DataError)
    state = plain_state_dict(raw, path, error=DataError)
    own = net.state_dict()
    if not any(k in own for k in state):
        state = {f"encoder.{k}": v for k, v in state.items()}
    usable = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    if not usable:
        raise DataError(f"{path}: none of its {len(state)} tensors fits segment.encoder/arch (names or shapes differ).")
    net.load_state_dict(usable, strict=False)
    enc = sum(k.startswith("encoder.") for k in usable)
    return f"{len(usable)} of {len(own)} tensors from {path.name} ({enc} encoder, {len(usable) - enc} other)"


def checkpoint_dict(net, spec: ModelSpec, imgsz: int, input_mode: str, label_name: str | None,
                    info: dict | None = None) -> dict:
    from pipeline.lungs.preprocess import PERCENTILES

    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    return {"format": FORMAT, "spec": spec.to_dict(), "label_name": label_name,
            "preprocess": {"imgsz": int(imgsz), "input": input_mode, "percentiles": list(PERCENTILES)},
            "info": dict(info or {}), "state_dict": state}


def save_lung_model(path: Path, net, spec: ModelSpec, imgsz: int, input_mode: str, label_name: str | None,
                    info: dict | None = None) -> Path:
    import torch

    from pipeline.io import write_with

    ckpt = checkpoint_dict(net, spec, imgsz, input_mode, label_name, info)
    return write_with(Path(path), lambda p: torch.save(ckpt, p))


def load_lung_model(path: str | Path, device="cpu") -> LungModel:
    """A lung model saved by the segment stage (``runs/<exp>/segment/model.pt``), ready to predict."""
    import torch

    from pipeline.checkpoints import read_torch_file

    path = Path(path)
    ckpt = read_torch_file(path, f"lung model {path} does not exist; train one with ./run.sh segment "
                                 "--config configs/lungs_shenzhen.yaml (or point at its segment/model.pt).",
                           what="a readable lung model", missing_error=ConfigError, error=DataError)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise DataError(f"{path}: not a lung model of this project (format {FORMAT} expected); "
                        "use the segment stage's segment/model.pt.")
    spec = ModelSpec.from_dict(ckpt["spec"])
    net = build_net(spec)
    net.load_state_dict(ckpt["state_dict"])
    dev = torch.device(device) if not isinstance(device, torch.device) else device
    net.to(dev).eval()
    pre = ckpt["preprocess"]
    return LungModel(net=net, spec=spec, imgsz=int(pre["imgsz"]), input=str(pre["input"]), device=dev,
                     label_name=ckpt.get("label_name"), info=dict(ckpt.get("info") or {}))
