"""Plain-language captions generated from the numbers they describe.

Every function is pure: it takes figures already computed by ``pipeline.evaluation`` (read from
``metrics.json`` or its companion tables) and returns one or two sentences. Nothing here computes
a metric; a caption is only ever a rewording of numbers the report also shows. Captions are plain
text: the HTML template escapes them like any other string.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

EN_DASH = "\u2013"
MINUS = "\u2212"


# ---------------------------------------------------------------------------------------------
# Number formatting
# ---------------------------------------------------------------------------------------------
def is_number(x: Any) -> bool:
    """True for a finite int/float (NaN and None mean 'not estimable')."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x and abs(x) != float("inf")


def pct(x: float | None, digits: int = 0) -> str:
    """0.7045 -> '70%' (digits=0) or '70.5%' (digits=1); 'n/a' for a missing value."""
    if not is_number(x):
        return "n/a"
    return f"{100 * x:.{digits}f}%"


def count(n: int) -> str:
    """1512 -> '1,512'."""
    return f"{int(n):,}"


def ci_text(ci: Sequence[float] | None, *, percent: bool = True, digits: int = 0) -> str:
    """[0.56, 0.82] -> '95% CI 56–82%'; [0.88, 0.94] (percent=False) -> '95% CI 0.88–0.94'."""
    if not ci or len(ci) != 2 or not all(is_number(v) for v in ci):
        return "95% CI n/a"
    lo, hi = ci
    if percent:
        return f"95% CI {100 * lo:.{digits}f}{EN_DASH}{100 * hi:.{digits}f}%"
    return f"95% CI {lo:.{digits or 2}f}{EN_DASH}{hi:.{digits or 2}f}"


def value_with_ci(estimate: Mapping[str, Any] | None, *, percent: bool = True, digits: int = 0) -> str:
    """{'value': 0.7, 'ci95': [0.56, 0.82]} -> '70% (95% CI 56–82%)'."""
    if not estimate or not is_number(estimate.get("value")):
        return "n/a"
    value = estimate["value"]
    shown = pct(value, digits) if percent else f"{value:.{digits or 2}f}"
    return f"{shown} ({ci_text(estimate.get('ci95'), percent=percent, digits=digits)})"


def signed_points(x: float, digits: int = 1) -> str:
    """0.031 -> '+3.1 points'; -0.02 -> '−2.0 points' (percentage points of a proportion)."""
    text = f"{100 * abs(x):.{digits}f}"
    return f"{'+' if x >= 0 else MINUS}{text} points"


def display_name(code: str, name: str | None) -> str:
    """Clinician-facing label: 'Melanoma (MEL)'; the bare code when no distinct name is known."""
    if not name or str(name).casefold() == str(code).casefold():
        return str(name or code)
    return f"{name} ({code})"


def _join_calls(calls: Sequence[tuple[str, int]]) -> str:
    """[('Melanocytic nevus (NV)', 9), ('Melanoma (MEL)', 4)] -> '9 were called Melanocytic nevus
    (NV), 4 Melanoma (MEL)'."""
    parts = []
    for i, (label, n) in enumerate(calls):
        verb = ("was" if n == 1 else "were") + " called " if i == 0 else ""
        parts.append(f"{count(n)} {verb}{label}")
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------------
# Classification
# ---------------------------------------------------------------------------------------------
def headline_caption(metric_name: str, estimate: Mapping[str, Any], n_images: int, n_classes: int) -> str:
    """The top-line figure, e.g. balanced accuracy (mean per-class sensitivity, the ISIC metric)."""
    return (
        f"{metric_name} is {value_with_ci(estimate, digits=1)} on {count(n_images)} test images; "
        f"it is the mean of the {n_classes} per-class sensitivities, so every class counts equally "
        f"however rare it is."
    )


