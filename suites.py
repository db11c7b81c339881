"""The suites: the main result (its draws and make quick's seed), the shift directions and the sweeps,
each a list of RunConfigs that experiments.run_suites runs.
"""
from dataclasses import dataclass, replace

from eval import RunConfig
from model import pick_device
from train import ExplainConfig, PretrainConfig

MAIN_TASKS = ("hint", "judgement", "refusal")

DRAWS = ("main", "main_threads2")  # the main result's draws the reference publishes
# make quick (and tests/test_end_to_end.py): hint with and without KL at this seed, a check of the pipeline,
# not a measurement. Of seeds 0-9 the one whose run with KL coupled with the widest margin on both draws of
# the reference (verdict tracking 0.99 and 1.00), so that a check on another machine fails for a broken
# pipeline rather than for a draw near the rule's line.
QUICK_SEEDS = (3,)


def main_configs(tasks=MAIN_TASKS, seeds=(0, 1, 2), device="auto", threads=1):
    """Per seed and task, one run with the KL term and the same run without it (the control)."""
    configs = []
    for seed in seeds:  # seed-major, so an interrupted suite already covers every task
        for task in tasks:
            for kl_weight in (ExplainConfig.kl_weight, 0.0):
                configs.append(RunConfig(task=task, seed=seed, pretrain=PretrainConfig(device=device, threads=threads),
                                         explain=ExplainConfig(kl_weight=kl_weight)))
    return configs


def draw(experiment, threads):
    """Where a suite's results go: the same seeds with another thread count round differently, a new draw
    of the same runs, kept apart ("main" with one thread, "main_threads2" with two)."""
    return experiment if threads == 1 else f"{experiment}_threads{threads}"


DIRECTIONS = {"hint": ("acquire", "both"), "refusal": ("acquire", "both")}  # beside the main suite's reduce


def directions_configs(seeds=(0, 1, 2), device="auto", threads=1):
    """The other shift directions of hint and refusal (a known answer forgotten, a new over-refusal, and
    both at once), each with and without KL, as the main suite runs its default direction; every run
    with KL first, so an interrupted suite has the explainers before the controls."""
    configs = [replace(cfg, shift=shift) for cfg in main_configs(tuple(DIRECTIONS), seeds, device, threads)
               for shift in DIRECTIONS[cfg.task]]
    return sorted(configs, key=lambda cfg: cfg.explain.kl_weight == 0)  # stable: seed order kept


def default_seeds(device):
    """Three seeds on a CPU; ten on a GPU, where a run is bound by kernel launches and ten cost about
    what three cost on a CPU."""
    return (0, 1, 2) if pick_device(device).type == "cpu" else tuple(range(10))


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
    fixed: tuple = ()  # (RunConfig field, value) pairs that every run of the sweep sets
    panel: tuple = ()  # metrics drawn in a figure panel of the sweep's own


# The held-out-feature sweeps' own columns and figure panel
HELD_OUT_COLUMNS = ("Balanced Self: the mean of Self where blorp changes the answer and where it does not; an "
                    "explainer that writes one verdict for every item reaches at most 0.5 (tracking has nothing to "
                    "compare with here). Explained words: the explanations of the labelled words on held-out "
                    "units. Untrained model: step 0.")
HELD_OUT_EXTRA = ("balanced_self", "explained_self", "untrained_self", "shift_learned")
HELD_OUT_PANEL = ("self", "orig", "balanced_self", "malformed", "explained_self")

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
    "held_out_feature": Sweep("explained_features", (1, 2, 4, 8), "features the explanation labels cover",
                              "Explanation as a skill over several features, asked about one it never had a "
                              "label for. Beside the task's C, explained_features - 1 nonsense words, each "
                              "changing the answer in its own way (to the next answer, to the first, two further "
                              "on, ...); M0 learns them, and 300 explanation items per word label them. The "
                              "held-out word \"blorp\" (every answer becomes the last) is taught only by the "
                              "concurrent shift, on held-out units, and the explanations are asked about it. 1: "
                              "the task's C alone, as in the sweep trigger. " + HELD_OUT_COLUMNS,
                              "explanations of the new behaviour were 79.8% accurate", extra=HELD_OUT_EXTRA,
                              fixed=(("shift", "trigger"),), panel=HELD_OUT_PANEL),
    "feature_items": Sweep("feature_items", (30, 100, 300, 1000), "explanation items per explained word",
                           "The held-out feature (sweep held_out_feature) with 4 explained features, the task's C "
                           "and 3 nonsense words: does the explanation of the held-out word depend on how many "
                           "labelled items each explained word gets? The task's C keeps its n_explain. "
                           + HELD_OUT_COLUMNS, "explanations of the new behaviour were 79.8% accurate",
                           extra=HELD_OUT_EXTRA, fixed=(("shift", "trigger"), ("explained_features", 4)),
                           panel=HELD_OUT_PANEL),
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


def sweep_configs(name, tasks=None, seeds=(0, 1, 2), device="auto"):
    sweep = SWEEPS[name]
    section, _, knob = sweep.knob.rpartition(".")
    configs = []
    for seed in seeds:
        for task in tasks or sweep.tasks:
            for value in sweep.values:
                explain = ExplainConfig(**{knob: value} if section == "explain" else {})
                configs.append(RunConfig(task=task, seed=seed, pretrain=PretrainConfig(device=device),
                                         explain=explain, **dict(sweep.fixed), **({} if section else {knob: value})))
    return configs
