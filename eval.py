"""How coupling is measured in one run, end to end (the metrics themselves are in metrics.py).

One run follows the paper's steps: pretrain (or load) M0; freeze its self-labels E(M0) on the
explanation items; fine-tune a copy on them with lambda * KL(current || M0) while, optionally, a
concurrent objective shifts the behaviour of some held-out units; every few steps recompute the current
behaviour's labels E(M_t) on held-out items and score the model's generated explanations against both:
    Self = accuracy against E(M_t)      Orig = accuracy against E(M0)
Coupling is Self > Orig. The two differ only on flipped items (E(M0) != E(M_t)).

    python eval.py run --task hint --seed 0      one run, printed live; its result and explainer are saved
"""
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field, fields, replace

import numpy as np

from config import (SEED_MAX, Parser, UserError, add_config_flags, check_ranges, check_writable, config_from_flags,
                    differences, from_dict, option, run_command, science)
from data import N_UNITS, TASKS, get_task, rng
from explain import (QUERY_KINDS, add_label_noise, answers_with_c, behaviour, current_labels, explanation_data,
                     explanations_of, labels_from_behaviour, mean_or_nan, mix_labels, pair_cases, queries_for)
from features import MAX_EXPLAINED_WORDS, MAX_UNLABELLED_WORDS, TRIGGER_EFFECTS, explained, held_out, word_checks
from metrics import balanced, coupling_metrics, failure_kind
from model import pick_device
from train import (REPO, ExplainConfig, PretrainConfig, active_phase, behaviour_accuracy, case_logprobs, explainer_from,
                   kl_to_reference, m0_path, pretrain, provenance, save_checkpoint, train_explainer, write_json)
import train  # train.RUNS_DIR read when called, so a test can point it elsewhere

REFERENCE = os.path.join(REPO, "results")  # the published reference: read, never written by a user's command


# ---------------------------------------------------------------------------------------------------------
# One run's settings

SCHEDULES = ("none", "sharp", "gradual", "oscillating")
# The concurrent shift each task uses by default (direction, fraction of held-out units).
DEFAULT_SHIFT = {"hint": ("reduce", 0.2), "judgement": ("flip", 0.3), "refusal": ("reduce", 0.2),
                 "twohop": ("reduce", 0.2)}
# The other model family that supplies labels when other_labels > 0: another seed, a deeper and wider
# network, and a world in which a fifth of the units' facts differ (two networks that imitate the same
# deterministic teacher perfectly agree on every item, so the family's own idiosyncrasies are drawn here,
# as Llama's and Qwen's differ).
OTHER_FAMILY = {"n_layer": 3, "n_embd": 96, "seed_offset": 1000, "world_variation": 0.2}


