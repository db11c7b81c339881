"""Figures and markdown, built from the results passed in: nothing here runs a model or chooses files.

A result is the dict eval.run_coupling returns (and saves): its config, provenance, the curve of every
evaluation, and the final one. Reports group results by task and by whether the KL term was on.
"""
import math
import os

import numpy as np

from eval import defined, is_coupled, is_kl, mean_ci, meets_bar
from model import machine
from patching import mean_profiles
from train import atomic_write


# ---------------------------------------------------------------------------------------------------------
# Shared pieces

def pyplot():
    """matplotlib's pyplot on a file-only backend, imported only when a figure is drawn."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path):
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110))
    pyplot().close(fig)


def write_text(text, path):
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    atomic_write(path, write)


def markdown_table(header, rows):
    """A markdown table from a header row and rows of cells (each cell already text)."""
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(map(str, row)) + " |" for row in rows])


def fmt(values, digits=3, signed=False):
    """Mean ± 95% interval over seeds, as text ("n/a" when nothing is defined)."""
    mean, half = mean_ci(values)
    if math.isnan(mean):
        return "n/a"
    text = f"{mean:+.{digits}f}" if signed else f"{mean:.{digits}f}"
    return text if math.isnan(half) else f"{text} ± {half:.{digits}f}"


def number(x, spec):
    return format(x, spec) if defined(x) else "n/a"


def group(results):
    """{(task, "kl" | "nokl"): [results sorted by seed]}"""
    groups = {}
    for r in results:
        groups.setdefault((r["config"]["task"], "kl" if is_kl(r["config"]) else "nokl"), []).append(r)
    return {k: sorted(v, key=lambda r: r["config"]["seed"]) for k, v in sorted(groups.items())}


def machines(results):
    return "; ".join(sorted({machine(r["provenance"]) for r in results}))


KL_STYLE = {"kl": ("-", "with KL"), "nokl": ("--", "without KL")}


# ---------------------------------------------------------------------------------------------------------
# Figures

def plot_curves(groups, path):
    """Self and Orig over explanation-training steps, one panel per task: mean over seeds, and its 95%
    interval as a band (the spread of single runs is in the gap figure's dots)."""
    plt = pyplot()
    tasks = sorted({task for task, _ in groups})
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.2 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for regime, (style, label) in KL_STYLE.items():
            runs = groups.get((task, regime), [])
            if not runs:
                continue
            steps = [p["step"] for p in runs[0]["curve"]]
            for metric, color in (("self", "tab:blue"), ("orig", "tab:orange")):
                values = np.array([[p[metric] for p in r["curve"]] for r in runs])
                mean, half = np.array([mean_ci(values[:, i]) for i in range(len(steps))]).T
                ax.plot(steps, mean, style, color=color, label=f"{metric.capitalize()}, {label}")
                ax.fill_between(steps, mean - half, mean + half, color=color, alpha=0.15)
        ax.set_title(f"{task} ({len(groups.get((task, 'kl'), []))} seeds)")
        ax.set_xlabel("explanation-training step")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("explanation accuracy (exact match)")
    axes[0][-1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    save_figure(fig, path)


def plot_runs(panels, path):
    """Curves over explanation-training steps, one panel per setting ({title: runs}), mean over its
    runs: Self and Orig, the same on flipped items, the label-behaviour agreement and how far the shift
    objective's current targets are learnt; dotted lines where shift phases start (a sharp shift starts,
    a gradual one's first and last groups join, an oscillating one shifts back)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels) + 1.6, 3.6), squeeze=False)
    for ax, (title, runs) in zip(axes[0], panels.items()):
        steps = [p["step"] for p in runs[0]["curve"]]
        for metric, color, style, label in (("self", "tab:blue", "-", "Self"), ("orig", "tab:orange", "-", "Orig"),
                                            ("self_flipped", "tab:blue", "--", "Self@flipped"),
                                            ("orig_flipped", "tab:orange", "--", "Orig@flipped"),
                                            ("agreement", "tab:gray", "-", "agreement"),
                                            ("shift_learned", "black", ":", "shift targets learnt")):
            values = np.array([[np.nan if p[metric] is None else p[metric] for p in r["curve"]] for r in runs])
            defined_at = ~np.isnan(values).all(0)
            ax.plot(np.array(steps)[defined_at], np.nanmean(values[:, defined_at], 0), style, color=color,
                    marker=".", label=label)
        starts = runs[0]["data"]["shift_phase_starts"]
        for start in starts if len(starts) <= 2 else (starts[0], starts[-1]):
            ax.axvline(start, color="black", lw=0.6, ls=":")
        ax.set_title(f"{title} ({len(runs)} run{'s' if len(runs) > 1 else ''})", fontsize=9)
        ax.set_xlabel("explanation-training step")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1, 0.5))
    fig.tight_layout()
    save_figure(fig, path)


def lost_coupling(runs):
    """(seeds not coupled at the end, those of them that were coupled at an earlier evaluation): does a
    failed run never follow the shift, or follow it and lose it?"""
    failed = [r for r in runs if not is_coupled(r["final"])]
    return ([r["config"]["seed"] for r in failed],
            [r["config"]["seed"] for r in failed if any(is_coupled(p) for p in r["curve"][:-1])])


def plot_flipped_runs(groups, path):
    """Self@flipped (top) and Orig@flipped (bottom) over explanation training for every run with KL, one
    column per task: green where the run is coupled at the end, red where it is not. A failed run whose
    Orig@flipped climbs has come to explain its flipped items by the frozen labels' rule."""
    plt = pyplot()
    tasks = sorted({task for task, regime in groups if regime == "kl"})
    fig, axes = plt.subplots(2, len(tasks), figsize=(4.2 * len(tasks), 5.6), squeeze=False, sharex=True)
    for column, task in enumerate(tasks):
        runs = groups[(task, "kl")]
        coupled_at_end = [is_coupled(r["final"]) for r in runs]
        for ax, metric in zip(axes[:, column], ("self_flipped", "orig_flipped")):
            for r, coupled in zip(runs, coupled_at_end):
                points = [p for p in r["curve"] if p[metric] is not None]
                ax.plot([p["step"] for p in points], [p[metric] for p in points], lw=0.8, alpha=0.6,
                        color="tab:green" if coupled else "tab:red", zorder=2 if coupled else 3)  # failures on top
            ax.axhline(0.5, color="black", lw=0.6, ls=":")
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
        axes[0, column].set_title(f"{task}: {sum(coupled_at_end)} of {len(runs)} runs coupled at the end", fontsize=9)
        axes[1, column].set_xlabel("explanation-training step")
    axes[0, 0].set_ylabel("Self@flipped")
    axes[1, 0].set_ylabel("Orig@flipped")
    fig.tight_layout()
    save_figure(fig, path)


def plot_gaps(groups, path):
    """Final Self - Orig (with the best input-blind explainer's gap as a red tick), tracking and Self on
    flipped items per task, with and without KL: mean, 95% interval over seeds, and every seed as a dot."""
    plt = pyplot()
    tasks = sorted({task for task, _ in groups})
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for ax, metric, title in ((axes[0], "gap", "Self - Orig (red: input-blind)"), (axes[1], "tracking", "tracking"),
                              (axes[2], "self_flipped", "Self on flipped items")):
        for offset, (regime, color) in zip((-0.18, 0.18), (("kl", "tab:green"), ("nokl", "tab:gray"))):
            for i, task in enumerate(tasks):
                finals = [r["final"] for r in groups.get((task, regime), [])]
                values = [f.get(metric, math.nan) for f in finals]
                mean, half = mean_ci(values)
                if math.isnan(mean):
                    continue
                ax.bar(i + offset, mean, width=0.34, color=color, alpha=0.7,
                       label=KL_STYLE[regime][1] if i == 0 else None)
                if not math.isnan(half):
                    ax.errorbar(i + offset, mean, yerr=half, color="black", capsize=4)
                ax.scatter([i + offset] * len(values), values, color="black", s=10, zorder=3)
                blind = mean_ci([f.get("blind_gap", math.nan) for f in finals])[0]
                if metric == "gap" and not math.isnan(blind):
                    ax.hlines(blind, i + offset - 0.17, i + offset + 0.17, color="tab:red", lw=2, zorder=4)
        ax.axhline(0 if metric == "gap" else 0.5, color="black", lw=0.8, ls="-" if metric == "gap" else ":")
        if metric != "gap":
            ax.set_ylim(-0.05 if metric == "self_flipped" else -0.3, 1.05)
        ax.set_xticks(range(len(tasks)), tasks)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    save_figure(fig, path)


def plot_patching(results, path):
    """Grouped bars per component, behaviour vs explanation effect, one panel per task: the mean over
    seeds with each seed as a dot; each title gives the correlation of the two mean effect profiles.
    results: run result dicts holding "patching" (as from patching_effects; null read back as nan)."""
    plt = pyplot()
    profiles = mean_profiles(results)
    if not profiles:
        raise ValueError("no result holds patching effects; nothing to plot")
    fig, axes = plt.subplots(len(profiles), 1, figsize=(10, 3.2 * len(profiles)), squeeze=False)
    for ax, (task, (names, behaviour_mean, explanation_mean, r, runs)) in zip(axes[:, 0], profiles.items()):
        x = np.arange(len(names))
        for offset, kind, mean, color in ((-0.2, "behaviour", behaviour_mean, "tab:blue"),
                                          (0.2, "explanation", explanation_mean, "tab:orange")):
            ax.bar(x + offset, np.nan_to_num(mean), width=0.4, color=color, alpha=0.6, label=kind)
            for run in runs:
                ax.plot(x + offset, [np.nan if v is None else v for v in run["patching"][kind]], "o",
                        color=color, markersize=3)
        ax.set_title(f"{task} ({len(runs)} run{'s' if len(runs) > 1 else ''} with items): correlation of the "
                     f"attn/mlp profiles {number(r, '+.2f')}")
        ax.axhline(0, color="gray", linewidth=0.5)
        ax.axhline(1, color="gray", linewidth=0.5, linestyle=":")
        ax.set_xticks(x, names, rotation=45, ha="right")
        ax.set_ylabel("patching effect")
        ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)


# ---------------------------------------------------------------------------------------------------------
# Tables

def main_table(groups):
    """The final metrics per task and KL regime: mean ± 95% interval over seeds."""
    rows = []
    for (task, regime), runs in groups.items():
        col = lambda key, **kw: fmt([r["final"].get(key, math.nan) for r in runs], **kw)
        rows.append([task, "yes" if regime == "kl" else "no", len(runs), col("self"), col("orig"),
                     f"**{col('gap', signed=True)}**", col("blind_gap", signed=True), col("tracking", digits=2),
                     col("n_flipped", digits=0), col("self_flipped", digits=2),
                     col("orig_flipped", digits=2), col("agreement", digits=2), col("malformed", digits=3),
                     col("task_accuracy", digits=3), col("shift_learned", digits=2)])
    return markdown_table(["task", "KL", "seeds", "Self", "Orig", "Self - Orig", "input-blind gap", "tracking",
                           "flipped items", "Self@flipped",
                           "Orig@flipped", "agreement", "malformed", "task accuracy", "shift learned"], rows)


def verdict_table(groups):
    """The main result in short: per task and KL regime, the gap beside the best input-blind explainer's,
    tracking, the runs coupled and whether the bar is met (the README's table)."""
    rows = []
    for (task, regime), runs in groups.items():
        finals = [r["final"] for r in runs]
        col = lambda key, **kw: fmt([f.get(key, math.nan) for f in finals], **kw)
        rows.append([task, "yes" if regime == "kl" else "no", len(runs), f"**{col('gap', signed=True)}**",
                     col("blind_gap", signed=True), col("tracking", digits=2), col("self_flipped", digits=2),
                     f"{sum(is_coupled(f) for f in finals)} of {len(runs)}",
                     ("met" if meets_bar(finals) else "not met") if regime == "kl" else ""])
    return markdown_table(["task", "KL", "seeds", "Self - Orig", "input-blind gap", "tracking", "Self@flipped",
                           "runs coupled", "the bar"], rows)


def seed_table(groups):
    """Every seed's final numbers, including the flipped items split by direction."""
    rows = []
    for (task, regime), runs in groups.items():
        for r in runs:
            f, m0 = r["final"], r["m0"]
            probes = r.get("probes") or {}  # only the KL runs are probed; older results lack the verdict rows
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
        # results from before the verdict had to change too (commit c11c66c and older) lack the count
        changed = np.mean([run["patching"].get("n_answer_changed", np.nan) for run in runs])
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
        rows.append([task, shift, "yes" if regime == "kl" else "no", len(runs), f"**{col('gap', signed=True)}**",
                     col("blind_gap", signed=True), col("tracking", digits=2), col("self_flipped", digits=2),
                     col("blind_self_flipped", digits=2),
                     f"{col('tracking_drift', digits=2)} ({col('n_flipped_drift', digits=0)})",
                     f"{sum(is_coupled(r['final']) for r in runs)} of {len(runs)}",
                     ("met" if meets_bar([r["final"] for r in runs]) else "not met") if regime == "kl" else ""])
    return markdown_table(["task", "shift", "KL", "seeds", "Self - Orig", "input-blind gap", "tracking",
                           "Self@flipped", "input-blind Self@flipped", "tracking on drift items (n)", "runs coupled",
                           "the bar"], rows)


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
        col = lambda values, **kw: fmt(values, **kw)
        rows.append([task, len(runs), ", ".join(f"{kind} {n}" for kind, n in sorted(kinds.items())) or "none",
                     col([r["final"]["gap"] for r in runs], signed=True),
                     col([r["diagnosis"]["lenient_gap"] for r in runs], signed=True),
                     col([r["final"].get("tracking", math.nan) for r in runs], digits=2),
                     col([r["diagnosis"]["lenient_tracking"] for r in runs], digits=2)])
    return markdown_table(["task", "seeds", "malformed explanations, by kind (all seeds)", "Self - Orig",
                           "read leniently", "tracking", "read leniently"], rows) if rows else ""


def lost_coupling_text(groups):
    """A line per task on its runs not coupled at the end (see lost_coupling)."""
    seeds = lambda values: f"seed{'s' if len(values) > 1 else ''} {', '.join(map(str, values))}"
    lines = []
    for task, runs in ((task, runs) for (task, regime), runs in groups.items() if regime == "kl"):
        failed, lost = lost_coupling(runs)
        if failed:
            lines.append(f"- {task}: {len(failed)} of {len(runs)} not coupled at the end ({seeds(failed)}); "
                         f"{len(lost)} of them coupled at an earlier evaluation{f' ({seeds(lost)})' if lost else ''}.")
    return "\n".join(lines) or "Every run with KL is coupled at the end."


# ---------------------------------------------------------------------------------------------------------
# Sweeps: one knob varied (experiments.SWEEPS describes each)

def knob_value(config, knob):
    """The value of a sweep's knob in a config dict (as saved in a result)."""
    section, _, name = knob.rpartition(".")
    return (config[section] if section else config)[name]


def value_label(knob, value):
    if isinstance(value, str):
        return value
    return "full" if knob.endswith("lora_rank") and value == 0 else f"{value:g}"


def by_value(sweep, results):
    """{task: {knob value: [results sorted by seed]}} for a sweep's results, in the sweep's own order."""
    table = {}
    for r in sorted(results, key=lambda r: r["config"]["seed"]):
        table.setdefault(r["config"]["task"], {}).setdefault(knob_value(r["config"], sweep.knob), []).append(r)
    order = {v: i for i, v in enumerate(sweep.values)}
    return {task: dict(sorted(values.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))
            for task, values in sorted(table.items())}


def plot_sweep(sweep, results, path):
    """Per task: the final gap and Self/Orig on flipped items against the knob (mean, 95% interval, every
    seed as a dot), and every run's gap against its label-behaviour agreement."""
    plt = pyplot()
    table = by_value(sweep, results)
    fig, axes = plt.subplots(len(table), 3, figsize=(12, 3.3 * len(table)), squeeze=False)
    for row, (task, values) in zip(axes, table.items()):
        xs = list(range(len(values)))  # values in the sweep's own order, evenly spaced
        for ax, metrics in ((row[0], (("gap", "tab:green"),)),
                            (row[1], (("self_flipped", "tab:blue"), ("orig_flipped", "tab:orange")))):
            for metric, color in metrics:
                finals = [[r["final"][metric] for r in runs] for runs in values.values()]
                means, halves = zip(*(mean_ci(v) for v in finals))
                ax.errorbar(xs, means, yerr=np.nan_to_num(halves), color=color, capsize=3, marker="o",
                            label=metric.replace("_", "@"))
                for x, v in zip(xs, finals):
                    ax.scatter([x] * len(v), v, color=color, s=8, alpha=0.5)
            ax.axhline(0 if metrics[0][0] == "gap" else 0.5, color="black", lw=0.8, ls=":")
            ax.set_xticks(xs, [value_label(sweep.knob, v) for v in values])
            ax.set_xlabel(sweep.label)
            ax.grid(alpha=0.3)
        row[0].set_ylabel(f"{task}: Self - Orig (final)")
        row[1].set_ylabel("accuracy on flipped items")
        row[1].legend(fontsize=7)
        runs = [r for v in values.values() for r in v]
        row[2].scatter([r["final"]["agreement"] for r in runs], [r["final"]["gap"] for r in runs], s=14,
                       c=[list(values).index(knob_value(r["config"], sweep.knob)) for r in runs], cmap="viridis")
        row[2].axhline(0, color="black", lw=0.8, ls=":")
        row[2].set_xlabel("agreement of frozen labels with current behaviour")
        row[2].set_ylabel("Self - Orig (final)")
        row[2].grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)


