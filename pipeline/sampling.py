"""Samplers for classification training against class imbalance.

- ``oversample``: an image of a class with coefficient k is k times as likely to be fed as
  under plain shuffling; every repeat goes through the dataset's random augmentation, so this is
  index repetition plus a shuffle. An epoch keeps the training set's length (``epoch_size:
  nominal``, the default), so every sampler gives the same number of optimizer steps and an
  oversampled run is compared with the baseline at equal training length; ``epoch_size:
  expanded`` feeds every image k times per epoch instead (epochs sum_i k_i m_i long; ~2.9x the
  steps with the ISIC 2018 preset). Shards across DDP replicas like torch's DistributedSampler.
  Coefficients: a preset (``isic2018``), a mapping class -> int, or set from the training labels
  (``inverse``: round(M / m_i); ``sqrt_inverse``: round(sqrt(M / m_i))).
- ``class_balanced``: weighted random sampling with replacement, weight 1 / count(class); an
  epoch keeps the data set's size.
- ``hard_examples``: online batch selection (Loshchilov and Hutter, 2015): images drawn with
  replacement, with probability falling with the rank of their latest training loss, so the
  hardest image is ``pressure`` times as likely as the easiest; images not yet seen rank first.
  The trainer feeds each batch's per-image losses back (``observe``). An epoch keeps the data
  set's size.
- any sampler with ``start: f`` (deferred re-sampling, DRS; Cao et al., NeurIPS 2019): plain
  shuffling for the epochs before ``f * epochs``, the sampler from then on, each epoch of the
  sampler's length (``DeferredSampler``).

The trainer calls ``set_epoch(epoch)`` before every epoch (as for DistributedSampler), so that
each epoch has its own deterministic order and a resumed run sees the same one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata
from torch.utils.data import Sampler, WeightedRandomSampler

from pipeline.errors import ConfigError
from pipeline.registry import Registry

OVERSAMPLING_PRESETS: dict[str, dict[str, int]] = {
    "isic2018": {"NV": 1, "MEL": 4, "BKL": 4, "BCC": 8, "AKIEC": 10, "VASC": 22, "DF": 25},
}
# Coefficients set from the training labels instead of by hand (automatic rebalancing by sampling):
# k_i = round((M / m_i) ** power), M the largest class count, m_i class i's. The hand-set ISIC 2018
# preset lies close to power 0.8 of the ISIC 2018 counts (NV 6705 ... DF 115: MEL 4.2, DF 25.9).
FREQUENCY_RULES: dict[str, float] = {"inverse": 1.0, "sqrt_inverse": 0.5}

# name -> builder(spec, labels, classes, seed, num_replicas, rank); ``keys``: what its config block may hold
SAMPLERS: Registry[Callable[..., Sampler[int] | None]] = Registry("sampler")


def _seeded_generator(*entropy: int) -> torch.Generator:
    """A torch generator seeded from several integers (seed, rank, epoch) without collisions."""
    seed = int(np.random.SeedSequence(list(entropy)).generate_state(1, dtype=np.uint64)[0])
    return torch.Generator().manual_seed(seed)


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _check_int(what: str, value: Any, low: int) -> int:
    if not _is_int(value) or value < low:
        kind = "a positive" if low == 1 else "a non-negative"
        raise ConfigError(f"{what} must be {kind} integer, got {value!r}")
    return int(value)


def _check_labels(labels: Sequence[int], num_classes: int | None = None) -> list[int]:
    if len(labels) == 0:
        raise ConfigError("the sampler got no training labels")
    checked = []
    for row, label in enumerate(labels):
        if not _is_int(label) or label < 0:
            raise ConfigError(f"training label at position {row} must be a class index, got {label!r}")
        if num_classes is not None and label >= num_classes:
            raise ConfigError(
                f"training label at position {row} is class {label}, but there are {num_classes} classes"
            )
        checked.append(int(label))
    return checked


def _check_replicas(num_replicas: int, rank: int) -> None:
    _check_int("num_replicas", num_replicas, low=1)
    if not _is_int(rank) or not 0 <= rank < num_replicas:
        raise ConfigError(f"rank must lie in 0..{num_replicas - 1}, got {rank!r}")


EPOCH_SIZES = ("nominal", "expanded")


class OversamplingSampler(Sampler[int]):
    """Oversampling by integer coefficients: index i stands coefficients[label_i] times in the
    *expanded list* (length L = sum_i k_i m_i).

    The expanded list is shuffled once per *pass* p (a seeded permutation of (seed, p)), and the
    passes are read one after another as a stream. With ``epoch_size="nominal"`` (default) epoch e
    is the stream's positions [e N, (e + 1) N), N = len(labels): an epoch has the plain shuffle's
    length, so the same number of optimizer steps, while its class composition is coefficient x
    count in expectation. Reading the stream, rather than a fresh truncated shuffle each epoch,
    uses every copy exactly once per L / N epochs: over a run the exposure of each image matches
    its coefficient exactly (up to the last partial pass), not only in expectation. With
    ``epoch_size="expanded"`` epoch e is all of pass e (every index k times per epoch; the
    behaviour before epochs had a fixed length).

    With ``num_replicas > 1`` the epoch's list is padded (by repeating its start) to a multiple
    of ``num_replicas`` and rank r takes every num_replicas-th index from position r, as
    torch.utils.data.DistributedSampler does.
    """

    def __init__(
        self,
        labels: Sequence[int],
        coefficients: Sequence[int],
        seed: int,
        num_replicas: int = 1,
        rank: int = 0,
        epoch_size: str = "nominal",
    ) -> None:
        for index, coefficient in enumerate(coefficients):
            _check_int(f"oversampling coefficient of class {index}", coefficient, low=1)
        _check_replicas(num_replicas, rank)
        if epoch_size not in EPOCH_SIZES:
            raise ConfigError(f"sampler epoch_size must be one of {list(EPOCH_SIZES)}, got {epoch_size!r}")
        labels = _check_labels(labels, len(coefficients))
        self.repeats = torch.tensor([int(coefficients[label]) for label in labels])
        self.expanded = torch.repeat_interleave(torch.arange(len(labels)), self.repeats)
        self.seed = _check_int("sampler seed", seed, low=0)
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.epoch_size = epoch_size
        self.epoch_length = len(labels) if epoch_size == "nominal" else len(self.expanded)
        self.num_samples = math.ceil(self.epoch_length / num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = _check_int("sampler epoch", epoch, low=0)

    def expanded_pass(self, index: int) -> torch.Tensor:
        """Pass ``index`` of the stream: the expanded list in the seeded order of (seed, index)."""
        return self.expanded[torch.randperm(len(self.expanded), generator=_seeded_generator(self.seed, index))]

    def epoch_indices(self) -> list[int]:
        """All replicas' indices for the current epoch, shuffled and padded (before sharding)."""
        length = len(self.expanded)
        start = self.epoch * self.epoch_length
        chunks, position = [], start
        while position < start + self.epoch_length:
            pass_index, offset = divmod(position, length)
            take = min(length - offset, start + self.epoch_length - position)
            chunks.append(self.expanded_pass(pass_index)[offset : offset + take])
            position += take
        shuffled = torch.cat(chunks).tolist()
        padding = self.num_samples * self.num_replicas - len(shuffled)
        return shuffled + shuffled[:padding]

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_indices()[self.rank :: self.num_replicas])

    def __len__(self) -> int:
        return self.num_samples


