import math
from collections import Counter

import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler, WeightedRandomSampler

from pipeline.errors import ConfigError
from pipeline.sampling import (
    OVERSAMPLING_PRESETS,
    OversamplingSampler,
    SAMPLERS,
    ClassBalancedSampler,
    DeferredSampler,
    HardExampleSampler,
    _seeded_generator,
    build_sampler,
    frequency_coefficients,
)

ISIC = ["MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC"]
LABELS = [0, 0, 1, 2, 0, 2]  # class counts 3, 1, 2
COEFFICIENTS = [1, 3, 2]
# HAM10000's class counts / 10, in ISIC order (MEL 1113, NV 6705, BCC 514, AKIEC 327, BKL 1099, DF 115, VASC 142)
HAM_LABELS = [c for c, n in enumerate([111, 671, 51, 33, 110, 12, 14]) for _ in range(n)]


def class_totals(indices, labels):
    return Counter(labels[i] for i in indices)


def test_expanded_epoch_holds_coefficient_times_count_per_class():
    sampler = OversamplingSampler(LABELS, COEFFICIENTS, seed=0, epoch_size="expanded")
    indices = list(sampler)
    assert len(sampler) == len(indices) == 3 * 1 + 1 * 3 + 2 * 2
    assert class_totals(indices, LABELS) == {0: 3, 1: 3, 2: 4}
    # every sample appears exactly its class coefficient times
    assert Counter(indices) == {i: COEFFICIENTS[label] for i, label in enumerate(LABELS)}


def test_nominal_epoch_has_the_training_set_length():
    sampler = OversamplingSampler(LABELS, COEFFICIENTS, seed=0)
    assert len(sampler) == len(list(sampler)) == len(LABELS)
    isic = build_sampler({"name": "oversample", "coefficients": "isic2018"}, HAM_LABELS, ISIC, seed=0, num_replicas=3,
                         rank=1)
    plain = DistributedSampler(range(len(HAM_LABELS)), num_replicas=3, rank=1)
    assert len(isic) == len(plain) == math.ceil(len(HAM_LABELS) / 3)  # the same steps as plain shuffling


def test_nominal_epochs_read_every_copy_once_per_pass():
    # 6 labels, 10 copies: 5 epochs of 6 = 3 whole passes, so each index is fed exactly 3 x its coefficient
    sampler = OversamplingSampler(LABELS, COEFFICIENTS, seed=4)
    fed = []
    for epoch in range(5):
        sampler.set_epoch(epoch)
        fed += list(sampler)
    assert Counter(fed) == {i: 3 * COEFFICIENTS[label] for i, label in enumerate(LABELS)}


def test_nominal_epoch_composition_matches_the_coefficients_in_expectation():
    coefficients = [OVERSAMPLING_PRESETS["isic2018"][code] for code in ISIC]
    counts = Counter(HAM_LABELS)
    expanded = sum(coefficients[c] * counts[c] for c in counts)
    expected = {c: coefficients[c] * counts[c] / expanded for c in counts}  # share of class c in an epoch
    sampler = OversamplingSampler(HAM_LABELS, coefficients, seed=0)
    epochs = 60
    totals = Counter()
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        totals.update(class_totals(list(sampler), HAM_LABELS))
    fed = epochs * len(HAM_LABELS)
    for c, share in expected.items():
        # binomial standard error of the share over all fed samples, 5 of them
        tolerance = 5 * math.sqrt(share * (1 - share) / fed)
        assert abs(totals[c] / fed - share) < tolerance, (ISIC[c], totals[c] / fed, share)
    plain_share = {c: counts[c] / len(HAM_LABELS) for c in counts}
    assert totals[ISIC.index("DF")] / fed > 5 * plain_share[ISIC.index("DF")]  # oversampled, not shuffled


@pytest.mark.parametrize("epoch_size", ["nominal", "expanded"])
def test_shuffle_is_deterministic_per_epoch_and_changes_between_epochs(epoch_size):
    first, again = (OversamplingSampler(LABELS, COEFFICIENTS, seed=3, epoch_size=epoch_size) for _ in range(2))
    orders = []
    for epoch in range(4):
        first.set_epoch(epoch)
        again.set_epoch(epoch)
        assert list(first) == list(again)
        orders.append(tuple(first))
    assert len(set(orders)) > 1
    assert len({len(order) for order in orders}) == 1
    if epoch_size == "expanded":
        assert sorted(orders[0]) == sorted(orders[1])


