"""Stress maps beyond the paper: where does coupling break?

The paper shifted behaviour gently and trained on clean labels. Here, per task, two maps:
    shift size x label noise   sharp shift; a fraction of the explanation labels has its verdict flipped
    shift size x schedule      clean labels; sharp, gradual (units join in ten groups over ramp_steps) or
                               oscillating (shifted, then trained back from back_at)
Every point of a map is a run with the main result's settings (with KL) except those knobs. A run is
judged at its final evaluation, or for an oscillating shift at the one just before it shifts back
(step back_at), when the shift is at its largest. A run is *coupled* when its behaviour held (task
accuracy on held-out pairs, against the teacher of the world the shift aims at, at least 0.8) and
metrics.is_coupled holds. A point's verdict: collapsed (mean task accuracy below 0.8), coupled (at least
half its runs couple) or fails.

The boundary of a line (a map's row or column) is where its coupled rate first falls (or rises) through
one half (BOUNDARIES_TEXT says how it is placed).

Runs are spent where the verdict is uncertain, in rounds, each round deciding from the results so far:
    1. one seed at the coarse levels of each line (its ends and its middle, or the task's default size);
    2. one seed at the middle level between the two levels of a line's first change of verdict, until
       they are neighbours on the grid;
    3. on the lines whose boundary is reported (label noise at the task's default size, shift size with
       sharp shifts and clean labels): three seeds at both levels next to the boundary, then 2. again if
       the extra seeds move it.
With --dense every point of every map gets three seeds (a GPU or a long night).

    python stress.py                    the maps in your store (resumable, parallel), then runs/STRESS.md
    python stress.py --dense            every point of every map, three seeds each
    python stress.py point --task refusal --shift-size 0.15 --label-noise 0.3 --seeds 0-2
                                        one point of your own added to the maps
    python stress.py probes             the main setting's explainers probed (probes.py), in your STRESS.md
    python stress.py report             runs/STRESS.md again from your saved results
    python stress.py publish            maintainers: your stress results into the reference, STRESS.md rebuilt
"""
import os
import sys
from dataclasses import dataclass

import numpy as np

import train
from config import Parser, UserError, check_choice, check_positive, check_range, run_command
from eval import DEFAULT_SHIFT, RunConfig, identity
from experiments import (copy_to_reference, default_jobs, fill_readme, load_results, parse_list,
                         run_suites, store)
from figures import plot_runs, pyplot, save_figure
from metrics import is_coupled, is_kl, mean_ci
from probes import probe_configs, probes_section
from model import machine
from report import fmt, markdown_table, write_text
from train import REPO, ExplainConfig, PretrainConfig

EXPERIMENT = "stress"
MAP_TASKS = ("hint", "judgement", "refusal")
# Fractions of held-out units shifted, from a few units to most of those the direction can reach: a
# reduction can only shift the units that follow C (0.34 to 0.45 of them, by seed), a flip any unit.
SIZES = {"hint": (0.025, 0.05, 0.1, 0.2, 0.3), "judgement": (0.05, 0.1, 0.3, 0.5, 0.8),
         "refusal": (0.025, 0.05, 0.1, 0.2, 0.3)}
NOISES = (0.0, 0.125, 0.25, 0.375, 0.5)
SCHEDULES = ("sharp", "gradual", "oscillating")
SEEDS_AT_BOUNDARY = 3
MIN_ACCURACY = 0.8


# ---------------------------------------------------------------------------------------------------------
# The points of a map

def point_config(task, size, noise, schedule, seed, device="auto"):
    """One run of a map. Only the oscillating shift is evaluated every 50 steps (its curve is drawn);
    the others every 150 steps, which changes no number of theirs."""
    explain = ExplainConfig() if schedule == "oscillating" else ExplainConfig(eval_every=150)
    return RunConfig(task=task, seed=seed, shift_size=size, label_noise=noise, schedule=schedule,
                     pretrain=PretrainConfig(device=device), explain=explain)


def point_of(config):
    """(task, size, schedule, noise) of a saved map run, or None for a run that is not a map point (other
    settings changed, no KL): such runs never join a map."""
    key = config["task"], config["shift_size"], config["schedule"], config["label_noise"]
    if key[0] not in MAP_TASKS or key[2] not in SCHEDULES:
        return None
    same = identity(point_config(key[0], key[1], key[3], key[2], config["seed"])) == identity(config)
    return key if same else None


