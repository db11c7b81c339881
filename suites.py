"""The suites: the main result (its draws and make quick's seed), the shift directions and the sweeps,
each a list of RunConfigs that experiments.run_suites runs.
"""
from dataclasses import dataclass, replace

from eval import RunConfig
from explain import QUERY_KINDS
from model import pick_device
from train import ExplainConfig, PretrainConfig

MAIN_TASKS = ("hint", "judgement", "refusal")

DRAWS = ("main", "main_threads2")  # the main result's draws the reference publishes
# make quick (and tests/test_end_to_end.py): hint with and without KL at this seed, a check of the pipeline,
# not a measurement, so that a check on another machine fails for a broken pipeline rather than for a draw
# near the rule's line. Of seeds 0-9 the one whose smallest margin over three draws of the recipe (one and
# two threads, AVX2 kernels) is widest: with KL, verdict tracking above 0.5 (here 1.00 on every draw);
# without KL, the distance to passing, the larger of -gap and 0.5 - verdict tracking (here 0.50 on two
# draws; on the third its verdict tracking is undefined, which the rule never passes).
QUICK_SEEDS = (9,)


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
    settings: tuple = ()  # per value, the (field, value) pairs it sets, where a value is more than one field's

    def settings_of(self, value):
        """{field: value} that a value of the knob sets (fields as in knob: FIELD or explain.FIELD)."""
        return dict(self.settings[self.values.index(value)]) if self.settings else {self.knob: value}

    def run_settings(self, value):
        """{field: value} that a run of this value sets: the sweep's fixed settings, then the knob's."""
        return {**dict(self.fixed), **self.settings_of(value)}

    def earlier_recipe(self, results):
        """The explanation-stage settings of these runs that the sweep does not set and that are no longer
        the defaults (runs made before the recipe changed), in words ("" if none)."""
        own = {name.removeprefix("explain.") for value in self.values for name in self.run_settings(value)}
        now = vars(ExplainConfig())
        old = sorted({(name, value) for r in results for name, value in r["config"]["explain"].items()
                      if name in now and name not in own and value != now[name]}, key=str)
        settings = ", ".join(f"`{name}` {value} (now {now[name]})" for name, value in old)
        return f" These runs were made with an earlier recipe: {settings}." if old else ""

    def value_of(self, config):
        """The value of the knob a saved run's config dict was made with."""
        matches = [v for v in self.values if all(setting(config, k) == x for k, x in self.settings_of(v).items())]
        return matches[0] if matches else setting(config, self.knob)


def setting(config, name):
    """A field of a config dict as saved in a result: FIELD, or explain.FIELD for the nested one."""
    section, _, field_name = name.rpartition(".")
    return (config[section] if section else config)[field_name]


# The held-out-feature sweeps' own columns and figure panel
HELD_OUT_COLUMNS = ("Balanced Self: the mean of Self where blorp changes the answer and where it does not; an "
                    "explainer that writes one verdict for every item reaches at most 0.5 (tracking has nothing to "
                    "compare with here). Explained words: the explanations of the labelled words on held-out "
                    "units. Untrained model: step 0.")
HELD_OUT_EXTRA = ("balanced_self", "explained_self", "untrained_self", "shift_learned")
# Words M0 learnt that no label covers (unlabelled_features): their balanced Self, trained and at step 0
UNLABELLED_EXTRA = ("unlabelled_balanced_self", "untrained_unlabelled_balanced_self",
                    "explained_balanced_self", "shift_learned")
