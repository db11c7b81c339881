"""Experiments: where results live, the scheduler that runs the suites (suites.py), the command line.

Two stores. The published reference (results/, figures/, REPORT.md, STRESS.md) is tracked and only
read by a user's command. Yours is runs/ (ignored): checkpoints, results with each final explainer
beside its result, figures and reports. `quick` and `reproduce` compute in yours whatever is not there
yet, then put your numbers beside the reference's (comparison). `publish`, for maintainers, is the one command that
writes the reference.

    python experiments.py quick                   hint at make quick's seed, with and without KL (about a minute)
    python experiments.py reproduce               the main result: 3 tasks x seeds x (KL, no KL)
    python experiments.py directions              hint and refusal with the other shift directions
    python experiments.py sweep NAME              one knob varied over several seeds (suites.SWEEPS); NAME,NAME: several
    python experiments.py reproduce-all           the main result, then every sweep
    python experiments.py report                  your report again, from your saved results
    python experiments.py show --task hint        one saved run's explanations, item by item
    python experiments.py publish                 maintainers: your results into the reference, reports rebuilt
"""
import concurrent.futures
import glob
import math
import multiprocessing
import os
import sys
import textwrap
import time
from dataclasses import fields

import train
from analysis import analyse_run, show
from config import (SEED_MAX, Parser, UserError, allowed_text, check_choice, check_positive, check_range, check_writable,
                    run_command)
from data import TASKS, get_task
from eval import (REFERENCE, RunConfig, add_run_flags, check_feasible, config_from_args, config_from_dict, identity,
                  pretrained_models, read_result, run_coupling)
from metrics import is_kl, mean_ci, meets_bar
from model import pick_device
from figures import number, value_label
from report import (MEASURES_TEXT, RULE_TEXT, coupled_count, fmt, group, machines, markdown_table,
                    target_text, verdict_table, write_report, write_text)
from suites import (DRAWS, MAIN_TASKS, QUICK_SEEDS, SWEEPS, default_seeds, directions_configs, draw, main_configs,
                    sweep_configs)
from train import REPO, ExplainConfig, PretrainConfig, atomic_write, load_checkpoint, pretrain, write_json

# ---------------------------------------------------------------------------------------------------------
# The stores

def store(reference=False):
    """The results folder: the published reference's, or yours (under runs/, found from the repository)."""
    return REFERENCE if reference else os.path.join(train.RUNS_DIR, "results")


def result_path(experiment, cfg: RunConfig, root=None):
    return os.path.join(root or store(), experiment, cfg.task, f"{cfg.name}.json")


def load_results(folder):
    """Every result file under a folder, sorted by task and seed (seed 2 before seed 10)."""
    results = []
    for root, _, files in sorted(os.walk(folder)):
        results += [read_result(os.path.join(root, name)) for name in sorted(files) if name.endswith(".json")]
    return sorted(results, key=lambda r: (r["config"]["task"], r["config"]["seed"]))


def saved_result(cfg, path):
    """The result at path if it is whole and was made with this very run's science settings, else None."""
    try:
        result = read_result(path)
    except ValueError:
        return None
    return result if identity(result["config"]) == identity(cfg) else None


def current_main_runs(results):
    """The results that are runs of the main suite as it is configured now (other settings left out)."""
    return [r for r in results if any(identity(m) == identity(r["config"])
                                      for m in main_configs((r["config"]["task"],), (r["config"]["seed"],)))]


# ---------------------------------------------------------------------------------------------------------
# The scheduler

def default_jobs(device):
    """Parallel runs: one per CPU core on CPU (each run uses one thread). On CUDA up to 4 runs share the
    GPU: each is small and bound by kernel launches, not by the GPU's arithmetic. One on MPS."""
    kind = pick_device(device).type
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return {"cpu": cores, "cuda": min(cores, 4)}.get(kind, 1)


def is_pretrained(path):
    """A finished checkpoint (not a partial one, which pretraining resumes) is on disk."""
    return os.path.exists(path) and "report" in load_checkpoint(path)


def pretrain_quietly(cfg, path):
    pretrain(cfg, path, log=lambda *a: None)


