"""Synthetic ISIC-style dermoscopy images for the 7 ISIC 2018 classes.

Pure numpy: `plan_lesions` decides which lesions exist (class, number of images, metadata) and
`render_lesion` draws every image of one lesion. Neither touches the disk; the adapter
(`pipeline.data.adapters.synthetic`) writes the files.

Each lesion is drawn once on a canonical canvas from a class "style" (size, shape, colours,
dermoscopic features); its images are that canvas seen with a small rotation, zoom, shift and
lighting change on freshly drawn skin, so images of one lesion are strongly correlated and a
split must keep them together. Some lesions borrow part of another class's style (a melanoma
that looks like a naevus, a keratosis that looks like a melanoma...), so the classes overlap.

Every random draw comes from a generator seeded by (seed, stream, lesion index): the output
depends only on the parameters, never on the order of generation.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage, special

CLASSES: tuple[str, ...] = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")

# Images per class in ISIC 2018 task 3 training data (= HAM10000).
ISIC2018_IMAGE_COUNTS: dict[str, int] = {
    "NV": 6705, "MEL": 1113, "BKL": 1099, "BCC": 514, "AKIEC": 327, "VASC": 142, "DF": 115,
}
MIN_LESIONS_PER_CLASS = 3  # one lesion each for train / val / test
# Probability of 1, 2, 3, 4 images of one lesion (HAM10000 averages 1.34 images per lesion).
VIEWS_PER_LESION_P: tuple[float, ...] = (0.70, 0.18, 0.08, 0.04)

_PLAN_STREAM, _RENDER_STREAM = 1, 2
_CANVAS_EXTENT = 1.6  # canonical canvas spans [-1.6, 1.6]; the image spans [-1, 1]

RGB = tuple[float, float, float]


@dataclass(frozen=True)
class LesionPlan:
    """One lesion: its class, how many images show it, and patient metadata."""

    lesion_index: int
    label: str
    n_views: int
    age: int
    sex: str
    site: str


@dataclass(frozen=True)
class RenderedView:
    """One image of a lesion: RGB uint8 (H, W, 3) and the lesion's core as a bool mask (H, W)."""

    image: np.ndarray
    lesion_mask: np.ndarray


# --------------------------------------------------------------------------- planning


def class_image_counts(scale: float) -> dict[str, int]:
    """Images per class: ISIC 2018 counts times `scale`, at least MIN_LESIONS_PER_CLASS."""
    return {c: max(round(ISIC2018_IMAGE_COUNTS[c] * scale), MIN_LESIONS_PER_CLASS) for c in CLASSES}


def plan_lesions(scale: float, seed: int) -> list[LesionPlan]:
    """All lesions of a data set, in a seeded random order (`lesion_index` is the position)."""
    rng = _rng(seed, _PLAN_STREAM, 0)
    drafts: list[tuple[str, int]] = []
    for label, n_images in class_image_counts(scale).items():
        drafts += [(label, n) for n in _views_per_lesion(n_images, rng)]
    order = rng.permutation(len(drafts))
    plans = []
    for lesion_index, draft_index in enumerate(order):
        label, n_views = drafts[draft_index]
        age, sex, site = _sample_metadata(label, rng)
        plans.append(LesionPlan(lesion_index, label, n_views, age, sex, site))
    return plans


def _views_per_lesion(n_images: int, rng: np.random.Generator) -> list[int]:
    """Split `n_images` into lesions of 1-4 images, keeping at least MIN_LESIONS_PER_CLASS lesions."""
    sizes: list[int] = []
    remaining = n_images
    while remaining > 0:
        still_needed = max(MIN_LESIONS_PER_CLASS - len(sizes) - 1, 0)
        drawn = 1 + int(rng.choice(len(VIEWS_PER_LESION_P), p=VIEWS_PER_LESION_P))
        sizes.append(min(drawn, remaining - still_needed))
        remaining -= sizes[-1]
    return sizes


