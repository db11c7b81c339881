"""The markdown reports, built from the results passed in (figures.py draws their figures): nothing here
runs a model or chooses files.

A result is the dict eval.run_coupling returns (and saves): its config, provenance, the curve of every
evaluation, and the final one. Reports group results by task and by whether the KL term was on.
"""
import math
import os

import numpy as np

from metrics import (FAILURES, GENERALISES, TARGET_COUPLED, TARGET_TRACKING, defined, is_coupled, is_kl, mean_ci,
                     meets_bar, meets_target)
from figures import (by_value, number, plot_curves, plot_flipped_runs, plot_gaps, plot_patching, plot_runs, plot_sweep,
                     value_label)
from model import machine
from patching import mean_profiles
from train import atomic_write


# ---------------------------------------------------------------------------------------------------------
# Shared pieces

def write_text(text, path):
    atomic_write(path, text.encode())


def markdown_table(header, rows):
    """A markdown table from a header row and rows of cells (each cell already text)."""
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(map(str, row)) + " |" for row in rows])


def fmt(values, digits=3, signed=False):
    """Mean ± 95% interval over seeds, as text ("n/a" when nothing is defined), followed by "[n of N]"
    when the mean covers only the n runs where the value is defined."""
    mean, half = mean_ci(values)
    if math.isnan(mean):
        return "n/a"
    text = f"{mean:+.{digits}f}" if signed else f"{mean:.{digits}f}"
    covered = sum(map(defined, values))
    return (text if math.isnan(half) else f"{text} ± {half:.{digits}f}") + \
        ("" if covered == len(values) else f" [{covered} of {len(values)}]")


def group(results):
    """{(task, "kl" | "nokl"): [results sorted by seed]}"""
    groups = {}
    for r in results:
        groups.setdefault((r["config"]["task"], "kl" if is_kl(r["config"]) else "nokl"), []).append(r)
    return {k: sorted(v, key=lambda r: r["config"]["seed"]) for k, v in sorted(groups.items())}


def machines(results):
    return "; ".join(sorted({machine(r["provenance"]) for r in results}))


def failures(runs):
    """{how a run failed: [its seeds]} over the runs not coupled at the end (metrics.failure_kind, saved
    with each run)."""
    kinds = {}
    for r in runs:
        if not is_coupled(r["final"]):
            kinds.setdefault(r["failure"], []).append(r["config"]["seed"])
    return kinds


# ---------------------------------------------------------------------------------------------------------
# Tables

def main_table(groups):
    """The final metrics per task and KL regime: mean ± 95% interval over seeds."""
    rows = []
    for (task, regime), runs in groups.items():
        col = lambda key, **kw: fmt([r["final"].get(key, math.nan) for r in runs], **kw)
        rows.append([task, "yes" if regime == "kl" else "no", len(runs), col("self"), col("orig"),
                     f"**{col('gap', signed=True)}**", col("blind_gap", signed=True), col("c_blind_gap", signed=True),
                     col("verdict_tracking", digits=2), col("n_flipped", digits=0), col("self_flipped", digits=2),
                     col("orig_flipped", digits=2), col("agreement", digits=2), col("malformed", digits=3),
                     col("task_accuracy", digits=3), col("shift_learned", digits=2)])
    return markdown_table(["task", "KL", "seeds", "Self", "Orig", "Self - Orig", "input-blind gap", "C-blind gap",
                           "verdict tracking", "flipped items", "Self@flipped",
                           "Orig@flipped", "agreement", "malformed", "task accuracy", "shift learned"], rows)


SUMMARY_HEADER = ("seeds", "Self - Orig", "input-blind gap", "C-blind gap", "tracking", "verdict tracking",
                  "balanced Self")


def summary_cells(runs):
    """SUMMARY_HEADER's cells of runs (mean ± 95% interval): the cells every table of verdicts shares.
    The rule reads the gap and verdict tracking; the best input-blind and C-blind explainers' gaps and
    the exact tracking (which credits a copy of the model's own answer) stand beside them."""
    col = lambda key, **kw: fmt([r["final"].get(key, math.nan) for r in runs], **kw)
    return [len(runs), col("gap", signed=True), col("blind_gap", signed=True), col("c_blind_gap", signed=True),
            col("tracking", digits=2), col("verdict_tracking", digits=2), col("balanced_self", digits=2)]


def coupled_count(runs):
    return f"{sum(is_coupled(r['final']) for r in runs)} of {len(runs)}"