def run_once(cfg, paths, analyse, runs_dir):
    """One run, then (analyse) its probes and patching; the result is written to every path that asked
    for this very run, its explainer beside the first. runs_dir is passed, not read: a worker process
    has its own copy of train.RUNS_DIR."""
    result = run_coupling(cfg, paths[0], runs_dir, log=lambda *a: None)
    if analyse and cfg.explain.kl_weight > 0:  # the no-KL explainers collapse; no report uses theirs
        result = analyse_run(paths[0], runs_dir)
    for path in paths[1:]:
        write_json(result, path)
    return result


def check_suites_feasible(suites):
    """Every config of the suites checked for items and shifts the task can supply, before the first run
    starts (configs that draw the same items are checked once)."""
    checked = set()
    for cfg in (cfg for _, configs, _ in suites for cfg in configs):
        key = (cfg.task, cfg.seed, cfg.n_explain, cfg.n_eval, cfg.validation, cfg.schedule, cfg.shift,
               cfg.shift_size, cfg.explained_features, cfg.feature_items)
        if key not in checked:
            check_feasible(cfg)
            checked.add(key)


def run_parallel(entries, jobs, finished):
    """The runs of `entries` (run_suites' {"cfg", "paths", "analyse"}) in `jobs` processes: the models they
    need are pretrained first, each once, and a run starts as soon as its models are ready; finished(entry,
    result) is called as each ends."""
    needed = {}
    for entry in entries:
        needed.update(pretrained_models(entry["cfg"]))
    spawn = multiprocessing.get_context("spawn")  # a clean process per worker, same on every OS
    with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=spawn) as pool:
        training = {pool.submit(pretrain_quietly, cfg, path): path for path, cfg in needed.items()
                    if not is_pretrained(path)}
        waiting, running = list(entries), {}
        while waiting or running:
            for entry in [e for e in waiting if not set(pretrained_models(e["cfg"])) & set(training.values())]:
                waiting.remove(entry)
                running[pool.submit(run_once, entry["cfg"], entry["paths"], entry["analyse"], train.RUNS_DIR)] = entry
            done, _ = concurrent.futures.wait([*training, *running], return_when="FIRST_COMPLETED")
            for future in done:
                if future in training:
                    future.result()  # a failed pretraining stops the suite with its error
                    del training[future]
                else:
                    finished(running.pop(future), future.result())


def run_suites(suites, jobs=1):
    """Run (or load) the configs of several suites in your store, `jobs` at a time, under one progress
    bar; returns each suite's results in the order of its configs. suites: [(experiment, configs,
    analyse)], analyse: probe and patch the final explainers with KL (the sweeps skip it).
    A finished result of the same run is loaded, from its own path (so a killed suite resumes where it
    stopped) or from the main suite's (a sweep's default value is one of its runs), and a run asked for
    twice runs once. In parallel, the models that the runs need are pretrained first, each once, and a
    run starts as soon as its models are ready. Each run is deterministic on its own, so the results do
    not depend on jobs or on the order."""
    from tqdm import tqdm
    check_positive("jobs", jobs, high=256)
    check_writable(store(), "your store")
    check_suites_feasible(suites)
    t0, results, todo = time.time(), {}, {}
    asked = [[(cfg, result_path(experiment, cfg)) for cfg in configs] for experiment, configs, _ in suites]
    names = list(dict.fromkeys(experiment for experiment, *_ in suites))
    bar = tqdm(total=sum(map(len, asked)), desc=names[0] if len(names) == 1 else f"{len(names)} experiments",
               unit="run", file=sys.stdout)
    for runs, (experiment, _, analyse) in zip(asked, suites):
        for cfg, path in runs:
            saved = saved_result(cfg, path)
            main_run = result_path(draw("main", cfg.pretrain.threads), cfg)
            if saved is None and (saved := saved_result(cfg, main_run)) is not None:
                write_json(saved, path)
            if saved is not None and (not analyse or not is_kl(saved["config"]) or "probes" in saved):
                results[path] = saved
                bar.update()
                continue
            entry = todo.setdefault(str(identity(cfg)), {"cfg": cfg, "experiment": experiment, "paths": [],
                                                         "analyse": False})
            entry["paths"].append(path)
            entry["analyse"] |= analyse

    def finished(entry, result):
        f, cfg = result["final"], entry["cfg"]
        bar.write(f"  {entry['experiment']} {cfg.task} {cfg.name}: Self {f['self']:.3f} Orig {f['orig']:.3f} "
                  f"gap {f['gap']:+.3f} flipped {f['n_flipped']} "
                  f"(verdict tracking {number(f['verdict_tracking'], '.2f')}, balanced Self "
                  f"{number(f['balanced_self'], '.2f')}) "
                  f"({result['seconds']:.0f} s)")
        results.update(dict.fromkeys(entry["paths"], result))
        bar.update(len(entry["paths"]))

    if jobs == 1:  # each run pretrains (or loads) its own models
        for entry in todo.values():
            finished(entry, run_once(entry["cfg"], entry["paths"], entry["analyse"], train.RUNS_DIR))
    else:
        run_parallel(list(todo.values()), jobs, finished)
    bar.close()
    print(f"{', '.join(names)}: {bar.n} runs in {time.time() - t0:.0f} s")
    return [[results[path] for _, path in runs] for runs in asked]


