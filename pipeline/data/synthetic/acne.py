"""Synthetic face-skin images with acne lesions and their label maps.

Pure numpy: `plan_images` places every lesion (type, core ellipse, image, patient) and
`render_image` draws one image and its label map. Neither touches the disk; the adapter
(`pipeline.data.adapters.synthetic`) writes the files.

The label map holds each lesion's core ellipse (0 background, i + 1 for ACNE_TYPES[i]); in the
image the lesion fades out beyond that core, so its border is deliberately uncertain. Cores
never touch each other (a gap of at least MIN_GAP_PX pixels). Images of one patient share skin
tone, redness and which lesion types dominate, so a split must keep a patient together.

Every random draw comes from a generator seeded by (seed, stream, index): the output depends
only on the parameters, never on the order of generation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage, special

ACNE_TYPES: tuple[str, ...] = ("whitehead", "blackhead", "papule", "pustule", "nodule", "cyst")

# Lesions per type in the project's preliminary acne data set.
PRELIMINARY_LESION_COUNTS: dict[str, int] = {
    "whitehead": 1722, "blackhead": 357, "papule": 2130, "pustule": 277, "nodule": 53, "cyst": 469,
}
MIN_IMAGES_PER_TYPE = 6  # so that train / val / test can each hold a few images of every type
MIN_GAP_PX = 2.0  # background pixels between two lesion cores
# Probability of 1..5 images of one patient.
IMAGES_PER_PATIENT_P: tuple[float, ...] = (0.15, 0.25, 0.3, 0.2, 0.1)

# Core semi-major axis as a share of the image side, and minor / major ratio, per type.
# Sizes overlap between neighbouring types on purpose (papule / pustule / nodule, nodule / cyst).
_SIZE = {"whitehead": (0.008, 0.016), "blackhead": (0.007, 0.013), "papule": (0.018, 0.035),
         "pustule": (0.02, 0.036), "nodule": (0.04, 0.065), "cyst": (0.05, 0.085)}
_ASPECT = {"whitehead": (0.75, 1.0), "blackhead": (0.75, 1.0), "papule": (0.7, 1.0),
           "pustule": (0.7, 1.0), "nodule": (0.65, 1.0), "cyst": (0.6, 1.0)}
_PLACEMENT_TRIES = 200  # random positions tried in one image before trying another image
_IMAGE_TRIES = 30

_PLAN_STREAM, _PATIENT_STREAM, _RENDER_STREAM = 1, 2, 3


@dataclass(frozen=True)
class AcneLesion:
    """One lesion core: an ellipse in pixel coordinates (row, column of its centre)."""

    type_index: int
    row: float
    col: float
    semi_major: float
    semi_minor: float
    angle: float  # radians, major axis from the column axis


@dataclass(frozen=True)
class AcneImagePlan:
    image_index: int
    patient_index: int
    lesions: tuple[AcneLesion, ...]

    def counts(self) -> dict[str, int]:
        """Lesions per type in this image."""
        found = [lesion.type_index for lesion in self.lesions]
        return {name: found.count(i) for i, name in enumerate(ACNE_TYPES)}


# --------------------------------------------------------------------------- planning


def lesion_counts(scale: float) -> dict[str, int]:
    """Lesions per type: the preliminary counts times `scale`, at least MIN_IMAGES_PER_TYPE."""
    return {t: max(round(PRELIMINARY_LESION_COUNTS[t] * scale), MIN_IMAGES_PER_TYPE) for t in ACNE_TYPES}


def plan_images(n_images: int, scale: float, image_size: int, seed: int) -> list[AcneImagePlan]:
    """Place every lesion of the data set; raises ValueError when they do not fit."""
    if n_images < MIN_IMAGES_PER_TYPE:
        raise ValueError(f"n_images must be at least {MIN_IMAGES_PER_TYPE}, got {n_images}")
    rng = _rng(seed, _PLAN_STREAM, 0)
    patient_of_image = _assign_patients(n_images, rng)
    n_patients = int(patient_of_image.max()) + 1
    severity = rng.lognormal(0.0, 0.5, n_patients)[patient_of_image] * rng.uniform(0.5, 1.5, n_images)
    type_affinity = rng.gamma(2.0, 1.0, (n_patients, len(ACNE_TYPES)))[patient_of_image]

    placed: list[list[AcneLesion]] = [[] for _ in range(n_images)]
    for type_index, size_draws in _lesion_sizes(scale, image_size, rng):
        weights = severity * type_affinity[:, type_index]
        for k, (semi_major, semi_minor) in enumerate(size_draws):
            # The first MIN_IMAGES_PER_TYPE lesions of a type go to distinct images.
            excluded = {i for i, lesions in enumerate(placed)
                        if k < MIN_IMAGES_PER_TYPE and any(x.type_index == type_index for x in lesions)}
            _place_lesion(placed, type_index, semi_major, semi_minor, weights, excluded, image_size, rng)
    return [AcneImagePlan(i, int(patient_of_image[i]), tuple(lesions)) for i, lesions in enumerate(placed)]


def _assign_patients(n_images: int, rng: np.random.Generator) -> np.ndarray:
    sizes: list[int] = []
    while sum(sizes) < n_images:
        sizes.append(1 + int(rng.choice(len(IMAGES_PER_PATIENT_P), p=IMAGES_PER_PATIENT_P)))
    return np.repeat(np.arange(len(sizes)), sizes)[:n_images]


def _lesion_sizes(scale: float, image_size: int,
                  rng: np.random.Generator) -> list[tuple[int, list[tuple[float, float]]]]:
    """(type index, [(semi-major, semi-minor) px]) with the largest types first, for packing."""
    by_type = []
    for type_index, (name, count) in enumerate(lesion_counts(scale).items()):
        semi_major = np.maximum(rng.uniform(*_SIZE[name], count) * image_size, 1.0)
        semi_minor = np.maximum(semi_major * rng.uniform(*_ASPECT[name], count), 1.0)
        by_type.append((type_index, list(zip(semi_major.tolist(), semi_minor.tolist()))))
    return sorted(by_type, key=lambda item: -max(a for a, _ in item[1]))


def _place_lesion(placed: list[list[AcneLesion]], type_index: int, semi_major: float, semi_minor: float,
                  weights: np.ndarray, excluded: set[int], image_size: int,
                  rng: np.random.Generator) -> None:
    allowed = np.array([i not in excluded for i in range(len(placed))])
    for _ in range(_IMAGE_TRIES):
        if not allowed.any():
            break
        p = np.where(allowed, weights, 0.0)
        image = int(rng.choice(len(placed), p=p / p.sum()))
        lesion = _find_free_spot(placed[image], type_index, semi_major, semi_minor, image_size, rng)
        if lesion is not None:
            placed[image].append(lesion)
            return
        allowed[image] = False
    raise ValueError(f"no room left for a {ACNE_TYPES[type_index]} lesion of {semi_major:.1f} px: "
                     "use more images, a larger image_size or a smaller scale")


def _find_free_spot(lesions: list[AcneLesion], type_index: int, semi_major: float, semi_minor: float,
                    image_size: int, rng: np.random.Generator) -> AcneLesion | None:
    margin = semi_major + 1.0
    centres = rng.uniform(margin, image_size - 1 - margin, (_PLACEMENT_TRIES, 2))
    if lesions:  # bounding circles with a gap: conservative, so cores never touch
        others = np.array([(x.row, x.col) for x in lesions])
        reach = np.array([x.semi_major for x in lesions]) + semi_major + MIN_GAP_PX
        distances = np.linalg.norm(centres[:, None, :] - others[None], axis=-1)
        free = np.flatnonzero((distances > reach).all(axis=1))
        if free.size == 0:
            return None
        centres = centres[free]
    row, col = centres[0]
    return AcneLesion(type_index, float(row), float(col), semi_major, semi_minor,
                      float(rng.uniform(0, np.pi)))


# --------------------------------------------------------------------------- drawing


def render_image(plan: AcneImagePlan, image_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """RGB uint8 (H, W, 3) and label map uint8 (H, W) (0 background, i + 1 for ACNE_TYPES[i])."""
    patient = _sample_patient(_rng(seed, _PATIENT_STREAM, plan.patient_index))
    rng = _rng(seed, _RENDER_STREAM, plan.image_index)
    image = _skin(patient, image_size, rng)
    label_map = np.zeros((image_size, image_size), dtype=np.uint8)
    rows, cols = np.mgrid[0:image_size, 0:image_size]
    for lesion in sorted(plan.lesions, key=lambda x: -x.semi_major):  # small ones on top
        distance = _elliptical_distance(lesion, rows, cols)
        image = _draw_lesion(image, ACNE_TYPES[lesion.type_index], distance, lesion, patient, rng)
        label_map[distance <= 1.0] = lesion.type_index + 1
    image = ndimage.gaussian_filter(image, sigma=(0.5, 0.5, 0))  # camera softness
    image = np.clip(image + rng.normal(0.0, 0.01, image.shape), 0.0, 1.0)
    return np.round(image * 255).astype(np.uint8), label_map


def instance_map(plan: AcneImagePlan, image_size: int) -> np.ndarray:
    """uint16 (H, W): 0 background, k for the core of ``plan.lesions[k - 1]``.

    Drawn in the label map's order (small ones on top) from the same core ellipses, so its
    foreground is exactly the label map's; cores never touch, so every lesion keeps all its pixels.
    No random draw: the images and label maps are unchanged by it.
    """
    instances = np.zeros((image_size, image_size), dtype=np.uint16)
    rows, cols = np.mgrid[0:image_size, 0:image_size]
    order = sorted(range(len(plan.lesions)), key=lambda k: -plan.lesions[k].semi_major)
    for k in order:
        instances[_elliptical_distance(plan.lesions[k], rows, cols) <= 1.0] = k + 1
    return instances


def _elliptical_distance(lesion: AcneLesion, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """1 on the core ellipse's border, < 1 inside."""
    dr, dc = rows - lesion.row, cols - lesion.col
    along = dc * np.cos(lesion.angle) + dr * np.sin(lesion.angle)
    across = -dc * np.sin(lesion.angle) + dr * np.cos(lesion.angle)
    return np.hypot(along / lesion.semi_major, across / lesion.semi_minor)


