"""Models by name: timm classifiers and segmentation-models-pytorch segmenters.

Nothing is downloaded. Pretrained weights come from a local file, in one of two ways:
- ``model.pretrained_path``: a weights file (a state dict saved with torch.save, or .safetensors);
- ``model.pretrained: true`` (SMP encoders: or the weights' name, e.g. ``ssl``): the file timm or
  SMP would download, found in the local Hugging Face hub cache (``HF_HUB_CACHE``, by default
  ~/.cache/huggingface/hub) or torch hub's checkpoint folder, as left there by an earlier download
  or copied from a machine with internet. When it is not there, the error names the repository,
  the file and the folder to place it in.
Without either the model starts from random weights.
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
    if not weights and spec.get("pretrained"):
        weights = str(cached_timm_weights(name))
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
    if not weights and spec.get("pretrained"):
        named = spec["pretrained"] if isinstance(spec["pretrained"], str) else "imagenet"
        weights = str(cached_encoder_weights(spec.get("encoder", "resnet18"), named))
    if weights:
        load_encoder_weights(model.encoder, _existing(weights))
    return model


def load_encoder_weights(encoder: nn.Module, path: Path) -> None:
    state = load_state_dict(path)
    own = set(encoder.state_dict())
    if not own & set(state) and own & {f"model.{key}" for key in state}:
        # a timm model's weights for an SMP "tu-" encoder, which holds the timm model as .model
        state = {f"model.{key}": value for key, value in state.items()}
    if not own & set(state):
        raise ConfigError(f"{path}: none of its tensors match the encoder; is it a weights file for this encoder?")
    # strict=False: a classifier's head (fc.*) in the file has no place in an encoder. Some SMP
    # encoders' load_state_dict return nothing, so the overlap is counted above, not from its result.
    encoder.load_state_dict(state, strict=False)


def _hub_cache() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _from_hub_cache(repo_id: str, filenames: tuple[str, ...], revision: str | None = None) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    for filename in filenames:
        found = try_to_load_from_cache(repo_id, filename, cache_dir=_hub_cache(), revision=revision)
        if isinstance(found, str):
            return Path(found)
    return None


def _not_cached(what: str, places: list[str]) -> ConfigError:
    return ConfigError(f"model.pretrained: true: no local copy of {what}, and nothing is downloaded. Place "
                       + " or ".join(places) + ", or give the file as model.pretrained_path")


def cached_timm_weights(name: str) -> Path:
    """The local file of timm model ``name``'s pretrained weights (``name`` may carry a tag, e.g.
    ``resnet18.a1_in1k``), where timm itself would have downloaded it: the Hugging Face hub cache
    (``hf_hub_id``) or torch hub's checkpoints folder (``url``). ConfigError saying where it goes."""
    import os
    from urllib.parse import urlparse

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        raise ConfigError(f"timm has no pretrained weights for {name!r}; list them with `pipeline list models '{name.split('.')[0]}*'`")
    places = []
    if cfg.hf_hub_id:
        repo_id, _, revision = cfg.hf_hub_id.partition("@")
        found = _from_hub_cache(repo_id, ("model.safetensors", "pytorch_model.bin"), revision or None)
        if found is not None:
            return found
        places.append(f"model.safetensors from https://huggingface.co/{repo_id} in the hub cache "
                      f"({_hub_cache() / ('models--' + repo_id.replace('/', '--'))}/snapshots/<commit>/, "
                      f"e.g. `huggingface-cli download {repo_id} model.safetensors` on a machine with internet)")
    if cfg.url:
        path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(cfg.url).path)
        if path.is_file():
            return path
        places.append(f"{cfg.url} at {path}")
    raise _not_cached(f"timm {name}'s weights", places)


def cached_encoder_weights(encoder: str, weights: str = "imagenet") -> Path:
    """The local file of SMP encoder ``encoder``'s pretrained ``weights``, where SMP would have
    downloaded it (the hub cache, at the revision SMP pins); ``tu-<name>`` encoders: timm's file."""
    from segmentation_models_pytorch.encoders import encoders

    if encoder.startswith("tu-"):
        return cached_timm_weights(encoder[3:])
    settings = encoders.get(encoder, {}).get("pretrained_settings", {})
    if weights not in settings:
        raise ConfigError(f"SMP encoder {encoder!r} has no pretrained weights {weights!r}; it has {sorted(settings)}")
    repo_id, revision = settings[weights]["repo_id"], settings[weights].get("revision")
    found = _from_hub_cache(repo_id, ("model.safetensors",), revision)
    if found is not None:
        return found
    raise _not_cached(f"SMP {encoder} {weights} weights", [
        f"model.safetensors from https://huggingface.co/{repo_id} (revision {revision}) at "
        f"{_hub_cache() / ('models--' + repo_id.replace('/', '--')) / 'snapshots' / str(revision) / 'model.safetensors'}"])


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