def class_detection_caption(
    label: str,
    support: int,
    sensitivity: Mapping[str, Any],
    row_counts: Sequence[int],
    row_labels: Sequence[str],
    own_index: int,
    max_confusions: int = 3,
) -> str:
    """One class's row of the confusion matrix in words.

    'Of 44 Dermatofibroma (DF) images, 31 were called Dermatofibroma (DF) (70%, 95% CI 56–82%);
    9 were called Melanocytic nevus (NV), 4 Melanoma (MEL).'
    ``row_counts`` is the class's row of the stored confusion matrix (true class = this one).
    """
    if support == 0:
        return f"The test set holds no {label} images, so its sensitivity cannot be estimated."
    found = int(row_counts[own_index])
    sentence = (
        f"Of {count(support)} {label} images, {count(found)} {'was' if found == 1 else 'were'} "
        f"recognised ({pct(sensitivity.get('value'))}, {ci_text(sensitivity.get('ci95'))})"
    )
    errors = sorted(
        ((row_labels[j], int(n)) for j, n in enumerate(row_counts) if j != own_index and n > 0),
        key=lambda item: -item[1],
    )
    if not errors:
        return sentence + "; none was called anything else."
    shown = errors[:max_confusions]
    rest = sum(n for _, n in errors[max_confusions:])
    tail = f", and {count(rest)} {'was' if rest == 1 else 'were'} called other classes" if rest else ""
    return f"{sentence}; {_join_calls(shown)}{tail}."


def confusion_caption(counts: Sequence[Sequence[int]], labels: Sequence[str], normalized: bool) -> str:
    """Summary of a whole confusion matrix: how many on the diagonal and the most frequent error."""
    n_total = sum(sum(int(v) for v in row) for row in counts)
    n_right = sum(int(counts[i][i]) for i in range(len(labels)))
    reading = (
        "Each row is a true diagnosis and sums to 100%: the diagonal is the sensitivity for that class."
        if normalized
        else "Rows are the true diagnosis, columns the model's call."
    )
    text = f"{reading} {count(n_right)} of {count(n_total)} test images ({pct(n_right / n_total if n_total else None)}) are on the diagonal."
    worst = max(
        ((int(counts[i][j]), i, j) for i in range(len(labels)) for j in range(len(labels)) if i != j),
        default=(0, 0, 0),
    )
    if worst[0] > 0:
        n, i, j = worst
        text += f" The most frequent error: {count(n)} {labels[i]} called {labels[j]}."
    return text


def operating_point_caption(
    label: str,
    auc: Mapping[str, Any],
    sens_at_95_spec: Mapping[str, Any] | None,
    spec_at_95_sens: Mapping[str, Any] | None,
    chosen_on_val: Mapping[str, Any] | None = None,
) -> str:
    """ROC summary with the two operating points clinicians ask for: with thresholds chosen on the
    validation split (``chosen_on_val``, see ``validation_operating_points``) when the run has them,
    else read off the test ROC curve."""
    text = f"{label}: AUC {value_with_ci(auc, percent=False)}."
    if chosen_on_val:
        sens_point, spec_point = chosen_on_val["sens_at_95_spec"], chosen_on_val["spec_at_95_sens"]
        if is_number(sens_point["sensitivity"].get("value")):
            text += (
                f" With the threshold chosen on the validation images to rule out 95% of other lesions there, "
                f"{pct(sens_point['sensitivity']['value'])} of {label} cases in the test images are caught "
                f"({ci_text(sens_point['sensitivity']['ci95'])}) and {pct(sens_point['specificity']['value'])} of other "
                f"lesions are ruled out ({ci_text(sens_point['specificity']['ci95'])})."
            )
        if is_number(spec_point["specificity"].get("value")):
            text += (
                f" With the threshold chosen on the validation images to catch 95% of {label} cases there, "
                f"{pct(spec_point['sensitivity']['value'])} are caught in the test images "
                f"({ci_text(spec_point['sensitivity']['ci95'])}) and {pct(spec_point['specificity']['value'])} of other "
                f"lesions are ruled out ({ci_text(spec_point['specificity']['ci95'])})."
            )
        return text
    if sens_at_95_spec and is_number(sens_at_95_spec.get("value")):
        text += (
            f" With the threshold set so that 95% of other lesions are correctly ruled out, "
            f"{pct(sens_at_95_spec['value'])} of {label} cases are caught"
            f"{' (' + ci_text(sens_at_95_spec.get('ci95')) + ')' if sens_at_95_spec.get('ci95') else ''}."
        )
    if spec_at_95_sens and is_number(spec_at_95_sens.get("value")):
        text += (
            f" Set to catch 95% of {label} cases, it correctly rules out "
            f"{pct(spec_at_95_sens['value'])} of other lesions"
            f"{' (' + ci_text(spec_at_95_sens.get('ci95')) + ')' if spec_at_95_sens.get('ci95') else ''}."
        )
    return text