@dataclass
class RunConfig:
    task: str = option("hint", "the task", choices=TASKS)
    seed: int = option(0, "seed of the world, the items, M0 and every batch", 0, SEED_MAX)
    shift: str = option("default", "the concurrent shift: a direction of the task's own (reduce, acquire, "
                        "both; judgement: flip), trigger (a new word, the novel behaviour), or default",
                        choices=("default", "trigger", "reduce", "acquire", "both", "flip"))
    shift_size: float = option(-1.0, "fraction of held-out units shifted; -1: the task's default (at most "
                               "what the direction can reach)", -1.0, 1.0)
    schedule: str = option("sharp", "none: no shift; sharp: every shifted unit from shift_at on; gradual: "
                           "they join in ten groups over ramp_steps; oscillating: shifted back at back_at",
                           choices=SCHEDULES)
    shift_at: int = option(0, "explanation-training step at which the shift starts (before the last step)",
                           0, 100_000)
    ramp_steps: int = option(150, "gradual schedule: steps over which the shifted units join", 1, 100_000)
    back_at: int = option(150, "oscillating schedule: step from which the shift is trained back", 1, 100_000)
    label_noise: float = option(0.0, "fraction of explanation labels whose verdict is flipped", 0.0, 1.0)
    other_labels: float = option(0.0, "fraction of explanation labels taken from another model family", 0.0, 1.0)
    n_explain: int = option(900, "explanation-training items (from one half of the units; at most what can be "
                            "drawn)", 1, 20_000)
    n_eval: int = option(900, "held-out evaluation items (from the other half; at most what can be drawn)",
                         1, 20_000)
    validation: float = option(0.0, "fraction of the explanation half's units held out of explanation training: "
                               "the explainer is validated on their items' frozen labels E(M0) at every "
                               "evaluation, and the run reports and keeps the earliest evaluation with the "
                               "best validation accuracy (0: none; the last evaluation)", 0.0, 0.5)
    n_kl_prompts: int = option(4096, "task prompts drawn for the KL term (plus the explanation items)",
                               1, 100_000)
    explained_features: int = option(1, "with shift=trigger, the features explanation labels cover: the task's "
                                     "C, then nonsense words each with its own effect, which M0 learns; the "
                                     "trigger word stays held out", 1, MAX_EXPLAINED_WORDS + 1)
    unlabelled_features: int = option(0, "with shift=trigger, nonsense words M0 learns, each with its own effect, "
                                      "that no explanation label covers; the explanations are asked about them on "
                                      "held-out units", 0, MAX_UNLABELLED_WORDS)
    feature_items: int = option(300, "explanation items per explained nonsense word (explained_features > 1; "
                                "the task's C keeps n_explain)", 1, 5000)
    trigger_effect: str = option("last", "with shift=trigger, what blorp does: last, every answer becomes the task's "
                                 "last (an effect no other word has); first, the first (explained word 2's effect)",
                                 choices=tuple(TRIGGER_EFFECTS))
    query: str = option("plain", "what precedes the explanation question: plain, the prompt's body alone; slot, its "
                        "answer slot too; own answer, the slot and the model's own answer with C; random answer, "
                        "the slot and a random answer (the control)", choices=QUERY_KINDS)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    explain: ExplainConfig = field(default_factory=ExplainConfig)

    def __post_init__(self):
        check_ranges(self)
        task = get_task(self.task)
        self.pretrain = replace(self.pretrain, task=self.task, seed=self.seed,
                                feature_words=self.explained_features - 1 + self.unlabelled_features)
        if self.shift == "default":
            self.shift = DEFAULT_SHIFT[self.task][0]
        if self.shift_size == -1:
            self.shift_size = DEFAULT_SHIFT[self.task][1]
        elif self.shift_size < 0:
            raise UserError(f"shift_size={self.shift_size} must be -1 (the task's default) or lie in [0, 1]")
        if self.shift != "trigger" and self.shift not in task.shift_directions:
            raise UserError(f"shift={self.shift!r} is unknown for task {self.task}; allowed: trigger, "
                             f"{', '.join(task.shift_directions)}")
        if self.shift == "trigger" and self.schedule not in ("none", "sharp"):
            raise UserError(f"schedule={self.schedule!r} is not available with shift=trigger; allowed: none, sharp")
        for name, value, alone in (("explained_features", self.explained_features, 1),
                                   ("unlabelled_features", self.unlabelled_features, 0),
                                   ("trigger_effect", self.trigger_effect, "last")):
            if value != alone and self.shift != "trigger":
                raise UserError(f"{name}={value} needs shift=trigger (the held-out feature); with shift={self.shift} "
                                 f"it must be {alone}")
        if self.explain.shift_in == "word" and self.shift != "trigger":
            raise UserError(f"shift_in='word' needs shift=trigger (the held-out word's embedding); with "
                             f"shift={self.shift} use all, units or layers")
        if self.explained_features == 1 and self.feature_items != RunConfig.feature_items:
            raise UserError(f"feature_items={self.feature_items} is used only with explained_features > 1; "
                             f"with explained_features=1 it must be {RunConfig.feature_items}")
        if self.validation and self.query != "plain":
            raise UserError(f"validation={self.validation} needs query='plain'; with query={self.query!r} it must be 0")
        steps = self.explain.steps
        if not 0 <= self.shift_at < steps:
            raise UserError(f"shift_at={self.shift_at} must lie in [0, {steps - 1}] (explanation steps {steps})")
        if self.schedule == "gradual" and not 1 <= self.ramp_steps <= steps - self.shift_at:
            raise UserError(f"ramp_steps={self.ramp_steps} must lie in [1, {steps - self.shift_at}] "
                             f"(the steps left after shift_at={self.shift_at})")
        if self.schedule == "oscillating" and not self.shift_at < self.back_at < steps:
            raise UserError(f"back_at={self.back_at} must lie in [{self.shift_at + 1}, {steps - 1}] (after "
                             f"shift_at={self.shift_at}, before the last step)")
        if self.other_labels:  # the other family's settings too, before anything is trained
            try:
                other_family(self)
            except UserError as err:
                raise UserError(f"other_labels={self.other_labels} needs another model family with this "
                                f"run's settings, but for it: {err}") from None
        if self.explain.lora_rank > self.pretrain.n_embd:
            raise UserError(f"lora_rank={self.explain.lora_rank} must be at most the model width "
                             f"n_embd={self.pretrain.n_embd}")

    @property
    def name(self):
        """seed0_kl_1a2b3c4d: the seed, whether KL is on, and a hash of the settings that differ from the
        defaults (science settings only), so runs of one seed with other settings never share a file."""
        defaults = science(RunConfig(task=self.task, seed=self.seed))
        digest = hashlib.sha1(json.dumps(differences(science(self), defaults), sort_keys=True).encode())
        return f"seed{self.seed}_{'kl' if self.explain.kl_weight > 0 else 'nokl'}_{digest.hexdigest()[:8]}"