EXTRA_NAMES = {"orig_other": "Orig-other", "gap_other": "Self - Orig-other",
               "family_agreement": "labels agree across families", "shift_learned": "shift learned"}


def sweep_table(sweep, results):
    rows = []
    for task, values in by_value(sweep, results).items():
        for value, runs in values.items():
            col = lambda key, **kw: fmt([r["final"].get(key, float("nan")) for r in runs], **kw)
            rows.append([task, value_label(sweep.knob, value), len(runs), col("agreement", digits=2),
                         col("n_flipped", digits=0), col("self"), col("orig"), f"**{col('gap', signed=True)}**",
                         col("blind_gap", signed=True), col("tracking", digits=2), col("self_flipped", digits=2), col("orig_flipped", digits=2), col("malformed", digits=3),
                         *(col(e, signed=e.startswith("gap")) for e in sweep.extra)])
    return markdown_table(["task", sweep.label, "seeds", "agreement", "flipped items", "Self", "Orig", "Self - Orig",
                           "input-blind gap", "tracking", "Self@flipped", "Orig@flipped", "malformed", *(EXTRA_NAMES[e] for e in sweep.extra)], rows)


def sweep_section(name, sweep, results, report_dir, figures_dir):
    figure = os.path.join(figures_dir, f"{name}.png")
    plot_sweep(sweep, results, figure)
    return f"""
## Sweep: {name.replace("_", " ")}

{sweep.question} Varied: {sweep.label} (`{sweep.knob}`); everything else as in the main result's KL runs.
Command: `python experiments.py sweep {name}`. The paper: {sweep.paper}.

{sweep_table(sweep, results)}

![{name}]({os.path.relpath(figure, report_dir)})
"""


