import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage
from sklearn.metrics import f1_score, jaccard_score

from pipeline.errors import DataError
from pipeline.evaluation.segmentation import (
    FALSE_LESION,
    MATCHING_RULE,
    MISSED,
    compute_segmentation_metrics,
    lesion_components,
    match_lesions,
    pixel_scores,
    write_segmentation_tables,
)
from pipeline.rundir import write_metrics as write_metrics_json
from tests.evaluation.test_stats import wilson_by_hand

TYPES = ["papule", "pustule"]


def blank(shape=(12, 12)) -> np.ndarray:
    return np.zeros(shape, dtype=np.uint8)


def only(rows, kind):
    return [r for r in rows if kind(r)]


# --------------------------------------------------------------------------- components
def test_components_use_8_connectivity_per_type():
    m = blank()
    m[1, 1] = m[2, 2] = 1  # diagonal neighbours: one lesion
    m[2, 3] = 2  # touching, but another type: its own lesion (types never merge)
    m[8:10, 8:10] = 2  # separate lesion
    components = lesion_components(m)
    assert components.count == 3
    assert components.types.tolist() == [1, 2, 2] and components.areas.tolist() == [2, 1, 4]


def test_components_from_an_instance_map_keep_touching_lesions_apart():
    m, instances = blank(), np.zeros((12, 12), dtype=np.int64)
    m[2:5, 2:8] = 1
    instances[2:5, 2:5], instances[2:5, 5:8] = 7, 3  # two touching papules, sparse ids
    components = lesion_components(m, instances)
    assert components.count == 2 and components.source_ids.tolist() == [3, 7]
    assert components.types.tolist() == [1, 1] and components.areas.tolist() == [9, 9]


# --------------------------------------------------------------------------- matching cases
def test_split_lesion_one_match_one_false_lesion():
    true, pred = blank(), blank()
    true[2:6, 0:6] = 1  # 24 px
    pred[2:6, 0:4] = 1  # 16 px, IoU 16/24
    pred[2:6, 5:6] = 1  # 4 px, IoU 4/24 (eligible, but the true lesion is taken)
    rows = match_lesions(true, pred)
    assert len(rows) == 2
    (hit,) = only(rows, lambda r: r["matched"])
    assert hit["iou"] == pytest.approx(16 / 24) and (hit["true_area"], hit["pred_area"]) == (24, 16)
    (false,) = only(rows, lambda r: r["true_type"] is None)
    assert not false["matched"] and false["pred_type"] == 1 and false["true_area"] is None
    assert false["iou"] == pytest.approx(4 / 24)  # its best overlap, kept for diagnosis


def test_merged_lesion_one_match_one_missed():
    true, pred = blank(), blank()
    true[2:6, 0:4] = 1  # 16 px
    true[2:6, 5:7] = 2  # 8 px
    pred[2:6, 0:7] = 1  # 28 px covers both
    rows = match_lesions(true, pred)
    assert len(rows) == 2
    (hit,) = only(rows, lambda r: r["matched"])
    assert hit["true_type"] == 1 and hit["iou"] == pytest.approx(16 / 28)
    (missed,) = only(rows, lambda r: r["pred_type"] is None)
    assert missed["true_type"] == 2 and not missed["matched"] and missed["iou"] == pytest.approx(8 / 28)
    assert missed["miss"] == "merged" and hit["miss"] is None  # drawn into the lesion matched to its neighbour


def test_missed_and_false_lesions():
    true, pred = blank(), blank()
    true[1:3, 1:3] = 2
    pred[8:10, 8:11] = 1
    rows = match_lesions(true, pred, classes=TYPES)
    assert rows == [
        {"lesion_id": 0, "instance_id": 1, "true_type": "pustule", "pred_type": None, "matched": False, "iou": 0.0,
         "true_area": 4, "pred_area": None, "miss": "not_found"},
        {"lesion_id": 1, "instance_id": None, "true_type": None, "pred_type": "papule", "matched": False, "iou": 0.0,
         "true_area": None, "pred_area": 6, "miss": None},
    ]