# ---------------------------------------------------------------------------------------------------------
# Reports: yours beside the reference, and the reference itself

def reference_main(experiment="main"):
    return current_main_runs(load_results(os.path.join(store(reference=True), experiment)))


def reference_draw(mine):
    """The reference's draw to put your runs beside: the one made with your thread count if it is
    published (on the reference's machine the very same runs), else the first."""
    threads = {r["config"]["pretrain"]["threads"] for r in mine}
    same = draw("main", threads.pop()) if len(threads) == 1 else "main"
    return same if os.path.isdir(os.path.join(store(reference=True), same)) else "main"


def saved_sweeps(root):
    """[(name, Sweep, results)] for every sweep with results under root."""
    found = [(name, SWEEPS[name], load_results(os.path.join(root, name))) for name in SWEEPS]
    return [entry for entry in found if entry[2]]


def comparison(mine, reference):
    """Markdown that reads in a 100-column terminal: per task and KL regime, a row of your runs and, under
    it, one of the reference's (mean gap ± 95% interval, the blind explainers' mean gaps, verdict tracking,
    runs coupled of runs made); then a line per task on whether the effect reproduced here, by the
    reference's own rule (metrics.meets_bar on the runs with KL), beside the reference's verdict on the same
    seeds and on all of its own (a few seeds can miss the bar where ten meet it)."""
    mine_groups, ref_groups = group(mine), group(reference)
    mean = lambda runs, key: fmt([mean_ci([r["final"].get(key, math.nan) for r in runs])[0]], signed=True)
    numbers = lambda runs: [fmt([r["final"]["gap"] for r in runs], signed=True), mean(runs, "blind_gap"),
                            mean(runs, "c_blind_gap"), fmt([r["final"]["verdict_tracking"] for r in runs], digits=2),
                            coupled_count(runs)]
    rows = []
    for (task, regime), yours in mine_groups.items():
        rows.append([task, "yes" if regime == "kl" else "no", "yours", *numbers(yours)])
        if theirs := ref_groups.get((task, regime)):  # under yours, task and KL left blank to keep it narrow
            rows.append(["", "", "reference", *numbers(theirs)])
    table = markdown_table(["task", "KL", "runs", "Self - Orig", "input-blind", "C-blind", "verdict tracking",
                            "coupled"], rows)
    verdict = lambda runs: ("met" if meets_bar([r["final"] for r in runs]) else
                            "not met" if len(runs) > 1 else "undecided (one seed has no interval)")
    def in_reference(task, seeds):
        """The reference's verdict on your seeds (like for like), then on all of its own."""
        runs = ref_groups.get((task, "kl"), [])
        same = [r for r in runs if r["config"]["seed"] in seeds]
        if not runs or len(same) == len(runs):
            return verdict(runs) if runs else "no runs"
        return f"{verdict(same) if same else 'no runs'} on your seeds, {verdict(runs)} on its {len(runs)}"
    lines = [textwrap.fill(f"- {task}: the bar is {verdict(runs)} here; in the reference: "
                           f"{in_reference(task, {r['config']['seed'] for r in runs})}.", 99, subsequent_indent="  ")
             for (task, regime), runs in mine_groups.items() if regime == "kl"]
    rule = textwrap.fill(f"{RULE_TEXT} {MEASURES_TEXT} n/a: not measured.", 99)
    theirs = f"Reference: computed on {machines(reference)}." if reference else \
        "The reference has no runs with these settings."
    where = textwrap.fill(f"Yours: computed on {machines(mine)}. {theirs} The same seed on another machine is a new "
                          f"draw, so compare the distributions, not seed by seed.", 99)
    return f"""{table}

{rule}
{chr(10).join(lines)}

{where}
"""


