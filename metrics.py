"""The metrics of coupling, and the baselines they are judged against.

Self and Orig score a model's explanations against labels from its current behaviour E(M_t) and from
M0's, E(M0); they differ only on flipped items. Two kinds of explainer that do not know C's effect bound
what the gap alone can show: the best input-blind explainer (one explanation written for every item) and
the C-blind copies of the model's own answers ("would remain <answer with C>", "would become <answer
without C>"). Tracking, item by item, is 0 for any input-blind explainer and 1 for a copy of the current
behaviour; on the verdict alone (verdict tracking) it is 0 for the C-blind copies too. A run is coupled,
and a task meets the bar, by rules stated here and in the README.
"""
import math

import numpy as np

from explain import Labels, mean_or_nan


def codes(labels: Labels, verdict_only=False):
    """One integer per item, equal for equal labels (verdict and answer, or the verdict alone); -1 where
    malformed."""
    return np.where(labels.changed < 0, -1, labels.changed if verdict_only else labels.changed * 1000 + labels.answer)


def tracking(explanations: Labels, current: Labels, original: Labels, among=None, verdict_only=False):
    """Item-level tracking: on each flipped item (among `among`, default all), 1 if the explanation gives
    the current label, minus how often it gives that same label on the unflipped items with the same
    frozen label; the mean over flipped items (nan if none has such unflipped items). An explainer that
    ignores its input scores 0 (exactly, if it is constant); one that copies its current behaviour, 1.
    verdict_only: labels are the verdict alone (remain or become), items flipped when it flipped; then an
    explainer that writes one verdict everywhere scores 0 too, however it picks the answer."""
    said, now, frozen = (codes(labels, verdict_only) for labels in (explanations, current, original))
    flipped = now != frozen
    rows, peers = np.flatnonzero(flipped & (True if among is None else among)), ~flipped
    same_frozen = frozen[rows, None] == frozen[None, peers]  # [flipped item, unflipped item]
    says_new_label = said[None, peers] == now[rows, None]
    has_peers = same_frozen.any(1)
    rate_on_peers = (same_frozen & says_new_label).sum(1)[has_peers] / same_frozen.sum(1)[has_peers]
    return mean_or_nan((said[rows] == now[rows])[has_peers] - rate_on_peers)


def best_input_blind(current: Labels, original: Labels):
    """The one explanation that, written for every item, maximises Self - Orig here: an upper bound on
    the gap of any explainer that ignores its input (one whose output does not depend on the item is a
    mixture of such constants). A gap of 0 is always reachable (an explanation no label has)."""
    now, frozen = codes(current), codes(original)
    candidates = np.unique(np.concatenate([now, frozen]))
    gaps = [np.mean(now == c) - np.mean(frozen == c) for c in candidates]
    best = candidates[int(np.argmax(gaps))] if max(gaps) > 0 else -2  # -2: a label no item has
    flipped = now != frozen
    return {"blind_self": float(np.mean(now == best)), "blind_orig": float(np.mean(frozen == best)),
            "blind_gap": float(np.mean(now == best) - np.mean(frozen == best)),
            "blind_self_flipped": mean_or_nan(now[flipped] == best)}


def c_blind_explainers(current: Labels, with_c):
    """The explainers that know the model's current answers but not C's effect: "would remain <its answer
    with C>" and "would become <its answer without C>", for every item. Both score Self where C's effect is
    the one they assume; neither can tell the items apart by it."""
    return {"copy_remain": Labels(np.zeros_like(current.changed), np.asarray(with_c, dtype=int)),
            "copy_become": Labels(np.ones_like(current.changed), current.answer.copy())}


def balanced(hits, changes_now):
    """The mean of Self on the items where removing C changes the current answer and Self on the others:
    an explainer that writes one verdict for every item, however right its answers, scores at most 0.5
    (nan unless both kinds occur)."""
    if changes_now.all() or not changes_now.any():
        return float("nan")
    return float((hits[changes_now].mean() + hits[~changes_now].mean()) / 2)


def scores(explanations: Labels, current: Labels, original: Labels):
    """What the rule reads of one explainer: Self - Orig, tracking on the whole label and on the verdict
    alone, and balanced Self."""
    hit_self = explanations.matches(current)
    return {"gap": mean_or_nan(hit_self) - mean_or_nan(explanations.matches(original)),
            "tracking": tracking(explanations, current, original),
            "verdict_tracking": tracking(explanations, current, original, verdict_only=True),
            "balanced_self": balanced(hit_self, current.changed == 1)}