def roc_caption(n_classes: int, best: tuple[str, float] | None, worst: tuple[str, float] | None) -> str:
    """Caption of the grid of one-vs-rest ROC curves."""
    text = (
        f"One-vs-rest ROC curves for the {n_classes} classes. Markers show the operating points "
        f"at 95% specificity (circle) and at 95% sensitivity (square)."
    )
    if best and worst and best[0] != worst[0]:
        text += f" The curve is highest for {best[0]} (AUC {best[1]:.2f}) and lowest for {worst[0]} (AUC {worst[1]:.2f})."
    return text


def calibration_caption(ece: float, bins: Sequence[Mapping[str, Any]]) -> str:
    """Reliability diagram in words: the ECE, the direction of the miscalibration and the most
    confident bin (ECE after Guo et al., 'On Calibration of Modern Neural Networks', ICML 2017)."""
    filled = [b for b in bins if b.get("count", 0) > 0 and is_number(b.get("accuracy"))]
    if not is_number(ece) or not filled:
        return "Calibration could not be estimated (no test predictions)."
    text = (
        f"Expected calibration error (ECE) is {ece:.3f}: on average the model's stated confidence "
        f"is {100 * ece:.1f} percentage points away from how often it is right."
    )
    total = sum(b["count"] for b in filled)
    gap = sum(b["count"] * (b["confidence"] - b["accuracy"]) for b in filled) / total
    if abs(gap) >= 0.01:
        text += f" Overall it is {'over' if gap > 0 else 'under'}-confident."
    top = max(filled, key=lambda b: b["hi"])
    text += (
        f" When it was {pct(top['lo'])}{EN_DASH}{pct(top['hi'])} sure ({count(top['count'])} images), "
        f"it was right {pct(top['accuracy'])} of the time."
    )
    return text


def data_caption(
    train_counts: Mapping[str, int],
    labels: Mapping[str, str],
    grouping: str | None,
) -> str:
    """Class balance of the training split and how the split was grouped."""
    present = {code: n for code, n in train_counts.items() if n > 0}
    text = ""
    if present:
        largest = max(present, key=present.get)
        smallest = min(present, key=present.get)
        ratio = present[largest] / present[smallest]
        text = (
            f"Training set: {count(sum(train_counts.values()))} images. The largest class, "
            f"{labels.get(largest, largest)} ({count(present[largest])}), outnumbers the smallest, "
            f"{labels.get(smallest, smallest)} ({count(present[smallest])}), {ratio:.1f} to 1."
        )
    missing = [labels.get(code, code) for code, n in train_counts.items() if n == 0]
    if missing:
        text += f" No training images for: {', '.join(missing)}."
    if grouping:
        text += (
            f" Splits are grouped by {grouping}: all images of one {grouping} are in the same "
            f"split, so no {grouping} is seen in both training and test."
        )
    return text.strip()


def gallery_caption(kind: str, n_shown: int, n_candidates: int, n_saliency: int = 0) -> str:
    """kind: 'wrong' (most confidently wrong) or 'tie' (nearest to a tie between two classes);
    ``n_saliency``: how many tiles show a Grad-CAM++ overlay instead of the plain image."""
    if n_shown == 0:
        return (
            "No test image was misclassified." if kind == "wrong" else "No test images to show."
        )
    if kind == "wrong":
        text = (
            f"The {count(n_shown)} misclassified test images (of {count(n_candidates)} errors) where the "
            f"model was most sure of its wrong answer: worth a look for label noise, artefacts or "
            f"look-alike lesions."
        )
    else:
        text = (
            f"The {count(n_shown)} test images (of {count(n_candidates)}) where the top two classes were "
            f"closest in probability: the cases on the model's decision boundary."
        )
    if n_saliency:
        shown = "Each image" if n_saliency == n_shown else f"{count(n_saliency)} of the images"
        text += (f" {shown} is the crop the model saw, tinted by Grad-CAM++ for the predicted class (red: the "
                 f"regions that raised its score most). A saliency map hints at where the model looked, not why.")
    return text


