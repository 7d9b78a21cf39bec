"""Test-time augmentation: a model's outputs averaged over flips and 90-degree rotations of its input.

``predict.tta`` (or ``pipeline infer --tta``): ``none``; ``flips`` = identity, horizontal flip,
vertical flip and both (4 views); ``dihedral`` = the 8 symmetries of the square (4 rotations, each
with and without a flip). Each view's output is mapped back before averaging (segmentation: the
inverse transform of its probability map). The views are exact and deterministic, so predictions
stay reproducible; MONAI's ``TestTimeAugmentation`` samples random invertible transforms instead,
which is what it is for. Skin lesions and acne have no preferred orientation, so every view is a
valid photo of the same case.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from pipeline.errors import ConfigError

TTA_MODES = ("none", "flips", "dihedral")


def views(mode: str) -> list[tuple[int, bool]]:
    """The views of ``mode`` as (quarter turns, horizontal flip after the turn)."""
    if mode not in TTA_MODES:
        raise ConfigError(f"predict.tta must be one of {list(TTA_MODES)}, got {mode!r}")
    if mode == "none":
        return [(0, False)]
    if mode == "flips":  # half a turn then a horizontal flip is the vertical flip
        return [(0, False), (0, True), (2, False), (2, True)]
    return [(k, flip) for k in range(4) for flip in (False, True)]


def forward_view(x: torch.Tensor, turns: int, flip: bool) -> torch.Tensor:
    """The view of a batch (..., H, W): rotated ``turns`` quarter turns, then flipped left-right."""
    x = torch.rot90(x, turns, dims=(-2, -1)) if turns else x
    return x.flip(-1) if flip else x


def inverse_view(y: torch.Tensor, turns: int, flip: bool) -> torch.Tensor:
    """Undo ``forward_view`` on a spatial output (..., H, W)."""
    y = y.flip(-1) if flip else y
    return torch.rot90(y, -turns, dims=(-2, -1)) if turns else y


def average_logits(model: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, mode: str) -> torch.Tensor:
    """Classification: the mean of the model's logits over the views of ``images`` (N, C, H, W)."""
    outputs = [model(forward_view(images, k, f)).float() for k, f in views(mode)]
    return torch.stack(outputs).mean(0)


def average_maps(predict_map: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, mode: str) -> torch.Tensor:
    """Segmentation: the mean over views of ``predict_map`` (image -> probability map, both
    (N, ·, H, W)), each mapped back to the original orientation."""
    maps = [inverse_view(predict_map(forward_view(image, k, f)), k, f) for k, f in views(mode)]
    return torch.stack(maps).mean(0)