def bar_text(runs, regime):
    return ("met" if meets_bar([r["final"] for r in runs]) else "not met") if regime == "kl" else ""


def bold_gap(cells):
    return [cells[0], f"**{cells[1]}**", *cells[2:]]


def verdict_table(groups):
    """The main result in short: per task and KL regime, the gap beside the best input-blind explainer's,
    tracking, the runs coupled and whether the bar is met (the README's table)."""
    rows = [[task, "yes" if regime == "kl" else "no", *bold_gap(summary_cells(runs)), coupled_count(runs),
             bar_text(runs, regime)] for (task, regime), runs in groups.items()]
    return markdown_table(["task", "KL", *SUMMARY_HEADER, "runs coupled", "the bar"], rows)


def seed_table(groups):
    """Every seed's final numbers, including the flipped items split by direction."""
    rows = []
    for (task, regime), runs in groups.items():
        for r in runs:
            f, m0 = r["final"], r["m0"]
            probes = r.get("probes") or {}  # only the KL runs are probed
            generated, forced = (probes.get(f"verdict flipped: verdict {kind}") for kind in ("generated", "forced"))
            verdicts = (f"{forced['n']}, {number(generated['accuracy'], '.2f')} / {number(forced['accuracy'], '.2f')}"
                        if forced else "n/a")
            rows.append([task, "yes" if regime == "kl" else "no", r["config"]["seed"],
                         f"{m0['accuracy_with_c']:.3f} / {m0['accuracy_without_c']:.3f}", f"{f['self']:.3f}",
                         f"{f['orig']:.3f}", f"{f['gap']:+.3f}", f["n_flipped"], number(f["self_flipped"], ".2f"),
                         f"{f['n_became_changed']}, {number(f['self_became_changed'], '.2f')}",
                         f"{f['n_became_unchanged']}, {number(f['self_became_unchanged'], '.2f')}", verdicts,
                         f"{r['baseline']['self']:.3f}", f"{r['seconds']:.0f}"])
    return markdown_table(["task", "KL", "seed", "M0 acc. (with C / without C)", "Self", "Orig", "gap", "flipped",
                           "Self@flipped", "became changed: n, Self", "became unchanged: n, Self",
                           "verdict flipped: n, generated / forced", "untrained Self", "seconds"], rows)


def patching_table(results):
    """Mean effect of each component on the answer and on the explanation, per task."""
    profiles = mean_profiles(results)
    names = next(iter(profiles.values()))[0]
    rows = []
    for task, (_, behaviour_mean, explanation_mean, r, runs) in profiles.items():
        items = np.mean([run["patching"]["n_items"] for run in runs])
        changed = np.mean([run["patching"]["n_answer_changed"] for run in runs])
        count = f"{items:.0f} ({number(changed, '.0f')})"
        for kind, mean in (("answer", behaviour_mean), ("explanation", explanation_mean)):
            rows.append([task, len(runs), count, kind, *(number(v, "+.2f") for v in mean), number(r, "+.2f")])
    return markdown_table(["task", "runs with items", "items per run (of answer changed)", "effect on", *names,
                           "correlation (attn/mlp)"], rows)


def directions_table(results):
    """Per task, shift direction and KL regime: the gap beside the best input-blind explainer's, tracking
    (on every flipped item, and on the drift items alone), the runs coupled and whether the bar is met."""
    groups = {}
    for r in sorted(results, key=lambda r: r["config"]["seed"]):
        c = r["config"]
        groups.setdefault((c["task"], c["shift"], "kl" if is_kl(c) else "nokl"), []).append(r)
    rows = []
    for (task, shift, regime), runs in sorted(groups.items()):
        col = lambda key, **kw: fmt([r["final"].get(key, math.nan) for r in runs], **kw)
        rows.append([task, shift, "yes" if regime == "kl" else "no", *bold_gap(summary_cells(runs)),
                     col("blind_self_flipped", digits=2),
                     f"{col('tracking_drift', digits=2)} ({col('n_flipped_drift', digits=0)})",
                     coupled_count(runs), bar_text(runs, regime)])
    return markdown_table(["task", "shift", "KL", *SUMMARY_HEADER, "input-blind Self@flipped",
                           "tracking on drift items (n)", "runs coupled", "the bar"], rows)


