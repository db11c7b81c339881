"""Metrics, one coupling run end to end, the experiment suite, figures and the report.

One run: pretrain (or load) M0; freeze its self-labels E(M0) on the explanation items; fine-tune a copy
on them with lambda * KL(current || M0) while, optionally, a concurrent objective shifts the behaviour of
some held-out units; every few steps recompute the current behaviour's labels E(M_t) on held-out items
and score the model's generated explanations against both:
    Self = accuracy against E(M_t)      Orig = accuracy against E(M0)
Coupling is Self > Orig. The two differ only on flipped items (E(M0) != E(M_t)).

    python eval.py run --task hint --seed 0          one run, printed live, results JSON
    python eval.py quick                             one task, one seed, with and without KL
    python eval.py reproduce                         3 tasks x 3 seeds x (KL, no KL), figures, REPORT.md
    python eval.py report                            figures and REPORT.md from saved results
"""
import argparse
import concurrent.futures
import hashlib
import json
import math
import multiprocessing
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields, replace

import numpy as np
import tiktoken
import torch

from data import N_UNITS, TASKS, TriggerTask, check_fraction, check_positive, get_task
from explain import (PARAPHRASES, QUERY, Labels, add_label_noise, behaviour, explain, explanation_data,
                     forced_verdicts, labels_from_behaviour, leading_queries, mix_labels, pair_cases, split_pairs, wrong_explanations)
from model import pick_device
from patching import mean_profiles, patching_effects, patching_table, plot_patching
from train import (ExplainConfig, PretrainConfig, active_phase, behaviour_accuracy, case_logprobs,
                   explainer_from, kl_to_reference, load_checkpoint, non_defaults, pretrain, train_explainer,
                   with_defaults)

RESULTS = "results"
RUNS = "runs"


# ---------------------------------------------------------------------------------------------------------
# Metrics

def _mean(mask):
    return float(np.mean(mask)) if len(mask) else float("nan")


def f1(predicted, actual):
    """F1 of the positive class (1 = "removing C changes the answer")."""
    tp = np.sum((predicted == 1) & (actual == 1))
    fp, fn = np.sum((predicted == 1) & (actual != 1)), np.sum((predicted != 1) & (actual == 1))
    return float(2 * tp / (2 * tp + fp + fn)) if tp + fp + fn else 1.0


def coupling_metrics(explanations: Labels, current: Labels, original: Labels):
    """Self, Orig, their gap and the flipped-item breakdown, plus the predecessor's metrics against the
    current behaviour. `explanations` are read-back generations (-1 where malformed)."""
    hit_self, hit_orig = explanations.matches(current), explanations.matches(original)
    flipped = ~current.matches(original)
    became_changed = flipped & (original.changed == 0) & (current.changed == 1)
    became_unchanged = flipped & (original.changed == 1) & (current.changed == 0)
    return {
        "self": _mean(hit_self), "orig": _mean(hit_orig), "gap": _mean(hit_self) - _mean(hit_orig),
        "n_items": len(current), "n_flipped": int(flipped.sum()), "agreement": 1 - _mean(flipped),
        "self_flipped": _mean(hit_self[flipped]), "orig_flipped": _mean(hit_orig[flipped]),
        "n_became_changed": int(became_changed.sum()), "self_became_changed": _mean(hit_self[became_changed]),
        "n_became_unchanged": int(became_unchanged.sum()),
        "self_became_unchanged": _mean(hit_self[became_unchanged]),
        "verdict_self": _mean(explanations.changed == current.changed),
        "verdict_orig": _mean(explanations.changed == original.changed),
        "exact_match": _mean(hit_self), "has_changed_f1": f1(explanations.changed, current.changed),
        "content_match": _mean(explanations.answer == current.answer),
        "malformed": _mean(explanations.changed < 0),
        "changed_fraction": _mean(current.changed == 1),
    }


T_975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042]  # Student's t, 97.5% quantile, 1..30 degrees of freedom


def _defined(x):
    return x is not None and not math.isnan(x)


def mean_ci(values):
    """Mean and half-width of its 95% t-interval over seeds (nan half-width for a single value).
    Undefined values (None or nan, e.g. Self@flipped with nothing flipped) are left out."""
    values = np.asarray([v for v in values if _defined(v)], dtype=float)
    if len(values) == 0:
        return float("nan"), float("nan")
    if len(values) == 1:
        return float(values[0]), float("nan")
    t = T_975[len(values) - 2] if len(values) <= 31 else 1.96
    return float(values.mean()), float(t * values.std(ddof=1) / math.sqrt(len(values)))


def probe_explainer(model, task, items, original):
    """Adversarial probes of a trained explainer, each scored against its current behaviour: queries
    reworded as never in training, a control query about removing a word the teacher ignores (true
    answer: "would remain" the answer with C), a query that suggests the wrong explanation (does it
    become sycophantic about itself?), and the items whose C the model now ignores but M0 followed.
    Last, the verdict alone where the shift flipped it, as generated and as a forced choice between
    "remain" and "become": does an explainer that fails there not know, or not write it down?"""
    with_c, without_c = behaviour(model, task, items)
    current = labels_from_behaviour(with_c, without_c)

    def row(correct, malformed, mask=None):
        mask = np.ones(len(items), dtype=bool) if mask is None else mask
        return {"n": int(mask.sum()), "accuracy": _mean(correct[mask]), "malformed": _mean(malformed[mask])}

    def scored(explanations, truth, mask=None):
        return row(explanations.matches(truth), explanations.changed < 0, mask)

    plain = explain(model, task, items)
    rows = {"training query": scored(plain, current)}
    for i, query in enumerate(PARAPHRASES, 1):
        rows[f"paraphrase {i}"] = scored(explain(model, task, items, query), current)
    control = explain(model, task, items, QUERY.replace("{feature}", task.irrelevant))
    rows["control: irrelevant word removed"] = scored(control, Labels(np.zeros_like(with_c), with_c))
    suggested = wrong_explanations(task, current, with_c)
    leading = explain(model, task, items, leading_queries(task, suggested))
    rows["leading: wrong explanation suggested"] = {**scored(leading, current),
                                                   "follows_suggestion": _mean(leading.matches(suggested))}
    rows["C present, now ignored, M0 followed it"] = scored(plain, current, (current.changed == 0) & (original.changed == 1))
    rows["C present, ignored by M0 and now"] = scored(plain, current, (current.changed == 0) & (original.changed == 0))
    verdict_flipped = current.changed != original.changed
    forced = forced_verdicts(model, task, items)
    never_malformed = np.zeros(len(items), dtype=bool)
    rows["verdict flipped: verdict generated"] = row(plain.changed == current.changed, plain.changed < 0, verdict_flipped)
    rows["verdict flipped: verdict forced"] = row(forced == current.changed, never_malformed, verdict_flipped)
    rows["verdict kept: verdict forced"] = row(forced == current.changed, never_malformed, ~verdict_flipped)
    return rows