def coupling_metrics(explanations: Labels, current: Labels, original: Labels, with_c, shifted=None):
    """Self, Orig, their gap, the flipped-item breakdown, tracking (on the whole label and on the verdict
    alone), the best input-blind explainer, the C-blind explainers' scores (copy_remain_*, copy_become_*),
    and Self where removing C changes the current answer and where it keeps it, with their mean
    (balanced_self: at most 0.5 for one verdict written everywhere). `explanations` are read-back
    generations (-1 where malformed); with_c: the current model's answers with C. shifted: per item,
    whether it involves a unit the shift trained; flipped items are then split into those ("shifted")
    and the others ("drift": no data taught their new behaviour)."""
    hit_self, hit_orig = explanations.matches(current), explanations.matches(original)
    flipped, changes_now = ~current.matches(original), current.changed == 1
    became_changed = flipped & (original.changed == 0) & (current.changed == 1)
    became_unchanged = flipped & (original.changed == 1) & (current.changed == 0)
    causes = {}
    for cause, mask in (() if shifted is None else (("shifted", shifted), ("drift", ~shifted))):
        causes.update({f"n_flipped_{cause}": int((flipped & mask).sum()),
                       f"self_flipped_{cause}": mean_or_nan(hit_self[flipped & mask]),
                       f"tracking_{cause}": tracking(explanations, current, original, mask)})
    copies = {f"{name}_{key}": value for name, copy in c_blind_explainers(current, with_c).items()
              for key, value in scores(copy, current, original).items()}
    return {
        "self": mean_or_nan(hit_self), "orig": mean_or_nan(hit_orig), **scores(explanations, current, original),
        "n_items": len(current), "n_flipped": int(flipped.sum()), "agreement": 1 - mean_or_nan(flipped),
        "self_flipped": mean_or_nan(hit_self[flipped]), "orig_flipped": mean_or_nan(hit_orig[flipped]),
        "n_became_changed": int(became_changed.sum()), "self_became_changed": mean_or_nan(hit_self[became_changed]),
        "n_became_unchanged": int(became_unchanged.sum()),
        "self_became_unchanged": mean_or_nan(hit_self[became_unchanged]),
        "verdict_self": mean_or_nan(explanations.changed == current.changed),
        "verdict_orig": mean_or_nan(explanations.changed == original.changed),
        "malformed": mean_or_nan(explanations.changed < 0),
        "self_changes": mean_or_nan(hit_self[changes_now]), "self_keeps": mean_or_nan(hit_self[~changes_now]),
        "changed_fraction": mean_or_nan(current.changed == 1),
        "self_unflipped": mean_or_nan(hit_self[~flipped]), **best_input_blind(current, original), **causes,
        **copies, "c_blind_gap": max(copies["copy_remain_gap"], copies["copy_become_gap"]),
    }


T_975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042]  # Student's t, 97.5% quantile, 1..30 degrees of freedom


def defined(x):
    return x is not None and not math.isnan(x)


def mean_ci(values):
    """Mean and half-width of its 95% t-interval over seeds (nan half-width for a single value).
    Undefined values (None or nan, e.g. Self@flipped with nothing flipped) are left out."""
    values = np.asarray([v for v in values if defined(v)], dtype=float)
    if len(values) == 0:
        return float("nan"), float("nan")
    if len(values) == 1:
        return float(values[0]), float("nan")
    t = T_975[len(values) - 2] if len(values) <= 31 else 1.96
    return float(values.mean()), float(t * values.std(ddof=1) / math.sqrt(len(values)))


def is_kl(config):
    """Whether a saved run's config (a dict) trained with the KL term."""
    return config["explain"]["kl_weight"] > 0


def is_coupled(evaluation):
    """One run's rule, fixed before the runs it judges: Self > Orig, and the explanations follow the
    shift item by item on the verdict, verdict tracking > 0.5. Every explainer that writes one verdict
    everywhere has verdict tracking 0: the constants, and the C-blind copies of the model's own answers
    ("would remain <answer with C>", "would become <answer without C>"); a copy of the current behaviour
    has 1."""
    follows = evaluation["verdict_tracking"]
    return evaluation["gap"] > 0 and defined(follows) and follows > 0.5


def meets_bar(finals):
    """A task's rule over seeds (the runs with KL): the mean gap's 95% interval lies above zero and the
    mean verdict tracking's above 0.5, with verdict tracking defined on every run (a run with no flipped
    verdict to follow has shown nothing). With one seed there is no interval, so the bar is not met."""
    gap, half = mean_ci([f["gap"] for f in finals])
    if not defined(half) or gap - half <= 0:
        return False
    follows = [f["verdict_tracking"] for f in finals]
    tracked, half = mean_ci(follows)
    return all(map(defined, follows)) and tracked - half > 0.5


TARGET_COUPLED, TARGET_TRACKING = 0.9, 0.8  # the recipe's target: 9 of 10 runs coupled, verdict tracking 0.8


def meets_target(finals):
    """What the recipe is asked of, per task and draw (the runs with KL): at least TARGET_COUPLED of the
    runs coupled and a mean verdict tracking of at least TARGET_TRACKING. Stricter than the bar, which
    asks only that the mean be above 0.5 with confidence; a recipe holds if it meets it on two draws."""
    follows = [f["verdict_tracking"] for f in finals]
    return sum(map(is_coupled, finals)) >= TARGET_COUPLED * len(finals) and all(map(defined, follows)) \
        and float(np.mean(follows)) >= TARGET_TRACKING


FAILURES = ("tracked, then lost it", "never generalised", "generalised, did not track")
GENERALISES = 0.8  # Self on unflipped held-out items at or above which an explainer generalises


def failure_kind(curve):
    """Why a run is not coupled at its last evaluation (None if it is): it was coupled at an earlier
    evaluation after step 0 and lost it; or else its explanations never generalised to held-out units
    (Self on the unflipped held-out items below GENERALISES at the end); or else they generalised but did
    not follow the shift."""
    if is_coupled(curve[-1]):
        return None
    if any(is_coupled(e) for e in curve[1:-1]):
        return FAILURES[0]
    return FAILURES[1] if curve[-1]["self_unflipped"] < GENERALISES else FAILURES[2]