class ClassBalancedSampler(WeightedRandomSampler):
    """WeightedRandomSampler with weight 1 / count(class) per sample, seeded per (seed, rank, epoch)
    once ``set_epoch`` is called (until then the generator simply runs on between epochs)."""

    def __init__(self, labels: Sequence[int], num_samples: int | None, seed: int, rank: int = 0) -> None:
        labels = _check_labels(labels)
        counts = np.bincount(labels)
        weights = torch.tensor(1.0 / counts[labels], dtype=torch.float64)
        if num_samples is None:
            num_samples = len(labels)
        num_samples = _check_int("class_balanced num_samples", num_samples, low=1)
        self.seed, self.rank = _check_int("sampler seed", seed, low=0), rank
        super().__init__(weights, num_samples, replacement=True, generator=_seeded_generator(self.seed, rank, 0))

    def set_epoch(self, epoch: int) -> None:
        self.generator = _seeded_generator(self.seed, self.rank, _check_int("sampler epoch", epoch, low=0))


class HardExampleSampler(Sampler[int]):
    """Online hard-example sampling: rank-based batch selection after Loshchilov and Hutter, "Online
    Batch Selection for Faster Training of Neural Networks", ICLR workshop 2016 (arXiv:1511.06343).

    Each image keeps its latest known training loss. Images are ranked by it, hardest first (rank
    r = 1 … N; ties share their mean rank, and images not yet seen tie at the top), and each epoch
    draws ``len(self)`` indices with replacement with probability

        p_r ∝ exp(−ln(s) · (r − 1) / (N − 1)),

    so the hardest image is ``s`` = ``pressure`` times as likely as the easiest (s = 1 is uniform
    sampling with replacement). The trainer reports each batch's per-image losses through
    ``observe(indices, losses)`` (the indices of ``last_indices`` it consumed) and calls
    ``end_epoch()`` on every rank after the epoch: the epoch's observations (averaged when an image
    was drawn twice, and over torchrun ranks) replace the remembered losses. ``state_dict`` holds
    that memory, so a resumed run draws what the uninterrupted one draws.
    """

    wants_feedback = True

    def __init__(self, dataset_size: int, pressure: float, seed: int, num_replicas: int = 1, rank: int = 0) -> None:
        _check_replicas(num_replicas, rank)
        self.dataset_size = _check_int("data set size", dataset_size, low=1)
        if isinstance(pressure, bool) or not isinstance(pressure, (int, float)) or not math.isfinite(pressure) \
                or pressure < 1:
            raise ConfigError(f"hard_examples pressure must be a number >= 1 (1: uniform), got {pressure!r}")
        self.pressure = float(pressure)
        self.seed = _check_int("sampler seed", seed, low=0)
        self.num_replicas, self.rank = num_replicas, rank
        self.num_samples = math.ceil(self.dataset_size / num_replicas)
        self.losses = np.full(self.dataset_size, np.nan)  # latest known loss per image; nan: not seen yet
        self._sum = np.zeros(self.dataset_size)
        self._count = np.zeros(self.dataset_size)
        self.last_indices: list[int] = []
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = _check_int("sampler epoch", epoch, low=0)

    def probabilities(self) -> np.ndarray:
        """Selection probability of every image under the current loss memory (sums to 1)."""
        hardness = np.where(np.isnan(self.losses), np.inf, self.losses)
        ranks = rankdata(-hardness, method="average")  # 1 = hardest
        spread = max(self.dataset_size - 1, 1)
        weights = np.exp(-math.log(self.pressure) * (ranks - 1) / spread)
        return weights / weights.sum()

    def __iter__(self) -> Iterator[int]:
        generator = _seeded_generator(self.seed, self.rank, self.epoch)
        probabilities = torch.from_numpy(self.probabilities())
        self.last_indices = torch.multinomial(probabilities, self.num_samples, replacement=True,
                                              generator=generator).tolist()
        return iter(self.last_indices)

    def __len__(self) -> int:
        return self.num_samples

    def observe(self, indices: Sequence[int], losses: Sequence[float]) -> None:
        """Record the per-image training losses of one batch (its data set indices, in order)."""
        indices, losses = np.asarray(indices, dtype=np.int64), np.asarray(losses, dtype=np.float64)
        if indices.shape != losses.shape:
            raise ValueError(f"observe got {indices.size} indices and {losses.size} losses")
        np.add.at(self._sum, indices, losses)
        np.add.at(self._count, indices, 1.0)

    def end_epoch(self) -> None:
        """Fold the epoch's observations into the memory (summed over torchrun ranks first)."""
        if self.num_replicas > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            totals = torch.from_numpy(np.stack([self._sum, self._count]))
            torch.distributed.all_reduce(totals)
            self._sum, self._count = totals[0].numpy().copy(), totals[1].numpy().copy()
        seen = self._count > 0
        self.losses[seen] = self._sum[seen] / self._count[seen]
        self._sum[:] = 0.0
        self._count[:] = 0.0

    def state_dict(self) -> dict[str, Any]:
        return {"losses": torch.from_numpy(self.losses.copy())}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        losses = np.asarray(state["losses"], dtype=np.float64)
        if losses.shape != (self.dataset_size,):
            raise ValueError(f"hard_examples state holds {losses.size} losses for a data set of {self.dataset_size}")
        self.losses = losses.copy()