def config_from_dict(saved):
    """A RunConfig from a saved result's config dict (refused when this code's fields differ)."""
    return from_dict(RunConfig, saved)


def identity(config):
    """What makes two saved runs the same run: their science settings (a config dict or RunConfig);
    device, threads and checkpoint interval are runtime settings and never count."""
    return science(config if isinstance(config, RunConfig) else config_from_dict(config))


def other_family(cfg: RunConfig):
    """The pretraining config of the model family that supplies other_labels (OTHER_FAMILY)."""
    return replace(cfg.pretrain, seed=cfg.seed + OTHER_FAMILY["seed_offset"], world_seed=cfg.seed,
                   world_variation=OTHER_FAMILY["world_variation"], n_layer=OTHER_FAMILY["n_layer"],
                   n_embd=OTHER_FAMILY["n_embd"])


def pretrained_models(cfg: RunConfig, runs_dir=None):
    """The models a run pretrains (or loads) before its explanation stage: {checkpoint path: config}."""
    models = [cfg.pretrain] + ([other_family(cfg)] if cfg.other_labels else [])
    return {m0_path(m, runs_dir): m for m in models}


# ---------------------------------------------------------------------------------------------------------
# One run's pieces, in the order the run uses them

@dataclass
class ShiftPhase:
    """From step `start` on, the shift objective trains `cases` towards their teacher answers in `world`."""
    start: int
    world: dict
    cases: list


def frozen_labels(cfg: RunConfig, task, items, m0, runs_dir=None, log=print):
    """Stage A: E(M0) on the explanation items, a fraction other_labels of them from another model
    family's behaviour, a fraction label_noise with the verdict flipped. Returns (labels, the other
    family's model or None, counts, M0's answers with C)."""
    m0_with_c, without_c = behaviour(m0, task, items)
    with_c, labels, other, counts = m0_with_c, labels_from_behaviour(m0_with_c, without_c), None, {}
    if cfg.other_labels:
        other, _ = pretrain(other_family(cfg), m0_path(other_family(cfg), runs_dir), log=log)
        other_with_c, other_without_c = behaviour(other, task, items)
        labels, taken = mix_labels(labels, labels_from_behaviour(other_with_c, other_without_c), cfg.other_labels,
                                   rng(cfg.seed, "label_mix"))
        with_c = with_c.copy()
        with_c[taken] = other_with_c[taken]  # label noise keeps each label consistent with its source
        counts["other_labels_taken"] = len(taken)
    if cfg.label_noise:
        labels, flipped = add_label_noise(task, labels, with_c, cfg.label_noise, rng(cfg.seed, "label_noise"))
        counts["label_noise_flipped"] = len(flipped)
    return labels, other, counts, m0_with_c


