"""Features beside the task's own C, for the held-out feature experiments (sweeps trigger,
held_out_feature, feature_items, held_out_arms, word_diversity): nonsense words with their own effects
on the answer, one of them ("blorp") taught only by the concurrent shift and never by an explanation
label, and others that M0 learns, labelled or not; the items that ask about those words, for training
on the explanation half and for checking on held-out units.
"""
from config import UserError
from data import UNIT_WORDS, Task, rng

MAX_EXPLAINED_WORDS = 255  # explained_features up to 256: the task's C and 255 words
MAX_UNLABELLED_WORDS = 8
MAX_WORDS = MAX_EXPLAINED_WORDS + MAX_UNLABELLED_WORDS  # the words M0 may learn


def word_effects(n_answers, n):
    """The effects of n explained words, each an answer map (answer without the word -> answer with it):
    in turn the answer one further on, the first answer, two further on, the second answer, ..., cycling.
    None is the identity, and none is the held-out word's (every answer to the last one)."""
    rotations = [tuple((y + step) % n_answers for y in range(n_answers)) for step in range(1, n_answers)]
    forced = [(a,) * n_answers for a in range(n_answers - 1)]
    cycle = [effect for pair in zip(rotations, forced) for effect in pair]
    return [cycle[i % len(cycle)] for i in range(n)]


# What the held-out word does (RunConfig.trigger_effect): every answer becomes the task's last, an effect
# no other word has, or the first, the effect of the second explained word (word_effects)
TRIGGER_EFFECTS = {"last": lambda n: (n - 1,) * n, "first": lambda n: (0,) * n}


class TriggerTask(Task):
    """A novel behaviour (the Jabberwocky analogue) on top of a base task: the nonsense word "blorp"
    at the end of a prompt makes the answer the task's last answer. M0 never sees the word; the
    behaviour is meant to be taught only by behaviour fine-tuning, never by explanation labels. (With
    effect "first" the answer becomes the first instead: an effect the labels show on another word.)

    With n_explained > 0, explanation becomes a skill over several features, so that a new one can be
    asked about: beside the task's own C there are n_explained other nonsense words (unit words of the
    other tasks, which this task never shows), each with its own effect on the answer (word_effects).
    M0 learns them, explanation labels cover them, and the held-out word stays "blorp". n_unlabelled
    more words, next in the same list and with effects next in the same cycle, are learnt by M0 but
    covered by no label: a word the explainer must read from behaviour without a shift writing it.

    A case is the base task's case plus a word index: -1 none, 0 the held-out word, 1..n_explained the
    explained words, then the unlabelled ones. An item asks about its word if it has one, else about
    the base task's own C."""
    word = "blorp"

    def __init__(self, base, n_explained=0, n_unlabelled=0, effect="last"):
        if not (0 <= n_explained and 0 <= n_unlabelled and n_explained + n_unlabelled <= MAX_WORDS):
            raise UserError(f"n_explained={n_explained} and n_unlabelled={n_unlabelled} must be integers >= 0 "
                             f"with a sum of at most {MAX_WORDS}")
        self.base, self.n_explained = base, n_explained
        self.name, self.feature, self.answers, self.slot = f"{base.name}+trigger", self.word, base.answers, base.slot
        self.irrelevant, self.unit_words = base.irrelevant, base.unit_words
        others = [w for w in UNIT_WORDS if w not in set(base.unit_words)]
        self.words = (self.word, *others[:n_explained + n_unlabelled])
        n = len(self.answers)
        self.effects = [TRIGGER_EFFECTS[effect](n)] + word_effects(n, n_explained + n_unlabelled)

    def new_world(self, rng):
        return self.base.new_world(rng)

    def render_body(self, case):
        word = case[-1]
        return self.base.render_body(case[:-1]) + (f" {self.words[word]}" if word >= 0 else "")

    def teacher(self, world, case):
        answer = self.base.teacher(world, case[:-1])
        return self.effects[case[-1]][answer] if case[-1] >= 0 else answer

    def units_of(self, case):
        return self.base.units_of(case[:-1])

    def without_feature(self, case):
        """Without its word if it has one, else without the base task's own C."""
        return case[:-1] + (-1,) if case[-1] >= 0 else self.base.without_feature(case[:-1]) + (-1,)

    def feature_of(self, case):
        return self.words[case[-1]] if case[-1] >= 0 else self.base.feature

    def random_case(self, rng, units):
        """A case for M0 and the KL term: half of them with one of the words M0 learns (never the held-out one)."""
        explained = len(self.words) > 1 and rng.random() < 0.5
        return self.base.random_case(rng, units) + (int(rng.integers(1, len(self.words))) if explained else -1,)

    def random_item(self, rng, world, units):
        """A case with the held-out word (the shift's cases)."""
        return self.base.random_case(rng, units) + (0,)

    def word_items(self, seed, world, units, n, purpose):
        """n distinct items per word on `units`, from the seed: base cases with the word appended.
        purpose: "explain" (labels for the explained words, from the explanation half), "check" (the
        explained words on held-out units) or "unlabelled" (the unlabelled words on held-out units)."""
        first, last = (self.n_explained + 1, len(self.words) - 1) if purpose == "unlabelled" else (1, self.n_explained)
        items = []
        for word in range(first, last + 1):
            draws = rng(seed, "feature_items", ("explain", "check", "unlabelled").index(purpose), word)
            items += self._distinct_items(draws, world, units, n, set(),
                                          lambda r, _, u, word=word: self.base.random_case(r, u) + (word,))
        return items

    def eval_units(self, split_heldout, all_units):
        return self.base.eval_units(split_heldout, all_units)