# Ages (mean, sd) and share of men by class, roughly as in HAM10000.
_AGE = {"MEL": (61, 15), "NV": (42, 15), "BCC": (66, 12), "AKIEC": (67, 11), "BKL": (63, 13),
        "DF": (50, 14), "VASC": (50, 20)}
_MALE_SHARE = {"MEL": 0.6, "NV": 0.5, "BCC": 0.6, "AKIEC": 0.65, "BKL": 0.55, "DF": 0.45, "VASC": 0.5}
_SITES = ("back", "lower extremity", "trunk", "upper extremity", "abdomen", "face", "chest",
          "neck", "scalp", "hand", "foot")
_SITE_WEIGHTS = {
    "MEL": (5, 3, 2, 2, 1, 2, 1, 1, 0.5, 0.3, 0.3),
    "NV": (5, 4, 3, 2, 2, 0.3, 1, 0.5, 0.2, 0.2, 0.5),
    "BCC": (3, 1, 1, 1, 1, 4, 2, 2, 1, 0.2, 0.1),
    "AKIEC": (0.5, 1, 0.5, 2, 0.2, 5, 0.5, 1, 2, 2, 0.1),
    "BKL": (3, 1, 2, 2, 1, 3, 2, 1, 0.5, 0.5, 0.2),
    "DF": (0.2, 6, 0.5, 2, 0.3, 0.1, 0.2, 0.1, 0.1, 0.1, 0.2),
    "VASC": (2, 2, 3, 1, 2, 1, 1, 0.5, 0.3, 0.5, 0.3),
}


def _sample_metadata(label: str, rng: np.random.Generator) -> tuple[int, str, str]:
    mean, sd = _AGE[label]
    age = int(np.clip(5 * round(rng.normal(mean, sd) / 5), 5, 85))
    sex = "male" if rng.random() < _MALE_SHARE[label] else "female"
    weights = np.asarray(_SITE_WEIGHTS[label], dtype=float)
    site = _SITES[int(rng.choice(len(_SITES), p=weights / weights.sum()))]
    return age, sex, site


# --------------------------------------------------------------------------- lesion styles


@dataclass(frozen=True)
class _Style:
    """What a lesion looks like; lengths are in units of the image half-width."""

    radius: float
    aspect: float  # minor / major axis
    irregularity: float  # relative border wobble (low harmonics)
    lobularity: float  # relative scalloping (high harmonics)
    softness: float  # border blur, relative to the radius
    opacity: float
    main: np.ndarray  # RGB in [0, 1]
    second: np.ndarray
    second_frac: float  # share of the lesion in the second colour
    third: np.ndarray
    third_frac: float
    asymmetry: float  # how much colour regions pile up on one side
    centre_dark: float  # > 0 darker centre, < 0 paler centre
    pale_centre: float  # white scar-like centre (dermatofibroma)
    texture: float  # fine luminance noise
    mottle: float  # coarse blotches
    dots: float  # dots / globules
    dots_peripheral: float  # share of dots at the rim
    vessels: float  # thin red branching lines
    scale: float  # white scale specks
    veil: float  # blue-white veil
    lobules: float  # red-purple lagoons
    erythema: float  # pink halo around the lesion


