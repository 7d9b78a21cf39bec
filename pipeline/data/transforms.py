"""Image transforms (torchvision v2 for classification, MONAI dictionary transforms for segmentation)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torchvision.transforms import v2

from pipeline.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# the training augmentation's colour jitter, kept small because colour is diagnostic
COLOUR_JITTER = {"brightness": 0.1, "contrast": 0.1, "saturation": 0.05, "hue": 0.02}


def classification_transform(image_size: int, *, train: bool, augment: bool | str = True, crop_pct: float = 1.0,
                             mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD,
                             normalise: bool = True, colour_jitter: bool = True, whole_image: bool = False) -> v2.Compose:
    """uint8 HWC numpy -> normalised float CHW tensor, ``image_size`` square (``normalise=False``:
    the uint8 CHW tensor before normalisation, for :class:`BatchTransform` on the device;
    ``colour_jitter=False``: without the colour jitter, which :class:`BatchColourJitter` then applies
    to the batch on the device).

    ``augment`` (training only): True = RandomResizedCrop of 70-100% of the area at aspect 0.9-1.1
    (the image is cropped, never stretched), flips, 90° rotations and colour jitter; ``"flips"`` =
    flips and 90° rotations of the evaluation geometry's image only (nothing crops further,
    rescales or recolours: for small lesion crops, docs/BENCHMARKS.md section 6); False = none.
    Dermoscopy has no canonical orientation, so flips and 90° rotations are label-preserving;
    colour jitter is kept small because colour is diagnostic (e.g. blue-grey veil in melanoma).

    ``whole_image`` (the loader of ``augment_on_device: all``): the whole photo resized to an ``image_size``
    square, its aspect left to :class:`BatchAugment`, which crops it in the photo's own proportions.

    Evaluation (and training without the full augmentation): timm's eval geometry: resize the
    **shorter** side to floor(image_size / crop_pct), keeping the aspect, then centre-crop
    image_size. A 600x450 dermoscopy image is cropped at its long side as in training, not squashed
    1.33x by a resize to a square. ``crop_pct`` (``train.crop_pct``, default 1.0) matches the scale
    of the training crops: sqrt(crop area) / shorter side averages 1.00 for 600x450 images (draws
    larger than the short side are rejected; the fallback is the whole short side at aspect 1.1)
    and 0.91 for square ones (20,000 draws of torchvision's RandomResizedCrop.get_params).
    """
    if not (isinstance(augment, bool) or augment == "flips"):
        raise ConfigError(f"train.augment must be true, false or 'flips', got {augment!r}")
    if not 0.0 < crop_pct <= 1.0:
        raise ValueError(f"crop_pct must lie in (0, 1], got {crop_pct!r}")
    steps: list = [v2.ToImage()]
    if whole_image:
        steps += [v2.Resize((image_size, image_size), antialias=True)]
    elif train and augment is True:
        steps += [
            v2.RandomResizedCrop(image_size, scale=(0.7, 1.0), ratio=(0.9, 1.1), antialias=True),
            v2.RandomHorizontalFlip(),
            v2.RandomVerticalFlip(),
            v2.RandomApply([v2.RandomRotation(degrees=(90, 90))], p=0.5),
        ]
        if colour_jitter:
            steps.append(v2.ColorJitter(**COLOUR_JITTER))
    else:
        steps += [v2.Resize(math.floor(image_size / crop_pct), antialias=True), v2.CenterCrop(image_size)]
        if train and augment == "flips":
            steps += [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip(),
                      v2.RandomApply([v2.RandomRotation(degrees=(90, 90))], p=0.5)]
    if normalise:
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]
    return v2.Compose(steps)


def _blend(batch: torch.Tensor, other: torch.Tensor | float, ratio: torch.Tensor) -> torch.Tensor:
    """torchvision's ``_blend`` of float images with one ratio per image: ratio x + (1 - ratio) other, clamped."""
    ratio = ratio[:, None, None, None]
    return (batch * ratio + other * (1 - ratio)).clamp_(0.0, 1.0)


def _hue_shift(batch: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """torchvision's ``adjust_hue`` (via HSV, as Pillow) with one shift per image, in turns."""
    from torchvision.transforms.v2.functional._color import _hsv_to_rgb, _rgb_to_hsv  # batched; the public function takes one float

    hsv = _rgb_to_hsv(batch)
    hsv[:, 0] = (hsv[:, 0] + shift[:, None, None]).remainder_(1.0)
    return _hsv_to_rgb(hsv)


def colour_jitter_batch(batch: torch.Tensor, factors: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """torchvision's ColorJitter on a float (N, 3, H, W) batch in [0, 1] with each image's own draws:
    ``factors`` (N, 4) = brightness, contrast, saturation, hue factors (1, 1, 1, 0 leave an image as
    it is), ``order`` (N, 4) = each image's permutation of those four operations, as ColorJitter's
    ``randperm(4)``. Each operation is torchvision's float arithmetic, clamped after each as there;
    every image is processed as ``adjust_*`` would process it alone (tests/data/test_transforms.py).
    The loader's per-image path works on uint8 images and rounds after each operation; this stays in
    float, so the two agree to within that rounding."""
    if batch.ndim != 4 or batch.shape[1] != 3 or not batch.is_floating_point():
        raise ValueError(f"colour_jitter_batch needs a float (N, 3, H, W) batch, got {batch.dtype} {tuple(batch.shape)}")
    factors = factors.to(batch.device, batch.dtype)
    order = order.to(batch.device)
    grey = v2.functional.rgb_to_grayscale  # (N, 1, H, W), the greyscale torchvision's adjust_* blend with
    out = batch.clone()
    for slot in range(4):
        for op in range(4):
            rows = (order[:, slot] == op).nonzero().flatten()
            if len(rows) == 0:
                continue
            x, f = out[rows], factors[rows, op]
            if op == 0:  # brightness: a blend with black
                x = _blend(x, 0.0, f)
            elif op == 1:  # contrast: a blend with the image's mean grey
                x = _blend(x, grey(x).mean(dim=(1, 2, 3), keepdim=True), f)
            elif op == 2:  # saturation: a blend with the image's greyscale
                x = _blend(x, grey(x), f)
            else:
                x = _hue_shift(x, f)
            out[rows] = x
    return out


def draw_colour_jitter(generator: torch.Generator, ranges: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ColorJitter's draws for ``n`` images: (N, 4) factors, uniform in [1 - x, 1 + x] (brightness, contrast,
    saturation) and [-x, x] (hue) for ``ranges`` x, and (N, 4) orders of the four operations."""
    u = torch.rand(n, 4, generator=generator, dtype=torch.float64) * 2 - 1  # in [-1, 1)
    factors = u * ranges + torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    order = torch.rand(n, 4, generator=generator).argsort(dim=1)  # a uniform permutation per image
    return factors, order


class _EpochSeededDraws:
    """Random draws from a CPU generator of its own, re-seeded per epoch from (seed, epoch, stream), so they
    do not depend on the device or on how many loader workers there are, and a resumed run draws what an
    uninterrupted one did. ``stream``: the torchrun rank, so that ranks draw apart; ``salt`` keeps two
    kinds of draws with the same seed apart."""

    salt = 0

    def __init__(self, seed: int, stream: int = 0) -> None:
        self.seed, self.stream = seed, stream
        self.generator = torch.Generator()
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.generator.manual_seed((self.seed * 1_000_003 + epoch * 100_003 + self.stream * 7_919 + self.salt) % 2**63)


class BatchColourJitter(_EpochSeededDraws):
    """The training augmentation's colour jitter for a whole batch on its device (``train.augment_on_device``):
    factors drawn per image, uniformly in [1 - x, 1 + x] (brightness, contrast, saturation) and
    [-x, x] (hue), and an order of the four, as torchvision's ColorJitter (draws re-seeded per epoch,
    :class:`_EpochSeededDraws`)."""

    def __init__(self, seed: int, brightness: float = COLOUR_JITTER["brightness"], contrast: float = COLOUR_JITTER["contrast"],
                 saturation: float = COLOUR_JITTER["saturation"], hue: float = COLOUR_JITTER["hue"], stream: int = 0) -> None:
        self.ranges = torch.tensor([brightness, contrast, saturation, hue], dtype=torch.float64)
        super().__init__(seed, stream)

    def draw(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 4) factors and (N, 4) orders for the next ``n`` images."""
        return draw_colour_jitter(self.generator, self.ranges, n)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return colour_jitter_batch(batch, *self.draw(len(batch)))


# ITU-R 601 luma weights, as torchvision's rgb_to_grayscale (the grey that contrast and saturation blend with)
_GREY = (0.2989, 0.587, 0.114)
# RGB -> YIQ (NTSC); a hue shift is a rotation of the (I, Q) chroma plane about the luma axis, as
# NVIDIA DALI's and Kornia's linear hue adjustment
_RGB_TO_YIQ = ((0.299, 0.587, 0.114), (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))


class BatchAugment(_EpochSeededDraws):
    """The whole classification training augmentation on a batch (``train.augment_on_device: all``):
    the loader serves each whole photo resized to an ``image_size`` square (uint8; a non-square photo is
    squashed, and its width / height comes with it; along a 4:3 photo's long side a crop then spans about
    0.85 x image_size of those pixels, resampled to image_size, where the per-image path downsamples from the
    photo's own: a little softer), and here, per image, on the batch's device:

    - **geometry as one resampling**: a crop of 70-100% of the area at aspect 0.9-1.1 of the photo's own
      pixels (RandomResizedCrop's ranges, over the whole photo as it draws them; a draw wider or taller than
      the photo is clipped to it, where RandomResizedCrop redraws), horizontal and vertical flips and a 90° turn
      (each p = 0.5), composed into one affine map and resampled bilinearly with
      ``F.affine_grid``/``F.grid_sample`` (the Spatial Transformer sampler, Jaderberg et al. 2015);
    - **colour as one linear map**: brightness, contrast and saturation as torchvision's blends (with
      black, the mean grey, the greyscale image) and hue as a rotation of YIQ's chroma plane (DALI's hue,
      linear, where torchvision goes through HSV), each image's four in its own random order, composed
      into a 3x3 matrix and an offset, clamped to [0, 1] once at the end (torchvision clamps after each).

    Ranges are those of the per-image path (:func:`classification_transform`, :data:`COLOUR_JITTER`); the
    arithmetic differs (bilinear without antialiasing, a linear hue, one clamp), so the images are close to,
    not equal to, the per-image path's (tests/data/test_transforms.py). What it buys: the per-image
    transforms were 0.3 ms (geometry) and 1.2 ms (colour) an image on one CPU thread; this is about 0.1 ms
    (docs/BENCHMARKS.md §7). Draws are re-seeded per epoch (:class:`_EpochSeededDraws`)."""

    salt = 17

    def __init__(self, seed: int, scale: tuple[float, float] = (0.7, 1.0), ratio: tuple[float, float] = (0.9, 1.1),
                 jitter: dict | None = None, stream: int = 0) -> None:
        self.scale, self.ratio = scale, ratio
        jitter = COLOUR_JITTER if jitter is None else jitter
        self.ranges = torch.tensor([jitter["brightness"], jitter["contrast"], jitter["saturation"], jitter["hue"]],
                                   dtype=torch.float64)
        super().__init__(seed, stream)

    def _uniform(self, n: int, low: float, high: float) -> torch.Tensor:
        return torch.rand(n, generator=self.generator, dtype=torch.float64) * (high - low) + low

    def draw_geometry(self, n: int, aspect: torch.Tensor | None = None) -> torch.Tensor:
        """(N, 2, 3) affine maps from output to input coordinates (in [-1, 1], ``affine_grid``'s convention).
        ``aspect`` (N,): each photo's width / height when the batch holds whole photos squashed to a square
        (``classification_transform(whole_image=True)``): the crop's area and aspect are then drawn in the
        photo's own proportions, as RandomResizedCrop draws them (None: the batch's pixels are square)."""
        area = self._uniform(n, *self.scale)
        log_ratio = self._uniform(n, math.log(self.ratio[0]), math.log(self.ratio[1]))
        ratio = log_ratio.exp()
        if aspect is not None:  # fractions of the squashed sides: w h = area, (w W) / (h H) = ratio
            ratio = ratio / aspect.to("cpu", torch.float64)
        width = (area * ratio).sqrt().clamp(max=1.0)  # fractions of the image's side
        height = (area / ratio).sqrt().clamp(max=1.0)
        centre_x = self._uniform(n, -1.0, 1.0) * (1 - width)
        centre_y = self._uniform(n, -1.0, 1.0) * (1 - height)
        flips = torch.rand(n, 3, generator=self.generator) < 0.5  # horizontal, vertical, turn
        sign_x = 1.0 - 2.0 * flips[:, 0].double()
        sign_y = 1.0 - 2.0 * flips[:, 1].double()
        turn = flips[:, 2]
        linear = torch.zeros(n, 2, 2, dtype=torch.float64)
        linear[:, 0, 0], linear[:, 1, 1] = width * sign_x, height * sign_y
        quarter = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64)  # a 90° turn of the output grid
        linear = torch.where(turn[:, None, None], linear @ quarter, linear)
        return torch.cat([linear, torch.stack([centre_x, centre_y], 1)[:, :, None]], dim=2)

    def draw_colour(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 4) factors (brightness, contrast, saturation, hue in turns) and (N, 4) orders, as ColorJitter's."""
        return draw_colour_jitter(self.generator, self.ranges, n)

    def __call__(self, batch: torch.Tensor, aspect: torch.Tensor | None = None) -> torch.Tensor:
        n, _, height, width = batch.shape
        theta = self.draw_geometry(n, aspect).to(batch.device, batch.dtype)
        grid = torch.nn.functional.affine_grid(theta, [n, 3, height, width], align_corners=False)
        batch = torch.nn.functional.grid_sample(batch, grid, mode="bilinear", padding_mode="border", align_corners=False)
        matrix, offset = colour_maps(batch.mean(dim=(2, 3)), *self.draw_colour(n))
        out = torch.baddbmm(offset.to(batch.dtype)[:, :, None], matrix.to(batch.dtype), batch.flatten(2))
        return out.view_as(batch).clamp_(0.0, 1.0)


def colour_maps(mean_rgb: torch.Tensor, factors: torch.Tensor, order: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image's colour jitter as one affine map x -> M x + b ((N, 3, 3), (N, 3), float64 on the CPU):
    brightness f: f x; contrast f: f x + (1 - f) grey(mean of x); saturation f: f x + (1 - f) grey(x);
    hue h (turns): a rotation by 2 pi h of YIQ's (I, Q) plane; composed in each image's ``order``. The mean
    of the image after earlier maps is their map of ``mean_rgb`` (the maps are affine), so the contrast
    blend needs no pass over the pixels."""
    n = len(factors)
    mean_rgb = mean_rgb.detach().to("cpu", torch.float64)
    grey = torch.tensor(_GREY, dtype=torch.float64)
    eye = torch.eye(3, dtype=torch.float64).expand(n, 3, 3)
    to_yiq = torch.tensor(_RGB_TO_YIQ, dtype=torch.float64)
    # the maps that do not depend on the slot: the hue rotation and saturation's grey projection
    angle = 2 * math.pi * factors[:, 3]
    rotation = eye.clone()
    rotation[:, 1, 1], rotation[:, 1, 2], rotation[:, 2, 1], rotation[:, 2, 2] = angle.cos(), -angle.sin(), angle.sin(), angle.cos()
    hue = torch.linalg.inv(to_yiq) @ rotation @ to_yiq
    grey_rows = torch.ones(n, 3, 1, dtype=torch.float64) * grey
    matrix, offset = eye.clone(), torch.zeros(n, 3, dtype=torch.float64)
    for slot in range(4):
        op, f = order[:, slot], factors.gather(1, order[:, slot:slot + 1])[:, 0]
        scale = f[:, None, None] * eye
        mean_grey = ((matrix @ mean_rgb[:, :, None])[:, :, 0] + offset) @ grey  # grey of the current image's mean
        step_matrix = torch.where((op == 0)[:, None, None] | (op == 1)[:, None, None], scale,
                                  torch.where((op == 2)[:, None, None], scale + (1 - f)[:, None, None] * grey_rows, hue))
        step_offset = torch.where((op == 1)[:, None], ((1 - f) * mean_grey)[:, None].expand(n, 3), torch.zeros(n, 3, dtype=torch.float64))
        matrix, offset = step_matrix @ matrix, (step_matrix @ offset[:, :, None])[:, :, 0] + step_offset
    return matrix, offset


class BatchTransform:
    """What the loader leaves out of a uint8 training batch, applied on the device: to float in
    [0, 1], the colour jitter if given (:class:`BatchColourJitter`), then the normalisation, by the
    same two functions as the per-image path of :func:`classification_transform` (so the same
    numbers). On a GPU the loader then moves uint8 batches, a quarter of the float32 bytes through
    worker queues, pinned memory and the bus, and the arithmetic runs on the device (what timm's
    PrefetchLoader does)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float],
                 augment: BatchColourJitter | BatchAugment | None = None) -> None:
        # augment: the jitter alone (augment_on_device: true) or the whole augmentation (all)
        self.mean, self.std, self.augment = list(mean), list(std), augment

    def set_epoch(self, epoch: int) -> None:
        if self.augment is not None:
            self.augment.set_epoch(epoch)

    def __call__(self, batch: torch.Tensor, aspect: torch.Tensor | None = None) -> torch.Tensor:
        batch = v2.functional.to_dtype(batch, torch.float32, scale=True)
        if self.augment is not None:
            batch = self.augment(batch) if aspect is None else self.augment(batch, aspect)
        return v2.functional.normalize(batch, mean=self.mean, std=self.std)


def normalise_image(image, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """uint8 HWC numpy -> float CHW tensor, same normalisation as classification_transform."""
    tensor = torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0)
    return v2.functional.normalize(tensor, mean=list(mean), std=list(std))


def segmentation_augment(patch: torch.Tensor, mask: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Joint flips / 90° rotations of an image patch (C,H,W) and its label map (H,W)."""
    if torch.rand(1, generator=generator).item() < 0.5:
        patch, mask = patch.flip(-1), mask.flip(-1)
    if torch.rand(1, generator=generator).item() < 0.5:
        patch, mask = patch.flip(-2), mask.flip(-2)
    k = int(torch.randint(0, 4, (1,), generator=generator).item())
    if k:
        patch, mask = torch.rot90(patch, k, dims=(-2, -1)), torch.rot90(mask, k, dims=(-2, -1))
    return patch, mask