def test_expanded_epoch_is_the_sampler_before_fixed_length_epochs():
    # epoch_size: expanded reproduces the old sampler exactly: one seeded shuffle of the expanded list per epoch
    sampler = OversamplingSampler(LABELS, COEFFICIENTS, seed=3, epoch_size="expanded")
    sampler.set_epoch(2)
    expanded = torch.repeat_interleave(torch.arange(len(LABELS)), torch.tensor([COEFFICIENTS[y] for y in LABELS]))
    order = torch.randperm(len(expanded), generator=_seeded_generator(3, 2))
    assert list(sampler) == expanded[order].tolist()


def test_shards_like_distributed_sampler():
    labels = list(range(3)) + [0, 1]  # 5 samples, coefficient 1 -> 5 indices, 3 replicas -> padded to 6
    shards = [OversamplingSampler(labels, [1, 1, 1], seed=1, num_replicas=3, rank=r) for r in range(3)]
    for shard in shards:
        shard.set_epoch(2)
    full = shards[0].epoch_indices()
    assert len(full) == 6 and full[5] == full[0]  # padding repeats the start
    assert all(len(shard) == 2 == len(list(shard)) for shard in shards)
    assert [list(shard) for shard in shards] == [full[r::3] for r in range(3)]
    assert sorted(i for shard in shards for i in shard) == sorted(full)


@pytest.mark.parametrize("coefficients", [[1, 0, 2], [1, 1.5, 2], [1, True, 2], [1, -2, 2]])
def test_coefficients_must_be_positive_integers(coefficients):
    with pytest.raises(ConfigError, match="class 1 must be a positive integer"):
        OversamplingSampler(LABELS, coefficients, seed=0)


def test_label_outside_coefficients_is_config_error():
    with pytest.raises(ConfigError, match="position 1 is class 3"):
        OversamplingSampler([0, 3], [1, 1, 1], seed=0)


def test_bad_rank():
    with pytest.raises(ConfigError, match="rank"):
        OversamplingSampler(LABELS, COEFFICIENTS, seed=0, num_replicas=2, rank=2)


def test_class_balanced_weights_and_draws():
    labels = [0] * 9 + [1]
    sampler = ClassBalancedSampler(labels, 4000, seed=5)
    assert isinstance(sampler, WeightedRandomSampler)
    assert torch.allclose(sampler.weights, torch.tensor([1 / 9] * 9 + [1.0], dtype=torch.float64))
    draws = list(sampler)
    assert len(draws) == 4000
    minority = sum(labels[i] for i in draws) / len(draws)
    assert 0.45 < minority < 0.55  # each class equally likely; 1.0 would be 10%
    first, again = (ClassBalancedSampler(labels, 50, seed=5) for _ in range(2))
    assert list(first) == list(again)


def test_class_balanced_set_epoch_is_reproducible():
    sampler = ClassBalancedSampler(LABELS, None, seed=1)
    sampler.set_epoch(3)
    epoch3 = list(sampler)
    sampler.set_epoch(4)
    epoch4 = list(sampler)
    sampler.set_epoch(3)
    assert list(sampler) == epoch3 and epoch3 != epoch4


def test_preset_covers_isic_classes():
    assert set(OVERSAMPLING_PRESETS["isic2018"]) == set(ISIC)


def test_build_sampler_with_preset_orders_coefficients_by_class_list():
    labels = list(range(7))  # one image per class
    spec = {"name": "oversample", "coefficients": "isic2018", "epoch_size": "expanded"}
    sampler = build_sampler(spec, labels, ISIC, seed=0)
    counts = Counter(sampler)
    assert [counts[i] for i in range(7)] == [OVERSAMPLING_PRESETS["isic2018"][code] for code in ISIC]