def test_type_confusion_is_a_match_with_the_wrong_type():
    true, pred = blank(), blank()
    true[3:6, 3:6] = 1
    pred[3:6, 3:6] = 2
    (row,) = match_lesions(true, pred, classes=TYPES)
    assert row["matched"] and row["iou"] == 1.0
    assert (row["true_type"], row["pred_type"]) == ("papule", "pustule")


def test_overlap_below_threshold_is_not_a_match():
    true, pred = blank(), blank()
    true[0:10, 0:10] = 1  # 100 px
    pred[0:1, 0:5] = 1  # 5 px inside: IoU 0.05
    rows = match_lesions(true, pred, iou_threshold=0.1)
    assert [r["matched"] for r in rows] == [False, False]
    assert match_lesions(true, pred, iou_threshold=0.05)[0]["matched"]
    with pytest.raises(ValueError):
        match_lesions(true, pred, iou_threshold=0)


def test_assignment_maximises_matches_then_iou():
    # P1 overlaps T1 best (IoU 0.5) and also reaches T2 (0.125); P2 lies inside T1 (0.3).
    # Maximising total IoU alone would pair T1-P1 and leave T2 missed and P2 false (1 match);
    # the rule takes the most matches: T1-P2 and T2-P1.
    true, pred = blank((4, 20)), blank((4, 20))
    true[0:2, 0:10] = 1  # T1: 20 px
    true[3, 10:12] = 1  # T2: 2 px
    pred[0:2, 0:3] = 1  # P2: 6 px inside T1 -> IoU 6/20
    pred[0:2, 4:10] = 1  # P1: 12 px inside T1 ...
    pred[2:4, 10:12] = 1  # ... joined diagonally to 4 px over T2: 16 px, IoU(T1) 12/24, IoU(T2) 2/16
    assert lesion_components(true).count == 2 and lesion_components(pred).count == 2
    rows = match_lesions(true, pred)
    assert len(rows) == 2 and all(r["matched"] for r in rows)
    assert [r["iou"] for r in rows] == pytest.approx([6 / 20, 2 / 16])
    assert [r["pred_area"] for r in rows] == [6, 16]


# --------------------------------------------------------------------------- pixel scores
def test_pixel_dice_and_iou_match_sklearn_and_exclude_absent_types():
    true, pred = blank(), blank()
    true[0:4, 0:4] = 1
    pred[0:4, 1:5] = 1
    pred[9, 9] = 2  # pustule predicted, absent in truth -> 0
    dice, iou = pixel_scores(true, pred, n_types=3)
    assert dice[0] == pytest.approx(f1_score(true.ravel() == 1, pred.ravel() == 1))
    assert iou[0] == pytest.approx(jaccard_score(true.ravel() == 1, pred.ravel() == 1))
    assert dice[1] == 0 and iou[1] == 0
    assert math.isnan(dice[2]) and math.isnan(iou[2])  # type 3 in neither map


# --------------------------------------------------------------------------- full metrics
@pytest.fixture(scope="module")
def hand_case():
    """Three images worked by hand (types: 1 papule, 2 pustule)."""
    a_true, a_pred = blank(), blank()
    a_true[0:4, 0:4] = 1  # papule, matched as papule
    a_pred[0:4, 0:3] = 1
    a_true[8:11, 8:11] = 2  # pustule, predicted as papule (type confusion)
    a_pred[8:11, 8:11] = 1
    b_true, b_pred = blank(), blank()
    b_true[1:3, 1:3] = 2  # pustule, missed
    b_pred[8:10, 0:2] = 2  # false pustule
    c_true, c_pred = blank(), blank()  # nothing anywhere
    samples = [("a", a_true, a_pred), ("b", b_true, b_pred), ("c", c_true, c_pred)]
    return samples, compute_segmentation_metrics(iter(samples), TYPES, {"papule": "Papule"}, experiment="e",
                                                 seed=1, n_bootstrap=100)