def diagnosis_table(groups):
    """Per task, the analysed explainers (with KL): malformed explanations by kind, summed over seeds, and
    the gap and tracking read leniently beside the strict ones."""
    rows = []
    for (task, regime), runs in groups.items():
        runs = [r for r in runs if r.get("diagnosis")]
        if regime != "kl" or not runs:
            continue
        kinds = {}
        for r in runs:
            for kind, n in r["diagnosis"]["malformed_kinds"].items():
                kinds[kind] = kinds.get(kind, 0) + n
        rows.append([task, len(runs), ", ".join(f"{kind} {n}" for kind, n in sorted(kinds.items())) or "none",
                     fmt([r["final"]["gap"] for r in runs], signed=True),
                     fmt([r["diagnosis"]["lenient_gap"] for r in runs], signed=True),
                     fmt([r["final"]["tracking"] for r in runs], digits=2),
                     fmt([r["diagnosis"]["lenient_tracking"] for r in runs], digits=2)])
    return markdown_table(["task", "seeds", "malformed explanations, by kind (all seeds)", "Self - Orig",
                           "read leniently", "tracking", "read leniently"], rows) if rows else ""


def second_draw_text(runs, first):
    """The main suite's verdicts on a second draw of the same seeds, then both draws against the recipe's
    target ("" without a second draw)."""
    if not runs:
        return ""
    threads = sorted({r["provenance"]["threads"] for r in runs})
    return f"""
The same seeds again with {' or '.join(map(str, threads))} threads per run, which round differently: a second
draw of every run, M0 included (`make reproduce THREADS={threads[0]}`), on {machines(runs)}.

{verdict_table(group(runs))}

{target_text([first, runs])}
"""


TARGET_TEXT = (f"The recipe's target, per task and draw (runs with KL): at least {TARGET_COUPLED:.0%} of the runs "
               f"coupled and a mean verdict tracking of at least {TARGET_TRACKING}; a recipe holds where it meets "
               f"it on both draws.")


def target_text(draws):
    """The recipe's target in words, the machines of the draws and target_table (REPORT.md and README)."""
    return f"{TARGET_TEXT} Computed on {machines([r for runs in draws for r in runs])}.\n\n{target_table(draws)}"


def target_table(draws):
    """Per task and draw (the runs of one thread count, with KL), the runs against the recipe's target
    (metrics.meets_target): runs coupled, verdict tracking, the failures counted by kind (the README's)."""
    rows, grouped = [], [group(draw) for draw in draws]
    for task in sorted({r["config"]["task"] for r in draws[0]}):
        for runs in filter(None, (groups.get((task, "kl")) for groups in grouped)):
            threads = "/".join(map(str, sorted({r["provenance"]["threads"] for r in runs})))
            kinds, finals = failures(runs), [r["final"] for r in runs]
            rows.append([task, threads, len(runs), coupled_count(runs), fmt([f["verdict_tracking"] for f in finals], 2),
                         " / ".join(str(len(kinds.get(kind, []))) for kind in FAILURES),
                         "met" if meets_target(finals) else "**not met**"])
    return markdown_table(["task", "threads per run", "seeds", "runs coupled", "verdict tracking",
                           f"failures: {' / '.join(FAILURES)}", "the target"], rows)


def failures_table(groups):
    """Per task, the runs with KL not coupled at the end, counted by how they failed (with their seeds)."""
    rows = []
    for task, runs in ((task, runs) for (task, regime), runs in groups.items() if regime == "kl"):
        kinds = failures(runs)
        cell = lambda kind: (f"{len(kinds[kind])} (seed{'s' * (len(kinds[kind]) > 1)} {', '.join(map(str, kinds[kind]))})"
                             if kind in kinds else "0")
        rows.append([task, len(runs), sum(map(len, kinds.values())), *map(cell, FAILURES)])
    return markdown_table(["task", "seeds", "not coupled", *FAILURES], rows)


# ---------------------------------------------------------------------------------------------------------
# Sweeps: one knob varied (suites.SWEEPS describes each)

EXTRA_NAMES = {"orig_other": "Orig-other", "gap_other": "Self - Orig-other",
               "family_agreement": "labels agree across families", "shift_learned": "shift learned",
               "explained_self": "explained words: Self", "untrained_self": "untrained model: Self",
               "balanced_self": "Self, balanced over verdicts",
               "unlabelled_balanced_self": "learnt, unlabelled words: balanced Self",
               "untrained_unlabelled_balanced_self": "untrained: unlabelled words' balanced Self",
               "explained_balanced_self": "explained words: balanced Self"}
