"""Models by name: timm classifiers and segmentation-models-pytorch segmenters.

Nothing is downloaded: `pretrained_path` is a local weights file (a state dict saved with
torch.save or a .safetensors file); without it the model starts from random weights.
"""

from __future__ import annotations

from pathlib import Path

import timm
import torch
from torch import nn

from pipeline.errors import ConfigError


def available_classifiers(pattern: str = "*") -> list[str]:
    return timm.list_models(pattern)


def available_segmenters() -> list[str]:
    import segmentation_models_pytorch as smp

    return sorted(smp.MODEL_ARCHITECTURES_MAPPING)


def build_classifier(spec: dict, num_classes: int) -> nn.Module:
    name = spec["name"]
    if name not in timm.list_models() and name not in timm.list_models(pretrained=True):
        raise ConfigError(f"unknown timm model {name!r}; `pipeline list models` shows what exists")
    params = dict(spec.get("params") or {})
    weights = spec.get("pretrained_path")
    if weights:
        # timm loads a local file through pretrained_cfg_overlay and adapts the classifier head
        # (it is dropped when num_classes differs), so no hub is ever contacted.
        path = _existing(weights)
        return timm.create_model(name, pretrained=True, num_classes=num_classes,
                                 pretrained_cfg_overlay={"file": str(path)}, **params)
    return timm.create_model(name, pretrained=False, num_classes=num_classes, **params)


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
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else state


def _existing(path: str) -> Path:
    resolved = Path(path).expanduser()
    if not resolved.is_file():
        raise ConfigError(f"pretrained_path {resolved} does not exist (weights are only loaded from a local file)")
    return resolved