def check_feasible(cfg: RunConfig):
    """(task, split) of a run, or a UserError if the task cannot supply its items or its shift: checked
    before anything is trained, for one run and for every run of a suite."""
    task = get_task(cfg.task)
    split = task.split(cfg.seed, cfg.n_explain, cfg.n_eval, cfg.validation)
    if cfg.schedule != "none" and cfg.shift != "trigger":
        task.shift(split.world, rng(cfg.seed, "shift_units"), split.heldout_units, cfg.shift_size, cfg.shift)
    explained(cfg, task, split)
    word_checks(held_out(cfg, task, split)[0], cfg.seed, split)
    return task, split


def shift_schedule(cfg: RunConfig, task, probed, split):
    """The concurrent shift as a list of ShiftPhase, and every unit it ever shifts. Shift data are only
    cases whose answer changes ("pure" shift data): a new world for some held-out units, or the trigger
    word on held-out units."""
    none = np.array([], dtype=int)
    if cfg.schedule == "none":
        return [], none
    if cfg.shift == "trigger":
        case_rng = rng(cfg.seed, "shift_cases")
        cases = {probed.random_item(case_rng, split.world, split.heldout_units) for _ in range(20000)}
        cases = sorted(c for c in cases if probed.teacher(split.world, c) != task.teacher(split.world, c[:-1]))
        return [ShiftPhase(cfg.shift_at, split.world, cases)], none
    world, shifted = task.shift(split.world, rng(cfg.seed, "shift_units"), split.heldout_units, cfg.shift_size,
                                cfg.shift)
    cases_to = lambda new_world: task.changed_cases(rng(cfg.seed, "shift_cases"), split.world, new_world)
    if cfg.schedule == "sharp":
        return [ShiftPhase(cfg.shift_at, world, cases_to(world))], shifted
    if cfg.schedule == "oscillating":  # the same cases, trained back to their old answers from back_at on
        cases = cases_to(world)
        return [ShiftPhase(cfg.shift_at, world, cases), ShiftPhase(cfg.back_at, split.world, cases)], shifted
    order, phases = rng(cfg.seed, "gradual_order").permutation(shifted), []
    for group, n_active in enumerate(np.linspace(0, len(order), 11)[1:].round().astype(int)):
        partial = {key: facts.copy() for key, facts in split.world.items()}  # facts are indexed by unit
        for key, facts in partial.items():
            facts[order[:n_active]] = world[key][order[:n_active]]
        phases.append(ShiftPhase(cfg.shift_at + round(group * cfg.ramp_steps / 10), partial, cases_to(partial)))
    return phases, shifted


def kl_prompts(cfg: RunConfig, task, explain_items, m0, shifted):
    """The KL term's prompts with M0's answer distributions: cases on units that never shift, plus the
    explanation items with and without C."""
    unshifted, kl_rng = np.setdiff1d(np.arange(N_UNITS), shifted), rng(cfg.seed, "kl_prompts")
    cases = {task.random_case(kl_rng, unshifted) for _ in range(cfg.n_kl_prompts)}
    cases = sorted(cases | set(pair_cases(task, explain_items)))
    return list(zip([task.encode(c) for c in cases], case_logprobs(m0, task, cases)))


class Validation:
    """RunConfig.validation: the explainer's accuracy on the frozen labels E(M0) of items on explanation-
    half units it never trains on, at each evaluation, and a copy of the model at the earliest best one,
    which the run then reports and keeps. Only frozen labels are read: choosing when to stop knows
    nothing of the shift."""

    def __init__(self, task, items, m0):
        self.task, self.items, self.labels = task, items, current_labels(m0, task, items)[0]
        self.best, self.best_index, self.best_state = -1.0, None, None

    def accuracy(self, model):
        return mean_or_nan(explanations_of(model, self.task, self.items).matches(self.labels))

    def __call__(self, index, model):
        accuracy = self.accuracy(model)
        if accuracy > self.best:
            self.best, self.best_index = accuracy, index
            self.best_state = {name: value.detach().clone() for name, value in model.state_dict().items()}
        return accuracy


