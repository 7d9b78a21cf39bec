"""A model that has given up on classes: the "lazy network" of the focal-loss analysis.

Under heavy imbalance, cross-entropy training can settle where the network predicts the majority
class almost everywhere and a rare class never: its accuracy looks fine and its minority recall is
zero (the "lazy" state the talk on focal loss and gradient flows in ``../shared/seeds`` shows in its
toy model). Two flags, computed once here from what the model predicted on the test split and read
by the run's report (at its top) and by the comparison (beside the experiment's name):

- **never predicted**: a class (segmentation: a lesion type) present in the test split that the
  model does not predict even once;
- **dominant class**: one class takes at least ``DOMINANT_SHARE`` (90%) of all predictions and at
  least ``DOMINANT_EXCESS`` (10 points) more than its share of the truth.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

DOMINANT_SHARE = 0.9
DOMINANT_EXCESS = 0.1


def prediction_collapse(classes: Sequence[str], support: Sequence[int], predicted: Sequence[int],
                        unit: str = "image") -> dict[str, Any]:
    """The flags above from per-class counts of the truth (``support``) and of the predictions
    (``predicted``), in ``unit`` s (images; lesions for segmentation)."""
    support, predicted = [int(n) for n in support], [int(n) for n in predicted]
    never = [c for c, s, p in zip(classes, support, predicted) if s > 0 and p == 0]
    n_true, n_pred = sum(support), sum(predicted)
    dominant = None
    if n_pred > 0 and n_true > 0:
        top = max(range(len(classes)), key=lambda i: (predicted[i], -i))
        share, true_share = predicted[top] / n_pred, support[top] / n_true
        if share >= DOMINANT_SHARE and share - true_share >= DOMINANT_EXCESS:
            dominant = {"class": classes[top], "predicted_share": share, "true_share": true_share}
    return {
        "flagged": bool(never or dominant),
        "never_predicted": never,
        "never_predicted_support": {c: s for c, s in zip(classes, support) if c in never},
        "dominant": dominant,
        "unit": unit,
        "rule": (f"flagged when a class present in the test split is never predicted, or one class takes "
                 f">= {DOMINANT_SHARE:.0%} of the predictions and >= {DOMINANT_EXCESS * 100:.0f} points more "
                 f"than its share of the truth"),
    }


def collapse_text(collapse: dict[str, Any] | None, names: dict[str, str] | None = None) -> str:
    """One sentence for a clinician, or "" when nothing is flagged."""
    if not collapse or not collapse.get("flagged"):
        return ""
    names = names or {}
    unit = collapse.get("unit", "image")
    parts = []
    if collapse["never_predicted"]:
        listed = ", ".join(f"{names.get(c, c)} ({collapse['never_predicted_support'][c]} test {unit}s)"
                           for c in collapse["never_predicted"])
        parts.append(f"never predicts {listed}")
    if collapse["dominant"]:
        d = collapse["dominant"]
        parts.append(f"calls {d['predicted_share']:.0%} of the test {unit}s {names.get(d['class'], d['class'])} "
                     f"(truly {d['true_share']:.0%})")
    return "This model " + " and ".join(parts) + ": it has given up on the classes it misses."