_ColourRange = tuple[RGB, RGB]
_Z: _ColourRange = ((0.0, 0.0, 0.0), (0.0, 0.0, 0.0))
# Per class: (low, high) for numbers, (colour, colour) for colours (sampled in between).
# Ranges overlap between classes on purpose.
_STYLE_RANGES: dict[str, dict[str, tuple]] = {
    "NV": dict(radius=(0.35, 0.7), aspect=(0.8, 1.0), irregularity=(0.0, 0.08), lobularity=(0.0, 0.02),
               softness=(0.04, 0.1), opacity=(0.75, 0.95),
               main=((0.50, 0.32, 0.20), (0.68, 0.48, 0.34)), second=((0.36, 0.22, 0.14), (0.50, 0.32, 0.20)),
               second_frac=(0.0, 0.3), third=((0.40, 0.25, 0.15), (0.50, 0.30, 0.20)), third_frac=(0.0, 0.05),
               asymmetry=(0.0, 0.4), centre_dark=(0.0, 0.4), pale_centre=(0.0, 0.05), texture=(0.02, 0.06),
               mottle=(0.0, 0.06), dots=(0.0, 0.15), dots_peripheral=(0.0, 0.3), vessels=(0.0, 0.0),
               scale=(0.0, 0.0), veil=(0.0, 0.03), lobules=(0.0, 0.0), erythema=(0.0, 0.05)),
    "MEL": dict(radius=(0.5, 1.0), aspect=(0.55, 0.95), irregularity=(0.08, 0.3), lobularity=(0.0, 0.08),
                softness=(0.04, 0.18), opacity=(0.8, 1.0),
                main=((0.28, 0.17, 0.12), (0.52, 0.34, 0.24)), second=((0.10, 0.07, 0.07), (0.25, 0.16, 0.12)),
                second_frac=(0.15, 0.45), third=((0.35, 0.38, 0.48), (0.52, 0.54, 0.62)), third_frac=(0.05, 0.35),
                asymmetry=(0.5, 1.5), centre_dark=(-0.2, 0.3), pale_centre=(0.0, 0.15), texture=(0.04, 0.12),
                mottle=(0.05, 0.2), dots=(0.2, 0.8), dots_peripheral=(0.4, 1.0), vessels=(0.0, 0.1),
                scale=(0.0, 0.0), veil=(0.1, 0.6), lobules=(0.0, 0.0), erythema=(0.0, 0.15)),
    "BCC": dict(radius=(0.35, 0.75), aspect=(0.65, 1.0), irregularity=(0.03, 0.15), lobularity=(0.0, 0.1),
                softness=(0.08, 0.18), opacity=(0.55, 0.8),
                main=((0.85, 0.62, 0.60), (0.95, 0.75, 0.72)), second=((0.35, 0.35, 0.42), (0.50, 0.45, 0.50)),
                second_frac=(0.0, 0.15), third=((0.95, 0.90, 0.88), (1.0, 0.97, 0.95)), third_frac=(0.05, 0.2),
                asymmetry=(0.0, 0.6), centre_dark=(-0.1, 0.1), pale_centre=(0.0, 0.2), texture=(0.02, 0.05),
                mottle=(0.0, 0.05), dots=(0.0, 0.15), dots_peripheral=(0.0, 0.5), vessels=(0.5, 1.0),
                scale=(0.0, 0.05), veil=(0.0, 0.1), lobules=(0.0, 0.0), erythema=(0.1, 0.4)),
    "AKIEC": dict(radius=(0.35, 0.8), aspect=(0.6, 1.0), irregularity=(0.05, 0.2), lobularity=(0.0, 0.05),
                  softness=(0.12, 0.28), opacity=(0.5, 0.8),
                  main=((0.78, 0.45, 0.40), (0.90, 0.60, 0.55)), second=((0.65, 0.48, 0.38), (0.75, 0.58, 0.45)),
                  second_frac=(0.0, 0.35), third=((0.92, 0.88, 0.80), (1.0, 0.96, 0.90)), third_frac=(0.0, 0.1),
                  asymmetry=(0.0, 0.8), centre_dark=(-0.1, 0.1), pale_centre=(0.0, 0.1), texture=(0.08, 0.18),
                  mottle=(0.05, 0.15), dots=(0.0, 0.2), dots_peripheral=(0.0, 0.5), vessels=(0.0, 0.4),
                  scale=(0.4, 1.0), veil=(0.0, 0.0), lobules=(0.0, 0.0), erythema=(0.2, 0.6)),
    "BKL": dict(radius=(0.4, 0.85), aspect=(0.6, 1.0), irregularity=(0.03, 0.18), lobularity=(0.0, 0.06),
                softness=(0.03, 0.1), opacity=(0.7, 0.95),
                main=((0.60, 0.45, 0.32), (0.76, 0.60, 0.45)), second=((0.40, 0.28, 0.20), (0.55, 0.40, 0.28)),
                second_frac=(0.1, 0.4), third=((0.90, 0.88, 0.80), (0.98, 0.95, 0.90)), third_frac=(0.0, 0.08),
                asymmetry=(0.0, 0.8), centre_dark=(-0.1, 0.2), pale_centre=(0.0, 0.1), texture=(0.05, 0.12),
                mottle=(0.12, 0.3), dots=(0.0, 0.3), dots_peripheral=(0.0, 0.3), vessels=(0.0, 0.1),
                scale=(0.0, 0.3), veil=(0.0, 0.1), lobules=(0.0, 0.0), erythema=(0.0, 0.1)),
    "DF": dict(radius=(0.25, 0.5), aspect=(0.75, 1.0), irregularity=(0.0, 0.08), lobularity=(0.0, 0.0),
               softness=(0.08, 0.18), opacity=(0.65, 0.9),
               main=((0.50, 0.35, 0.25), (0.65, 0.48, 0.36)), second=((0.45, 0.30, 0.22), (0.55, 0.38, 0.28)),
               second_frac=(0.0, 0.2), third=_Z, third_frac=(0.0, 0.0),
               asymmetry=(0.0, 0.3), centre_dark=(-0.3, -0.1), pale_centre=(0.4, 0.8), texture=(0.02, 0.06),
               mottle=(0.0, 0.05), dots=(0.0, 0.15), dots_peripheral=(0.5, 1.0), vessels=(0.0, 0.1),
               scale=(0.0, 0.0), veil=(0.0, 0.0), lobules=(0.0, 0.0), erythema=(0.0, 0.2)),
    "VASC": dict(radius=(0.25, 0.6), aspect=(0.65, 1.0), irregularity=(0.03, 0.12), lobularity=(0.08, 0.2),
                 softness=(0.04, 0.1), opacity=(0.75, 0.95),
                 main=((0.65, 0.12, 0.18), (0.80, 0.25, 0.30)), second=((0.35, 0.10, 0.25), (0.50, 0.20, 0.35)),
                 second_frac=(0.1, 0.5), third=((0.20, 0.05, 0.10), (0.30, 0.10, 0.18)), third_frac=(0.0, 0.15),
                 asymmetry=(0.0, 0.5), centre_dark=(0.0, 0.2), pale_centre=(0.0, 0.0), texture=(0.02, 0.06),
                 mottle=(0.0, 0.05), dots=(0.0, 0.0), dots_peripheral=(0.0, 0.0), vessels=(0.0, 0.0),
                 scale=(0.0, 0.0), veil=(0.0, 0.0), lobules=(0.5, 1.0), erythema=(0.0, 0.15)),
}