def report_yours(mine, command):
    """Your report (runs/REPORT.md, figures in runs/figures) with your numbers beside the reference's,
    which is also printed."""
    sweeps, directions = saved_sweeps(store()), load_results(os.path.join(store(), "directions"))
    if not (mine or sweeps or directions):
        raise UserError(f"no results of yours to report under {store()} (main, directions or a sweep); run "
                        f"`make quick` or `make reproduce` first")
    tasks, drawn = {r["config"]["task"] for r in mine}, reference_draw(mine)
    reference = [r for r in reference_main(drawn) if r["config"]["task"] in tasks]
    compared = comparison(mine, reference) if mine else ""
    path = os.path.join(train.RUNS_DIR, "REPORT.md")
    write_report(mine, path, os.path.join(train.RUNS_DIR, "figures"), sweeps=sweeps, compared=compared,
                 command=command, directions=directions)
    if compared:
        print(f"\nYour numbers beside the reference (results/{drawn}):\n\n{compared}")
    shown = os.path.relpath(path) if path.startswith(os.getcwd()) else path
    print(f"Your report: {shown}. One run's explanations, item by item: make show (TASK=, SEED= for another)")


def ranges_table():
    """Markdown: every setting of a run with its allowed values, one row per config (README, Reliability)."""
    rows = [[name, "; ".join(f"`{f.name}` {allowed_text(f)}" for f in fields(cls) if f.name not in ("pretrain", "explain"))]
            for name, cls in (("run", RunConfig), ("explanation stage", ExplainConfig), ("M0", PretrainConfig))]
    return markdown_table(["settings of", "allowed values"], rows)


def fill_readme(blocks):
    """Replace each generated block of README.md ({name: markdown}) between its two marker lines."""
    path = os.path.join(REPO, "README.md")
    text = open(path).read()
    for name, content in blocks.items():
        start, end = f"<!-- {name}: written by make publish -->", f"<!-- end of {name} -->"
        if start not in text or end not in text:
            raise UserError(f"README.md lacks the markers of its {name}: {start} ... {end}")
        text = text[: text.index(start) + len(start)] + "\n" + content + "\n" + text[text.index(end):]
    write_text(text, path)


def publish(experiments):
    """Maintainers only: copy your results of the named experiments and your benchmarks into the reference
    (each result replacing a reference result of the same run), then rebuild REPORT.md, the figures and the README's main table
    from the reference. With nothing of yours to copy, it only rebuilds."""
    for name in experiments:
        copy_to_reference(name)
    for bench in glob.glob(os.path.join(train.RUNS_DIR, "bench*.json")):
        with open(bench, "rb") as f:
            atomic_write(os.path.join(store(reference=True), os.path.basename(bench)), f.read())
    results = reference_main()
    about = os.path.join(store(reference=True), "main", "ABOUT.md")
    about = open(about).read().strip() + "\n\n" if os.path.exists(about) else ""
    second_draw = current_main_runs(load_results(os.path.join(store(reference=True), DRAWS[1])))
    write_report(results, os.path.join(REPO, "REPORT.md"), os.path.join(REPO, "figures"),
                 sweeps=saved_sweeps(store(reference=True)), about=about, command="make publish",
                 directions=load_results(os.path.join(store(reference=True), "directions")), second_draw=second_draw)
    main_table = verdict_table(group(results)) + (f"\n\n{target_text([results, second_draw])}" if second_draw else "")
    fill_readme({"main table": main_table, "ranges": ranges_table()})
    print("rebuilt REPORT.md, figures/ and the README's main table and ranges from results/ and the code")