def test_coefficients_set_from_the_training_labels():
    labels = [0] * 100 + [1] * 25 + [2] * 4 + [3] * 60  # M = 100
    assert frequency_coefficients(labels, 5, 1.0) == [1, 4, 25, 2, 1]  # class 4: no image, 1
    assert frequency_coefficients(labels, 5, 0.5) == [1, 2, 5, 1, 1]  # sqrt(100 / 60) = 1.29 -> 1
    # the ISIC 2018 preset is close to power 0.8 of the ISIC 2018 counts
    isic_counts = {"MEL": 1113, "NV": 6705, "BCC": 514, "AKIEC": 327, "BKL": 1099, "DF": 115, "VASC": 142}
    isic_labels = [i for i, code in enumerate(ISIC) for _ in range(isic_counts[code])]
    by_rule = frequency_coefficients(isic_labels, 7, 0.8)
    preset = [OVERSAMPLING_PRESETS["isic2018"][code] for code in ISIC]
    assert all(abs(a - b) <= 1 for a, b in zip(by_rule, preset)), (by_rule, preset)
    spec = {"name": "oversample", "coefficients": "inverse", "epoch_size": "expanded"}
    counts = Counter(labels[i] for i in build_sampler(spec, labels, ["a", "b", "c", "d", "e"], seed=0))
    assert [counts[i] for i in range(4)] == [100, 25 * 4, 4 * 25, 60 * 2]  # each class's images k_i times an epoch
    with pytest.raises(ConfigError, match="inverse"):
        build_sampler({"name": "oversample", "coefficients": "inverse_square"}, labels, ["a", "b", "c", "d", "e"], seed=0)


def test_build_sampler_none_and_class_balanced():
    assert build_sampler(None, LABELS, ["a", "b", "c"], seed=0) is None
    assert build_sampler({"name": "none"}, LABELS, ["a", "b", "c"], seed=0) is None
    sampler = build_sampler({"name": "class_balanced"}, LABELS, ["a", "b", "c"], seed=0, num_replicas=4, rank=1)
    assert len(sampler) == 2  # ceil(6 / 4)
    assert SAMPLERS.names() == ["class_balanced", "hard_examples", "none", "oversample"]


def test_build_sampler_works_in_a_dataloader():
    spec = {"name": "oversample", "coefficients": {"a": 1, "b": 3, "c": 2}}
    sampler = build_sampler(spec, LABELS, ["a", "b", "c"], seed=0)
    batches = list(DataLoader(list(range(len(LABELS))), batch_size=4, sampler=sampler))
    assert sum(len(batch) for batch in batches) == len(LABELS)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"name": "oversample", "coefficients": {"a": 1, "b": 2}}, r"miss class\(es\) \['c'\]"),
        ({"name": "oversample", "coefficients": {"a": 1, "b": 2, "c": 1, "d": 4}}, r"unknown class\(es\) \['d'\]"),
        ({"name": "oversample", "coefficients": "ham"}, "unknown oversampling preset 'ham'"),
        ({"name": "oversample", "coefficients": {"a": 1, "b": 0, "c": 1}}, "class b must be a positive integer"),
        ({"name": "oversample"}, "needs 'coefficients'"),
        ({"name": "smote"}, r"unknown sampler 'smote'; available: \['class_balanced'"),
        ({"name": "class_balanced", "coefficients": "isic2018"}, r"unknown key\(s\) \['coefficients'\]"),
        ({"name": "class_balanced", "num_samples": 0}, "num_samples"),
        ({"name": "oversample", "coefficients": {"a": 1, "b": 2, "c": 1}, "epoch_size": "long"}, "epoch_size must be one of"),
    ],
)
def test_build_sampler_rejects(spec, message):
    with pytest.raises(ConfigError, match=message):
        build_sampler(spec, LABELS, ["a", "b", "c"], seed=0)


@pytest.mark.realdata
def test_isic2018_preset_on_ham10000_counts(real_data):
    import pandas as pd

    metadata = pd.read_csv(real_data / "isic2018_task3_labels" / "HAM10000_metadata_kaggle.csv")
    labels = [ISIC.index(code.upper()) for code in metadata["dx"]]
    sampler = build_sampler({"name": "oversample", "coefficients": "isic2018", "epoch_size": "expanded"}, labels,
                            ISIC, seed=0)
    raw = Counter(labels)
    fed = class_totals(list(sampler), labels)
    preset = OVERSAMPLING_PRESETS["isic2018"]
    assert {ISIC[c]: fed[c] for c in fed} == {ISIC[c]: preset[ISIC[c]] * raw[c] for c in raw}
    # the preset brings a ~58:1 imbalance (NV vs DF) down to under 3:1
    assert max(raw.values()) / min(raw.values()) > 50
    assert max(fed.values()) / min(fed.values()) < 3


# ------------------------------------------------------------------ deferred re-sampling (start)
def epochs_of(sampler, epochs):
    orders = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        orders.append(list(sampler))
    return orders