# ---------------------------------------------------------------------------------------------
# Segmentation
# ---------------------------------------------------------------------------------------------
def lesion_type_caption(
    label: str,
    n_true: int,
    n_found: int,
    recall: Mapping[str, Any] | None,
    called_as: Sequence[tuple[str, int]],
    n_missed: int,
    n_pred: int | None = None,
    precision: Mapping[str, Any] | None = None,
    missed_by_cause: Mapping[str, int] | None = None,
) -> str:
    """'Of 120 papule lesions, 80 were found as papule (67%, 95% CI 58–75%); 25 were missed (18 with
    nothing drawn on them, 5 drawn into a neighbouring lesion, 2 overlapped too little), 15 were called
    pustule. Of 100 predicted papule lesions, 80 matched a true one (80%).'"""
    if n_true == 0:
        text = f"The test images hold no annotated {label} lesions, so recall cannot be estimated."
    else:
        text = (
            f"Of {count(n_true)} annotated {label} lesions, {count(n_found)} "
            f"{'was' if n_found == 1 else 'were'} found with the right type"
        )
        if recall and is_number(recall.get("value")):
            text += f" ({pct(recall['value'])}, {ci_text(recall.get('ci95'))})"
        others = [(lab, n) for lab, n in sorted(called_as, key=lambda item: -item[1]) if n > 0]
        pieces = [f"{count(n_missed)} {'was' if n_missed == 1 else 'were'} missed{_miss_causes(missed_by_cause)}"] \
            if n_missed else []
        if others:
            pieces.append(_join_calls(others))
        text += ("; " + "; ".join(pieces) if pieces else "") + "."
    if n_pred is not None and precision and is_number(precision.get("value")):
        text += (
            f" Of {count(n_pred)} predicted {label} lesions, {pct(precision['value'])} matched an "
            f"annotated {label} lesion."
        )
    return text


_MISS_WORDS = {"not_found": "with nothing drawn on {them}", "merged": "drawn into a neighbouring lesion",
               "poor_overlap": "overlapped too little"}


def _miss_causes(by_cause: Mapping[str, int] | None) -> str:
    """' (18 with nothing drawn on them, 5 drawn into a neighbouring lesion)', from missed_by_cause."""
    parts = [f"{count(n)} " + _MISS_WORDS[cause].format(them="it" if n == 1 else "them")
             for cause, n in (by_cause or {}).items() if cause in _MISS_WORDS and n]
    return f" ({', '.join(parts)})" if parts else ""


def overlay_caption(which: str, image_id: str, dice: float) -> str:
    """which: 'best', 'median' or 'worst' test image by per-image Dice."""
    return f"{which.capitalize()} test image by Dice: {image_id} (Dice {dice:.2f})."


def segmentation_headline_caption(
    mean_dice: Mapping[str, Any],
    lesion_sensitivity: Mapping[str, Any] | None,
    lesion_ppv: Mapping[str, Any] | None,
    n_images: int,
) -> str:
    """Top line of a segmentation report: pixel overlap and lesion detection."""
    text = f"Mean Dice over {count(n_images)} test images is {value_with_ci(mean_dice, percent=False)}."
    if lesion_sensitivity and is_number(lesion_sensitivity.get("value")):
        text += (
            f" {pct(lesion_sensitivity['value'])} of annotated lesions were found "
            f"({ci_text(lesion_sensitivity.get('ci95'))}), whatever type the model gave them"
        )
        if lesion_ppv and is_number(lesion_ppv.get("value")):
            text += f"; {pct(lesion_ppv['value'])} of the lesions the model drew match an annotated lesion"
        text += "."
    return text