def test_lesion_level_figures_by_hand(hand_case):
    _, (metrics, lesions, _) = hand_case
    papule, pustule = metrics["per_class"]["papule"], metrics["per_class"]["pustule"]
    # papule: 1 true (found, right type); 2 predicted papules, 1 right -> sens 1/1, ppv 1/2
    assert (papule["support"], papule["predicted"]) == (1, 2)
    assert (papule["sensitivity"]["k"], papule["sensitivity"]["n"]) == (1, 1)
    assert (papule["ppv"]["k"], papule["ppv"]["n"]) == (1, 2)
    assert papule["ppv"]["ci95"] == pytest.approx(list(wilson_by_hand(1, 2)))
    assert papule["f1"]["value"] == pytest.approx(2 / 3)
    # pustule: 2 true (one confused with papule, one missed), 1 predicted (false) -> sens 0/2, ppv 0/1
    assert (pustule["support"], pustule["predicted"]) == (2, 1)
    assert pustule["sensitivity"]["value"] == 0 and pustule["ppv"]["value"] == 0
    assert (pustule["detected_any_type"]["k"], pustule["detected_any_type"]["n"]) == (1, 2)
    assert pustule["most_confused_with"] == [{"class": "papule", "count": 1}]
    block = metrics["confusion_matrix"]
    assert block["row_labels"] == ["papule", "pustule", FALSE_LESION]
    assert block["col_labels"] == ["papule", "pustule", MISSED]
    assert block["counts"] == [[1, 0, 0], [1, 0, 1], [0, 1, 0]]
    assert (metrics["lesion_detection"]["sensitivity"]["k"], metrics["lesion_detection"]["sensitivity"]["n"]) == (2, 3)
    assert (metrics["lesion_detection"]["ppv"]["k"], metrics["lesion_detection"]["ppv"]["n"]) == (2, 3)
    assert len(lesions) == 4 and set(lesions["image_id"]) == {"a", "b"}
    assert metrics["matching_rule"] == MATCHING_RULE and metrics["iou_threshold"] == 0.1


def test_pixel_level_figures_by_hand(hand_case):
    _, (metrics, _, per_image) = hand_case
    # image a: papule truth 16 px, papule pred 12 + 9 (the confused pustule) = 21 px, overlap 12
    a = per_image.set_index("image_id").loc["a"]
    assert a["dice_papule"] == pytest.approx(2 * 12 / (16 + 21))
    assert a["dice_pustule"] == 0  # 9 true pustule px, none predicted
    assert a["dice"] == pytest.approx((2 * 12 / 37 + 0) / 2)
    b = per_image.set_index("image_id").loc["b"]
    assert math.isnan(b["dice_papule"]) and b["dice_pustule"] == 0 and b["dice"] == 0
    assert math.isnan(per_image.set_index("image_id").loc["c", "dice"])
    assert metrics["mean_dice"]["value"] == pytest.approx((a["dice"] + 0) / 2)
    assert metrics["mean_dice"]["n"] == 2 and metrics["mean_dice"]["excluded_images"] == 1
    assert metrics["per_class"]["papule"]["dice"]["n"] == 1  # only image a has papules
    assert metrics["per_class"]["pustule"]["dice"] == {"value": 0.0, "ci95": [0.0, 0.0], "n": 2}
    lo, hi = metrics["mean_dice"]["ci95"]
    assert lo <= metrics["mean_dice"]["value"] <= hi


def test_counts_and_count_errors_by_hand(hand_case):
    _, (metrics, _, per_image) = hand_case
    table = per_image.set_index("image_id")
    assert table.loc["a", ["n_true", "n_pred", "n_true_papule", "n_pred_papule"]].tolist() == [2, 2, 1, 2]
    assert table.loc["b", ["n_true_pustule", "n_pred_pustule"]].tolist() == [1, 1]
    # papule count errors (pred - true) per image: a +1, b 0, c 0; pustule: a -1, b 0, c 0; totals 0, 0, 0
    papule, pustule = metrics["per_class"]["papule"], metrics["per_class"]["pustule"]
    assert papule["count_error"] == {"mae": pytest.approx(1 / 3), "mean_signed": pytest.approx(1 / 3)}
    assert pustule["count_error"] == {"mae": pytest.approx(1 / 3), "mean_signed": pytest.approx(-1 / 3)}
    assert metrics["lesion_count_error"]["mae"] == 0.0 and metrics["lesion_count_error"]["mean_signed"] == 0.0
    assert metrics["lesion_count_error"]["spearman"]["value"] == pytest.approx(1.0)  # totals 2, 1, 0 both sides