# ---------------------------------------------------------------------------------------------------------
# One run

SCHEDULES = ("none", "sharp", "gradual", "oscillating")


@dataclass
class RunConfig:
    task: str = "hint"
    seed: int = 0
    shift: str = "default"  # a direction of the task's shift, "trigger", or "default" (the task's own)
    shift_size: float = -1.0  # fraction of held-out units shifted; -1: the task's default
    schedule: str = "sharp"  # none: no shift; sharp: all shifted units from shift_at on; gradual: they
    # join in ten equal groups over ramp_steps from shift_at; oscillating: shift at shift_at, back at back_at
    shift_at: int = 0
    ramp_steps: int = 150
    back_at: int = 150
    label_noise: float = 0.0
    other_labels: float = 0.0  # fraction of explanation labels from another model family (OTHER_FAMILY)
    n_explain: int = 300
    n_eval: int = 900
    n_kl_prompts: int = 4096
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    explain: ExplainConfig = field(default_factory=ExplainConfig)

    def __post_init__(self):
        task = get_task(self.task)
        self.pretrain = PretrainConfig(**{**asdict(self.pretrain), "task": self.task, "seed": self.seed})
        if self.shift == "default":
            self.shift = DEFAULT_SHIFT[self.task][0]
        if self.shift_size < 0:
            self.shift_size = DEFAULT_SHIFT[self.task][1]
        if self.shift != "trigger" and self.shift not in task.shift_directions:
            raise ValueError(f"shift={self.shift!r} is unknown for task {self.task}; allowed: trigger, "
                             f"{', '.join(task.shift_directions)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule={self.schedule!r} is unknown; allowed: {', '.join(SCHEDULES)}")
        if self.shift == "trigger" and self.schedule not in ("none", "sharp"):
            raise ValueError(f"schedule={self.schedule!r} is not available with shift=trigger; allowed: none, sharp")
        steps = self.explain.steps
        if not 0 <= self.shift_at < steps:
            raise ValueError(f"shift_at={self.shift_at} must lie in [0, {steps - 1}] (explanation steps {steps})")
        if self.schedule == "gradual" and not 1 <= self.ramp_steps <= steps - self.shift_at:
            raise ValueError(f"ramp_steps={self.ramp_steps} must lie in [1, {steps - self.shift_at}] "
                             f"(the steps left after shift_at={self.shift_at})")
        if self.schedule == "oscillating" and not self.shift_at < self.back_at < steps:
            raise ValueError(f"back_at={self.back_at} must lie in [{self.shift_at + 1}, {steps - 1}] (after "
                             f"shift_at={self.shift_at}, before the last step)")
        check_fraction("shift_size", self.shift_size)
        check_fraction("label_noise", self.label_noise)
        check_fraction("other_labels", self.other_labels)
        for name in ("n_explain", "n_eval", "n_kl_prompts"):
            check_positive(name, getattr(self, name))

    @property
    def name(self):
        return f"seed{self.seed}_{'kl' if self.explain.kl_weight > 0 else 'nokl'}"


# The concurrent shift each task uses by default (direction, fraction of held-out units).
DEFAULT_SHIFT = {"hint": ("reduce", 0.2), "judgement": ("flip", 0.3), "refusal": ("reduce", 0.2),
                 "twohop": ("reduce", 0.2)}
# The other model family that supplies labels when other_labels > 0: another seed, a deeper and wider
# network, and a world in which a fifth of the units' facts differ (two networks that imitate the same
# deterministic teacher perfectly agree on every item, so the family's own idiosyncrasies are drawn here,
# as Llama's and Qwen's differ).
OTHER_FAMILY = {"n_layer": 3, "n_embd": 96, "seed_offset": 1000, "world_variation": 0.2}


CODE = ("*.py", "requirements.txt", "Makefile")  # what git_dirty checks (not results, reports, figures)


def provenance():
    """What a result needs beside it to be reproduced: versions, commit, whether the code had
    uncommitted changes, machine."""
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=here).stdout.strip() or "unknown"
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", *CODE],
                                    capture_output=True, text=True, cwd=here).stdout.strip())
    except OSError:
        commit, dirty = "unknown", False
    return {"git_commit": commit, "git_dirty": dirty, "python": platform.python_version(),
            "torch": torch.__version__, "numpy": np.__version__, "tiktoken": tiktoken.__version__,
            "platform": platform.platform(), "threads": torch.get_num_threads(), **processors()}


def processors():
    """The CPU and GPU a result was computed on. Runs are bit-identical on a rerun on the same machine,
    but another CPU's kernels (AVX2 or AVX-512, say) round differently, and a seed's run can then end
    elsewhere (README, "The main result")."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    return {"cpu": cpu, "cpu_capability": torch.backends.cpu.get_cpu_capability(), "gpu": gpu}


def machine(prov):
    """Where a result was computed, in words (results saved before this was recorded say so)."""
    if "cpu" not in prov:
        return "a machine not recorded"
    return prov["gpu"] or f"{prov['cpu']} ({prov['cpu_capability']} kernels)"


def write_json(obj, path):
    """Write JSON through a temporary file and a rename: a result file is whole or absent."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(_nan_to_none(obj), f, indent=1, allow_nan=False)
    os.replace(tmp, path)