def test_deferred_sampler_shuffles_until_start_then_samples():
    labels = [0] * 9 + [1]
    spec = {"name": "class_balanced", "num_samples": 10, "start": 0.5}
    deferred = build_sampler(spec, labels, ["a", "b"], seed=3, epochs=4)
    inner = build_sampler({"name": "class_balanced", "num_samples": 10}, labels, ["a", "b"], seed=3)
    assert isinstance(deferred, DeferredSampler)
    orders = epochs_of(deferred, 4)
    assert sorted(orders[0]) == sorted(orders[1]) == list(range(10))  # plain shuffling: each image once
    assert orders[0] != orders[1]
    assert orders[2:] == epochs_of(inner, 4)[2:]  # from epoch 2 = 0.5 * 4 on, the sampler itself


def test_deferred_sampler_keeps_the_epoch_length_across_the_switch():
    # epoch_size: expanded, so the sampler's epoch (10) differs from the data set's (6)
    spec = {"name": "oversample", "coefficients": {"a": 1, "b": 3, "c": 2}, "epoch_size": "expanded", "start": 0.5}
    sampler = build_sampler(spec, LABELS, ["a", "b", "c"], seed=0, epochs=2)
    before, after = epochs_of(sampler, 2)
    assert len(before) == len(after) == len(sampler) == 10  # the oversampler's epoch
    assert class_totals(after, LABELS) == {0: 3, 1: 3, 2: 4}
    # the shuffled epoch repeats whole permutations of the 6 images, cut to 10
    assert sorted(before[:6]) == list(range(6)) and len(set(before[6:])) == 4


def test_deferred_sampler_order_depends_on_seed_and_epoch_only():
    spec = {"name": "oversample", "coefficients": {"a": 1, "b": 3, "c": 2}, "start": 0.6}
    first, again = (build_sampler(spec, LABELS, ["a", "b", "c"], seed=7, epochs=5) for _ in range(2))
    again.set_epoch(4)
    list(again)  # a resumed run has seen other epochs, or none
    assert epochs_of(first, 5) == epochs_of(again, 5)


def test_deferred_sampler_shards_the_shuffled_epoch():
    labels = [0, 1, 2, 0, 1]
    shards = [build_sampler({"name": "oversample", "coefficients": {"a": 1, "b": 1, "c": 1}, "start": 0.5},
                            labels, ["a", "b", "c"], seed=1, num_replicas=2, rank=r, epochs=2) for r in range(2)]
    for shard in shards:
        shard.set_epoch(0)
    full = shards[0].shuffled_indices()
    assert len(full) == 6 and sorted(full[:5]) == list(range(5))
    assert [list(shard) for shard in shards] == [full[0::2], full[1::2]]
    assert all(len(shard) == 3 for shard in shards)


@pytest.mark.parametrize(
    ("spec", "epochs", "message"),
    [
        ({"name": "none", "start": 0.5}, 4, "plain shuffling has nothing to defer"),
        ({"name": "class_balanced", "start": 1.0}, 4, r"start must be a fraction of the epochs in \[0, 1\)"),
        ({"name": "class_balanced", "start": "late"}, 4, "start must be a fraction"),
        ({"name": "class_balanced", "start": 0.5}, None, "needs the run's epochs"),
    ],
)
def test_deferred_sampler_rejects(spec, epochs, message):
    with pytest.raises(ConfigError, match=message):
        build_sampler(spec, LABELS, ["a", "b", "c"], seed=0, epochs=epochs)


def test_start_null_is_the_sampler_itself():
    sampler = build_sampler({"name": "class_balanced", "start": None}, LABELS, ["a", "b", "c"], seed=0)
    assert isinstance(sampler, ClassBalancedSampler)


# --- hard_examples: rank-based online batch selection (Loshchilov and Hutter 2016)
def test_hard_example_sampler_is_uniform_before_any_loss_is_known():
    sampler = HardExampleSampler(10, pressure=100, seed=0)
    assert torch.allclose(torch.from_numpy(sampler.probabilities()), torch.full((10,), 0.1, dtype=torch.float64))


def test_hard_example_probabilities_fall_with_the_loss_rank_by_the_pressure():
    sampler = HardExampleSampler(5, pressure=100, seed=0)
    sampler.observe([0, 1, 2, 3, 4], [0.5, 4.0, 0.1, 2.0, 1.0])
    sampler.end_epoch()
    p = sampler.probabilities()
    order = [1, 3, 4, 0, 2]  # hardest first
    assert all(p[a] > p[b] for a, b in zip(order, order[1:]))
    assert p[1] / p[2] == pytest.approx(100.0)
    # neighbouring ranks differ by the same factor 100 ** (1 / 4)
    assert p[1] / p[3] == pytest.approx(100 ** 0.25)