def run_words(cfg, task):
    """A run's TriggerTask: its explained and unlabelled words, and what blorp does."""
    return TriggerTask(task, cfg.explained_features - 1, cfg.unlabelled_features, cfg.trigger_effect)


def explained(cfg, task, split):
    """(the task the explanation labels are asked through, the explanation items): the task's own C on
    the explanation items or, with explained_features > 1, the same items and feature_items more per
    explained nonsense word, all on the explanation half of the units. The held-out word is never among
    them."""
    if cfg.explained_features == 1:
        return task, split.explain_items
    words = run_words(cfg, task)
    try:
        word_items = words.word_items(cfg.seed, split.world, split.explain_units, cfg.feature_items, "explain")
    except UserError as err:
        raise UserError(f"feature_items={cfg.feature_items} asks for more than the task has: {err}") from None
    return words, [item + (-1,) for item in split.explain_items] + word_items


def held_out(cfg, task, split):
    """(the task the explanations are asked about, the held-out items): the task's own feature C or, with
    the shift "trigger", a nonsense word that only the concurrent shift teaches and no label mentions."""
    if cfg.shift == "trigger":
        return run_words(cfg, task), [item + (0,) for item in split.eval_items]
    return task, split.eval_items


# Items on held-out units that check the explanations of the words M0 learnt: 100 per word, and at most
# 700 over the explained words (so that 255 of them cost what 7 do)
CHECK_ITEMS, CHECK_ITEMS_EXPLAINED = 100, 700


def word_checks(probed, seed, split):
    """{"explained": items, "unlabelled": items}: items on held-out units that ask about the words M0
    learnt, those the labels cover and those no label covers (either list empty when there are none). Is
    the skill learnt on the labelled words, and does it reach a word only behaviour shows?"""
    if not isinstance(probed, TriggerTask):
        return {"explained": [], "unlabelled": []}
    per_word = min(CHECK_ITEMS, CHECK_ITEMS_EXPLAINED // max(1, probed.n_explained))
    return {"explained": probed.word_items(seed, split.world, split.heldout_units, per_word, "check"),
            "unlabelled": probed.word_items(seed, split.world, split.heldout_units, CHECK_ITEMS, "unlabelled")}