UNLABELLED_PANEL = ("balanced_self", "unlabelled_balanced_self", "explained_balanced_self", "malformed")
# The held-out feature's diagnostic and diversity sweeps: 7 explained words where they do not vary, and 4
# words M0 learns without a label; the diversity sweep keeps the labelled word items near 2,100 in all
HELD_OUT_ARMS = ("a", "b", "c", "d")
ARMS_FIXED = (("shift", "trigger"), ("explained_features", 8), ("unlabelled_features", 4))
JABBERWOCKY = "explanations of the new behaviour were 79.8% accurate"  # the paper's held-out trigger
DIVERSITY = (8, 16, 32, 64, 128, 256)
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
                              JABBERWOCKY, extra=HELD_OUT_EXTRA,
                              fixed=(("shift", "trigger"),), panel=HELD_OUT_PANEL),
    "feature_items": Sweep("feature_items", (30, 100, 300, 1000), "explanation items per explained word",
                           "The held-out feature (sweep held_out_feature) with 4 explained features, the task's C "
                           "and 3 nonsense words: does the explanation of the held-out word depend on how many "
                           "labelled items each explained word gets? The task's C keeps its n_explain. "
                           + HELD_OUT_COLUMNS, JABBERWOCKY,
                           extra=HELD_OUT_EXTRA, fixed=(("shift", "trigger"), ("explained_features", 4)),
                           panel=HELD_OUT_PANEL),
    "held_out_arms": Sweep("arm", HELD_OUT_ARMS, "arm",
                           "Why is blorp not explained in sweep held_out_feature? Four arms on the same M0 and the "
                           "same labels (the task's C and 7 words labelled, 4 more words M0 learns that no label "
                           "covers): a, no shift, the explanations asked about the 4 unlabelled words, which M0 "
                           "learnt in pretraining; b, the held_out_feature setup, blorp taught only by the shift, in "
                           "every weight; c, the shift's gradient confined to blorp's embedding row; d, as b but "
                           "blorp makes every answer the first, the effect of a labelled word, where b's (the last) "
                           "is no labelled word's. If a fails, the skill is not general; if a passes and b fails, "
                           "the trouble is where the shift writes (c) or what it writes (d). " + HELD_OUT_COLUMNS,
                           JABBERWOCKY, extra=UNLABELLED_EXTRA, fixed=ARMS_FIXED, panel=UNLABELLED_PANEL,
                           settings=tuple((("schedule", schedule), ("explain.shift_in", where), ("trigger_effect", effect))
                                          for schedule, where, effect in (("none", "all", "last"), ("sharp", "all", "last"),
                                                                          ("sharp", "word", "last"), ("sharp", "all", "first")))),
    "word_diversity": Sweep("explained_features", DIVERSITY, "features the explanation labels cover",
                            "Does explanation become a skill past a threshold of task diversity (Raventós et al. "
                            "2023)? K - 1 nonsense words beside the task's C, each with an effect from one family "
                            "(to the next answers, to a fixed answer), labelled with about 2,100 word items in all "
                            "(2,100 / (K - 1) each); 4 more words that M0 learns and no label covers are asked "
                            "about on held-out units, and blorp, taught by the shift. " + HELD_OUT_COLUMNS,
                            JABBERWOCKY, extra=UNLABELLED_EXTRA, fixed=(("shift", "trigger"), ("unlabelled_features", 4)),
                            panel=UNLABELLED_PANEL,
                            settings=tuple((("explained_features", k), ("feature_items", round(2100 / (k - 1))))
                                           for k in DIVERSITY)),
    "held_out_query": Sweep("query", QUERY_KINDS, "what precedes the explanation question",
                            "Does the explanation need a place to compute the answer? Arm b of held_out_arms "
                            "(blorp taught by the shift; 7 words labelled, 4 learnt without a label) with the "
                            "query after the prompt's body (plain), after its answer slot (slot), or after the "
                            "slot with an answer in it: the model's own with C (own answer, a weaker claim: the "
                            "answer is given) or a random one (random answer, its control). " + HELD_OUT_COLUMNS,
                            JABBERWOCKY, extra=UNLABELLED_EXTRA, fixed=ARMS_FIXED, panel=UNLABELLED_PANEL),
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


def sweep_configs(name, tasks=None, seeds=(0, 1, 2), device="auto", values=None):
    """The runs of a sweep: per seed and task, one per value of its knob (values: those only)."""
    sweep = SWEEPS[name]
    configs = []
    for seed in seeds:
        for task in tasks or sweep.tasks:
            for value in values or sweep.values:
                chosen = sweep.run_settings(value)
                explain = {k.removeprefix("explain."): x for k, x in chosen.items() if k.startswith("explain.")}
                run = {k: x for k, x in chosen.items() if not k.startswith("explain.")}
                configs.append(RunConfig(task=task, seed=seed, pretrain=PretrainConfig(device=device),
                                         explain=ExplainConfig(**explain), **run))
    return configs