# Per class: chance that a lesion borrows from another class, and which classes it may borrow from.
_LOOKALIKES: dict[str, tuple[float, tuple[str, ...]]] = {
    "MEL": (0.35, ("NV", "NV", "BKL")),
    "NV": (0.2, ("MEL", "BKL", "DF")),
    "BCC": (0.25, ("AKIEC", "BKL", "MEL")),
    "AKIEC": (0.3, ("BCC", "BKL")),
    "BKL": (0.3, ("MEL", "NV", "AKIEC")),
    "DF": (0.3, ("NV", "BKL")),
    "VASC": (0.15, ("BCC", "MEL")),
}
_LOOKALIKE_WEIGHT = (0.3, 0.75)  # how far a borrowing lesion moves towards the other class


def _sample_style(label: str, rng: np.random.Generator) -> _Style:
    style = _draw_style(label, rng)
    chance, lookalikes = _LOOKALIKES[label]
    if rng.random() < chance:
        other = _draw_style(lookalikes[int(rng.integers(len(lookalikes)))], rng)
        style = _blend_styles(style, other, rng.uniform(*_LOOKALIKE_WEIGHT))
    return style


def _draw_style(label: str, rng: np.random.Generator) -> _Style:
    values = {}
    for name, (low, high) in _STYLE_RANGES[label].items():
        if isinstance(low, tuple):  # a colour: somewhere between two colours, plus a little jitter
            colour = np.asarray(low) + rng.random() * (np.asarray(high) - np.asarray(low))
            values[name] = np.clip(colour + rng.normal(0.0, 0.015, 3), 0.0, 1.0)
        else:
            values[name] = float(rng.uniform(low, high))
    return _Style(**values)