class DeferredSampler(Sampler[int]):
    """Deferred re-sampling (DRS): Cao, Wei, Gaidon, Arechiga and Ma, "Learning Imbalanced Datasets
    with Label-Distribution-Aware Margin Loss", NeurIPS 2019, section 3.3 / appendix (LDAM-DRS).

    Epochs ``epoch < start * epochs`` are plain shuffling of the ``dataset_size`` indices; from then
    on ``inner`` (any sampler with ``set_epoch``) draws. Every epoch has ``len(inner)`` indices per
    replica, so the number of optimizer steps per epoch does not change at the switch: a shuffled
    epoch concatenates seeded permutations of the data set, cut to ``len(inner) * num_replicas``,
    and rank r takes every num_replicas-th index from position r (as torch's DistributedSampler).
    Each epoch's order is a function of (seed, epoch) only, so a resumed run sees the same one.
    """

    def __init__(
        self, inner: Sampler[int], dataset_size: int, start: float, epochs: int, seed: int,
        num_replicas: int = 1, rank: int = 0,
    ) -> None:
        if not hasattr(inner, "set_epoch"):
            raise ConfigError(f"deferred sampling needs a sampler with set_epoch, got {type(inner).__name__}")
        _check_replicas(num_replicas, rank)
        self.inner = inner
        self.dataset_size = _check_int("data set size", dataset_size, low=1)
        self.start = check_start(start)
        self.epochs = _check_int("train.epochs", epochs, low=1)
        self.seed = _check_int("sampler seed", seed, low=0)
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0
        self.last_indices: list[int] = []

    @property
    def active(self) -> bool:
        """True from the first epoch at or after ``start * epochs`` (the epoch the trainer set)."""
        return self.epoch >= self.start * self.epochs

    def set_epoch(self, epoch: int) -> None:
        self.epoch = _check_int("sampler epoch", epoch, low=0)
        self.inner.set_epoch(epoch)

    def shuffled_indices(self) -> list[int]:
        """All replicas' indices of a plain-shuffling epoch, before sharding."""
        generator = _seeded_generator(self.seed, self.epoch)
        total = len(self) * self.num_replicas
        rounds = math.ceil(total / self.dataset_size)
        order = torch.cat([torch.randperm(self.dataset_size, generator=generator) for _ in range(rounds)])
        return order[:total].tolist()

    def __iter__(self) -> Iterator[int]:
        if self.active:
            self.last_indices = list(self.inner)
        else:
            self.last_indices = self.shuffled_indices()[self.rank :: self.num_replicas]
        return iter(self.last_indices)

    def __len__(self) -> int:
        return len(self.inner)

    # A feedback sampler (hard_examples) learns the images' losses during the plain epochs too.
    @property
    def wants_feedback(self) -> bool:
        return getattr(self.inner, "wants_feedback", False)

    def observe(self, indices: Sequence[int], losses: Sequence[float]) -> None:
        self.inner.observe(indices, losses)

    def end_epoch(self) -> None:
        self.inner.end_epoch()

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict() if hasattr(self.inner, "state_dict") else {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if hasattr(self.inner, "load_state_dict"):
            self.inner.load_state_dict(state)


def check_start(start: Any) -> float:
    """A sampler's ``start``: the fraction of the epochs before the sampler applies, in [0, 1)."""
    if isinstance(start, bool) or not isinstance(start, (int, float)) or not 0.0 <= start < 1.0:
        raise ConfigError(f"sampler start must be a fraction of the epochs in [0, 1), got {start!r}")
    return float(start)


def frequency_coefficients(labels: Sequence[int], n_classes: int, power: float) -> list[int]:
    """k_i = round((M / m_i) ** power) from the training labels (see FREQUENCY_RULES); at least 1,
    and 1 for a class without training images (nothing to repeat)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes)
    largest = counts.max(initial=0)
    return [max(1, int(round((largest / count) ** power))) if count else 1 for count in counts.tolist()]


def oversampling_coefficients(coefficients: Any, classes: list[str], labels: Sequence[int] | None = None) -> list[int]:
    """Coefficients in class-list order from a preset name, a rule of FREQUENCY_RULES (needs the
    training ``labels``) or a {class: int} mapping."""
    if isinstance(coefficients, str) and coefficients in FREQUENCY_RULES:
        if labels is None:
            raise ConfigError(f"oversampling coefficients {coefficients!r} are set from the training labels; none given")
        return frequency_coefficients(labels, len(classes), FREQUENCY_RULES[coefficients])
    if isinstance(coefficients, str):
        if coefficients not in OVERSAMPLING_PRESETS:
            raise ConfigError(
                f"unknown oversampling preset {coefficients!r}; presets: {sorted(OVERSAMPLING_PRESETS)}, "
                f"or set from the training labels: {sorted(FREQUENCY_RULES)}"
            )
        coefficients = OVERSAMPLING_PRESETS[coefficients]
    if not isinstance(coefficients, Mapping):
        raise ConfigError(f"sampler coefficients must be a preset name or a mapping class -> int, got {coefficients!r}")
    unknown = sorted(set(coefficients) - set(classes))
    if unknown:
        raise ConfigError(f"sampler coefficients name unknown class(es) {unknown}; classes are {classes}")
    missing = [code for code in classes if code not in coefficients]
    if missing:
        raise ConfigError(f"sampler coefficients miss class(es) {missing}")
    for code in classes:
        _check_int(f"oversampling coefficient of class {code}", coefficients[code], low=1)
    return [coefficients[code] for code in classes]


def build_sampler(
    spec: dict[str, Any] | None,
    labels: Sequence[int],
    classes: list[str],
    seed: int,
    num_replicas: int = 1,
    rank: int = 0,
    epochs: int | None = None,
) -> Sampler[int] | None:
    """The sampler a config's ``sampler:`` block asks for, or None for plain shuffling.

    ``spec``: ``{name: none | oversample | class_balanced | hard_examples, coefficients: <preset or
    mapping>, epoch_size: <nominal | expanded, oversample only>, num_samples: <int, class_balanced
    only>, pressure: <number >= 1, hard_examples only>,
    start: <fraction, any sampler>}``. ``labels`` are class indices into ``classes``. With several
    replicas, class_balanced draws ceil(num_samples / num_replicas) per rank from a rank-specific
    stream (independent draws with replacement need no sharding). ``start`` defers the sampler to
    epoch ``start * epochs`` (``DeferredSampler``; needs ``epochs``, the run's number of epochs).
    """
    if spec is None:
        return None
    if not isinstance(spec, Mapping):
        raise ConfigError(f"sampler must be a mapping with a 'name', got {spec!r}")
    name = spec.get("name", "none")
    builder = SAMPLERS.get(name)
    allowed = {"name", "start"} | SAMPLERS.info(name)["keys"]
    extra = sorted(set(spec) - allowed)
    if extra:
        raise ConfigError(f"sampler {name!r} got unknown key(s) {extra}; it accepts {sorted(allowed)}")
    _check_replicas(num_replicas, rank)
    _check_labels(labels, len(classes))
    sampler = builder({k: v for k, v in spec.items() if k != "start"}, labels, classes, seed, num_replicas, rank)
    if spec.get("start") is None:
        return sampler
    start = check_start(spec["start"])
    if sampler is None:
        raise ConfigError(f"sampler {name!r} with start: plain shuffling has nothing to defer; name a sampler")
    if epochs is None:
        raise ConfigError("sampler start is a fraction of the epochs: build_sampler needs the run's epochs")
    return DeferredSampler(sampler, len(labels), start, epochs, seed, num_replicas=num_replicas, rank=rank)


@SAMPLERS.register("none", keys=set())
def _plain_shuffling(spec, labels, classes, seed, num_replicas, rank) -> None:
    return None


@SAMPLERS.register("oversample", keys={"coefficients", "epoch_size"})
def _oversampling(spec, labels, classes, seed, num_replicas, rank) -> OversamplingSampler:
    if "coefficients" not in spec:
        raise ConfigError(
            f"sampler 'oversample' needs 'coefficients': a preset {sorted(OVERSAMPLING_PRESETS)} or a mapping"
        )
    coefficients = oversampling_coefficients(spec["coefficients"], classes, labels)
    return OversamplingSampler(labels, coefficients, seed, num_replicas=num_replicas, rank=rank,
                               epoch_size=spec.get("epoch_size", "nominal"))


@SAMPLERS.register("class_balanced", keys={"num_samples"})
def _class_balanced(spec, labels, classes, seed, num_replicas, rank) -> ClassBalancedSampler:
    num_samples = _check_int("class_balanced num_samples", spec.get("num_samples", len(labels)), low=1)
    return ClassBalancedSampler(labels, math.ceil(num_samples / num_replicas), seed, rank=rank)


@SAMPLERS.register("hard_examples", keys={"pressure"})
def _hard_examples(spec, labels, classes, seed, num_replicas, rank) -> HardExampleSampler:
    return HardExampleSampler(len(labels), spec.get("pressure", 100.0), seed, num_replicas=num_replicas, rank=rank)