def _nan_to_none(obj):
    """Strict JSON has no NaN: an undefined metric (e.g. Self@flipped with nothing flipped) is null."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_nan_to_none(v) for v in obj]
    return obj


def check_writable(folder):
    """Refuse a folder that cannot be written before any work is done, not after it."""
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise ValueError(f"folder {folder} is not writable ({err.strerror}); choose another folder or fix "
                         f"its permissions") from None


def m0_path(cfg: RunConfig, runs_dir=RUNS):
    return os.path.join(runs_dir, cfg.task, f"seed{cfg.seed}", "m0.pt")


def other_m0_path(cfg: RunConfig, runs_dir=RUNS):
    return os.path.join(runs_dir, cfg.task, f"seed{cfg.seed}", "other_m0.pt")


def pretrained_models(cfg: RunConfig):
    """The models a run pretrains (or loads) before its explanation stage: {checkpoint path: config}."""
    models = {m0_path(cfg): cfg.pretrain}
    if cfg.other_labels:
        models[other_m0_path(cfg)] = other_family(cfg)
    return models


def other_family(cfg: RunConfig):
    """The pretraining config of the model family that supplies other_labels (OTHER_FAMILY)."""
    return replace(cfg.pretrain, seed=cfg.seed + OTHER_FAMILY["seed_offset"], world_seed=cfg.seed,
                   world_variation=OTHER_FAMILY["world_variation"], n_layer=OTHER_FAMILY["n_layer"],
                   n_embd=OTHER_FAMILY["n_embd"])


@dataclass
class ShiftPhase:
    """From step `start` on, the shift objective trains `cases` towards their teacher answers in `world`."""
    start: int
    world: dict
    cases: list


def shift_schedule(cfg: RunConfig, task, probed, split):
    """The concurrent shift as a list of ShiftPhase, and every unit it ever shifts. Shift data are only
    cases whose answer changes ("pure" shift data): a new world for some held-out units, or the trigger
    word on held-out units."""
    none = np.array([], dtype=int)
    shift_rng, case_rng = np.random.default_rng([cfg.seed, 5, 1]), np.random.default_rng([cfg.seed, 5, 2])
    if cfg.schedule == "none":
        return [], none
    if cfg.shift == "trigger":
        cases = {probed.random_item(case_rng, split.world, split.heldout_units) for _ in range(20000)}
        cases = sorted(c for c in cases if probed.teacher(split.world, c) != task.teacher(split.world, c[:-1]))
        return [ShiftPhase(cfg.shift_at, split.world, cases)], none
    world, shifted = task.shift(split.world, shift_rng, split.heldout_units, cfg.shift_size, cfg.shift)
    changed = lambda new_world: task.changed_cases(np.random.default_rng([cfg.seed, 5, 2]), split.world, new_world)
    if cfg.schedule == "sharp":
        return [ShiftPhase(cfg.shift_at, world, changed(world))], shifted
    if cfg.schedule == "oscillating":  # the same cases, trained back to their old answers from back_at on
        cases = changed(world)
        return [ShiftPhase(cfg.shift_at, world, cases), ShiftPhase(cfg.back_at, split.world, cases)], shifted
    order, phases = np.random.default_rng([cfg.seed, 5, 4]).permutation(shifted), []
    for group, n_active in enumerate(np.linspace(0, len(order), 11)[1:].round().astype(int)):
        partial = {key: facts.copy() for key, facts in split.world.items()}  # facts are indexed by unit
        for key, facts in partial.items():
            facts[order[:n_active]] = world[key][order[:n_active]]
        phases.append(ShiftPhase(cfg.shift_at + round(group * cfg.ramp_steps / 10), partial, changed(partial)))
    return phases, shifted


def current_labels(model, task, items):
    """E(M) on items and the log-probabilities of B(M) over pair_cases(task, items)."""
    logp = case_logprobs(model, task, pair_cases(task, items))
    return labels_from_behaviour(*split_pairs(logp.argmax(-1).numpy())), logp


def run_coupling(cfg: RunConfig, out_path=None, runs_dir=RUNS, log=print, analyse=True):
    """One coupling run; returns the result dict (also written to out_path if given). analyse: also
    probe and patch the final explainer (with KL), which the main and stress reports use."""
    task, t0 = get_task(cfg.task), time.time()
    m0_file = m0_path(cfg, runs_dir)
    for folder in [os.path.dirname(m0_file)] + ([os.path.dirname(out_path) or "."] if out_path else []):
        check_writable(folder)
    m0, m0_report = pretrain(cfg.pretrain, m0_file, log=log)
    split = task.split(cfg.seed, cfg.n_explain, cfg.n_eval)
    # One generator per purpose, so that e.g. adding label noise leaves the shift and KL prompts unchanged.
    noise_rng, kl_rng, mix_rng = (np.random.default_rng([cfg.seed, 5, k]) for k in (0, 3, 5))

    # Stage A: frozen labels from M0's own behaviour, optionally partly from another model family's
    # behaviour, optionally with label noise.
    with_c, without_c = behaviour(m0, task, split.explain_items)
    train_labels = labels_from_behaviour(with_c, without_c)
    other = None
    if cfg.other_labels:
        other, _ = pretrain(other_family(cfg), other_m0_path(cfg, runs_dir), log=log)
        other_with_c, other_without_c = behaviour(other, task, split.explain_items)
        train_labels, taken = mix_labels(train_labels, labels_from_behaviour(other_with_c, other_without_c),
                                         cfg.other_labels, mix_rng)
        with_c = with_c.copy()
        with_c[taken] = other_with_c[taken]  # label noise keeps each label consistent with its source
    if cfg.label_noise:
        train_labels, _ = add_label_noise(task, train_labels, with_c, cfg.label_noise, noise_rng)
    # What the explanations are asked about on held-out items: the task's own feature C or, with the shift
    # "trigger", a nonsense word that only the concurrent shift teaches and no explanation label mentions.
    probed = TriggerTask(task) if cfg.shift == "trigger" else task
    eval_items = [item + (0,) for item in split.eval_items] if cfg.shift == "trigger" else split.eval_items
    orig_labels, m0_logp = current_labels(m0, probed, eval_items)
    other_labels = current_labels(other, probed, eval_items)[0] if other else None

    phases, shifted = shift_schedule(cfg, task, probed, split)
    shift_phases = [(p.start, [(probed.encode(c), probed.teacher(p.world, c)) for c in p.cases]) for p in phases]
    shift_probes = [p.cases[:: max(1, len(p.cases) // 2000)] for p in phases]

    # KL prompts: cases on units that never shift, plus the explanation items with and without C.
    unshifted = np.setdiff1d(np.arange(N_UNITS), shifted)
    kl_cases = {task.random_case(kl_rng, unshifted) for _ in range(cfg.n_kl_prompts)}
    kl_cases = sorted(kl_cases | set(pair_cases(task, split.explain_items)))
    kl_data = list(zip([task.encode(c) for c in kl_cases], case_logprobs(m0, task, kl_cases)))

    explain_data = explanation_data(task, split.explain_items, train_labels)
    # Task accuracy at an evaluation is measured against the world the shift objective trained towards
    # on the step before it (before any shift: M0's world).
    targets = [np.array([probed.teacher(world, c) for c in pair_cases(probed, eval_items)])
               for world in [split.world] + [p.world for p in phases]]
    curve = []

    def on_eval(step, model):
        current, logp = current_labels(model, probed, eval_items)
        explanations = explain(model, probed, eval_items)
        metrics = coupling_metrics(explanations, current, orig_labels)
        phase = active_phase([p.start for p in phases], max(step - 1, 0))  # what the last step trained
        metrics.update(step=step, seconds=round(time.time() - t0, 2),
                       task_accuracy=_mean(logp.argmax(-1).numpy() == targets[0 if phase is None else phase + 1]),
                       kl_to_m0=float(kl_to_reference(logp, m0_logp)),
                       shift_learned=float("nan") if phase is None else
                       behaviour_accuracy(model, probed, phases[phase].world, shift_probes[phase]))
        if other_labels is not None:  # Orig for the other family: its behaviour, the labels' other source
            metrics.update(orig_other=_mean(explanations.matches(other_labels)),
                           family_agreement=_mean(other_labels.matches(orig_labels)))
            metrics["gap_other"] = metrics["self"] - metrics["orig_other"]
        curve.append(metrics)
        log(f"  {cfg.task} {cfg.name} step {step:4d}: Self {metrics['self']:.3f} Orig {metrics['orig']:.3f} "
            f"gap {metrics['gap']:+.3f} flipped {metrics['n_flipped']:3d} (Self@flipped "
            f"{metrics['self_flipped']:.2f}) agreement {metrics['agreement']:.2f} "
            f"malformed {metrics['malformed']:.2f}")

    model = explainer_from(m0, cfg.explain.lora_rank)
    train_explainer(model, cfg.explain, cfg.seed, explain_data, shift_phases, kl_data, task.answer_ids, on_eval)
    result = {"config": asdict(cfg), "provenance": provenance(), "m0": m0_report,
              "n_trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
              "data": {"n_explain_items": len(explain_data), "n_eval_items": len(eval_items),
                       "n_shifted_units": len(shifted), "n_shift_cases": len(phases[-1].cases) if phases else 0,
                       "shift_phase_starts": [p.start for p in phases], "n_kl_prompts": len(kl_data),
                       "train_changed_fraction": float(train_labels.changed.mean()),
                       "label_noise_flipped": int(round(cfg.label_noise * len(train_labels))),
                       "other_labels_taken": int(round(cfg.other_labels * len(train_labels)))},
              "baseline": curve[0], "final": curve[-1], "curve": curve}
    if analyse and cfg.explain.kl_weight > 0:  # the no-KL explainers collapse; the reports use neither
        result.update(probes=probe_explainer(model, probed, eval_items, orig_labels),
                      patching=patching_effects(model, probed, eval_items))
    result["seconds"] = round(time.time() - t0, 2)
    if out_path:
        write_json(result, out_path)
    return result


# ---------------------------------------------------------------------------------------------------------
# The main experiment: every task, several seeds, with and without the KL regulariser

MAIN_TASKS, MAIN_SEEDS = ("hint", "judgement", "refusal"), (0, 1, 2)


def result_path(experiment, cfg, tagged=False):
    """Where a run's result lives; tagged adds a hash of the config's non-default fields, so that runs
    of one seed with different settings never overwrite each other (and a new field left at its default
    keeps every name)."""
    digest = hashlib.sha1(json.dumps(non_defaults(cfg), sort_keys=True).encode()).hexdigest()[:8]
    return os.path.join(RESULTS, experiment, cfg.task, f"{cfg.name}{'_' + digest if tagged else ''}.json")


def read_result(path):
    """A result file, its config completed with the defaults of fields added since it was written."""
    with open(path) as f:
        result = json.load(f)
    result["config"] = with_defaults(result["config"], RunConfig)
    return result


def saved_result(cfg, path):
    """The result at path if it is whole and was made with this very config, else None."""
    try:
        result = read_result(path)
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return None
    return result if result["config"] == json.loads(json.dumps(asdict(cfg))) else None


def main_configs(tasks=MAIN_TASKS, seeds=MAIN_SEEDS, device="auto"):
    configs = []
    for seed in seeds:  # seed-major, so an interrupted suite already covers every task
        for task in tasks:
            for kl_weight in (ExplainConfig.kl_weight, 0.0):
                configs.append(RunConfig(task=task, seed=seed, pretrain=PretrainConfig(device=device),
                                         explain=ExplainConfig(kl_weight=kl_weight)))
    return configs


def saved_main_runs(skip_seeds, device="auto"):
    """The main result's saved runs of seeds other than skip_seeds that were made with the current settings
    (e.g. the committed seeds 3-9 after `make reproduce` of seeds 0-2), so that a report covers every seed
    there is; a result of other settings is left out, never mixed in."""
    saved = load_results("main")
    seeds = sorted({r["config"]["seed"] for r in saved} - set(skip_seeds))
    current = [json.loads(json.dumps(asdict(cfg))) for cfg in main_configs(seeds=seeds, device=device)]
    return [r for r in saved if r["config"] in current]


@dataclass(frozen=True)
class Sweep:
    """One knob varied over values, everything else as in the main result's KL runs."""
    knob: str  # a RunConfig field, or explain.FIELD for the explanation stage's
    values: tuple
    label: str
    question: str
    paper: str
    tasks: tuple = ("hint",)  # the default; --tasks runs others
    extra: tuple = ()  # metrics of this sweep's own shown in its table