UNTRAINED = "untrained_"  # a sweep's own metric named so is read at step 0, before explanation training


def extra_metric(result, key):
    """A sweep's own metric of one run: at its final evaluation, or at step 0 (the untrained model)."""
    evaluation = result["baseline"] if key.startswith(UNTRAINED) else result["final"]
    return evaluation.get(key.removeprefix(UNTRAINED), float("nan"))


def sweep_table(sweep, results):
    """Per task and value: agreement, flipped items, Self and Orig, the cells every table of verdicts
    shares (the gap beside the input-blind gap, tracking), runs coupled, and the sweep's own metrics."""
    rows = []
    for task, values in by_value(sweep, results).items():
        for value, runs in values.items():
            col = lambda key, **kw: fmt([r["final"].get(key, float("nan")) for r in runs], **kw)
            rows.append([task, value_label(sweep.knob, value), col("agreement", digits=2), col("n_flipped", digits=0),
                         col("self"), col("orig"), *bold_gap(summary_cells(runs)), coupled_count(runs),
                         col("malformed", digits=3),
                         *(fmt([extra_metric(r, e) for r in runs], signed=e.startswith("gap")) for e in sweep.extra)])
    return markdown_table(["task", sweep.label, "agreement", "flipped items", "Self", "Orig", *SUMMARY_HEADER,
                           "runs coupled", "malformed",
                           *(EXTRA_NAMES[e] for e in sweep.extra)], rows)


NEW_BEHAVIOUR = ("held_out_arms", "held_out_query", "word_diversity")  # the sweeps of the new-behaviour table

NEW_BEHAVIOUR_TEXT = """The paper teaches a nonsense trigger only by behaviour fine-tuning; its explanations are 79.8%
accurate. Here `--shift trigger` teaches `blorp` (every hint answer becomes the last) by the shift alone,
beside K - 1 labelled nonsense words and 4 that M0 learns with no label (`features.py`; tests keep blorp
out of M0's data and both out of the explanation objective). The rule, fixed before the runs: **balanced
Self**'s 95% interval over 10 seeds above 0.5 (bold; one verdict written everywhere reaches at most 0.5).
Arms, K = 8: **a** the unlabelled words, no shift; **b** blorp, the shift in every weight; **c** in
blorp's embedding row only; **d** blorp with a labelled word's effect; then the query's answer slot
(sweep held_out_query) and 8 to 256 labelled words (sweep word_diversity). Labelled words: Self of their
explanations on held-out units. Untrained: M0's own explanations (step 0)."""


def held_out_section(sweeps, seeds=10):
    """The new-behaviour table of the sweeps in NEW_BEHAVIOUR, with what it shows; "" where none has a
    value run on `seeds` seeds."""
    table = held_out_table([sweep for sweep in sweeps if sweep[0] in NEW_BEHAVIOUR], seeds)
    return f"## New behaviour: a feature no label names\n\n{NEW_BEHAVIOUR_TEXT}\n\n{table}\n" if table else ""


def held_out_table(experiments, seeds=10):
    """The new-behaviour table: per experiment ([(name, sweep, results)]) and value run on at least
    `seeds` seeds (what the rule judges), balanced Self of blorp and of the words M0 learnt that no label
    covers, each bold where its 95% interval lies above 0.5 (the rule), the labelled words' Self, and the
    learnt words' balanced Self before training; "" where no value has `seeds` seeds."""
    rows = []
    for name, sweep, results in experiments:
        for task, values in by_value(sweep, results).items():
            for value, runs in ((v, runs) for v, runs in values.items() if len(runs) >= seeds):
                cells = [[extra_metric(r, key) for r in runs] for key in ("balanced_self", "unlabelled_balanced_self")]
                rows.append([f"{name} ({task})", value_label(sweep.knob, value), len(runs), *map(rule_cell, cells),
                             fmt([extra_metric(r, "explained_self") for r in runs], digits=2),
                             fmt([extra_metric(r, "untrained_unlabelled_balanced_self") for r in runs], digits=2)])
    return markdown_table(["experiment", "setting", "seeds", "blorp: balanced Self", "learnt, unlabelled words: "
                           "balanced Self", "labelled words: Self", "untrained: learnt words' balanced Self"],
                          rows) if rows else ""