def test_hard_example_pressure_one_is_uniform_and_unseen_images_rank_first():
    flat = HardExampleSampler(4, pressure=1, seed=0)
    flat.observe([0, 1], [3.0, 0.1])
    flat.end_epoch()
    assert flat.probabilities() == pytest.approx([0.25] * 4)
    sampler = HardExampleSampler(4, pressure=10, seed=0)
    sampler.observe([0, 1], [3.0, 0.1])
    sampler.end_epoch()
    p = sampler.probabilities()
    assert p[2] == p[3] > p[0] > p[1]  # not yet seen: tied at the top


def test_hard_example_memory_averages_repeats_and_keeps_unobserved_images():
    sampler = HardExampleSampler(3, pressure=10, seed=0)
    sampler.observe([0, 0, 1], [1.0, 3.0, 5.0])
    sampler.end_epoch()
    assert sampler.losses[:2].tolist() == [2.0, 5.0] and math.isnan(sampler.losses[2])
    sampler.observe([1], [0.5])
    sampler.end_epoch()
    assert sampler.losses[:2].tolist() == [2.0, 0.5]  # image 0 not drawn: its last loss stays


def test_hard_example_draws_favour_hard_images_and_keep_the_epoch_length():
    sampler = HardExampleSampler(100, pressure=100, seed=3)
    sampler.observe(list(range(100)), [float(i) for i in range(100)])  # image 99 hardest
    sampler.end_epoch()
    sampler.set_epoch(1)
    drawn = list(sampler)
    assert len(drawn) == len(sampler) == 100 and drawn == sampler.last_indices
    assert sum(i >= 50 for i in drawn) > 3 * sum(i < 50 for i in drawn)


def test_hard_example_draws_depend_on_seed_epoch_and_memory_only():
    def draws(epoch, seed=0, state=None):
        sampler = HardExampleSampler(20, pressure=30, seed=seed)
        if state is not None:
            sampler.load_state_dict(state)
        sampler.set_epoch(epoch)
        return list(sampler)

    trained = HardExampleSampler(20, pressure=30, seed=0)
    trained.observe(list(range(20)), [float(i % 7) for i in range(20)])
    trained.end_epoch()
    state = trained.state_dict()
    assert draws(2, state=state) == draws(2, state=state)  # a resumed run draws what the first one drew
    assert draws(2, state=state) != draws(2)  # the memory matters
    assert draws(2, state=state) != draws(3, state=state)
    assert draws(2, state=state) != draws(2, seed=1, state=state)


def test_hard_example_sampler_shards_its_draws_across_replicas():
    ranks = [HardExampleSampler(10, pressure=10, seed=0, num_replicas=2, rank=r) for r in (0, 1)]
    assert [len(s) for s in ranks] == [5, 5]
    assert list(ranks[0]) != list(ranks[1])


@pytest.mark.parametrize("pressure", [0.5, 0, -1, float("nan"), "high", True])
def test_hard_example_pressure_must_be_at_least_one(pressure):
    with pytest.raises(ConfigError, match="pressure"):
        HardExampleSampler(10, pressure=pressure, seed=0)


def test_hard_example_state_of_another_data_set_is_refused():
    with pytest.raises(ValueError, match="3 losses for a data set of 4"):
        HardExampleSampler(4, pressure=10, seed=0).load_state_dict({"losses": torch.zeros(3)})


def test_deferred_hard_examples_learn_the_losses_during_the_plain_epochs():
    sampler = build_sampler({"name": "hard_examples", "pressure": 10, "start": 0.5}, [0, 1, 0, 1], ["a", "b"],
                            seed=0, epochs=2)
    assert isinstance(sampler, DeferredSampler) and sampler.wants_feedback
    sampler.set_epoch(0)
    plain = list(sampler)
    assert sorted(plain) == [0, 1, 2, 3] and sampler.last_indices == plain
    sampler.observe(plain, [0.1, 0.2, 0.3, 9.0])
    sampler.end_epoch()
    assert sampler.state_dict()["losses"].tolist() == pytest.approx(
        [dict(zip(plain, [0.1, 0.2, 0.3, 9.0]))[i] for i in range(4)])