SWEEPS = {
    "other_model": Sweep("other_labels", (0.0, 0.25, 0.5, 0.75, 1.0), "fraction of labels from another model",
                         "Labels from another model family: a 3-layer, 96-wide model with another seed, trained "
                         "on the same task in a world where a fifth of the units' facts differ, labels a fraction "
                         "of the explanation items. Orig-other scores the explanations against that model's "
                         "behaviour.",
                         "with 100% other-model labels still Self > Orig, and overall explanation accuracy "
                         "drops by about 19%", extra=("orig_other", "gap_other", "family_agreement")),
    "label_noise": Sweep("label_noise", (0.0, 0.1, 0.2, 0.3, 0.4), "fraction of training labels flipped",
                         "Does coupling survive wrong training labels?",
                         "robust: Self > Orig at every noise level tried"),
    "learning_rate": Sweep("explain.lr", (1e-3, 2e-3, 3e-3, 5e-3), "explanation-stage peak learning rate",
                           "How does the gap depend on the explanation stage's learning rate?",
                           "a higher learning rate gives a wider gap"),
    "agreement": Sweep("shift_size", (0.1, 0.2, 0.3, 0.45, 0.6), "fraction of held-out deeds flipped",
                       "How far can the behaviour move from the frozen labels before coupling stops? Judgement, "
                       "whose shift can reach every held-out deed (hint's and refusal's reach at most 35-40% "
                       "of held-out units).",
                       "coupling holds down to about 70% label-behaviour agreement", ("judgement",)),
    "trigger": Sweep("shift", ("trigger",), "concurrent shift",
                     "A new behaviour taught only by behaviour fine-tuning during explanation training: the "
                     "nonsense word \"blorp\" makes the answer the task's last one, on held-out units. No "
                     "explanation label mentions it; asked \"if the blorp were removed ?\", do the "
                     "explanations describe it (Self) or M0, which ignores the word (Orig)?",
                     "explanations of the new behaviour were 79.8% accurate against an untrained baseline"),
    "capacity": Sweep("explain.lora_rank", (1, 2, 4, 16, 0), "LoRA rank of the explanation stage (0: full)",
                      "Does coupling need the capacity of full fine-tuning? Ranks 1-16: M0's transformer "
                      "weights frozen, only the adapters and the token embedding train.",
                      "coupling appears only above a rank threshold"),
    "shift_location": Sweep("explain.shift_in", ("all", "units", "layers"), "where the shift may be written",
                            "Which weights must the concurrent shift change for the explanations to follow "
                            "it? all: every weight (the main result); units: the shift's gradient reaches "
                            "only the embeddings of the unit words (entities, deeds, objects); layers: those "
                            "embeddings stay at M0's values, so the shift can live only in the layers.",
                            "activation patching: behaviour and explanation share circuits",
                            MAIN_TASKS, extra=("shift_learned",)),
}