@dataclass(frozen=True)
class _Patient:
    tone: np.ndarray  # RGB skin colour
    redness: float
    pores: float  # pore density
    oiliness: float


def _sample_patient(rng: np.random.Generator) -> _Patient:
    light, dark = np.array([0.94, 0.80, 0.70]), np.array([0.52, 0.36, 0.27])
    tone = light + rng.beta(1.5, 3.0) * (dark - light) + rng.normal(0.0, 0.015, 3)
    return _Patient(np.clip(tone, 0, 1), float(rng.uniform(0.1, 0.6)), float(rng.uniform(0.3, 1.0)),
                    float(rng.uniform(0.0, 1.0)))


def _skin(patient: _Patient, size: int, rng: np.random.Generator) -> np.ndarray:
    """Face skin: shading, blotchy redness, pores, fine texture, oily shine, a few flat brown marks."""
    y, x = (np.mgrid[0:size, 0:size] + 0.5) / size * 2 - 1
    direction = rng.uniform(0, 2 * np.pi)
    light = 1.0 + rng.uniform(0.0, 0.15) * (x * np.cos(direction) + y * np.sin(direction))
    light += 0.05 * _smooth_noise(rng, (size, size), size / 4)
    image = patient.tone * light[..., None]
    redness = patient.redness * special.expit(2 * _smooth_noise(rng, (size, size), size / 10))
    image = _blend(image, patient.tone * np.array([1.0, 0.62, 0.62]), 0.5 * redness)

    n_pores = rng.poisson(patient.pores * size * size / 40)
    pores = _splat(rng.uniform(0, size, (n_pores, 2)), rng.uniform(0.3, 1.0, n_pores), size, 0.6)
    image = image * (1.0 - 0.12 * pores)[..., None]
    image *= (1.0 + 0.025 * _smooth_noise(rng, (size, size), 0.7))[..., None]

    n_marks = int(rng.integers(0, 4))  # post-inflammatory marks: brown, flat, not lesions
    marks = _splat(rng.uniform(0, size, (n_marks, 2)), rng.uniform(0.2, 0.4, n_marks), size,
                   rng.uniform(0.015, 0.035) * size)
    image = _blend(image, patient.tone * np.array([0.7, 0.55, 0.45]), marks)
    shine = special.expit((_smooth_noise(rng, (size, size), size / 6) - 1.2) / 0.3)
    return _blend(image, np.ones(3), 0.25 * patient.oiliness * shine)


