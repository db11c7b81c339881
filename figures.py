"""Figures, drawn from the results passed in (report.py writes the markdown around them).

A result is the dict eval.run_coupling returns (and saves); figures group results by task and by whether
the KL term was on, and every one is written whole or not at all.
"""
import io
import math
import os

import numpy as np

from metrics import defined, is_coupled, mean_ci
from patching import mean_profiles
from train import atomic_write


def pyplot():
    """matplotlib's pyplot on a file-only backend, imported only when a figure is drawn."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def save_figure(fig, path):
    """The figure drawn in memory, in the format its file name ends with, then written whole."""
    image = io.BytesIO()
    fig.savefig(image, format=os.path.splitext(path)[1][1:], dpi=110)
    pyplot().close(fig)
    atomic_write(path, image.getvalue())


def number(x, spec):
    return format(x, spec) if defined(x) else "n/a"


KL_STYLE = {"kl": ("-", "with KL"), "nokl": ("--", "without KL")}


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


def plot_flipped_runs(groups, path):
    """Verdict tracking (top) and Orig@flipped (bottom) over explanation training for every run with KL,
    one column per task: green where the run is coupled at the end, red where it is not. A failed run whose
    Orig@flipped climbs has come to explain its flipped items by the frozen labels' rule."""
    plt = pyplot()
    tasks = sorted({task for task, regime in groups if regime == "kl"})
    fig, axes = plt.subplots(2, len(tasks), figsize=(4.2 * len(tasks), 5.6), squeeze=False, sharex=True)
    for column, task in enumerate(tasks):
        runs = groups[(task, "kl")]
        coupled_at_end = [is_coupled(r["final"]) for r in runs]
        for ax, metric in zip(axes[:, column], ("verdict_tracking", "orig_flipped")):
            for r, coupled in zip(runs, coupled_at_end):
                points = [p for p in r["curve"] if defined(p.get(metric))]
                ax.plot([p["step"] for p in points], [p[metric] for p in points], lw=0.8, alpha=0.6,
                        color="tab:green" if coupled else "tab:red", zorder=2 if coupled else 3)  # failures on top
            ax.axhline(0.5, color="black", lw=0.6, ls=":")
            ax.set_ylim(-0.52 if metric == "verdict_tracking" else -0.02, 1.02)
            ax.grid(alpha=0.3)
        axes[0, column].set_title(f"{task}: {sum(coupled_at_end)} of {len(runs)} runs coupled at the end", fontsize=9)
        axes[1, column].set_xlabel("explanation-training step")
    axes[0, 0].set_ylabel("verdict tracking")
    axes[1, 0].set_ylabel("Orig@flipped")
    fig.tight_layout()
    save_figure(fig, path)


def plot_gaps(groups, path):
    """Final Self - Orig (with the best input-blind and C-blind explainers' gaps as red and orange ticks),
    verdict tracking and Self on flipped items per task, with and without KL: mean, 95% interval over
    seeds, and every seed as a dot."""
    plt = pyplot()
    tasks = sorted({task for task, _ in groups})
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for ax, metric, title in ((axes[0], "gap", "Self - Orig (red: input-blind, orange: C-blind)"),
                              (axes[1], "verdict_tracking", "verdict tracking"),
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
                for blind_gap, tick in (("blind_gap", "tab:red"), ("c_blind_gap", "tab:orange")):
                    blind = mean_ci([f.get(blind_gap, math.nan) for f in finals])[0]
                    if metric == "gap" and not math.isnan(blind):
                        ax.hlines(blind, i + offset - 0.17, i + offset + 0.17, color=tick, lw=2, zorder=4)
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


def value_label(knob, value):
    if isinstance(value, str):
        return value
    return "full" if knob.endswith("lora_rank") and value == 0 else f"{value:g}"


def by_value(sweep, results):
    """{task: {knob value: [results sorted by seed]}} for a sweep's results, in the sweep's own order."""
    table = {}
    for r in sorted(results, key=lambda r: r["config"]["seed"]):
        table.setdefault(r["config"]["task"], {}).setdefault(sweep.value_of(r["config"]), []).append(r)
    order = {v: i for i, v in enumerate(sweep.values)}
    return {task: dict(sorted(values.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))
            for task, values in sorted(table.items())}


SWEEP_LABELS = {"gap": "Self - Orig", "blind_gap": "input-blind gap", "c_blind_gap": "C-blind gap", "self_flipped": "Self@flipped",
                "orig_flipped": "Orig@flipped", "verdict_tracking": "verdict tracking", "self": "Self", "orig": "Orig",
                "malformed": "malformed", "explained_self": "Self on the explained words",
                "balanced_self": "Self, balanced over verdicts",
                "unlabelled_balanced_self": "learnt, unlabelled words: balanced Self",
                "explained_balanced_self": "explained words: balanced Self"}
PANEL_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple")


def plot_sweep(sweep, results, path):
    """Per task, against the knob (mean, 95% interval, every seed as a dot): the final gap beside the
    input-blind and C-blind gaps; Self and Orig on flipped items beside verdict tracking; every run's gap against its
    label-behaviour agreement; and, if the sweep names them (Sweep.panel), metrics of its own."""
    plt = pyplot()
    table = by_value(sweep, results)
    columns = 3 + bool(sweep.panel)
    fig, axes = plt.subplots(len(table), columns, figsize=(4 * columns, 3.3 * len(table)), squeeze=False)
    for row, (task, values) in zip(axes, table.items()):
        xs = list(range(len(values)))  # values in the sweep's own order, evenly spaced
        panels = [(row[0], (("gap", "tab:green"), ("blind_gap", "tab:gray"), ("c_blind_gap", "tab:red")), 0),
                  (row[1], (("self_flipped", "tab:blue"), ("orig_flipped", "tab:orange"), ("verdict_tracking", "black")),
                   0.5)]  # (axes, metrics, dotted line)
        if sweep.panel:
            panels.append((row[3], tuple(zip(sweep.panel, PANEL_COLORS)), 0.5))
            row[3].set_ylabel("held-out items (final)")
        for ax, metrics, line in panels:
            for metric, color in metrics:
                finals = [[r["final"].get(metric, np.nan) for r in runs] for runs in values.values()]
                means, halves = zip(*(mean_ci(v) for v in finals))
                ax.errorbar(xs, means, yerr=np.nan_to_num(halves), color=color, capsize=3, marker="o",
                            label=SWEEP_LABELS[metric])
                for x, v in zip(xs, finals):
                    ax.scatter([x] * len(v), v, color=color, s=8, alpha=0.5)
            ax.axhline(line, color="black", lw=0.8, ls=":")
            ax.set_xticks(xs, [value_label(sweep.knob, v) for v in values])
            ax.set_xlabel(sweep.label)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        row[0].set_ylabel(f"{task}: Self - Orig (final)")
        row[1].set_ylabel("flipped items: accuracy, verdict tracking")
        runs = [r for v in values.values() for r in v]
        row[2].scatter([r["final"]["agreement"] for r in runs], [r["final"]["gap"] for r in runs], s=14,
                       c=[list(values).index(sweep.value_of(r["config"])) for r in runs], cmap="viridis")
        row[2].axhline(0, color="black", lw=0.8, ls=":")
        row[2].set_xlabel("agreement of frozen labels with current behaviour")
        row[2].set_ylabel("Self - Orig (final)")
        row[2].grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)