def test_metrics_shape_and_json(hand_case, tmp_path):
    _, (metrics, _, _) = hand_case
    assert (metrics["task"], metrics["experiment"], metrics["seed"], metrics["n_images"]) == ("segmentation", "e", 1, 3)
    assert metrics["class_names"] == {"papule": "Papule", "pustule": "pustule"}
    write_metrics_json(metrics, tmp_path / "metrics.json")
    loaded = json.loads((tmp_path / "metrics.json").read_text())
    assert loaded["per_class"]["papule"]["dice"]["ci95"] == [None, None]  # one image: no interval
    assert loaded["confusion_matrix"]["counts"] == metrics["confusion_matrix"]["counts"]


def test_bootstrap_is_deterministic(hand_case):
    samples, (metrics, _, _) = hand_case
    again, _, _ = compute_segmentation_metrics(samples, TYPES, {"papule": "Papule"}, experiment="e", seed=1,
                                               n_bootstrap=100)
    assert json.dumps(again, sort_keys=True, default=str) == json.dumps(metrics, sort_keys=True, default=str)


def test_lesion_table_matches_its_contract(hand_case, tmp_path):
    _, (_, lesions, _) = hand_case
    assert list(lesions.columns[:6]) == ["image_id", "lesion_id", "true_type", "pred_type", "matched", "iou"]
    lesions.to_csv(tmp_path / "lesions.csv", index=False)
    reread = pd.read_csv(tmp_path / "lesions.csv")
    false_row = reread[reread["true_type"].isna()]
    assert len(false_row) == 1 and false_row["pred_type"].item() == "pustule"


@pytest.mark.parametrize(
    "true,pred,message",
    [
        (np.full((4, 4), 3, np.uint8), blank((4, 4)), "outside 0..2"),
        (blank((4, 4)), blank((5, 4)), "differ in shape"),
        (blank((4, 4)).astype(float), blank((4, 4)), "integers"),
        (np.zeros((2, 4, 4), np.uint8), np.zeros((2, 4, 4), np.uint8), "2-D"),
    ],
)
def test_bad_maps_raise_data_error_naming_the_image(true, pred, message):
    with pytest.raises(DataError, match=message) as error:
        compute_segmentation_metrics([("img7", true, pred)], TYPES, n_bootstrap=5)
    assert "img7" in str(error.value)


def test_duplicate_or_missing_images_are_rejected():
    with pytest.raises(DataError, match="twice"):
        compute_segmentation_metrics([("x", blank(), blank()), ("x", blank(), blank())], TYPES, n_bootstrap=5)
    with pytest.raises(DataError, match="no images"):
        compute_segmentation_metrics([], TYPES, n_bootstrap=5)


def test_tables_are_read_from_the_metrics(hand_case, tmp_path):
    _, (metrics, lesions, per_image) = hand_case
    paths = write_segmentation_tables(metrics, tmp_path, lesions, per_image)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths) == [
        "confusion_matrix.csv", "lesions.csv", "per_class.csv", "per_image.csv"]
    counts = pd.read_csv(tmp_path / "confusion_matrix.csv", index_col=0)
    assert counts.loc["pustule", MISSED] == 1 and counts.loc[FALSE_LESION, "pustule"] == 1
    per_class = pd.read_csv(tmp_path / "per_class.csv").set_index("class")
    assert per_class.loc["papule", "ppv"] == 0.5 and per_class.loc["pustule", "detected_any_type"] == 0.5
    assert per_class.loc["papule", "dice"] == pytest.approx(metrics["per_class"]["papule"]["dice"]["value"])
    write_metrics_json(metrics, tmp_path / "m.json")
    write_segmentation_tables(json.loads((tmp_path / "m.json").read_text()), tmp_path / "again")
    assert (tmp_path / "again" / "per_class.csv").read_text() == (tmp_path / "per_class.csv").read_text()