def rule_cell(values):
    """Mean ± 95% interval over seeds, bold where the interval lies above 0.5 (the held-out feature's rule)."""
    mean, half = mean_ci(values)
    return f"**{fmt(values, digits=2)}**" if defined(half) and mean - half > 0.5 else fmt(values, digits=2)


def fixed_text(sweep):
    """The settings every run of a sweep sets, in words ("" if none)."""
    settings = ", ".join(f"`{name}` {value}" for name, value in sweep.fixed)
    return f"set in every run: {settings}; " if settings else ""


def sweep_section(name, sweep, results, report_dir, figures_dir):
    figure = os.path.join(figures_dir, f"{name}.png")
    plot_sweep(sweep, results, figure)
    return f"""
## Sweep: {name.replace("_", " ")}

{sweep.question} Varied: {sweep.label} (`{sweep.knob}`); {fixed_text(sweep)}everything else as in the main result's KL runs.{sweep.earlier_recipe(results)}
Command: `python experiments.py sweep {name}`. The paper: {sweep.paper}.

{sweep_table(sweep, results)}

![{name}]({os.path.relpath(figure, report_dir)})
"""


RULE_TEXT = ("A run is coupled when Self > Orig and verdict tracking > 0.5; the bar (per task, runs with KL): "
             "the 95% interval of the mean Self - Orig lies above zero and that of the mean verdict tracking "
             "above 0.5, with verdict tracking defined on every run.")


MEASURES_TEXT = ("Input-blind gap: the best Self - Orig of one explanation written for every item. C-blind gap: "
                 "the better of two explainers that know the model's answers but not C's effect, \"would remain "
                 "<answer with C>\" and \"would become <answer without C>\" everywhere. Tracking: on flipped "
                 "items, giving the current label minus giving it on unflipped items with the same frozen label "
                 "(0 for any input-blind explainer, 1 for a copy of the current behaviour); verdict tracking: the "
                 "same on the verdict alone (remain or become), 0 for both C-blind explainers too. Balanced Self: "
                 "the mean of Self where removing C changes the current answer and where it keeps it (at most 0.5 "
                 "for one verdict written everywhere). [n of N]: the mean covers the n runs where it is defined.")


# ---------------------------------------------------------------------------------------------------------
# The report

def main_sections(results, second_draw, figure, rel):
    """The main result's first sections of the report (its figures drawn by figure(kind), linked by
    rel(path)): the verdicts on both draws, the curves and the failures."""
    groups, cfg = group(results), results[0]["config"]
    plot_curves(groups, figure("curves"))
    plot_gaps(groups, figure("gap"))
    plot_runs({f"{task}, with KL": runs for (task, regime), runs in groups.items() if regime == "kl"},
              figure("shift"))
    plot_flipped_runs(groups, figure("flipped_runs"))
    return f"""Every number is the final evaluation (the last step), decided before looking; ± is the 95% t-interval
over seeds. Self and Orig are exact-match accuracies (verdict and counterfactual answer) of the model's
generated explanations on {cfg['n_eval']} held-out counterfactual pairs, against labels from its current
behaviour (Self) and from M0's behaviour (Orig, the kind of labels it was trained on).

## Main result

{verdict_table(groups)}

{RULE_TEXT} {MEASURES_TEXT}
{second_draw_text(second_draw, results)}
{main_table(groups)}

![Self and Orig over training]({rel(figure("curves"))})

Lines: the mean over seeds; bands: its 95% interval. Below, every seed's final gap and Self@flipped is a dot.

![Final gap and Self on flipped items]({rel(figure("gap"))})

Concurrent post-training (with KL): the shift is learnt within the first evaluations, the frozen labels
then describe a fraction "agreement" of the current behaviour, and no new label is ever given; do the
explanations of the flipped items follow the shift?

![Explanations during the shift]({rel(figure("shift"))})

Every run, with KL (green: coupled at the end by the rule above; red: not). A run that fails at the end
either followed the shift at an earlier evaluation and lost it, or never generalised to held-out units
(Self on their unflipped items below {GENERALISES}), or generalised but never followed the shift:

{failures_table(groups)}

![Self@flipped and Orig@flipped of every run]({rel(figure("flipped_runs"))})
"""