class Evaluator:
    """Called by stage B at every evaluation: E(M_t) from the current behaviour on the held-out pairs
    (held_out), the generated explanations scored against it (Self) and against E(M0) (Orig), the task
    accuracy against the world the last step trained towards, how far the shift is learnt, and the
    losses. The words M0 learnt, explained or not, are asked about on held-out units too (word_checks),
    scored apart as explained_* and unlabelled_*; with validation, the explainer is validated on frozen
    labels (Validation, recorded as "validation"). phases, shifted: shift_schedule's; other: the other
    model family, whose labels the explanations are also scored against."""

    def __init__(self, cfg, split, m0, phases, shifted, other=None, log=print):
        task = get_task(cfg.task)
        self.cfg, self.phases, self.log = cfg, phases, log
        self.probed, self.items = probed, items = held_out(cfg, task, split)
        self.checks = {kind: items for kind, items in word_checks(probed, cfg.seed, split).items() if items}
        self.validation = Validation(task, split.validation_items, m0) if cfg.validation else None
        self.checks_original = {kind: current_labels(m0, probed, items)[0] for kind, items in self.checks.items()}
        units = set(shifted.tolist())  # the trigger shifts no unit's world: its flips have no unit cause
        self.shifted = np.array([bool(units & set(probed.units_of(i))) for i in items]) if units else None
        self.original, self.m0_logp = current_labels(m0, probed, items)
        self.other = current_labels(other, probed, items)[0] if other else None
        self.targets = [np.array([probed.teacher(world, c) for c in pair_cases(probed, items)])
                        for world in [split.world] + [p.world for p in phases]]
        self.shift_probes = [p.cases[:: max(1, len(p.cases) // 2000)] for p in phases]
        self.curve, self.t0 = [], time.time()

    def __call__(self, step, model, losses):
        current, logp = current_labels(model, self.probed, self.items)
        with_c = answers_with_c(logp)
        explanations = explanations_of(model, self.probed, self.items,
                                       queries_for(self.cfg.query, self.cfg.seed, self.probed, with_c, "held_out"))
        metrics = coupling_metrics(explanations, current, self.original, with_c, self.shifted)
        phase = active_phase([p.start for p in self.phases], max(step - 1, 0))  # what the last step trained
        metrics.update(step=step, seconds=round(time.time() - self.t0, 2), **losses,
                       task_accuracy=mean_or_nan(logp.argmax(-1).numpy() == self.targets[0 if phase is None else phase + 1]),
                       kl_to_m0=float(kl_to_reference(logp, self.m0_logp)),
                       shift_learned=float("nan") if phase is None else
                       behaviour_accuracy(model, self.probed, self.phases[phase].world, self.shift_probes[phase]))
        if self.other is not None:  # Orig for the other family: its behaviour, the labels' other source
            metrics.update(orig_other=mean_or_nan(explanations.matches(self.other)),
                           family_agreement=mean_or_nan(self.other.matches(self.original)))
            metrics["gap_other"] = metrics["self"] - metrics["orig_other"]
        if self.validation:
            metrics["validation"] = self.validation(len(self.curve), model)
        for kind, items in self.checks.items():  # the words M0 learnt: explained_* and unlabelled_*
            now, check_logp = current_labels(model, self.probed, items)
            asked = queries_for(self.cfg.query, self.cfg.seed, self.probed, answers_with_c(check_logp), kind)
            said = explanations_of(model, self.probed, items, asked)
            metrics.update({f"{kind}_self": mean_or_nan(said.matches(now)),
                            f"{kind}_orig": mean_or_nan(said.matches(self.checks_original[kind])),
                            f"{kind}_balanced_self": balanced(said.matches(now), now.changed == 1),
                            f"{kind}_malformed": mean_or_nan(said.changed < 0)})
        self.curve.append(metrics)
        self.log(f"  {self.cfg.task} {self.cfg.name} step {step:4d}: Self {metrics['self']:.3f} Orig "
                 f"{metrics['orig']:.3f} gap {metrics['gap']:+.3f} (input-blind {metrics['blind_gap']:+.3f}, "
                 f"C-blind {metrics['c_blind_gap']:+.3f}) flipped {metrics['n_flipped']:3d} tracking "
                 f"{metrics['tracking']:+.2f} (verdict {metrics['verdict_tracking']:+.2f}) malformed "
                 f"{metrics['malformed']:.2f} | losses: explanation {losses['explain_loss']:.3f} shift "
                 f"{losses['shift_loss']:.3f} KL {losses['kl_loss']:.4f}"
                 + "".join(f" | {kind} words: Self {metrics[kind + '_self']:.3f}" for kind in self.checks)
                 + (f" | validation {metrics['validation']:.3f}" if self.validation else ""))


# ---------------------------------------------------------------------------------------------------------
# One run

def run_coupling(cfg: RunConfig, out_path=None, runs_dir=None, log=print):
    """One coupling run, the paper's steps in order; returns the result dict (also written to out_path,
    with the final explainer beside it, which analyse_run and show read)."""
    t0 = time.time()
    # The items: explanation items from one half of the units, held-out pairs from the other, and the
    # concurrent shift of some held-out units' behaviour (all refused here, before any training, if the
    # task cannot supply them). With the trigger, the explanation items may also ask about other words.
    task, split = check_feasible(cfg)
    labelled, explain_items = explained(cfg, task, split)
    probed, eval_items = held_out(cfg, task, split)
    phases, shifted = shift_schedule(cfg, task, probed, split)
    # M0: the starting model, trained from scratch on the task's behaviour (or loaded).
    m0, m0_report = pretrain(cfg.pretrain, m0_path(cfg.pretrain, runs_dir), log=log)
    # Stage A: B(M0) on the explanation items gives the frozen labels E(M0), never refreshed.
    train_labels, other, label_counts, m0_with_c = frozen_labels(cfg, labelled, explain_items, m0, runs_dir, log)
    evaluate = Evaluator(cfg, split, m0, phases, shifted, other, log)
    # Stage B: learn to explain on the frozen labels, KL to M0 on task prompts, the shift alongside;
    # Self and Orig are measured every eval_every steps.
    model = explainer_from(m0, cfg.explain.lora_rank, cfg.explain.dropout)
    explain_data = explanation_data(labelled, explain_items, train_labels,  # own answer: M0's, as the labels
                                    queries_for(cfg.query, cfg.seed, labelled, m0_with_c, "explain"))
    shift_data = [(p.start, [(probed.encode(c), probed.teacher(p.world, c)) for c in p.cases]) for p in phases]
    kl_data = kl_prompts(cfg, labelled, explain_items, m0, shifted)
    train_explainer(model, cfg.explain, cfg.seed, explain_data, shift_data, kl_data, task.answer_ids, evaluate)
    # The evaluation reported: the last, or with validation the earliest best on the frozen labels.
    reported = evaluate.validation.best_index if evaluate.validation else len(evaluate.curve) - 1
    if evaluate.validation:
        model.load_state_dict(evaluate.validation.best_state)
    result = {"config": asdict(cfg), "provenance": provenance(), "m0": m0_report,
              "n_trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
              "data": {"n_explain_items": len(explain_data), "n_eval_items": len(eval_items),
                       "n_check_items": len(evaluate.checks.get("explained", [])),
                       "n_unlabelled_items": len(evaluate.checks.get("unlabelled", [])), "n_shifted_units": len(shifted),
                       "n_shift_cases": len(phases[-1].cases) if phases else 0,
                       "shift_phase_starts": [p.start for p in phases], "n_kl_prompts": len(kl_data),
                       "train_changed_fraction": float(train_labels.changed.mean()), **label_counts},
              "baseline": evaluate.curve[0], "final": evaluate.curve[reported], "curve": evaluate.curve,
              "failure": failure_kind(evaluate.curve[: reported + 1]), "seconds": round(time.time() - t0, 2)}
    if out_path:
        save_checkpoint(explainer_path(out_path), model, None, asdict(cfg), cfg.explain.steps)
        write_json(result, out_path)
    return result


def explainer_path(result_path):
    return result_path.removesuffix(".json") + ".pt"


# ---------------------------------------------------------------------------------------------------------
# Result files and the command line of one run

RESULT_KEYS = ("config", "provenance", "m0", "data", "baseline", "final", "curve", "failure", "seconds")
EVALUATION_KEYS = ("step", "self", "orig", "gap", "n_flipped", "self_flipped", "orig_flipped", "agreement", "malformed",
                   "task_accuracy", "shift_learned", "n_became_changed", "self_became_changed", "n_became_unchanged",
                   "self_became_unchanged", "tracking", "verdict_tracking", "balanced_self", "self_unflipped",
                   "blind_gap", "c_blind_gap")


def read_result(path):
    """A result file, checked whole before any report uses it; refused in one line naming the file."""
    try:
        with open(path) as f:
            result = json.load(f)
        missing = [k for k in RESULT_KEYS if k not in result] or \
                  [f"{k} of an evaluation" for p in [result["final"], *result["curve"]] for k in EVALUATION_KEYS
                   if k not in p or not (p[k] is None or isinstance(p[k], (int, float)))][:1]
        if missing or not result["curve"]:
            raise KeyError(", ".join(missing) or "curve")
        config_from_dict(result["config"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise UserError(f"{path} is not a readable result file ({type(err).__name__}: {err}); delete it or "
                        f"run it again") from None
    return result


def check_out_path(out, cfg: RunConfig, runs_dir=None):
    """Refuse, before any work, an --out that would overwrite the reference, a checkpoint, a folder or a
    file that is not a result of this very run."""
    out_abs, runs_dir = os.path.abspath(out), os.path.abspath(runs_dir or train.RUNS_DIR)
    inside = lambda folder: os.path.commonpath([out_abs, os.path.abspath(folder)]) == os.path.abspath(folder)
    if inside(REFERENCE) or inside(os.path.join(runs_dir, "checkpoints")):
        raise UserError(f"--out={out} is inside the published reference ({REFERENCE}) or the checkpoints "
                         f"({runs_dir}/checkpoints); choose a path elsewhere, e.g. under {runs_dir}/results")
    if os.path.isdir(out) or not out.endswith(".json"):
        raise UserError(f"--out={out} must be a .json file path, not a folder")
    if os.path.exists(out):
        try:
            same = identity(read_result(out)["config"]) == identity(cfg)
        except ValueError:
            same = False
        if not same:
            raise UserError(f"--out={out} exists and is not a result of this run; choose another path")
    check_writable(os.path.dirname(out_abs), f"--out={out}")


RUNTIME_FLAGS = tuple(f.name for f in fields(PretrainConfig) if f.metadata.get("runtime"))  # flags of their own


def add_run_flags(parser, defaults=None):
    """The flags that pick a run; defaults: other defaults for RunConfig's own fields."""
    add_config_flags(parser, RunConfig, defaults=defaults)
    add_config_flags(parser, ExplainConfig)
    add_config_flags(parser, PretrainConfig, prefix="pretrain-", skip=("task", "seed", "feature_words") + RUNTIME_FLAGS)
    add_config_flags(parser, PretrainConfig, skip=tuple(f.name for f in fields(PretrainConfig)
                                                        if f.name not in RUNTIME_FLAGS))
    parser.add_argument("--no-kl", action="store_true", help="explanation training without the KL term")


def config_from_args(args):
    """A RunConfig from parsed flags: pretraining flags start with pretrain-, the rest are the run's and
    the explanation stage's."""
    values = vars(args)
    explain = config_from_flags(values, ExplainConfig)
    if values.get("no_kl"):
        explain = replace(explain, kl_weight=0.0)
    pre = {**asdict(config_from_flags(values, PretrainConfig, prefix="pretrain-")),
           **{name: values[name] for name in RUNTIME_FLAGS}}
    return RunConfig(**asdict(config_from_flags(values, RunConfig)) | {"pretrain": PretrainConfig(**pre),
                                                                       "explain": explain})


def build_parser():
    parser = Parser(description="One introspective-coupling run, printed live; its result and final explainer "
                                "are saved in your store (runs/).")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="one coupling run")
    add_run_flags(run)
    run.add_argument("--out", default=None, help="result JSON (default: runs/results/runs/TASK/NAME.json)")
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)

    def work():
        cfg = config_from_args(args)
        out = os.path.join(train.RUNS_DIR, "results", "runs", cfg.task, f"{cfg.name}.json") if args.out is None \
            else args.out
        check_out_path(out, cfg)
        pick_device(cfg.pretrain.device)
        result = run_coupling(cfg, out)
        f = result["final"]
        print(f"final: Self {f['self']:.3f}, Orig {f['orig']:.3f}, gap {f['gap']:+.3f}, {f['n_flipped']} flipped "
              f"(Self@flipped {f['self_flipped']:.2f}) -> {out}\nits explanations, item by item: python "
              f"experiments.py show (with the same flags)")
    run_command(parser, work)


if __name__ == "__main__":
    main()
