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
import copy
import json
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, fields

import numpy as np
import tiktoken
import torch

from data import N_UNITS, TASKS, check_fraction, check_positive, encode, get_task
from explain import (Labels, add_label_noise, behaviour, explain, explanation_data, labels_from_behaviour,
                     pair_cases)
from train import ExplainConfig, PretrainConfig, case_logprobs, kl_to_reference, pretrain, train_explainer

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


def mean_ci(values):
    """Mean and half-width of its 95% t-interval over seeds (nan half-width for a single value)."""
    values = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    if len(values) == 0:
        return float("nan"), float("nan")
    if len(values) == 1:
        return float(values[0]), float("nan")
    t = T_975[len(values) - 2] if len(values) <= 31 else 1.96
    return float(values.mean()), float(t * values.std(ddof=1) / math.sqrt(len(values)))


# ---------------------------------------------------------------------------------------------------------
# One run

@dataclass
class RunConfig:
    task: str = "hint"
    seed: int = 0
    shift: str = "default"  # a direction of the task's shift, "none", or "default" (the task's own)
    shift_size: float = -1.0  # fraction of held-out units shifted; -1: the task's default
    label_noise: float = 0.0
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
        if self.shift != "none" and self.shift not in task.shift_directions:
            raise ValueError(f"shift={self.shift!r} is unknown for task {self.task}; allowed: none, "
                             f"{', '.join(task.shift_directions)}")
        check_fraction("shift_size", self.shift_size)
        check_fraction("label_noise", self.label_noise)
        for name in ("n_explain", "n_eval", "n_kl_prompts"):
            check_positive(name, getattr(self, name))

    @property
    def name(self):
        return f"seed{self.seed}_{'kl' if self.explain.kl_weight > 0 else 'nokl'}"


# The concurrent shift each task uses by default (direction, fraction of held-out units).
DEFAULT_SHIFT = {"hint": ("both", 0.2), "judgement": ("flip", 0.3), "refusal": ("both", 0.2)}


def provenance():
    """What a result needs beside it to be reproduced: versions, commit, machine."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip() or "unknown"
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True).stdout.strip())
    except OSError:
        commit, dirty = "unknown", False
    return {"git_commit": commit, "git_dirty": dirty, "python": platform.python_version(),
            "torch": torch.__version__, "numpy": np.__version__, "tiktoken": tiktoken.__version__,
            "platform": platform.platform(), "threads": torch.get_num_threads()}


def write_json(obj, path):
    """Write JSON through a temporary file and a rename: a result file is whole or absent."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def run_coupling(cfg: RunConfig, out_path=None, runs_dir=RUNS, log=print):
    """One coupling run; returns the result dict (also written to out_path if given)."""
    task, t0 = get_task(cfg.task), time.time()
    m0_path = os.path.join(runs_dir, cfg.task, f"seed{cfg.seed}", "m0.pt")
    m0, m0_report = pretrain(cfg.pretrain, m0_path, log=log)
    split = task.split(cfg.seed, cfg.n_explain, cfg.n_eval)
    rng = np.random.default_rng([cfg.seed, 5])

    # Stage A: frozen labels from M0's own behaviour (optionally with label noise).
    with_c, without_c = behaviour(m0, task, split.explain_items)
    train_labels = labels_from_behaviour(with_c, without_c)
    if cfg.label_noise:
        train_labels, _ = add_label_noise(task, train_labels, with_c, cfg.label_noise, rng)
    m0_logp = case_logprobs(m0, task, pair_cases(task, split.eval_items))
    orig_labels = labels_from_behaviour(*_split_pairs(m0_logp.argmax(-1).numpy()))

    # The concurrent shift: a new world for some held-out units, trained only on cases that change.
    world = split.world
    if cfg.shift != "none" and cfg.shift_size > 0:
        world, shifted = task.shift(split.world, rng, split.heldout_units, cfg.shift_size, cfg.shift)
        shift_cases = task.changed_cases(rng, split.world, world)
    else:
        shifted, shift_cases = np.array([], dtype=int), []
    shift_data = [(task.encode(c), task.teacher(world, c)) for c in shift_cases]

    # KL prompts: cases on units that do not shift, plus the explanation items with and without C.
    unshifted = np.setdiff1d(np.arange(N_UNITS), shifted)
    kl_cases = {task.random_case(rng, unshifted) for _ in range(cfg.n_kl_prompts)}
    kl_cases = sorted(kl_cases | set(pair_cases(task, split.explain_items)))
    kl_prompts = [task.encode(c) for c in kl_cases]

    explain_data = explanation_data(task, split.explain_items, train_labels)
    eval_targets = np.array([task.teacher(world, c) for c in pair_cases(task, split.eval_items)])
    shift_probe = shift_cases[:: max(1, len(shift_cases) // 2000)]
    curve = []

    def on_eval(step, model):
        logp = case_logprobs(model, task, pair_cases(task, split.eval_items))
        current = labels_from_behaviour(*_split_pairs(logp.argmax(-1).numpy()))
        metrics = coupling_metrics(explain(model, task, split.eval_items), current, orig_labels)
        metrics.update(step=step, seconds=round(time.time() - t0, 2),
                       task_accuracy=_mean(logp.argmax(-1).numpy() == eval_targets),
                       kl_to_m0=float(kl_to_reference(logp, m0_logp)),
                       shift_learned=_shift_learned(model, task, world, shift_probe))
        curve.append(metrics)
        log(f"  {cfg.task} {cfg.name} step {step:4d}: Self {metrics['self']:.3f} Orig {metrics['orig']:.3f} "
            f"gap {metrics['gap']:+.3f} flipped {metrics['n_flipped']:3d} (Self@flipped "
            f"{metrics['self_flipped']:.2f}) agreement {metrics['agreement']:.2f} "
            f"malformed {metrics['malformed']:.2f}")

    model = copy.deepcopy(m0)
    train_explainer(model, m0, cfg.explain, cfg.seed, explain_data, shift_data, kl_prompts, task.answer_ids,
                    on_eval)
    result = {"config": asdict(cfg), "provenance": provenance(), "m0": m0_report,
              "data": {"n_explain_items": len(explain_data), "n_eval_items": len(split.eval_items),
                       "n_shifted_units": len(shifted), "n_shift_cases": len(shift_data),
                       "n_kl_prompts": len(kl_prompts),
                       "train_changed_fraction": float(train_labels.changed.mean()),
                       "label_noise_flipped": int(round(cfg.label_noise * len(train_labels)))},
              "baseline": curve[0], "final": curve[-1], "curve": curve,
              "seconds": round(time.time() - t0, 2)}
    if out_path:
        write_json(result, out_path)
    return result


def _split_pairs(answers):
    half = len(answers) // 2
    return answers[:half], answers[half:]


def _shift_learned(model, task, world, cases):
    """Fraction of the shift's cases that the model now answers the new way (nan without a shift)."""
    if not cases:
        return float("nan")
    answers = case_logprobs(model, task, cases).argmax(-1).numpy()
    return _mean(answers == np.array([task.teacher(world, c) for c in cases]))