def map_points(results):
    """{(task, size, schedule, noise): [runs sorted by seed]} over the map runs among results."""
    table = {}
    for r in sorted(results, key=lambda r: r["config"]["seed"]):
        if (key := point_of(r["config"])) is not None:
            table.setdefault(key, []).append(r)
    return table


def judged(run):
    """The evaluation a run is judged on: the final one, or for an oscillating shift the one just before
    it shifts back."""
    if run["config"]["schedule"] == "oscillating":
        at = [p for p in run["curve"] if p["step"] == run["config"]["back_at"]]
        if not at:
            raise UserError(f"an oscillating run (seed {run['config']['seed']}, back_at "
                            f"{run['config']['back_at']}) has no evaluation at back_at; set back_at to a multiple "
                            f"of eval_every")
        return at[0]
    return run["final"]


def run_coupled(run):
    return judged(run)["task_accuracy"] >= MIN_ACCURACY and is_coupled(judged(run))


def coupled_rate(runs):
    return float(np.mean([run_coupled(r) for r in runs]))


def verdict(runs):
    """collapsed, coupled or fails, by the rules in the module docstring."""
    if mean_ci([judged(r)["task_accuracy"] for r in runs])[0] < MIN_ACCURACY:
        return "collapsed"
    return "coupled" if coupled_rate(runs) >= 0.5 else "fails"


# ---------------------------------------------------------------------------------------------------------
# Lines, boundaries and the adaptive design