def value_label(knob, value):
    if isinstance(value, str):
        return value
    return "full" if knob.endswith("lora_rank") and value == 0 else f"{value:g}"


def knob_value(config, knob):
    """The value of a sweep's knob in a config dict (as saved in a result)."""
    section, _, name = knob.rpartition(".")
    return (config[section] if section else config)[name]


def sweep_configs(name, tasks=None, seeds=MAIN_SEEDS, device="auto"):
    sweep = SWEEPS[name]
    tasks = tasks or sweep.tasks
    section, _, knob = sweep.knob.rpartition(".")
    configs = []
    for seed in seeds:
        for task in tasks:
            for value in sweep.values:
                explain = ExplainConfig(**{knob: value} if section == "explain" else {})
                run = {} if section else {knob: value}
                configs.append(RunConfig(task=task, seed=seed, pretrain=PretrainConfig(device=device),
                                         explain=explain, **run))
    return configs


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


def run_once(cfg, paths, analyse):
    """One run; its result is written to every path that asked for this very config."""
    result = run_coupling(cfg, paths[0], log=lambda *a: None, analyse=analyse)
    for path in paths[1:]:
        write_json(result, path)
    return result


def run_suites(suites, jobs=1):
    """Run (or load) the configs of several suites, `jobs` at a time, under one progress bar; returns
    each suite's results in the order of its configs. suites: [(experiment, configs, tagged, analyse)],
    where tagged: configs of one seed differ in more than the KL term, so file names carry a config hash;
    analyse: probe and patch the final explainers (the sweeps skip it: no report uses theirs).
    A finished result with the same config is loaded, from its own path (so a killed suite resumes where
    it stopped) or from the main result's (a sweep's default value is one of its runs), and a config
    asked for twice runs once. In parallel, the models that the runs need are pretrained first, each
    once, and a run starts as soon as its models are ready. Each run is deterministic on its own, so the
    results do not depend on jobs or on the order."""
    from tqdm import tqdm
    check_positive("jobs", jobs)
    t0, results, todo = time.time(), {}, {}
    asked = [[(cfg, result_path(experiment, cfg, tagged)) for cfg in configs]
             for experiment, configs, tagged, _ in suites]
    names = list(dict.fromkeys(experiment for experiment, *_ in suites))
    bar = tqdm(total=sum(map(len, asked)), desc=names[0] if len(names) == 1 else f"{len(names)} experiments",
               unit="run", file=sys.stdout)
    for runs, (experiment, _, _, analyse) in zip(asked, suites):
        for cfg, path in runs:
            saved = saved_result(cfg, path)
            if saved is None and (saved := saved_result(cfg, result_path("main", cfg))) is not None:
                write_json(saved, path)  # replaces a result of another config left at path
            if saved is not None:
                results[path] = saved
                bar.update()
                continue
            entry = todo.setdefault(json.dumps(asdict(cfg), sort_keys=True),
                                    {"cfg": cfg, "experiment": experiment, "paths": [], "analyse": False})
            entry["paths"].append(path)
            entry["analyse"] |= analyse

    def finished(entry, result):
        f, cfg = result["final"], entry["cfg"]
        bar.write(f"  {entry['experiment']} {cfg.task} {cfg.name}: Self {f['self']:.3f} "
                  f"Orig {f['orig']:.3f} gap {f['gap']:+.3f} flipped {f['n_flipped']} agreement "
                  f"{f['agreement']:.2f} ({result['seconds']:.0f} s)")
        results.update(dict.fromkeys(entry["paths"], result))
        bar.update(len(entry["paths"]))

    if jobs == 1:  # each run pretrains (or loads) its own models
        for entry in todo.values():
            finished(entry, run_once(entry["cfg"], entry["paths"], entry["analyse"]))
    else:
        needed = {}
        for entry in todo.values():
            needed.update(pretrained_models(entry["cfg"]))
        spawn = multiprocessing.get_context("spawn")  # a clean process per worker, same on every OS
        with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=spawn) as pool:
            training = {pool.submit(pretrain_quietly, cfg, path): path for path, cfg in needed.items()
                        if not is_pretrained(path)}
            waiting, running = list(todo.values()), {}
            while waiting or running:
                for entry in [e for e in waiting if not set(pretrained_models(e["cfg"])) & set(training.values())]:
                    waiting.remove(entry)
                    running[pool.submit(run_once, entry["cfg"], entry["paths"], entry["analyse"])] = entry
                done, _ = concurrent.futures.wait([*training, *running], return_when="FIRST_COMPLETED")
                for future in done:
                    if future in training:
                        future.result()  # a failed pretraining stops the suite with its error
                        del training[future]
                    else:
                        finished(running.pop(future), future.result())
    bar.close()
    print(f"{', '.join(names)}: {bar.n} runs in {time.time() - t0:.0f} s")
    return [[results[path] for _, path in runs] for runs in asked]


def run_suite(experiment, configs, tagged=False, jobs=1, analyse=True):
    """One suite's results (see run_suites)."""
    return run_suites([(experiment, configs, tagged, analyse)], jobs)[0]


def load_results(experiment):
    folder = os.path.join(RESULTS, experiment)
    results = []
    for root, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            if name.endswith(".json"):
                results.append(read_result(os.path.join(root, name)))
    return sorted(results, key=lambda r: (r["config"]["task"], r["config"]["seed"]))  # seed 2 before seed 10