RULE_TEXT = ("A run is coupled when Self > Orig and tracking > 0.5; the bar (per task, runs with KL): the "
             "95% intervals of the mean Self - Orig and of the mean tracking lie above zero, and the mean "
             "tracking is above 0.5. Results saved before tracking was measured are judged by the earlier "
             "rule, Self@flipped in place of tracking, which an input-blind explainer can pass.")


# ---------------------------------------------------------------------------------------------------------
# Your numbers beside the reference's

def comparison(mine, reference):
    """Markdown: per task and KL regime, your runs' mean gap ± 95% interval, Self@flipped and runs coupled
    beside the reference's; then a line per task on whether the effect reproduced here, by the reference's
    own rule (eval.meets_bar on the runs with KL)."""
    mine_groups, ref_groups = group(mine), group(reference)
    summary = lambda runs: ([len(runs), fmt([r["final"]["gap"] for r in runs], signed=True),
                             fmt([r["final"].get("blind_gap", math.nan) for r in runs], signed=True),
                             fmt([r["final"].get("tracking", math.nan) for r in runs], digits=2),
                             fmt([r["final"]["self_flipped"] for r in runs], digits=2),
                             f"{sum(is_coupled(r['final']) for r in runs)} of {len(runs)}"] if runs else ["0"] + ["n/a"] * 5)
    rows = [[task, "yes" if regime == "kl" else "no", *summary(runs), *summary(ref_groups.get((task, regime), []))]
            for (task, regime), runs in mine_groups.items()]
    table = markdown_table([*("task", "KL"), *(f"{who} {what}" for who in ("your", "reference") for what in
                            ("seeds", "Self - Orig", "input-blind gap", "tracking", "Self@flipped", "runs coupled"))],
                           rows)
    verdict = lambda runs: ("met" if meets_bar([r["final"] for r in runs]) else
                            "not met" if len(runs) > 1 else "undecided (one seed has no interval)")
    lines = [f"- {task}: the bar is {verdict(runs)} here; in the reference: "
             f"{verdict(ref_groups.get((task, 'kl'), [])) if (task, 'kl') in ref_groups else 'no runs'}."
             for (task, regime), runs in mine_groups.items() if regime == "kl"]
    return f"""{table}

{RULE_TEXT} Input-blind gap: the best Self - Orig of one explanation written for every item (no
explainer that ignores its input can do better); tracking: on flipped items, giving the current label
minus giving it on unflipped items with the same frozen label (0 for any input-blind explainer, 1 for a
copy of the current behaviour). n/a: not measured.
{chr(10).join(lines)}

Yours: computed on {machines(mine)}. Reference: computed on {machines(reference) or "nothing"}. The same seed on
another machine is a new draw, so compare the distributions, not seed by seed.
"""