def _blend_styles(own: _Style, other: _Style, weight: float) -> _Style:
    return _Style(**{f.name: (1 - weight) * getattr(own, f.name) + weight * getattr(other, f.name)
                     for f in dataclasses.fields(_Style)})


# --------------------------------------------------------------------------- drawing


def render_lesion(plan: LesionPlan, image_size: int, seed: int) -> list[RenderedView]:
    """Every image of one lesion (`plan.n_views` of them), `image_size` pixels square."""
    rng = _rng(seed, _RENDER_STREAM, plan.lesion_index)
    style = _sample_style(plan.label, rng)
    canvas = _draw_lesion(style, 2 * image_size, rng)
    skin = _sample_skin(rng)
    base_angle = rng.uniform(0.0, 2 * np.pi)
    return [_render_view(canvas, skin, image_size, base_angle, rng) for _ in range(plan.n_views)]


def _draw_lesion(style: _Style, size: int, rng: np.random.Generator) -> np.ndarray:
    """Canonical lesion as (size, size, 5): premultiplied RGB, alpha, core mask (as float)."""
    y, x = _grid(size, _CANVAS_EXTENT)
    rho = _lesion_rho(style, x, y, rng)
    inside = _sigmoid((1.0 - rho) / 0.05)

    colour = _lesion_colour(style, x, y, rho, size, rng)
    colour = _add_lobules(colour, style, x, y, rng)
    colour = _blend(colour, 0.5 * style.second, _dots(style, size, rng) * inside)
    colour = _blend(colour, np.array([0.75, 0.10, 0.15]), 0.8 * _vessels(style, size, rng) * inside)
    specks = _sigmoid((_smooth_noise(rng, (size, size), 0.8) - 1.3) / 0.2)
    colour = _blend(colour, np.array([0.96, 0.93, 0.86]), style.scale * specks * inside)

    alpha = style.opacity * _sigmoid((1.0 - rho) / max(style.softness, 1e-3))
    halo = 0.6 * style.erythema * np.exp(-(np.maximum(rho - 1.0, 0.0) / 0.35) ** 2)
    premultiplied = colour * alpha[..., None] + np.array([0.85, 0.45, 0.45]) * (halo * (1 - alpha))[..., None]
    total_alpha = alpha + halo * (1 - alpha)
    core = (rho <= 1.0).astype(float)
    return np.concatenate([premultiplied, total_alpha[..., None], core[..., None]], axis=-1)