def copy_to_reference(experiment):
    """Maintainers only: your results of an experiment into the reference, each replacing the reference's
    result of the same run (whatever its file name)."""
    for result in load_results(os.path.join(store(), experiment)):
        cfg = config_from_dict(result["config"])
        for old in glob.glob(os.path.join(store(reference=True), experiment, cfg.task, "*.json")):
            if saved_result(cfg, old):
                os.remove(old)
        write_json(result, result_path(experiment, cfg, store(reference=True)))


# ---------------------------------------------------------------------------------------------------------
# Command line

def parse_list(text, name, kind, most=1000):
    """"a,b,c" -> [a, b, c], with a one-line error naming the bad value; for integers (seeds, each in
    [0, SEED_MAX]) "0-9" is a range. At most `most` values, none twice (a seed counted twice would
    pass for two)."""
    try:
        values = []
        for v in (v.strip() for v in text.split(",") if v.strip()):
            low, dash, high = v.partition("-")
            if kind is int and dash and low:
                low, high = int(low), int(high)
                if high - low >= most:
                    raise UserError(f"--{name}={text!r} names {high - low + 1} values; at most {most}")
                values += list(range(low, high + 1))
            else:
                values.append(kind(v))
    except ValueError as err:
        if isinstance(err, UserError):
            raise
        allowed = "integers or ranges like 0-9" if kind is int else f"{kind.__name__} values"
        raise UserError(f"--{name}={text!r} must be a comma-separated list of {allowed}") from None
    if not values:
        raise UserError(f"--{name}={text!r} names nothing; give at least one value (a range is low-high, low <= high)")
    if len(values) > most:
        raise UserError(f"--{name}={text!r} names {len(values)} values; at most {most}")
    repeated = sorted({v for v in values if values.count(v) > 1}, key=str)
    if repeated:
        raise UserError(f"--{name}={text!r} repeats {', '.join(map(str, repeated))}; name each once")
    for task in values if name == "tasks" else ():
        get_task(task)
    for seed in values if kind is int else ():
        check_range(f"--{name}: seed", seed, 0, SEED_MAX, integer=True)
    return values


def chosen_values(name, text):
    """The values of a sweep's knob that --values names by their labels (None: every value)."""
    if not text:
        return None
    labels = {value_label(SWEEPS[name].knob, v): v for v in SWEEPS[name].values}
    return [labels[check_choice(f"--values of {name}", label, labels)] for label in parse_list(text, "values", str)]