# ---------------------------------------------------------------------------------------------------------
# The report

def write_report(results, path, figures_dir, prefix="main", sweeps=(), about="", compared="", command="",
                 directions=()):
    """Figures and a markdown report of the main experiment's results; directions: the other shift
    directions' results, tabled beside the main ones; sweeps: [(name, Sweep, results)] appended as
    sections; compared: a comparison (above) put first; about: where and why the runs were made."""
    report_dir = os.path.dirname(os.path.abspath(path))
    rel = lambda p: os.path.relpath(p, report_dir)
    figure = lambda kind: os.path.join(figures_dir, f"{prefix}_{kind}.png")
    every = list(results) + list(directions) + [r for _, _, swept in sweeps for r in swept]
    parts = [f"# Introspective coupling: results\n\n{about}Generated by `{command}` from {len(every)} result files."]
    if compared:
        parts.append(f"## Your numbers beside the reference\n\n{compared}")
    if results:
        groups, cfg = group(results), results[0]["config"]
        plot_curves(groups, figure("curves"))
        plot_gaps(groups, figure("gap"))
        plot_runs({f"{task}, with KL": runs for (task, regime), runs in groups.items() if regime == "kl"},
                  figure("shift"))
        plot_flipped_runs(groups, figure("flipped_runs"))
        parts.append(f"""Every number is the final evaluation (the last step), decided before looking; ± is the 95% t-interval
over seeds. Self and Orig are exact-match accuracies (verdict and counterfactual answer) of the model's
generated explanations on {cfg['n_eval']} held-out counterfactual pairs, against labels from its current
behaviour (Self) and from M0's behaviour (Orig, the kind of labels it was trained on).

## Main result

{verdict_table(groups)}

{RULE_TEXT}

{main_table(groups)}

![Self and Orig over training]({rel(figure("curves"))})

Lines: the mean over seeds; bands: its 95% interval. Below, every seed's final gap and Self@flipped is a dot.

![Final gap and Self on flipped items]({rel(figure("gap"))})

Concurrent post-training (with KL): the shift is learnt within the first evaluations, the frozen labels
then describe a fraction "agreement" of the current behaviour, and no new label is ever given; do the
explanations of the flipped items follow the shift?

![Explanations during the shift]({rel(figure("shift"))})

Every run, with KL (green: coupled at the end by the rule below; red: not). Does a run
that fails at the end never follow the shift, or follow it and lose it?

{lost_coupling_text(groups)}

![Self@flipped and Orig@flipped of every run]({rel(figure("flipped_runs"))})

## Shift directions, against an explainer that ignores its input

The main result's shift reduces a behaviour (hint, refusal: `reduce`) or flips deeds (judgement: `flip`);
`python experiments.py directions` runs the others on hint and refusal: `acquire` (a known answer is
forgotten; a new over-refusal) and `both`. Input-blind gap: the best Self - Orig of one explanation
written for every item, which no explainer that ignores its input can beat. Tracking: on flipped items,
giving the current label minus giving it on unflipped items with the same frozen label (0 for any
input-blind explainer, 1 for a copy of the current behaviour); on drift items (flipped, though the shift
never trained their units) no data taught the new behaviour. {RULE_TEXT}

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
""")
    for name, sweep, swept in sweeps:
        parts.append(sweep_section(name, sweep, swept, report_dir, figures_dir))
    prov = every[0]["provenance"]
    commits = sorted({r["provenance"]["git_commit"][:10] for r in every})
    parts.append(f"""## Provenance

Commits: {', '.join(commits)}; Python {prov['python']}, torch {prov['torch']}, numpy {prov['numpy']},
tiktoken {prov['tiktoken']}; {prov['threads']} threads; {prov['platform']}. Computed on: {machines(every)}.
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