@pytest.mark.parametrize("seed", range(6))
def test_match_counts_for_every_area_equal_matching_after_removing_small_lesions(seed):
    """The tuning grid's shortcut (one IoU matrix, a matching per area) against the evaluate stage's
    own path: remove small lesions, split touching ones, match one to one."""
    from pipeline.evaluation.instances import predicted_instances
    from pipeline.evaluation.segmentation import lesion_components, match_counts_by_area
    from pipeline.tasks.segmentation import remove_small_lesions

    rng = np.random.default_rng(seed)

    def blobs(n):
        label = np.zeros((48, 48), np.uint8)
        for _ in range(n):
            r, c = rng.integers(0, 44, 2)
            h, w = rng.integers(1, 8, 2)
            label[r:r + h, c:c + w] = rng.integers(1, 4)
        return label

    truth = blobs(12)
    pred = np.roll(truth, 1, axis=1)  # the annotated lesions, shifted, plus false ones
    extra = blobs(8)
    pred[extra > 0] = extra[extra > 0]
    areas = [1, 2, 4, 9, 16, 30]
    counts = match_counts_by_area(lesion_components(truth), pred, predicted_instances(pred), areas, 0.1)
    for (matched, n_true, n_pred), area in zip(counts, areas):
        kept = remove_small_lesions(pred, area)
        rows = match_lesions(truth, kept, 0.1, pred_instances=predicted_instances(kept))
        assert matched == sum(r["matched"] for r in rows)
        assert n_true == sum(r["true_type"] is not None for r in rows)
        assert n_pred == sum(r["pred_type"] is not None for r in rows)
    assert counts[0, 0] > 0 and counts[-1, 2] < counts[0, 2]  # the case is not trivial


def test_each_missed_lesion_says_why_and_the_metrics_count_the_causes_per_type():
    true, pred = np.zeros((20, 20), np.uint8), np.zeros((20, 20), np.uint8)
    true[1:3, 1:3] = 1  # a papule with nothing predicted on it: not found
    true[6:12, 1:7] = 1  # a papule whose prediction grazes it (IoU 1/39 < 0.1): poor overlap
    pred[11:13, 6:8] = 1
    true[14:18, 2:6] = 1  # two touching papules drawn as one predicted lesion: one matched, one merged
    true[14:18, 6:10] = 1
    pred[14:18, 2:10] = 1
    instances = np.zeros_like(true, dtype=np.int64)
    for k, (rows, cols) in enumerate([(slice(1, 3), slice(1, 3)), (slice(6, 12), slice(1, 7)),
                                      (slice(14, 18), slice(2, 6)), (slice(14, 18), slice(6, 10))], start=1):
        instances[rows, cols] = k
    rows = match_lesions(true, pred, classes=TYPES, true_instances=instances,
                         pred_instances=ndimage.label(pred, structure=np.ones((3, 3)))[0])
    by_instance = {r["instance_id"]: r for r in rows if r["instance_id"] is not None}
    assert by_instance[1]["miss"] == "not_found" and by_instance[2]["miss"] == "poor_overlap"
    assert {by_instance[3]["miss"], by_instance[4]["miss"]} == {None, "merged"}
    assert all(r["miss"] is None for r in rows if r["instance_id"] is None)  # the grazing false lesion
    metrics, lesions, _ = compute_segmentation_metrics([("a", true, pred, instances)], TYPES, n_bootstrap=10,
                                                       split_touching=False)
    assert metrics["per_class"]["papule"]["missed_by_cause"] == {"not_found": 1, "merged": 1, "poor_overlap": 1}
    assert metrics["per_class"]["pustule"]["missed_by_cause"] == {"not_found": 0, "merged": 0, "poor_overlap": 0}
    assert sorted(lesions["miss"].dropna()) == ["merged", "not_found", "poor_overlap"]