def build_parser():
    parser = Parser(description="Introspective coupling experiments: compute yours, compare with the reference.")
    sub = parser.add_subparsers(dest="command", required=True)
    quick = sub.add_parser("quick", help=f"hint, seed {QUICK_SEEDS[0]}, with and without KL, beside the reference")
    reproduce = sub.add_parser("reproduce", help="the main result: 3 tasks x seeds x (KL, no KL), beside the "
                               "reference")
    reproduce.add_argument("--seeds", default="", help="comma-separated integers or ranges such as 0-9 (default: "
                           "0-2 on a CPU, 0-9 on a GPU)")
    sweep = sub.add_parser("sweep", help="one knob varied over several seeds: " + ", ".join(SWEEPS))
    sweep.add_argument("name", help="the sweep, or several separated by commas (run under one progress bar): "
                       + ", ".join(SWEEPS))
    sweep.add_argument("--tasks", default="", help=f"comma-separated, from: {', '.join(TASKS)} (default: the "
                       "sweep's own: hint, judgement for agreement, all three for shift_location)")
    sweep.add_argument("--seeds", default="0-2", help="comma-separated integers or ranges such as 0-9")
    sweep.add_argument("--values", default="", help="comma-separated values of the knob, as its tables label them "
                       "(default: every value; e.g. a for the first arm of held_out_arms)")
    directions = sub.add_parser("directions", help="hint and refusal with the other shift directions (acquire, "
                                "both), with and without KL, beside the main result's")
    directions.add_argument("--seeds", default="", help="comma-separated integers or ranges such as 0-9 (default: "
                            "0-2 on a CPU, 0-9 on a GPU)")
    everything = sub.add_parser("reproduce-all", help="the main result (seeds 0-2), then every sweep")
    for p in (quick, reproduce, directions, sweep, everything):
        p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda or mps")
        p.add_argument("--jobs", type=int, default=0, help="runs in parallel, 1 to 256 (default: one per CPU "
                       "core, or per `threads` cores; on CUDA up to 4)")
    for p in (quick, reproduce, directions):
        p.add_argument("--threads", type=int, default=1, help="CPU threads per run, 1 to 256: another count "
                       "rounds differently, a new draw of the same runs, saved apart (main_threads2, ...)")
    sub.add_parser("report", help="your report again, from your saved results, beside the reference")
    look = sub.add_parser("show", help="a saved run's explanations on flipped and unflipped held-out items "
                          "(the same flags as eval.py run pick the run)")
    add_run_flags(look, defaults={"seed": QUICK_SEEDS[0]})  # by default the run make quick computes
    look.add_argument("--n", type=int, default=3, help="items of each kind to print, 1 to 1000")
    publish_cmd = sub.add_parser("publish", help="maintainers: copy your results into the reference, rebuild "
                                 "its reports")
    publish_cmd.add_argument("--experiments", default="", help="comma-separated experiments to copy (main, "
                             "directions or a sweep); default: none, only rebuild")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    command = "python experiments.py " + " ".join(argv if argv is not None else sys.argv[1:])
    run_command(parser, lambda: run(args, command))


def run(args, command):
    """What a command asks for, all of it checked before the first run starts."""
    device, threads = getattr(args, "device", "auto"), check_positive("threads", getattr(args, "threads", 1), high=256)
    jobs = check_positive("jobs", args.jobs or max(1, default_jobs(device) // threads), high=256) \
        if hasattr(args, "jobs") else 1
    if args.command == "show":
        return show(config_from_args(args), check_positive("n", args.n, high=1000))
    if args.command == "publish":
        names = parse_list(args.experiments, "experiments", str) if args.experiments else []
        for name in names:
            check_choice("--experiments", name, (*DRAWS, "directions", *SWEEPS))
        return publish(names)
    if args.command in ("quick", "reproduce"):
        seeds = QUICK_SEEDS if args.command == "quick" else \
            parse_list(args.seeds, "seeds", int) if args.seeds else default_seeds(device)
        tasks = ("hint",) if args.command == "quick" else MAIN_TASKS
        suite = [(draw("main", threads), main_configs(tasks, seeds, device, threads), True)]
    elif args.command == "directions":
        seeds = parse_list(args.seeds, "seeds", int) if args.seeds else default_seeds(device)
        suite = [(draw("directions", threads), directions_configs(seeds, device, threads), False)]
    elif args.command == "sweep":
        tasks = parse_list(args.tasks, "tasks", str) if args.tasks else None
        seeds = parse_list(args.seeds, "seeds", int)
        names = [check_choice("sweep", name, SWEEPS) for name in parse_list(args.name, "sweep", str)]
        suite = [(name, sweep_configs(name, tasks, seeds, device, chosen_values(name, args.values)), False)
                 for name in names]
    elif args.command == "reproduce-all":
        suite = [("main", main_configs(device=device), True)] + \
                [(name, sweep_configs(name, device=device), False) for name in SWEEPS]
    else:  # report
        suite = []
    pick_device(device)
    results = run_suites(suite, jobs) if suite else []
    # quick and reproduce report the runs they asked for; the others every current main run of yours
    mine = results[0] if args.command in ("quick", "reproduce") else \
        current_main_runs(load_results(os.path.join(store(), "main")))
    report_yours(mine, command)


if __name__ == "__main__":
    main()