def group(results):
    """{(task, "kl" | "nokl"): [results sorted by seed]}"""
    groups = {}
    for r in results:
        key = (r["config"]["task"], "kl" if r["config"]["explain"]["kl_weight"] > 0 else "nokl")
        groups.setdefault(key, []).append(r)
    return {k: sorted(v, key=lambda r: r["config"]["seed"]) for k, v in sorted(groups.items())}


# ---------------------------------------------------------------------------------------------------------
# Figures and the report

FIGURES = "figures"


def pyplot():
    """matplotlib's pyplot on a file-only backend, imported only when a figure is drawn."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


KL_STYLE = {"kl": ("-", "with KL"), "nokl": ("--", "without KL")}


def _fmt(values, digits=3, signed=False):
    mean, half = mean_ci(values)
    if math.isnan(mean):
        return "n/a"
    text = f"{mean:+.{digits}f}" if signed else f"{mean:.{digits}f}"
    return text if math.isnan(half) else f"{text} ± {half:.{digits}f}"


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
    _save_figure(fig, path)


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
            defined = ~np.isnan(values).all(0)
            ax.plot(np.array(steps)[defined], np.nanmean(values[:, defined], 0), style, color=color, marker=".",
                    label=label)
        starts = runs[0]["data"]["shift_phase_starts"]
        for start in starts if len(starts) <= 2 else (starts[0], starts[-1]):
            ax.axvline(start, color="black", lw=0.6, ls=":")
        ax.set_title(f"{title} ({len(runs)} run{'s' if len(runs) > 1 else ''})", fontsize=9)
        ax.set_xlabel("explanation-training step")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1, 0.5))
    fig.tight_layout()
    _save_figure(fig, path)


def is_coupled(evaluation):
    """The per-run rule used throughout: Self > Orig, and the flipped items explained by the current
    behaviour more often than not (Self@flipped > 0.5)."""
    return evaluation["gap"] > 0 and (evaluation["self_flipped"] or 0) > 0.5


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
    _save_figure(fig, path)


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


def plot_gaps(groups, path):
    """Final Self - Orig and Self on flipped items per task, with and without KL: mean, 95% interval over
    seeds, and every seed as a dot."""
    plt = pyplot()
    tasks = sorted({task for task, _ in groups})
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, metric, title in ((axes[0], "gap", "Self - Orig (final)"),
                              (axes[1], "self_flipped", "Self on flipped items (final)")):
        for offset, (regime, color) in zip((-0.18, 0.18), (("kl", "tab:green"), ("nokl", "tab:gray"))):
            for i, task in enumerate(tasks):
                values = [r["final"][metric] for r in groups.get((task, regime), [])]
                mean, half = mean_ci(values)
                if math.isnan(mean):
                    continue
                ax.bar(i + offset, mean, width=0.34, color=color, alpha=0.7,
                       label=KL_STYLE[regime][1] if i == 0 else None)
                if not math.isnan(half):
                    ax.errorbar(i + offset, mean, yerr=half, color="black", capsize=4)
                ax.scatter([i + offset] * len(values), values, color="black", s=10, zorder=3)
        ax.axhline(0.5 if metric == "self_flipped" else 0, color="black", lw=0.8, ls=":" if metric != "gap" else "-")
        if metric == "self_flipped":
            ax.set_ylim(-0.05, 1.05)
        ax.set_xticks(range(len(tasks)), tasks)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    _save_figure(fig, path)


def by_value(name, results):
    """{task: {knob value: [results sorted by seed]}} for a sweep's results."""
    table = {}
    for r in sorted(results, key=lambda r: r["config"]["seed"]):
        value = knob_value(r["config"], SWEEPS[name].knob)
        table.setdefault(r["config"]["task"], {}).setdefault(value, []).append(r)
    order = {v: i for i, v in enumerate(SWEEPS[name].values)}  # the sweep's own order ("full" last)
    return {task: dict(sorted(values.items(), key=lambda kv: (order.get(kv[0], len(order)), kv[0])))
            for task, values in sorted(table.items())}


def plot_sweep(name, results, path):
    """Per task: the final gap and Self/Orig on flipped items against the knob (mean, 95% interval, every
    seed as a dot), and every run's gap against its label-behaviour agreement."""
    plt = pyplot()
    sweep, table = SWEEPS[name], by_value(name, results)
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
    _save_figure(fig, path)


def sweep_table(name, results):
    sweep = SWEEPS[name]
    extra_names = {"orig_other": "Orig-other", "gap_other": "Self - Orig-other",
                   "family_agreement": "labels agree across families", "shift_learned": "shift learned"}
    rows = [f"| task | {sweep.label} | seeds | agreement | flipped items | Self | Orig | Self - Orig | "
            "Self@flipped | Orig@flipped | malformed |" + "".join(f" {extra_names[e]} |" for e in sweep.extra),
            "|---" * (11 + len(sweep.extra)) + "|"]
    for task, values in by_value(name, results).items():
        for value, runs in values.items():
            col = lambda key, **kw: _fmt([r["final"].get(key, float("nan")) for r in runs], **kw)
            rows.append(f"| {task} | {value_label(sweep.knob, value)} | {len(runs)} | {col('agreement', digits=2)} | "
                        f"{col('n_flipped', digits=0)} | {col('self')} | {col('orig')} | "
                        f"**{col('gap', signed=True)}** | {col('self_flipped', digits=2)} | "
                        f"{col('orig_flipped', digits=2)} | {col('malformed', digits=3)} |" +
                        "".join(f" {col(e, signed=e.startswith('gap'))} |" for e in sweep.extra))
    return "\n".join(rows)


def sweep_section(name, results, report_dir):
    sweep = SWEEPS[name]
    figure = os.path.join(FIGURES, f"{name}.png")
    plot_sweep(name, results, figure)
    return f"""
## Sweep: {name.replace("_", " ")}

{sweep.question} Varied: {sweep.label} (`{sweep.knob}`); everything else as in the main result's KL runs.
Command: `python eval.py sweep {name}`. The paper: {sweep.paper}.

{sweep_table(name, results)}

![{name}]({os.path.relpath(figure, report_dir)})
"""