def lesion_confusion_caption(counts: Sequence[Sequence[int]], row_labels: Sequence[str], col_labels: Sequence[str]) -> str:
    """Lesion-level confusion matrix whose last row is 'false lesion' and last column 'missed'."""
    n_types = len(row_labels) - 1
    matched = sum(int(counts[i][j]) for i in range(n_types) for j in range(n_types))
    right_type = sum(int(counts[i][i]) for i in range(n_types))
    missed = sum(int(counts[i][n_types]) for i in range(n_types))
    false = sum(int(counts[n_types][j]) for j in range(n_types))
    return (
        f"Rows: annotated lesions by type; the last row ({row_labels[-1]}) counts lesions the model drew "
        f"where none was annotated. Columns: the type the model gave; the last column ({col_labels[-1]}) "
        f"counts annotated lesions it did not find. {count(matched)} lesions were matched, "
        f"{count(right_type)} of them with the right type; {count(missed)} were missed and "
        f"{count(false)} drawn lesions had no annotated counterpart."
    )


def segmentation_data_caption(
    images_per_split: Mapping[str, int],
    lesion_counts: Mapping[str, int],
    labels: Mapping[str, str],
    grouping: str | None,
) -> str:
    """Images per split and annotated test lesions per type."""
    text = "Images per split: " + ", ".join(f"{s} {count(n)}" for s, n in images_per_split.items()) + "."
    present = {c: n for c, n in lesion_counts.items() if n > 0}
    if present:
        largest, smallest = max(present, key=present.get), min(present, key=present.get)
        text += (
            f" The test images hold {count(sum(lesion_counts.values()))} annotated lesions; the most common "
            f"type, {labels.get(largest, largest)} ({count(present[largest])}), outnumbers the rarest, "
            f"{labels.get(smallest, smallest)} ({count(present[smallest])}), "
            f"{present[largest] / present[smallest]:.1f} to 1."
        )
    if grouping:
        text += f" Splits are grouped by {grouping}."
    return text


def box_label_warning(origin: str | None) -> str | None:
    """Boxes and circles are not masks: figures computed on masks derived from them are weak."""
    if origin and origin.lower() in {"box-derived", "circle-derived"}:
        shape = "boxes" if origin.lower() == "box-derived" else "circles"
        return (
            f"Labels are {origin}: the reference masks were drawn from annotated {shape}, not traced "
            f"lesion outlines. Dice and IoU against them measure agreement with an approximation; "
            f"lesion-level counts are more trustworthy than pixel overlap."
        )
    return None


# ---------------------------------------------------------------------------------------------
# Comparison
# ---------------------------------------------------------------------------------------------
def difference_caption(
    metric_name: str,
    experiment: str,
    baseline: str,
    difference: Mapping[str, Any],
) -> str:
    """Paired bootstrap result in words; says plainly when the 95% CI contains 0."""
    diff = difference.get("difference")
    ci = difference.get("ci95")
    if not is_number(diff) or not ci or not all(is_number(v) for v in ci):
        return f"{metric_name}: the difference between {experiment} and {baseline} could not be estimated."
    lo, hi = ci
    interval = f"95% CI {signed_points(lo)} to {signed_points(hi)}"
    n = difference.get("n")
    on = f" on {count(n)} paired test images" if n else ""
    head = f"{metric_name}: {experiment} {MINUS} {baseline} = {signed_points(diff)} ({interval}){on}"
    if lo <= 0 <= hi:
        return f"{head}. Within noise: the interval contains 0, so this test set cannot tell them apart."
    better = "better" if diff > 0 else "worse"
    return f"{head}. {experiment} is {better} than {baseline}: the interval excludes 0."


ROUND_OFF = 1e-9


def within_noise(difference: Mapping[str, Any]) -> bool | None:
    """True when the 95% CI of a difference contains 0, or when its multiple-comparison-adjusted
    p-value (``p_holm``, per-class rows: one test per class) is 0.05 or more, so that a verdict of
    "better" or "worse" never disagrees with the adjusted p shown beside it; None when the CI is not
    available."""
    ci = difference.get("ci95") if difference else None
    if not ci or not all(is_number(v) for v in ci):
        return None
    # Bootstrap means of 0/1 outcomes carry float round-off (a bound of 1e-16 is a bound of 0).
    lo, hi = (0.0 if abs(v) < ROUND_OFF else v for v in ci)
    p_holm = difference.get("p_holm")
    return bool(lo <= 0 <= hi) or (is_number(p_holm) and p_holm >= 0.05)