@dataclass(frozen=True)
class Line:
    """A row or column of a map: the points along one knob, the others fixed. A noise line has a fixed
    size (sharp shift); a size line a fixed schedule (clean labels)."""
    task: str
    knob: str  # "label noise" or "shift size"
    levels: tuple
    size: float = None
    schedule: str = "sharp"
    reported: bool = False  # its boundary is reported: three seeds next to it

    def point(self, level):
        if self.knob == "label noise":
            return self.task, self.size, "sharp", level
        return self.task, level, self.schedule, 0.0

    def coarse(self):
        """The levels the first round runs: the ends and the middle (a size line: the default size)."""
        middle = DEFAULT_SHIFT[self.task][1] if self.knob == "shift size" else self.levels[len(self.levels) // 2]
        return [level for level in self.levels if level in (self.levels[0], middle, self.levels[-1])]

    def title(self):
        fixed = f"shift size {self.size:g}" if self.knob == "label noise" else f"{self.schedule}, no noise"
        return f"{self.task}: {self.knob} ({fixed})"


def map_lines(table, dense=False):
    """Every line the design runs and the report reads. A line's levels are the grid's, plus any level a
    user added (`stress.py point`). By default the noise map runs the rows at the smallest, the default
    and the largest size; --dense runs them all."""
    lines = []
    for task in MAP_TASKS:
        measured = lambda match, at: {key[at] for key in table if key[0] == task and match(key)}
        sizes = sorted(set(SIZES[task]) | measured(lambda key: True, 1))
        default = DEFAULT_SHIFT[task][1]
        rows = sizes if dense else sorted({SIZES[task][0], default, SIZES[task][-1]} | measured(lambda k: k[3], 1))
        for size in rows:
            noises = sorted(set(NOISES) | measured(lambda k: k[1] == size and k[2] == "sharp", 3))
            lines.append(Line(task, "label noise", tuple(noises), size=size, reported=size == default))
        for schedule in SCHEDULES:
            levels = sorted(set(SIZES[task]) | measured(lambda k: k[2] == schedule and k[3] == 0, 1))
            lines.append(Line(task, "shift size", tuple(levels), schedule=schedule, reported=schedule == "sharp"))
    return lines


def first_change(rates):
    """Index i of the first neighbours (i, i + 1) whose coupled rates lie on either side of one half."""
    sides = [rate >= 0.5 for rate in rates]
    return next((i for i in range(len(rates) - 1) if sides[i] != sides[i + 1]), None)


def interpolate(levels, rates, i):
    """The level between levels[i] and levels[i + 1] where the linearly interpolated rate is one half."""
    (a, b), (ra, rb) = levels[i:i + 2], rates[i:i + 2]
    return a + (ra - 0.5) / (ra - rb) * (b - a)


def boundary(levels, outcomes, draws=1000):
    """Where a line's coupled rate first crosses one half. levels: sorted; outcomes: per level, each run
    coupled (1) or not (0). Returns None if it never crosses, else {at, low, high, bracket, falls}: the
    interval spans the two levels around the crossing, widened by a bootstrap over the runs at each level
    (a draw that never crosses puts the boundary at the end of the range it points to)."""
    outcomes = [np.asarray(o, dtype=float) for o in outcomes]
    rates = [o.mean() for o in outcomes]
    i = first_change(rates)
    if i is None:
        return None
    falls = rates[i] >= 0.5
    rng, drawn = np.random.default_rng(0), []
    for _ in range(draws):
        resampled = [rng.choice(o, len(o)).mean() for o in outcomes]
        j = first_change(resampled)
        if j is not None:
            drawn.append(interpolate(levels, resampled, j))
        else:  # coupled everywhere (or nowhere): past the end the line was heading to, or before its start
            drawn.append(levels[-1] if (resampled[0] >= 0.5) == falls else levels[0])
    low, high = np.percentile(drawn, [2.5, 97.5])
    return {"at": float(interpolate(levels, rates, i)), "low": float(min(low, levels[i])),
            "high": float(max(high, levels[i + 1])), "bracket": (levels[i], levels[i + 1]), "falls": falls}


def line_outcomes(line, table):
    """(levels with runs, each level's coupled outcomes) of a line."""
    measured = [level for level in line.levels if table.get(line.point(level))]
    return measured, [[run_coupled(r) for r in table[line.point(level)]] for level in measured]


def wanted(line, table, dense=False):
    """{point: seeds} the next round runs on this line (rounds 1-3 of the module docstring)."""
    if dense:
        return {line.point(level): range(SEEDS_AT_BOUNDARY) for level in line.levels}
    missing = {line.point(level): range(1) for level in line.coarse() if not table.get(line.point(level))}
    if missing:
        return missing
    measured, outcomes = line_outcomes(line, table)
    i = first_change([np.mean(o) for o in outcomes])
    if i is None:
        return {}
    a, b = line.levels.index(measured[i]), line.levels.index(measured[i + 1])
    if b - a > 1:
        return {line.point(line.levels[(a + b) // 2]): range(1)}
    return {line.point(level): range(SEEDS_AT_BOUNDARY) for level in measured[i:i + 2]} if line.reported else {}


def next_round(table, dense=False, device="auto"):
    """The configs of the next round: what the lines want that is not in the store yet."""
    seeds_of = lambda point: {r["config"]["seed"] for r in table.get(point, [])}
    todo = {}
    for line in map_lines(table, dense):
        for point, seeds in wanted(line, table, dense).items():
            todo.setdefault(point, set()).update(set(seeds) - seeds_of(point))
    return [point_config(task, size, noise, schedule, seed, device)
            for (task, size, schedule, noise), seeds in sorted(todo.items()) for seed in sorted(seeds)]


def run_maps(jobs, dense=False, device="auto"):
    """Round after round until no line wants another run; a killed run resumes from the saved results."""
    folder = os.path.join(store(), EXPERIMENT)
    for round_number in range(1, 100):
        configs = next_round(map_points(load_results(folder)), dense, device)
        if not configs:
            return
        print(f"stress maps, round {round_number}: {len(configs)} runs")
        run_suites([(EXPERIMENT, configs, False)], jobs)


# ---------------------------------------------------------------------------------------------------------
# The report

def map_axes(lines, task):
    """(rows, columns, point at (row, column)) of a task's map, drawn from its lines: a noise map's rows
    are its lines' sizes, a schedule map's columns its lines' schedules."""
    mine = [line for line in lines if line.task == task]
    levels = sorted({level for line in mine for level in line.levels})
    if mine[0].knob == "label noise":  # every size of the grid, run or not
        sizes = sorted(set(SIZES[task]) | {line.size for line in mine})
        return sizes, levels, lambda size, noise: (task, size, "sharp", noise)
    return levels, [line.schedule for line in mine], lambda size, schedule: (task, size, schedule, 0.0)


def plot_map(table, lines, found, column_label, path):
    """One map per task: the coupled rate of each point (the runs coupled over the runs, and the mean
    tracking), and its gap above the best input-blind explainer's; each line's boundary (found: {line:
    boundary or None}) in red, with its interval."""
    plt = pyplot()
    fig, axes = plt.subplots(2, len(MAP_TASKS), figsize=(4.6 * len(MAP_TASKS), 7.4), squeeze=False)
    for col, task in enumerate(MAP_TASKS):
        rows, columns, point = map_axes(lines, task)
        for row, (title, cmap, limits) in enumerate((("coupled rate (runs coupled / runs, tracking)", "viridis",
                                                      (0, 1)), ("Self - Orig minus input-blind", "RdBu", (-0.3, 0.3)))):
            ax, grid = axes[row][col], np.full((len(rows), len(columns)), np.nan)
            for i, size in enumerate(rows):
                for j, value in enumerate(columns):
                    runs = table.get(point(size, value), [])
                    if not runs:
                        continue
                    mean = lambda k: mean_ci([judged(r).get(k, np.nan) for r in runs])[0]
                    if row == 0:
                        grid[i, j] = coupled_rate(runs)
                        label = f"{sum(map(run_coupled, runs))}/{len(runs)}\ntr {mean('verdict_tracking'):.2f}"
                    else:
                        grid[i, j] = mean("gap") - mean("blind_gap")
                        label = f"{grid[i, j]:+.2f}"
                    ax.text(j, i, label, ha="center", va="center", fontsize=7,
                            color="white" if row == 0 and grid[i, j] < 0.5 else "black")
            image = ax.imshow(grid, cmap=cmap, vmin=limits[0], vmax=limits[1], aspect="auto")
            for line in (line for line in lines if line.task == task and found[line]):
                along_row = line.knob == "label noise"
                axis = columns if along_row else rows
                where = np.interp([found[line][k] for k in ("at", "low", "high")], axis, range(len(axis)))
                across = [rows.index(line.size) if along_row else columns.index(line.schedule)] * 3
                x, y = (where, across) if along_row else (across, where)
                ax.plot(x[1:], y[1:], color="red", lw=2, alpha=0.7)
                ax.plot(x[0], y[0], marker="|" if along_row else "_", color="red", markersize=16, mew=3)
            ax.set_xticks(range(len(columns)), [c if isinstance(c, str) else f"{c:g}" for c in columns])
            ax.set_yticks(range(len(rows)), [f"{s:g}" for s in rows])
            ax.set_xlabel(column_label)
            ax.set_ylabel("shift size")
            ax.set_title(f"{task}: {title}", fontsize=8)
            fig.colorbar(image, ax=ax, fraction=0.046)
    fig.suptitle("red: where the coupled rate crosses one half, with its interval", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def points_table(table, keys):
    """One row per point with runs: its seeds and, mean ± 95% interval over them, every measure."""
    rows = []
    for key in keys:
        runs = table.get(key, [])
        if runs:
            col = lambda k, **kw: fmt([judged(r).get(k, np.nan) for r in runs], **kw)
            rows.append([key[0], f"{key[1]:g}", key[2], f"{key[3]:g}", ",".join(str(r["config"]["seed"]) for r in runs),
                         col("n_flipped", digits=0), f"**{col('gap', signed=True)}**", col("blind_gap", signed=True),
                         col("c_blind_gap", signed=True), col("tracking", digits=2), col("verdict_tracking", digits=2),
                         col("self_flipped", digits=2), col("task_accuracy", digits=2),
                         f"{sum(map(run_coupled, runs))}/{len(runs)}", verdict(runs)])
    return markdown_table(["task", "shift size", "schedule", "label noise", "seeds", "flipped", "Self - Orig",
                           "input-blind gap", "C-blind gap", "tracking", "verdict tracking", "Self@flipped",
                           "task accuracy", "runs coupled", "verdict"],
                          rows)


def boundary_text(line, table, found):
    """A line's boundary (found, from `boundary`) in words, with the runs at the two levels around it."""
    levels, outcomes = line_outcomes(line, table)
    if found is None:
        side = "couples" if outcomes and np.mean(outcomes[0]) >= 0.5 else "fails"
        runs = ", ".join(f"{v:g} ({int(sum(o))}/{len(o)})" for v, o in zip(levels, outcomes))
        return f"no boundary, {side} at every level run: {runs}" if levels else "not run"
    around = []
    for level in found["bracket"]:
        runs = table[line.point(level)]
        around.append(f"{level:g}: {sum(map(run_coupled, runs))}/{len(runs)} runs coupled, verdict tracking "
                      f"{mean_ci([judged(r)['verdict_tracking'] for r in runs])[0]:.2f}")
    return (f"{'falls' if found['falls'] else 'rises'} through 1/2 at **{found['at']:.3g}** "
            f"(interval {found['low']:.3g} to {found['high']:.3g}); {'; '.join(around)}")


def boundaries_table(texts):
    """texts: {line: its boundary in words}"""
    rows = [[line.title(), "yes" if line.reported else "one seed", text] for line, text in texts.items()]
    return markdown_table(["line", "reported (3 seeds next to it)", "boundary of the coupled rate"], rows)


def readme_lines(texts):
    """One line per task for the README: its reported boundaries (texts: {line: its boundary in words})."""
    where = lambda line: "label noise at the default size" if line.knob == "label noise" else "shift size"
    return "\n".join(f"- {task}: " + " | ".join(f"{where(line)}: {text}" for line, text in texts.items()
                                               if line.task == task and line.reported) for task in MAP_TASKS)


def draw_stress_figures(table, lines, found, figures_dir):
    """Both maps and, if its runs exist, the oscillating shift's curves; returns ({name: path}, whether
    the oscillating figure was drawn)."""
    figures = {name: os.path.join(figures_dir, f"stress_{name}.png") for name in ("noise", "schedule", "oscillating")}
    plot_map(table, [line for line in lines if line.knob == "label noise"], found, "label noise", figures["noise"])
    plot_map(table, [line for line in lines if line.knob == "shift size"], found, "schedule", figures["schedule"])
    points = {task: (task, DEFAULT_SHIFT[task][1], "oscillating", 0.0) for task in MAP_TASKS}
    oscillating = {f"{task}, oscillating, size {point[1]:g}": table[point] for task, point in points.items()
                   if point in table}
    if oscillating:
        plot_runs(oscillating, figures["oscillating"])
    return figures, bool(oscillating)


BOUNDARIES_TEXT = """Where each line's coupled rate first crosses one half, linearly interpolated between the two levels
around it; the interval spans those levels, widened by a bootstrap over the runs at each level. Lines
marked "one seed" locate the change on the grid only."""


def write_stress_report(results, path, figures_dir, command):
    """STRESS.md: the boundaries, both maps with every point's runs, the oscillating shift's curves and,
    when their runs exist, the probes; returns the README's lines."""
    table = map_points([r for r in results if is_kl(r["config"])])
    for runs in table.values():  # every run can be judged, before any figure is drawn
        for r in runs:
            judged(r)
    lines = map_lines(table)
    found = {line: boundary(*line_outcomes(line, table)) for line in lines}  # each bootstrap once
    texts = {line: boundary_text(line, table, found[line]) for line in lines}
    figures, oscillating = draw_stress_figures(table, lines, found, figures_dir)
    rel = {k: os.path.relpath(v, os.path.dirname(os.path.abspath(path))) for k, v in figures.items()}
    order = lambda key: (key[0], key[1], SCHEDULES.index(key[2]), key[3])
    points = lambda chosen: points_table(table, sorted((key for key in table if chosen(key)), key=order))
    n_runs = sum(map(len, table.values()))
    seeds = sorted({r["config"]["seed"] for runs in table.values() for r in runs})
    text = f"""# Stress maps: where coupling breaks

Generated by `{command}` from {len(results)} result files ({n_runs} map runs, seeds {', '.join(map(str, seeds))}).
Machines: {'; '.join(sorted({machine(r['provenance']) for runs in table.values() for r in runs})) or 'none'}.
Each point is a run with the main result's settings (with KL) except shift size, label noise and schedule.
A run is **coupled** when its task accuracy is at least {MIN_ACCURACY}, Self > Orig and verdict tracking > 0.5
(every explainer that writes one verdict everywhere scores 0); it is judged at its final evaluation, an oscillating one just
before it shifts back. A point **couples** when at least half its runs do, is **collapsed** when its mean
task accuracy is below {MIN_ACCURACY}, and **fails** otherwise. Runs were spent where the verdict was uncertain
(`stress.py`'s docstring): one seed on a coarse grid, refined between the levels where the verdict
changes, and {SEEDS_AT_BOUNDARY} seeds on both levels next to each reported boundary; empty cells were not run.

## Boundaries

{BOUNDARIES_TEXT}

{boundaries_table(texts)}

## Map: shift size x label noise

Sharp shift; a fraction of the explanation labels has its verdict flipped (answer kept consistent).

![size x label noise]({rel['noise']})

{points(lambda key: key[2] == "sharp")}

## Map: shift size x schedule

Clean labels. Sharp: every shifted unit from step 0. Gradual: units join in ten groups over steps
0-{RunConfig.ramp_steps}. Oscillating: shift from step 0, trained back to M0's answers from step
{RunConfig.back_at} (the frozen labels are then right again).

![size x schedule]({rel['schedule']})

{points(lambda key: key[3] == 0)}
""" + (f"""
## The oscillating shift over training

![oscillating]({rel['oscillating']})
""" if oscillating else "") + probes_section(results)
    write_text(text, path)
    print(f"wrote {path} and figures under {figures_dir}/")
    return readme_lines(texts)


def publish():
    """Maintainers only: copy your stress results into the reference (each replacing a reference result of
    the same run), then rebuild STRESS.md, its figures and the README's stress lines from the reference;
    with no map run of the current settings there, it leaves them as they are rather than empty them."""
    copy_to_reference(EXPERIMENT)
    results = load_results(os.path.join(store(reference=True), EXPERIMENT))
    if not map_points([r for r in results if is_kl(r["config"])]):
        print("no map run of the current settings in the reference; STRESS.md and the README's stress lines left "
              "as they are (`make stress`, then publish its results)")
        return
    lines = write_stress_report(results, os.path.join(REPO, "STRESS.md"), os.path.join(REPO, "figures"),
                                "make publish")
    fill_readme({"stress boundaries": lines})


def main(argv=None):
    parser = Parser(description="Stress maps (shift size x label noise, shift size x schedule), probes.")
    parser.add_argument("command", nargs="?", default="run", choices=("run", "point", "probes", "report", "publish"),
                        help="run: the maps, what is missing in your store, then your report; point: one point "
                             "of your own added; probes: the probed main-setting and two-hop runs; report: your "
                             "report again; publish (maintainers): your results into the reference")
    parser.add_argument("--dense", action="store_true", help="run: every point of every map, three seeds each")
    parser.add_argument("--task", default="hint", help=f"point: the task, one of {', '.join(MAP_TASKS)}")
    parser.add_argument("--shift-size", type=float, default=-1.0, help="point: fraction of held-out units "
                        "shifted, in (0, 1] (default: the task's)")
    parser.add_argument("--label-noise", type=float, default=0.0, help="point: label noise, 0 to 1")
    parser.add_argument("--schedule", default="sharp", help=f"point: one of {', '.join(SCHEDULES)}")
    parser.add_argument("--seeds", default="0-2", help="point: comma-separated integers or ranges such as 0-2")
    parser.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda or mps")
    parser.add_argument("--jobs", type=int, default=0, help="runs in parallel, 1 to 256 (default: one per CPU "
                        "core; on CUDA up to 4)")
    args = parser.parse_args(argv)
    command = "python stress.py " + " ".join(argv if argv is not None else sys.argv[1:])
    run_command(parser, lambda: run(args, command.strip()))


def run(args, command):
    jobs = check_positive("jobs", args.jobs or default_jobs(args.device), high=256)
    if args.command == "publish":
        return publish()
    folder = os.path.join(store(), EXPERIMENT)
    if args.command == "report" and not os.path.isdir(folder):
        raise UserError(f"no stress results of yours under {folder}; run `make stress` first")
    if args.command == "run":
        run_maps(jobs, args.dense, args.device)
    elif args.command == "probes":
        run_suites([(EXPERIMENT, probe_configs(args.device), True)], jobs)
    elif args.command == "point":
        check_choice("--task", args.task, MAP_TASKS)
        check_choice("--schedule", args.schedule, SCHEDULES)
        size = DEFAULT_SHIFT[args.task][1] if args.shift_size == -1 else check_range("--shift-size", args.shift_size, 0, 1)
        noise = check_range("--label-noise", args.label_noise, 0, 1)
        if noise and args.schedule != "sharp":
            raise UserError(f"--label-noise={noise} with --schedule={args.schedule}: no map has that point; the "
                            f"noise map uses sharp shifts, the schedule map clean labels")
        configs = [point_config(args.task, size, noise, args.schedule, seed, args.device)
                   for seed in parse_list(args.seeds, "seeds", int)]
        run_suites([(EXPERIMENT, configs, False)], jobs)
    write_stress_report(load_results(folder), os.path.join(train.RUNS_DIR, "STRESS.md"),
                        os.path.join(train.RUNS_DIR, "figures"), command)


if __name__ == "__main__":
    main()