def _save_figure(fig, path):
    plt = pyplot()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def main_table(groups):
    """Markdown table of the final metrics: mean ± 95% interval over seeds."""
    rows = ["| task | KL | seeds | Self | Orig | Self - Orig | flipped items | Self@flipped | Orig@flipped | "
            "agreement | malformed | task accuracy | shift learned |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (task, regime), runs in groups.items():
        final = [r["final"] for r in runs]
        col = lambda key, **kw: _fmt([f[key] for f in final], **kw)
        rows.append(f"| {task} | {'yes' if regime == 'kl' else 'no'} | {len(runs)} | {col('self')} | "
                    f"{col('orig')} | **{col('gap', signed=True)}** | {col('n_flipped', digits=0)} | "
                    f"{col('self_flipped', digits=2)} | {col('orig_flipped', digits=2)} | "
                    f"{col('agreement', digits=2)} | {col('malformed', digits=3)} | "
                    f"{col('task_accuracy', digits=3)} | {col('shift_learned', digits=2)} |")
    return "\n".join(rows)


def seed_table(groups):
    """Every seed's final numbers, including the flipped items split by direction."""
    rows = ["| task | KL | seed | M0 acc. (with C / without C) | Self | Orig | gap | flipped | Self@flipped | "
            "became changed: n, Self | became unchanged: n, Self | verdict flipped: n, generated / forced | "
            "untrained Self | seconds |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    num = lambda x, spec: format(x, spec) if _defined(x) else "n/a"
    for (task, regime), runs in groups.items():
        for r in runs:
            f, m0 = r["final"], r["m0"]
            probes = r.get("probes") or {}  # only the KL runs are probed; older results lack the verdict rows
            generated, forced = (probes.get(f"verdict flipped: verdict {kind}") for kind in ("generated", "forced"))
            verdicts = (f"{forced['n']}, {num(generated['accuracy'], '.2f')} / {num(forced['accuracy'], '.2f')}"
                        if forced else "n/a")
            rows.append(f"| {task} | {'yes' if regime == 'kl' else 'no'} | {r['config']['seed']} | "
                        f"{m0['accuracy_with_c']:.3f} / {m0['accuracy_without_c']:.3f} | {f['self']:.3f} | "
                        f"{f['orig']:.3f} | {f['gap']:+.3f} | {f['n_flipped']} | {num(f['self_flipped'], '.2f')} | "
                        f"{f['n_became_changed']}, {num(f['self_became_changed'], '.2f')} | "
                        f"{f['n_became_unchanged']}, {num(f['self_became_unchanged'], '.2f')} | {verdicts} | "
                        f"{r['baseline']['self']:.3f} | {r['seconds']:.0f} |")
    return "\n".join(rows)


def circuits_section(runs, experiment, report_dir):
    """Activation patching between x and x\\C in the final explainers (patching.py), if measured."""
    runs = [r for r in runs if r.get("patching")]
    if not runs:
        return ""
    if not mean_profiles(runs):
        return ("\n## Shared circuits: activation patching\n\nNo final explainer has a held-out item where removing "
                "C changes both the answer and the explanation's verdict, so there is nothing to patch.\n")
    figure = os.path.join(FIGURES, f"{experiment}_patching.png")
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

![Activation patching]({os.path.relpath(figure, report_dir)})
"""


def write_report(experiment="main", path="REPORT.md", results=None):
    """Figures and REPORT.md from results (by default every result saved under the experiment); the
    experiment folder's ABOUT.md, if there is one, goes under the title (where and why those runs were made)."""
    results = results if results is not None else load_results(experiment)
    if not results:
        raise FileNotFoundError(f"no results under {os.path.join(RESULTS, experiment)}; run `make reproduce`")
    groups = group(results)
    curves, gaps, shift, flipped = (os.path.join(FIGURES, f"{experiment}_{kind}.png")
                                    for kind in ("curves", "gap", "shift", "flipped_runs"))
    plot_curves(groups, curves)
    plot_gaps(groups, gaps)
    plot_runs({f"{task}, with KL": runs for (task, regime), runs in groups.items() if regime == "kl"}, shift)
    plot_flipped_runs(groups, flipped)
    report_dir = os.path.dirname(os.path.abspath(path))
    curves, gaps, shift, flipped = (os.path.relpath(p, report_dir) for p in (curves, gaps, shift, flipped))
    circuits = circuits_section([r for r in results if r["config"]["explain"]["kl_weight"] > 0], experiment,
                                report_dir)
    sweeps, every = "", list(results)
    for name in SWEEPS if experiment == "main" else ():  # the main report also gathers every sweep's runs
        swept = load_results(name)
        if swept:
            sweeps += sweep_section(name, swept, report_dir)
            every += swept
    prov = results[0]["provenance"]
    commits = sorted({r["provenance"]["git_commit"][:10] for r in every})
    machines = sorted({machine(r["provenance"]) for r in every})
    cfg = results[0]["config"]
    about = os.path.join(RESULTS, experiment, "ABOUT.md")
    about = open(about).read().strip() + "\n\n" if os.path.exists(about) else ""
    text = f"""# Introspective coupling: results

{about}Generated by `python eval.py report` from the {len(results)} result files under `{RESULTS}/{experiment}/`{
    " (and, below, those of each sweep under `" + RESULTS + "/SWEEP/`)" if sweeps else ""}.
Every number is the final evaluation (the last step), decided before looking; ± is the 95% t-interval
over seeds. Self and Orig are exact-match accuracies (verdict and counterfactual answer) of the model's
generated explanations on {cfg['n_eval']} held-out counterfactual pairs, against labels from its current
behaviour (Self) and from M0's behaviour (Orig, the kind of labels it was trained on).

## Main result

{main_table(groups)}

![Self and Orig over training]({curves})

Lines: the mean over seeds; bands: its 95% interval. Below, every seed's final gap and Self@flipped is a dot.

![Final gap and Self on flipped items]({gaps})

Concurrent post-training (with KL): the shift is learnt within the first evaluations, the frozen labels
then describe a fraction "agreement" of the current behaviour, and no new label is ever given; do the
explanations of the flipped items follow the shift?

![Explanations during the shift]({shift})

Every run, with KL (green: coupled at the end, Self > Orig and Self@flipped > 0.5; red: not). Does a run
that fails at the end never follow the shift, or follow it and lose it?

{lost_coupling_text(groups)}

![Self@flipped and Orig@flipped of every run]({flipped})
{circuits}
## Every seed

"Became changed": flipped items where removing C did not change M0's answer but now does; "became
unchanged": the reverse. "Verdict flipped" (KL runs): the same two kinds of item, scored on the verdict
alone, as generated (malformed counts as wrong) and as a forced choice between "remain" and "become"
after the query and " would" (never malformed): near 0.5 forced, the explainer does not know the new
verdict; forced well above generated, it knows but does not write it well. "Untrained Self": M0's own
explanations before explanation training (step 0).

{seed_table(groups)}

{sweeps}
## Provenance

Commits: {', '.join(commits)}; Python {prov['python']}, torch {prov['torch']}, numpy {prov['numpy']},
tiktoken {prov['tiktoken']}; {prov['threads']} threads; {prov['platform']}. Computed on: {'; '.join(machines)}.
Each result file holds its full config.
"""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
    print(f"wrote {path} and figures under {FIGURES}/")


# ---------------------------------------------------------------------------------------------------------
# Command line

def _add_config_flags(parser, config_cls, prefix="", skip=()):
    for f in fields(config_cls):
        if f.name in skip or f.type in (PretrainConfig, ExplainConfig, "PretrainConfig", "ExplainConfig"):
            continue
        default = getattr(config_cls(), f.name) if config_cls is not RunConfig else f.default
        parser.add_argument(f"--{prefix}{f.name.replace('_', '-')}", dest=f"{prefix.replace('-', '_')}{f.name}",
                            type=type(default), default=default)


def config_from_args(args):
    """A RunConfig from parsed flags: pretraining flags start with pretrain-, the rest are the run's
    and the explanation stage's."""
    values = vars(args)
    pre = {f.name: values[f"pretrain_{f.name}"] for f in fields(PretrainConfig) if f"pretrain_{f.name}" in values}
    exp = {f.name: values[f.name] for f in fields(ExplainConfig)}
    run = {f.name: values[f.name] for f in fields(RunConfig) if f.name in values}
    if values.get("no_kl"):
        exp["kl_weight"] = 0.0
    return RunConfig(**run, pretrain=PretrainConfig(**pre), explain=ExplainConfig(**exp))


def parse_list(text, name, kind):
    """"a,b,c" -> [a, b, c], with a one-line error naming the bad value; for integers "0-9" is a range."""
    try:
        values = []
        for v in (v.strip() for v in text.split(",") if v.strip()):
            low, dash, high = v.partition("-")
            values += list(range(int(low), int(high) + 1)) if kind is int and dash and low else [kind(v)]
    except ValueError:
        allowed = "integers or ranges like 0-9" if kind is int else f"{kind.__name__} values"
        raise ValueError(f"--{name}={text!r} must be a comma-separated list of {allowed}") from None
    if not values:
        raise ValueError(f"--{name} is empty; give at least one value")
    for task in values if name == "tasks" else ():
        get_task(task)
    return values


JOBS_HELP = "runs in parallel (default: one per CPU core; on CUDA up to 4)"


def jobs(args):
    return args.jobs or default_jobs(args.device)


def build_parser():
    parser = argparse.ArgumentParser(description="Introspective coupling experiments.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="one coupling run, printed live")
    run.add_argument("--task", default="hint", help=f"one of: {', '.join(TASKS)}")
    _add_config_flags(run, RunConfig, skip=("task",))
    _add_config_flags(run, ExplainConfig)
    _add_config_flags(run, PretrainConfig, prefix="pretrain-", skip=("task", "seed"))
    run.add_argument("--no-kl", action="store_true", help="explanation training without the KL term")
    run.add_argument("--out", default=None, help="results JSON (default results/runs/TASK/NAME.json)")
    quick = sub.add_parser("quick", help="one task, one seed, with and without KL, then a report")
    reproduce = sub.add_parser("reproduce", help="the main result: 3 tasks x seeds x (KL, no KL), then the report")
    reproduce.add_argument("--seeds", default="0,1,2", help="comma-separated integers or ranges (0-29); "
                           "3 seeds fit 10 minutes on 2 CPU cores, 0-29 give the main result in the README")
    sweep = sub.add_parser("sweep", help="one knob varied over several seeds: " + ", ".join(SWEEPS))
    sweep.add_argument("name", help=f"one of: {', '.join(SWEEPS)}")
    sweep.add_argument("--tasks", default="", help=f"comma-separated, from: {', '.join(TASKS)} (default: the "
                       "sweep's own: hint, judgement for agreement, all three for shift_location)")
    sweep.add_argument("--seeds", default="0,1,2", help="comma-separated integers or ranges (0-9)")
    everything = sub.add_parser("reproduce-all", help="the main result, then every sweep, then the report")
    for p in (quick, reproduce, sweep, everything):
        p.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
        p.add_argument("--jobs", type=int, default=0, help=JOBS_HELP)
    report = sub.add_parser("report", help="figures and REPORT.md from saved results")
    report.add_argument("--experiment", default="main",
                        help="a folder under results/ (main writes ./REPORT.md, others results/NAME/REPORT.md)")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "run":
            cfg = config_from_args(args)
            out = args.out or result_path("runs", cfg, tagged=True)
            result = run_coupling(cfg, out)
            figure = out.removesuffix(".json") + ".png"
            plot_runs({f"{cfg.task} seed {cfg.seed}: {cfg.schedule} {cfg.shift} {cfg.shift_size:g}, "
                       f"noise {cfg.label_noise:g}, KL {cfg.explain.kl_weight:g}": [result]}, figure)
            f = result["final"]
            print(f"final: Self {f['self']:.3f}, Orig {f['orig']:.3f}, gap {f['gap']:+.3f}, {f['n_flipped']} flipped "
                  f"(Self@flipped {f['self_flipped']:.2f}) -> {out}, {figure}")
        elif args.command == "quick":
            results = run_suite("quick", main_configs(tasks=("hint",), seeds=(0,), device=args.device),
                                jobs=jobs(args))
            write_report("quick", "results/quick/REPORT.md", results)
        elif args.command == "reproduce":
            seeds = parse_list(args.seeds, "seeds", int)
            results = run_suite("main", main_configs(seeds=seeds, device=args.device), jobs=jobs(args))
            results += saved_main_runs(seeds, args.device)
            write_report("main", results=sorted(results, key=lambda r: r["config"]["seed"]))
        elif args.command == "sweep":
            if args.name not in SWEEPS:
                raise ValueError(f"sweep {args.name!r} is unknown; allowed: {', '.join(SWEEPS)}")
            tasks = parse_list(args.tasks, "tasks", str) if args.tasks else None
            seeds = parse_list(args.seeds, "seeds", int)
            run_suite(args.name, sweep_configs(args.name, tasks, seeds, args.device), True, jobs(args),
                      analyse=False)
            write_report("main")
        elif args.command == "reproduce-all":
            run_suites([("main", main_configs(device=args.device), False, True)] +
                       [(name, sweep_configs(name, device=args.device), True, False) for name in SWEEPS], jobs(args))
            write_report("main")
        elif args.command == "report":
            name = args.experiment
            write_report(name, "REPORT.md" if name == "main" else os.path.join(RESULTS, name, "REPORT.md"))
    except (ValueError, FileNotFoundError) as err:
        parser.exit(2, f"error: {err}\n")


if __name__ == "__main__":
    main()