def detail_sections(results, directions, figure, rel):
    """The main result's other sections: the shift directions beside it, the malformed explanations,
    activation patching and every seed."""
    groups = group(results)
    return f"""## Shift directions, against an explainer that ignores its input

The main result's shift reduces a behaviour (hint, refusal: `reduce`) or flips deeds (judgement: `flip`);
`python experiments.py directions` runs the others on hint and refusal: `acquire` (a known answer is
forgotten; a new over-refusal) and `both`. {MEASURES_TEXT} Tracking on drift items: on items flipped
though the shift never trained their units (no data taught the new behaviour). {RULE_TEXT}

{directions_table([*results, *directions])}

## Malformed explanations

The final explainers' malformed explanations (each counts as wrong) by kind, and the same explanations
read leniently (the first verdict word and answer anywhere): a diagnostic of format failures only; every
other number reads strictly.

{diagnosis_table(groups) or "No explainer was diagnosed."}
{circuits_section([r for r in results if is_kl(r["config"])], figure("patching"), rel)}
## Every seed

"Became changed": flipped items where removing C did not change M0's answer but now does; "became
unchanged": the reverse. "Verdict flipped" (KL runs): the same two kinds of item, scored on the verdict
alone, as generated (malformed counts as wrong) and as a forced choice between "remain" and "become"
after the query and " would" (never malformed): near 0.5 forced, the explainer does not know the new
verdict; forced well above generated, it knows but does not write it well. "Untrained Self": M0's own
explanations before explanation training (step 0).

{seed_table(groups)}
"""


def write_report(results, path, figures_dir, prefix="main", sweeps=(), about="", compared="", command="",
                 directions=(), second_draw=()):
    """Figures and a markdown report of the main experiment's results; directions: the other shift
    directions' results, tabled beside the main ones; sweeps: [(name, Sweep, results)] appended as
    sections, after the held-out feature's table; compared: a comparison (above) put first; about: where
    and why the runs were made; second_draw: the main suite's runs again with another thread count, tabled
    beside the first draw."""
    report_dir = os.path.dirname(os.path.abspath(path))
    rel = lambda p: os.path.relpath(p, report_dir)
    figure = lambda kind: os.path.join(figures_dir, f"{prefix}_{kind}.png")
    every = list(results) + list(second_draw) + list(directions) + [r for _, _, swept in sweeps for r in swept]
    parts = [f"# Introspective coupling: results\n\n{about}Generated by `{command}` from {len(every)} result files."]
    if compared:
        parts.append(f"## Your numbers beside the reference\n\n{compared}")
    if results:
        parts += [main_sections(results, second_draw, figure, rel), detail_sections(results, directions, figure, rel)]
    if new_behaviour := held_out_section(sweeps):
        parts.append(new_behaviour)
    for name, sweep, swept in sweeps:
        parts.append(sweep_section(name, sweep, swept, report_dir, figures_dir))
    prov = every[0]["provenance"]
    commits = sorted({r["provenance"]["git_commit"][:10] for r in every})
    threads = ", ".join(map(str, sorted({r["provenance"]["threads"] for r in every})))
    parts.append(f"""## Provenance

Commits: {', '.join(commits)}; Python {prov['python']}, torch {prov['torch']}, numpy {prov['numpy']},
tiktoken {prov['tiktoken']}; threads per run: {threads}; {prov['platform']}. Computed on: {machines(every)}.
Each result file holds its full config.
""")
    write_text("\n\n".join(part.strip() for part in parts) + "\n", path)


def circuits_section(runs, figure, rel):
    """Activation patching between x and x\\C in the final explainers (patching.py), if measured."""
    runs = [r for r in runs if r.get("patching")]
    if not runs:
        return ""
    if not mean_profiles(runs):
        return ("\n## Shared circuits: activation patching\n\nNo final explainer has a held-out item where removing "
                "C changes both the answer and the explanation's verdict, so there is nothing to patch.\n")
    plot_patching(runs, figure)
    return f"""
## Shared circuits: activation patching

Do the answer and the explanation of it depend on the same components? In each final explainer (with KL),
on the held-out items where removing C changes both the answer and the explanation's verdict (a run with
no such item has no profile and is left out), one component's output (attention or MLP
of a layer, or the residual stream after it) is copied from the run without C into the run with C, at the
positions of the shared suffix (the answer slot; the explanation query and " would"). Effect: the fraction
of the change in the answer's logit difference (or in logit(become) - logit(remain)) that this one patch
reproduces; 1 for the last residual stream by construction. Caveat: training never asked for an
explanation of an input without C, so the source run of the explanation patch is off its training
distribution.

{patching_table(runs)}

![Activation patching]({rel(figure)})
"""