def per_class_verdict_caption(verdicts: Sequence[tuple[str, str]], lesion_level: bool = False) -> str:
    """'Per-class sensitivity: better for Dermatofibroma (DF); worse for none; within noise for 6
    classes.' from (label, verdict) pairs."""
    if not verdicts:
        return ""
    groups: dict[str, list[str]] = {"better": [], "worse": [], "within noise": [], "n/a": []}
    for label, verdict in verdicts:
        groups.setdefault(verdict, []).append(label)
    unit = "types" if lesion_level else "classes"
    head = "Per-type lesion sensitivity" if lesion_level else "Per-class sensitivity"
    parts = [f"better for {', '.join(groups['better']) or 'none'}", f"worse for {', '.join(groups['worse']) or 'none'}"]
    if groups["within noise"]:
        parts.append(f"within noise for {count(len(groups['within noise']))} {unit}")
    if groups["n/a"]:
        parts.append(f"not estimable for {', '.join(groups['n/a'])}")
    text = f"{head}: " + "; ".join(parts) + "."
    if groups["better"] or groups["worse"]:
        text += (
            f" With {count(len(verdicts))} {unit} tested, about one interval in twenty excludes 0 by chance; "
            f"see the Holm-adjusted p-values."
        )
    return text


def grading_caption(grading: Mapping[str, Any]) -> str:
    """One line on severity grading from lesion counts, from the metrics.json ``grading`` block."""
    accuracy = grading.get("accuracy") or {}
    n, k = accuracy.get("n"), accuracy.get("k")
    if not is_number(n) or not n:
        return "No test image to grade."
    kappa = grading.get("kappa") or {}
    kappa_text = (f"quadratic-weighted kappa {kappa['value']:.2f} ({ci_text(kappa.get('ci95'), percent=False)})"
                  if is_number(kappa.get("value")) else "kappa not estimable (one grade only)")
    spearman = (grading.get("spearman") or {}).get("value")
    spearman_text = f", Spearman {spearman:.2f} between the counts" if is_number(spearman) else ""
    mae = grading.get("count_mae")
    mae_text = f"the predicted lesion count is off by {mae:.1f} lesions per image on average" if is_number(mae) else ""
    found = grading.get("found") or {}
    source = ("lesion count, calibrated on validation," if found else "lesion count")
    text = (f"The grade from the model's {source} equals the reference ({grading.get('reference', 'n/a')}) in "
            f"{count(k)} of {count(n)} images ({value_with_ci(accuracy)}); {kappa_text}")
    text += f"; {mae_text}{spearman_text}." if mae_text else "."
    found_accuracy = (found.get("accuracy") or {}).get("value")
    if is_number(found_accuracy):
        text += f" Graded from the number of lesions found, uncalibrated: {pct(found_accuracy)}."
    matrix = grading.get("confusion_matrix") or {}
    labels, counts = matrix.get("labels") or [], matrix.get("counts") or []
    misses = [(counts[i][j], i, j) for i in range(len(counts)) for j in range(len(counts[i])) if i != j and counts[i][j]]
    if misses and len(labels) == len(counts):
        worst, i, j = max(misses, key=lambda m: (m[0], -abs(m[1] - m[2])))
        text += f" Most frequent miss: {labels[i]} graded {labels[j]} ({count(worst)} image{'s' if worst != 1 else ''})."
    return text


def learning_curve_caption(n_epochs: int, score_name: str, best_epoch: int | None, has_weights: bool,
                           select: str = "best") -> str:
    """Caption of the learning curves: what is plotted and which epoch's model the report shows
    (``select``: the run's ``train.select``)."""
    text = (f"Training loss (blue) and validation {score_name} (orange) over {n_epochs} epochs. ")
    if best_epoch and select == "last":
        text += (f"The model in this report is the final one, of epoch {best_epoch} (dashed line; train.select: last): "
                 f"the validation score was recorded, not used to choose; nor was the test split.")
    elif best_epoch:
        text += (f"The model in this report is the one of epoch {best_epoch} (dashed line), chosen by the "
                 f"validation score; the test split played no part in the choice.")
    if has_weights:
        text += " Right: the per-class weights of the loss at each optimizer step."
    return text