def _lesion_rho(style: _Style, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Normalised radius: 0 at the centre, 1 on the irregular elliptical border."""
    y_stretched = y / style.aspect
    r = np.hypot(x, y_stretched)
    theta = np.arctan2(y_stretched, x)
    border = 1.0 + style.irregularity * _harmonics(theta, range(2, 15), rng)
    border += style.lobularity * _harmonics(theta, range(5, 10), rng)
    return r / (style.radius * np.clip(border, 0.3, None))


def _harmonics(theta: np.ndarray, orders: range, rng: np.random.Generator) -> np.ndarray:
    """A random periodic wobble of the angle with amplitudes 1/k, scaled to at most 1."""
    weights = rng.random(len(orders)) / np.asarray(orders)
    phases = rng.uniform(0, 2 * np.pi, len(orders))
    table = np.linspace(-np.pi, np.pi, 1024, endpoint=False)  # tabulate once, interpolate per pixel
    wobble = np.cos(np.outer(table, orders) + phases) @ weights / weights.sum()
    return np.interp(theta, table, wobble, period=2 * np.pi)


def _lesion_colour(style: _Style, x: np.ndarray, y: np.ndarray, rho: np.ndarray, size: int,
                   rng: np.random.Generator) -> np.ndarray:
    direction = rng.uniform(0, 2 * np.pi)
    side = style.asymmetry * (x * np.cos(direction) + y * np.sin(direction)) / max(style.radius, 0.05)
    colour = np.broadcast_to(style.main, x.shape + (3,)).copy()
    for shade, frac in ((style.second, style.second_frac), (style.third, style.third_frac)):
        field = _smooth_noise(rng, x.shape, size / 14) + side
        threshold = special.ndtri(1.0 - np.clip(frac, 1e-3, 0.999))
        colour = _blend(colour, shade, _sigmoid((field - threshold) / 0.25))

    centre = np.clip(1.0 - rho**2, 0.0, None)
    colour *= (1.0 - 0.5 * style.centre_dark * centre)[..., None]
    colour = _blend(colour, np.array([0.92, 0.86, 0.80]), style.pale_centre * np.exp(-(rho / 0.45) ** 2))
    veil = _sigmoid((_smooth_noise(rng, x.shape, size / 10) - 0.3) / 0.2)
    colour = _blend(colour, np.array([0.55, 0.60, 0.70]), style.veil * veil)
    shading = 1.0 + style.texture * _smooth_noise(rng, x.shape, 0.8)
    shading += style.mottle * _smooth_noise(rng, x.shape, size / 25)
    return np.clip(colour * shading[..., None], 0.0, 1.0)


def _add_lobules(colour: np.ndarray, style: _Style, x: np.ndarray, y: np.ndarray,
                 rng: np.random.Generator) -> np.ndarray:
    """Red-purple lagoons separated by paler septa (vascular lesions)."""
    if style.lobules < 0.05:
        return colour
    count = 3 + int(round(style.lobules * 6))
    cx, cy = _points_in_lesion(style, count, rng, rho_range=(0.0, 0.7))
    radii = style.radius * rng.uniform(0.25, 0.45, count)
    distance = np.hypot(x[None] - cx[:, None, None], y[None] - cy[:, None, None]) / radii[:, None, None]
    membership = _sigmoid((1.0 - distance) / 0.1)
    nearest = membership.argmax(axis=0)
    shades = style.main + rng.random((count, 1)) * (style.second - style.main)
    strength = style.lobules * membership.max(axis=0)
    septa = colour + style.lobules * 0.3 * (1.0 - colour)
    return _blend(septa, shades[nearest], strength)


def _dots(style: _Style, size: int, rng: np.random.Generator) -> np.ndarray:
    """Dark dots and globules, some at the rim: a weight map in [0, 1]."""
    count = int(rng.poisson(style.dots * 40))
    if count == 0:
        return np.zeros((size, size))
    peripheral = rng.random(count) < style.dots_peripheral
    rho_dots = np.where(peripheral, rng.uniform(0.65, 1.0, count), np.sqrt(rng.uniform(0.0, 0.8, count)))
    cx, cy = _points_in_lesion(style, count, rng, rho_values=rho_dots)
    return _splat(cx, cy, rng.uniform(0.5, 1.0, count), size, sigma=size / 100)


def _vessels(style: _Style, size: int, rng: np.random.Generator) -> np.ndarray:
    """Thin branching red lines drawn as random walks: a weight map in [0, 1]."""
    count = int(round(style.vessels * 8))
    if count == 0:
        return np.zeros((size, size))
    layer = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(layer)
    cx, cy = _points_in_lesion(style, count, rng, rho_range=(0.0, 0.8))
    step = size / 25
    for x0, y0 in zip(_to_pixels(cx, size), _to_pixels(cy, size)):
        heading = rng.uniform(0, 2 * np.pi)
        turns = np.cumsum(rng.normal(0.0, 0.6, int(rng.integers(6, 11))))
        xs = x0 + step * np.cumsum(np.cos(heading + turns))
        ys = y0 + step * np.cumsum(np.sin(heading + turns))
        draw.line([(float(x0), float(y0))] + list(zip(xs.tolist(), ys.tolist())), fill=255, width=1)
    return ndimage.gaussian_filter(np.asarray(layer, dtype=float) / 255.0, 0.6) * 1.5


def _points_in_lesion(style: _Style, count: int, rng: np.random.Generator,
                      rho_range: tuple[float, float] = (0.0, 1.0),
                      rho_values: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Canvas coordinates of points at given normalised radii (ignores border wobble)."""
    rho = rho_values if rho_values is not None else np.sqrt(rng.uniform(*rho_range, count))
    angle = rng.uniform(0, 2 * np.pi, count)
    return rho * style.radius * np.cos(angle), rho * style.radius * style.aspect * np.sin(angle)


# --------------------------------------------------------------------------- skin and views


@dataclass(frozen=True)
class _Skin:
    tone: np.ndarray
    redness: float
    hairs: int
    scope_radius: float  # dermoscope field of view; 0 = no dark corners


def _sample_skin(rng: np.random.Generator) -> _Skin:
    light, tan = np.array([0.93, 0.76, 0.68]), np.array([0.78, 0.58, 0.46])
    tone = np.clip(light + rng.random() * (tan - light) + rng.normal(0, 0.02, 3), 0, 1)
    hairs = 0 if rng.random() < 0.7 else int(rng.integers(1, 7))
    scope_radius = float(rng.uniform(1.0, 1.3)) if rng.random() < 0.4 else 0.0
    return _Skin(tone, float(rng.uniform(0.0, 0.5)), hairs, scope_radius)


def _render_view(canvas: np.ndarray, skin: _Skin, size: int, base_angle: float,
                 rng: np.random.Generator) -> RenderedView:
    layers = _warp(canvas, size, base_angle + rng.uniform(-0.5, 0.5), rng.uniform(0.9, 1.1),
                   rng.uniform(-0.06, 0.06, 2))
    premultiplied, alpha, core = layers[..., :3], layers[..., 3], layers[..., 4]
    image = _skin_background(skin, size, rng) * (1 - alpha[..., None]) + premultiplied

    gain = rng.uniform(0.94, 1.06) * (1.0 + rng.normal(0.0, 0.02, 3))  # lighting and colour cast
    image = np.clip(image * gain, 0.0, 1.0) ** rng.uniform(0.95, 1.05)
    image = _add_hairs(image, skin.hairs, size, rng)
    if skin.scope_radius:
        y, x = _grid(size, 1.0)
        radius = np.hypot(x - rng.normal(0, 0.05), y - rng.normal(0, 0.05))
        image *= _sigmoid((skin.scope_radius - radius) / 0.03)[..., None]
    image = np.clip(image + rng.normal(0.0, 0.01, image.shape), 0.0, 1.0)
    return RenderedView(np.round(image * 255).astype(np.uint8), core > 0.5)


def _warp(canvas: np.ndarray, size: int, angle: float, zoom: float, shift: np.ndarray) -> np.ndarray:
    """Resample the canonical canvas onto the image grid, rotated, zoomed and shifted."""
    to_image = 2.0 / size  # output pixel index -> image coordinate in [-1, 1]
    to_canvas = canvas.shape[0] / (2 * _CANVAS_EXTENT)  # canonical coordinate -> canvas index
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    matrix = to_canvas * to_image / zoom * rotation
    offset = to_canvas / zoom * rotation @ (np.full(2, 1.0 / size - 1.0) - shift) + canvas.shape[0] / 2 - 0.5
    return np.stack([ndimage.affine_transform(canvas[..., c], matrix, offset, output_shape=(size, size),
                                              order=1, mode="constant", cval=0.0)
                     for c in range(canvas.shape[-1])], axis=-1)


def _skin_background(skin: _Skin, size: int, rng: np.random.Generator) -> np.ndarray:
    y, x = _grid(size, 1.0)
    direction = rng.uniform(0, 2 * np.pi)
    light = 1.0 + rng.uniform(0.0, 0.12) * (x * np.cos(direction) + y * np.sin(direction))
    light += 0.04 * _smooth_noise(rng, (size, size), size / 6)
    image = skin.tone * light[..., None]
    redness = skin.redness * _sigmoid(_smooth_noise(rng, (size, size), size / 8))
    image = _blend(image, np.array([0.85, 0.50, 0.48]), 0.3 * redness)
    return image + 0.015 * _smooth_noise(rng, (size, size), 0.7)[..., None]


def _add_hairs(image: np.ndarray, count: int, size: int, rng: np.random.Generator) -> np.ndarray:
    if count == 0:
        return image
    big = 2 * size  # drawn at twice the size, then box-downsampled for soft edges
    layer = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(layer)
    for _ in range(count):
        start, bend, end = rng.uniform(-0.2, 1.2, (3, 2)) * big
        t = np.linspace(0, 1, 12)[:, None]
        points = (1 - t) ** 2 * start + 2 * t * (1 - t) * bend + t**2 * end  # quadratic Bezier
        draw.line([tuple(p) for p in points.tolist()], fill=255, width=1)
    hair = np.asarray(layer.resize((size, size), Image.Resampling.BOX), dtype=float) / 255.0
    return _blend(image, np.array([0.15, 0.10, 0.08]) * rng.uniform(0.6, 1.2), 0.7 * hair)


# --------------------------------------------------------------------------- helpers


def _rng(seed: int, stream: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, stream, index]))