def _draw_lesion(image: np.ndarray, kind: str, distance: np.ndarray, lesion: AcneLesion,
                 patient: _Patient, rng: np.random.Generator) -> np.ndarray:
    """Blend one lesion into the image; every profile extends past the core (d = 1)."""
    u = rng.random  # position between the two ends of each colour / strength range
    darker = 0.65 + 0.35 * patient.tone.mean()  # lesions darken with the skin tone
    if kind == "whitehead":
        colour = _lerp((0.93, 0.88, 0.80), (1.0, 0.97, 0.90), u())
        image = _blend(image, patient.tone * [1.0, 0.7, 0.7], _profile(distance, 1.8, 0.2 * u()))
        return _blend(image, colour, _profile(distance, _lerp(0.7, 1.0, u()), _lerp(0.45, 0.85, u())))
    if kind == "blackhead":
        colour = _lerp((0.12, 0.09, 0.08), (0.32, 0.24, 0.2), u())
        return _blend(image, colour, _profile(distance, _lerp(0.6, 0.9, u()), _lerp(0.6, 0.95, u())))
    if kind in ("papule", "pustule"):
        red = _lerp((0.72, 0.28, 0.28), (0.88, 0.45, 0.42), u()) * darker
        image = _blend(image, red, _profile(distance, 2.0, _lerp(0.2, 0.4, u())))  # erythema halo
        image = _blend(image, red, _profile(distance, _lerp(0.9, 1.3, u()), _lerp(0.45, 0.8, u())))
        if kind == "pustule":
            pus = _lerp((0.92, 0.88, 0.60), (1.0, 0.97, 0.85), u())
            image = _blend(image, pus, _profile(distance, _lerp(0.3, 0.5, u()), _lerp(0.4, 0.9, u())))
        return _highlight(image, distance, lesion, 0.1 * u())
    if kind == "nodule":
        colour = _lerp((0.55, 0.20, 0.22), (0.72, 0.32, 0.32), u()) * darker
        image = _blend(image, colour, _profile(distance, 2.2, _lerp(0.2, 0.35, u())))
        return _blend(image, colour, _profile(distance, _lerp(1.1, 1.6, u()), _lerp(0.4, 0.7, u())))
    colour = _lerp((0.52, 0.25, 0.38), (0.68, 0.38, 0.48), u()) * darker  # cyst
    image = _blend(image, colour, _profile(distance, 2.0, _lerp(0.15, 0.3, u())))
    image = _blend(image, colour, _profile(distance, _lerp(1.0, 1.4, u()), _lerp(0.45, 0.75, u())))
    return _highlight(image, distance, lesion, _lerp(0.1, 0.2, u()))


