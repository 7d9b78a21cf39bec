"""Models by name: timm classifiers and segmentation-models-pytorch segmenters.

Nothing is downloaded: `pretrained_path` is a local weights file (a state dict saved with
torch.save or a .safetensors file); without it the model starts from random weights.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.errors import ConfigError

# Classifier heads: "linear" outputs logits (timm's own head); "cosine" outputs the cosines between
# L2-normalised features and class weights, in [-1, 1] (a loss that wants it applies its own scale).
HEADS = ("linear", "cosine")


def available_classifiers(pattern: str = "*") -> list[str]:
    return timm.list_models(pattern)


def available_segmenters() -> list[str]:
    import segmentation_models_pytorch as smp

    return sorted(smp.MODEL_ARCHITECTURES_MAPPING)


class CosineClassifier(nn.Module):
    """Cosine classifier head: cos(x, w_j) = <x / |x|, w_j / |w_j|>, one output per class, in [-1, 1].

    The ``NormedLinear`` layer of Cao, Wei, Gaidon, Arechiga and Ma, "Learning Imbalanced Datasets
    with Label-Distribution-Aware Margin Loss", NeurIPS 2019 (github.com/kaidic/LDAM-DRW,
    models/resnet_cifar.py), which LDAM's scale s assumes; the scale is the loss's, not the head's.
    Weights start uniform in [-1, 1] as there (only their direction matters).
    """

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, in_features).uniform_(-1.0, 1.0))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.linear(F.normalize(features, dim=1), F.normalize(self.weight, dim=1))


class CosineHeadModel(nn.Module):
    """A timm backbone without its classifier (``num_classes=0``: pooled features) followed by a
    ``CosineClassifier``. ``pretrained_cfg`` is the backbone's, so timm's data config (mean, std)
    resolves as for the plain model."""

    def __init__(self, backbone: nn.Module, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = CosineClassifier(backbone.num_features, num_classes)
        self.pretrained_cfg = getattr(backbone, "pretrained_cfg", {})

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))


def build_classifier(spec: dict, num_classes: int, head: str = "linear") -> nn.Module:
    """timm model ``spec["name"]`` with a ``linear`` head (timm's own, logits) or a ``cosine`` one
    (``CosineHeadModel``: cosines in [-1, 1], for losses that declare it, e.g. LDAM)."""
    name = spec["name"]
    if name not in timm.list_models() and name not in timm.list_models(pretrained=True):
        raise ConfigError(f"unknown timm model {name!r}; `pipeline list models` shows what exists")
    if head not in HEADS:
        raise ConfigError(f"model.head must be one of {list(HEADS)}, got {head!r}")
    params = dict(spec.get("params") or {})
    outputs = num_classes if head == "linear" else 0  # 0: timm returns pooled features
    weights = spec.get("pretrained_path")
    if weights:
        # timm loads a local file through pretrained_cfg_overlay and adapts the classifier head
        # (it is dropped when num_classes differs), so no hub is ever contacted.
        path = _existing(weights)
        model = timm.create_model(name, pretrained=True, num_classes=outputs,
                                  pretrained_cfg_overlay={"file": str(path)}, **params)
    else:
        model = timm.create_model(name, pretrained=False, num_classes=outputs, **params)
    return model if head == "linear" else CosineHeadModel(model, num_classes)


def build_segmenter(spec: dict, num_classes: int) -> nn.Module:
    """SMP architecture by name; `num_classes` includes background (channel 0)."""
    import segmentation_models_pytorch as smp

    arch = spec["name"]
    if arch.lower() not in {a.lower() for a in available_segmenters()}:
        raise ConfigError(f"unknown segmentation architecture {arch!r}; available: {available_segmenters()}")
    params = dict(spec.get("params") or {})
    model = smp.create_model(arch, encoder_name=spec.get("encoder", "resnet18"), encoder_weights=None,
                             classes=num_classes, **params)
    weights = spec.get("pretrained_path")
    if weights:
        load_encoder_weights(model.encoder, _existing(weights))
    return model


def load_encoder_weights(encoder: nn.Module, path: Path) -> None:
    state = load_state_dict(path)
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    if len(missing) == len(list(encoder.state_dict())):
        raise ConfigError(f"{path}: none of its tensors match the encoder; is it a weights file for this encoder?")


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The parameter tensors of a weights file (a state dict, or a checkpoint holding one under
    ``state_dict`` or ``model``). Only tensors are unpickled (``weights_only``): a file holding
    anything else, or not a weights file at all, is a ConfigError naming it."""
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError, RuntimeError, EOFError, SafetensorError ...: all one answer
        raise ConfigError(f"{path}: not a weights file that loads safely (tensors only): "
                          f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from None
    if isinstance(state, dict):
        state = state.get("state_dict", state.get("model", state))
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{path}: holds no state dict (a mapping of parameter names to tensors)")
    return state


def _existing(path: str) -> Path:
    resolved = Path(path).expanduser()
    if not resolved.is_file():
        raise ConfigError(f"pretrained_path {resolved} does not exist (weights are only loaded from a local file)")
    return resolved