def _grid(size: int, extent: float) -> tuple[np.ndarray, np.ndarray]:
    """(y, x) coordinates of pixel centres, the image spanning [-extent, extent]."""
    centres = (np.arange(size) + 0.5) / size * 2 * extent - extent
    return np.meshgrid(centres, centres, indexing="ij")


def _to_pixels(coordinate: np.ndarray, size: int) -> np.ndarray:
    return (coordinate + _CANVAS_EXTENT) / (2 * _CANVAS_EXTENT) * size - 0.5


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-blurred white noise rescaled to mean 0, standard deviation 1."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap", truncate=3.0)
    return (field - field.mean()) / (field.std() + 1e-12)


def _splat(cx: np.ndarray, cy: np.ndarray, amplitude: np.ndarray, size: int, sigma: float) -> np.ndarray:
    """Gaussian blobs of peak about `amplitude` at canvas coordinates, clipped to [0, 1]."""
    field = np.zeros((size, size))
    rows = np.clip(np.round(_to_pixels(cy, size)).astype(int), 0, size - 1)
    cols = np.clip(np.round(_to_pixels(cx, size)).astype(int), 0, size - 1)
    np.add.at(field, (rows, cols), amplitude * 2 * np.pi * sigma**2)
    return np.clip(ndimage.gaussian_filter(field, sigma), 0.0, 1.0)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return special.expit(z)


def _blend(base: np.ndarray, colour: np.ndarray, weight: np.ndarray | float) -> np.ndarray:
    weight = np.clip(np.asarray(weight, dtype=float), 0.0, 1.0)
    if weight.ndim == base.ndim - 1:
        weight = weight[..., None]
    return base * (1 - weight) + colour * weight