def _profile(distance: np.ndarray, width: float, strength: float) -> np.ndarray:
    """Gaussian fall-off in the elliptical distance: `strength` at the centre."""
    return strength * np.exp(-0.5 * (distance / width) ** 2)


def _highlight(image: np.ndarray, distance: np.ndarray, lesion: AcneLesion, strength: float) -> np.ndarray:
    """A small light reflection on a raised lesion."""
    shifted = np.roll(distance, (round(0.3 * lesion.semi_minor), round(0.3 * lesion.semi_minor)), (0, 1))
    return _blend(image, np.ones(3), _profile(shifted, 0.35, strength))


# --------------------------------------------------------------------------- helpers


def _rng(seed: int, stream: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, stream, index]))


def _lerp(low, high, t: float):
    return np.asarray(low, dtype=float) + t * (np.asarray(high, dtype=float) - np.asarray(low, dtype=float))


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """Gaussian-blurred white noise rescaled to mean 0, standard deviation 1."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap", truncate=3.0)
    return (field - field.mean()) / (field.std() + 1e-12)


def _splat(points: np.ndarray, amplitude: np.ndarray, size: int, sigma: float) -> np.ndarray:
    """Gaussian blobs of peak about `amplitude` at (row, col) points, clipped to [0, 1]."""
    field = np.zeros((size, size))
    index = np.clip(np.floor(points).astype(int), 0, size - 1)
    np.add.at(field, (index[:, 0], index[:, 1]), amplitude * 2 * np.pi * sigma**2)
    return np.clip(ndimage.gaussian_filter(field, sigma), 0.0, 1.0)


def _blend(base: np.ndarray, colour, weight: np.ndarray | float) -> np.ndarray:
    weight = np.clip(np.asarray(weight, dtype=float), 0.0, 1.0)
    if weight.ndim == base.ndim - 1:
        weight = weight[..., None]
    return base * (1 - weight) + np.asarray(colour, dtype=float) * weight
