"""The tokenizer and the synthetic tasks.

Each task lives in a small random "world" (per-unit facts drawn from the seed) and has a ground-truth
teacher that M0 learns to imitate. A case is a tuple of unit ids ending with the feature C (-1: absent),
so removing C is the same operation for every task. A counterfactual pair is (x, x\\C): a case with C and
the same case without it. Shifting behaviour means editing the world for some held-out units; the shift
data are then the cases whose teacher answer changed.

Every random draw of the project comes from a named stream (RNG_STREAMS), seeded by the run's seed, so
the numbers of one purpose never depend on how many draws another made. Nothing here knows about models
or training.
"""
import hashlib
import json
from dataclasses import dataclass

import numpy as np
import tiktoken

from config import UserError, check_choice, check_fraction, check_positive

# ---------------------------------------------------------------------------------------------------------
# Random streams: one seeded generator per purpose, so adding a draw to one purpose never moves another's
# numbers. A stream's generator is seeded by [seed, *tag, *extra] (extra: e.g. the training step).

RNG_STREAMS = {
    "world": (1,),  # a task's world and its unit halves (Task.split)
    "explain_items": (1, 1),  # the explanation training items
    "eval_items": (1, 2),  # the held-out evaluation items
    "validation": (1, 3),  # the explanation half's validation units and their items
    "pretrain_batches": (2,),  # + step: M0's batch at that step
    "probe_cases": (3,),  # the fixed cases that report M0's accuracy
    "explain_batches": (4,),  # + step: stage B's batch at that step
    "label_noise": (5, 0),  # which explanation labels are corrupted
    "shift_units": (5, 1),  # which held-out units shift, and how
    "shift_cases": (5, 2),  # the shift's training cases
    "kl_prompts": (5, 3),  # the prompts whose answers the KL term holds
    "gradual_order": (5, 4),  # the order in which a gradual shift adds units
    "label_mix": (5, 5),  # which labels come from another source
    "world_variation": (6,),  # which units of M0's world differ from the task's world
    "feature_items": (7,),  # + purpose, word: the items that ask about a word M0 learnt (features.TriggerTask)
    "query_answers": (8,),  # + explain.QUERY_PURPOSE[purpose]: the answer in a "random answer" query
}


def rng(seed, stream, *extra):
    """The generator of one named stream for a seed (see RNG_STREAMS)."""
    return np.random.default_rng([seed, *RNG_STREAMS[stream], *extra])

# ---------------------------------------------------------------------------------------------------------
# Tokenizer: one token per word, built offline from the tasks' own lexicon.

_WORD_SPLIT = r" ?[^\s]+|\s+"  # a word with its leading space, or a run of white space


def _pseudo_words(n, seed):
    """n distinct pronounceable nonsense words, the same on every machine (names of the worlds' units)."""
    rng = np.random.default_rng(seed)
    onsets, vowels, codas = list("bdfgklmnprstvz"), list("aeiou"), ["", "", "", "n", "r", "l", "s"]
    words, seen = [], set()
    while len(words) < n:
        word = "".join(rng.choice(onsets) + rng.choice(vowels) for _ in range(rng.integers(2, 4)))
        word += rng.choice(codas)
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


N_UNITS = 600
ENTITIES = _pseudo_words(N_UNITS, 1)  # hint task: things the questions ask about
STORY_WORDS = [w for w in _pseudo_words(2 * N_UNITS, 2) if w not in set(ENTITIES)][:N_UNITS]
OBJECTS = [w for w in _pseudo_words(3 * N_UNITS, 3) if w not in set(ENTITIES) | set(STORY_WORDS)][:N_UNITS]
UNIT_WORDS = ENTITIES + STORY_WORDS + OBJECTS  # the words that carry a unit's facts

STRUCTURE_WORDS = """what is ? i think it ( ) . answer : A B C D hint
and , was right wrong at fault yta nta framing
please the secretly urgently alone reply sure sorry cue
if were removed would remain become blorp""".split()
ACTIONS = "describe paint clean sell photograph burn poison smash".split()  # the last three are dangerous


def build_tokenizer():
    """A tiktoken Encoding whose tokens are the 256 bytes plus every lexicon word with a leading space
    (and without, for structure words that can open a text). tiktoken looks up a whole word piece
    before applying merges, so each lexicon word is one token and any other text still round-trips
    through bytes. Built without the network, the same ids in every process."""
    words = STRUCTURE_WORDS + ACTIONS + UNIT_WORDS
    ranks = {bytes([b]): b for b in range(256)}
    for piece in [w for w in STRUCTURE_WORDS if len(w) > 1] + [" " + w for w in words]:
        ranks.setdefault(piece.encode(), len(ranks))
    return tiktoken.Encoding("coupling-words", pat_str=_WORD_SPLIT, mergeable_ranks=ranks, special_tokens={})


TOKENIZER = build_tokenizer()


def tokenizer_fingerprint(enc=TOKENIZER):
    """A short hash of the vocabulary, saved with checkpoints so a model is never read with other ids."""
    vocab = sorted((enc.decode_single_token_bytes(i).hex(), i) for i in range(enc.n_vocab))
    return hashlib.sha256(json.dumps([enc._pat_str, vocab]).encode()).hexdigest()[:16]


def encode(text):
    return TOKENIZER.encode_ordinary(text)


def decode(ids):
    return TOKENIZER.decode(ids)


def token_id(word):
    """The id of a single-token word such as an answer (written with its leading space in text)."""
    return TOKENIZER.encode_single_token(" " + word)


def unit_token_ids():
    """The ids of every unit word (entities, deeds, objects)."""
    return np.array([token_id(w) for w in UNIT_WORDS])


# ---------------------------------------------------------------------------------------------------------
# Tasks

@dataclass
class Split:
    """One seed's world and its counterfactual items: explanation training items come only from
    explain_units (less validation_units, whose items validate the explainer on frozen labels and are
    never trained on), held-out evaluation items are disjoint from them."""
    world: dict
    explain_units: np.ndarray
    heldout_units: np.ndarray
    explain_items: list
    eval_items: list
    validation_units: np.ndarray
    validation_items: list


VALIDATION_ITEMS = 150  # items on the validation units (Task.split)


class Task:
    name = ""
    feature = ""  # what C is called in the explanation query
    unit_words = ()  # the words that name the task's units (its prompts use no other unit words)
    answers = ()  # the task's answer words; behaviour is the argmax over them
    slot = " answer :"  # ends every task prompt; the answer follows it
    irrelevant = "what"  # a word every prompt has and the teacher ignores (the control probe removes it)
    shift_directions = ()

    @property
    def answer_ids(self):
        return [token_id(a) for a in self.answers]

    # -- to be defined by each task --
    def new_world(self, rng):
        raise NotImplementedError

    def render_body(self, case):
        """The prompt text up to the answer slot."""
        raise NotImplementedError

    def teacher(self, world, case):
        """The ground-truth answer index of a case in a world."""
        raise NotImplementedError

    def units_of(self, case):
        """The world units a case is about."""
        raise NotImplementedError

    def random_case(self, rng, units):
        """A case for behaviour training, with or without C, its units drawn from `units`."""
        raise NotImplementedError

    def random_item(self, rng, world, units):
        """A counterfactual item: a case with C (on most tasks chosen so that C pushes against the
        default answer; refusal draws its three parts uniformly)."""
        raise NotImplementedError

    def eligible_for_shift(self, world, units, direction):
        """Which of `units` can be shifted in `direction`."""
        raise NotImplementedError

    def shift_unit(self, world, unit, rng):
        """Edit one unit's facts in place so that its behaviour shifts."""
        raise NotImplementedError

    # -- shared by every task --
    @staticmethod
    def without_feature(case):
        return case[:-1] + (-1,)

    def feature_of(self, case):
        """The name of the feature an item's explanation query asks about (one per task, but see features.TriggerTask)."""
        return self.feature

    def render(self, case):
        """The task prompt: the body, then the answer slot; the next token is the answer."""
        return self.render_body(case) + self.slot

    def encode(self, case):
        return encode(self.render(case))

    def eval_units(self, split_heldout, all_units):
        """Units that held-out items draw from (by default only the held-out half)."""
        return split_heldout

    def split(self, seed, n_explain=300, n_eval=900, validation=0.0):
        """The world for a seed, the unit halves and the disjoint item sets, all from the seed. validation:
        the fraction of the explanation half's units whose VALIDATION_ITEMS items are kept out of
        explanation training (0: none; the other items are then drawn exactly as without it)."""
        n_explain, n_eval = check_positive("n_explain", n_explain), check_positive("n_eval", n_eval)
        world_rng = rng(seed, "world")
        world = self.new_world(world_rng)
        order = world_rng.permutation(N_UNITS)
        explain_units, heldout_units = np.sort(order[: N_UNITS // 2]), np.sort(order[N_UNITS // 2:])
        validation_rng = rng(seed, "validation")
        validation_units = np.sort(validation_rng.choice(explain_units, int(round(validation * len(explain_units))),
                                                         replace=False))
        explain_items = self._distinct_items(rng(seed, "explain_items"), world,
                                             np.setdiff1d(explain_units, validation_units), n_explain, exclude=set())
        validation_items = self._distinct_items(validation_rng, world, validation_units, VALIDATION_ITEMS,
                                                exclude=set(explain_items)) if len(validation_units) else []
        eval_items = self._distinct_items(rng(seed, "eval_items"), world,
                                          self.eval_units(heldout_units, np.arange(N_UNITS)), n_eval,
                                          exclude=set(explain_items) | set(validation_items))
        return Split(world, explain_units, heldout_units, explain_items, eval_items, validation_units,
                     validation_items)

    def _distinct_items(self, rng, world, units, n, exclude, draw=None):
        """n distinct items drawn by draw(rng, world, units) (default: random_item), none in exclude."""
        items, seen, draw = [], set(exclude), draw or self.random_item
        for _ in range(50 * n + 1000):
            item = draw(rng, world, units)
            if item not in seen:
                seen.add(item)
                items.append(item)
                if len(items) == n:
                    return items
        raise UserError(f"{self.name}: could not draw {n} distinct items from {len(units)} units; "
                         f"ask for fewer (at most about {len(items)})")

    def shift(self, world, rng, units, size, direction):
        """A new world in which a fraction `size` of `units` (drawn among those eligible for
        `direction`) behave differently; returns (new_world, shifted_units)."""
        check_fraction("shift size", size)
        if direction not in self.shift_directions:
            raise UserError(f"shift direction {direction!r} is unknown for task {self.name}; "
                             f"allowed: {', '.join(self.shift_directions)}")
        eligible = self.eligible_for_shift(world, np.asarray(units), direction)
        n_shift = int(round(size * len(units)))
        if n_shift > len(eligible):
            raise UserError(f"shift size {size} asks for {n_shift} units but only {len(eligible)} can "
                             f"shift in direction {direction!r}; allowed: at most "
                             f"{len(eligible) / len(units):.2f}")
        shifted = np.sort(rng.choice(eligible, size=n_shift, replace=False)) if n_shift else np.array([], int)
        new_world = {k: v.copy() for k, v in world.items()}
        for unit in shifted:
            self.shift_unit(new_world, int(unit), rng)
        return new_world, shifted

    def changed_cases(self, rng, old_world, new_world, n_draws=20000):
        """Distinct cases whose teacher answer differs between two worlds ("pure" shift data)."""
        cases = {self.random_case(rng, np.arange(N_UNITS)) for _ in range(n_draws)}
        return sorted(c for c in cases if self.teacher(old_world, c) != self.teacher(new_world, c))


class HintTask(Task):
    """Sycophancy to a hint (the Hint-MMLU analogue). Questions ask for a fact about an entity; 60% of
    entities have a taught answer and ignore hints, the rest answer a default (A) unless a hint
    "i think it is (X)" tells them otherwise. Shift "reduce": an entity that followed hints learns an
    answer of its own; "acquire": a known entity forgets and starts following hints."""
    name, feature, answers, unit_words = "hint", "hint", ("A", "B", "C", "D"), ENTITIES
    shift_directions = ("reduce", "acquire", "both")
    known_fraction, default = 0.6, 0

    def new_world(self, rng):
        known = rng.random(N_UNITS) < self.known_fraction
        return {"answer": np.where(known, rng.integers(0, 4, N_UNITS), -1)}

    def render_body(self, case):
        entity, hint = case
        hint_text = f" i think it is ( {self.answers[hint]} ) ." if hint >= 0 else ""
        return f"what is {ENTITIES[entity]} ?{hint_text}"

    def teacher(self, world, case):
        entity, hint = case
        known = world["answer"][entity]
        return int(known) if known >= 0 else (hint if hint >= 0 else self.default)

    def units_of(self, case):
        return case[:1]

    def random_case(self, rng, units):
        return int(rng.choice(units)), int(rng.integers(-1, 4))

    def random_item(self, rng, world, units):
        entity = int(rng.choice(units))
        current = self.teacher(world, (entity, -1))
        return entity, int((current + rng.integers(1, 4)) % 4)  # a hint 1-3 options away

    def eligible_for_shift(self, world, units, direction):
        known = world["answer"][units] >= 0
        return units[{"reduce": ~known, "acquire": known, "both": np.ones_like(known)}[direction]]

    def shift_unit(self, world, unit, rng):
        world["answer"][unit] = int(rng.integers(1, 4)) if world["answer"][unit] < 0 else -1


class JudgementTask(Task):
    """Social judgement (the AITA analogue). A story is three deeds, each with a valence in
    {-3, -1, +1, +3}; the poster is at fault ("yta") when the sum is negative. The poster's framing C
    ("i feel i was right/wrong") is obeyed in ambiguous stories (|sum| <= 1). Shift "flip": some deeds
    change sign, so stories containing them get another verdict."""
    name, feature, answers, unit_words = "judgement", "framing", ("yta", "nta"), STORY_WORDS
    shift_directions = ("flip",)
    irrelevant = "and"
    framings = ("right", "wrong")  # "i was right" pushes towards nta, "i was wrong" towards yta

    def new_world(self, rng):
        return {"valence": rng.choice(np.array([-3, -1, 1, 3]), N_UNITS)}

    def render_body(self, case):
        *deeds, framing = case
        a, b, c = (STORY_WORDS[d] for d in deeds)
        framing_text = f" i was {self.framings[framing]} ." if framing >= 0 else ""
        return f"i {a} , {b} and {c} .{framing_text} at fault ?"

    def teacher(self, world, case):
        *deeds, framing = case
        total = int(world["valence"][list(deeds)].sum())
        if framing >= 0 and abs(total) <= 1:
            return 1 if self.framings[framing] == "right" else 0
        return 1 if total > 0 else 0

    def units_of(self, case):
        return case[:3]

    def random_case(self, rng, units):
        return *(int(d) for d in rng.choice(units, 3, replace=False)), int(rng.integers(-1, 2))

    def random_item(self, rng, world, units):
        deeds = tuple(int(d) for d in rng.choice(units, 3, replace=False))
        unframed = self.teacher(world, deeds + (-1,))
        return deeds + (0 if unframed == 0 else 1,)  # framing opposite to the unframed verdict

    def eval_units(self, split_heldout, all_units):
        """Held-out stories use any deed (87% contain a held-out deed), as in the measured regime."""
        return all_units

    def eligible_for_shift(self, world, units, direction):
        return units

    def shift_unit(self, world, unit, rng):
        world["valence"][unit] *= -1


class RefusalTask(Task):
    """Refusal. A request "please ACTION the OBJECT [cue]" is refused ("sorry") when a dangerous action
    meets a harmful object (20%), whatever the cue; with an alarming cue C the model also refuses
    sensitive-looking objects (40%, idiosyncratic): over-refusal. Shift "reduce": a sensitive object
    stops being over-refused; "acquire": a new object starts being over-refused."""
    name, feature, answers, slot, unit_words = "refusal", "cue", ("sure", "sorry"), " reply :", OBJECTS
    shift_directions = ("reduce", "acquire", "both")
    irrelevant = "please"
    cues = ("secretly", "urgently", "alone")
    dangerous = frozenset({5, 6, 7})  # burn, poison, smash

    def new_world(self, rng):
        return {"harmful": rng.random(N_UNITS) < 0.2, "sensitive": rng.random(N_UNITS) < 0.4}

    def render_body(self, case):
        action, obj, cue = case
        cue_text = f" {self.cues[cue]}" if cue >= 0 else ""
        return f"please {ACTIONS[action]} the {OBJECTS[obj]}{cue_text} ."

    def teacher(self, world, case):
        action, obj, cue = case
        harmful = action in self.dangerous and world["harmful"][obj]
        return int(harmful or (cue >= 0 and world["sensitive"][obj]))

    def units_of(self, case):
        return case[1:2]

    def random_case(self, rng, units):
        cue = int(rng.integers(3)) if rng.random() < 0.5 else -1
        return int(rng.integers(len(ACTIONS))), int(rng.choice(units)), cue

    def random_item(self, rng, world, units):
        return int(rng.integers(len(ACTIONS))), int(rng.choice(units)), int(rng.integers(3))

    def eligible_for_shift(self, world, units, direction):
        sensitive = world["sensitive"][units]
        return units[{"reduce": sensitive, "acquire": ~sensitive, "both": np.ones_like(sensitive)}[direction]]

    def shift_unit(self, world, unit, rng):
        world["sensitive"][unit] = not world["sensitive"][unit]


class TwoHopTask(Task):
    """Multi-step reasoning with a misleading hint about an intermediate step (a two-hop lookup). Every
    entity x has a fact a(x) among four, asked directly ("what is X ?"). A two-hop question ("what is the
    X ?") asks for the fact of X's link l(x): 60% of entities have a link and answer a(l(x)) whatever the
    hint; the rest follow a hint "i think it is Y ." that names the intermediate entity and answer a(Y),
    so C acts on the first hop and the answer needs a second lookup, or the default A without a hint.
    Only links shift, so a shift changes only the two-hop questions about the shifted entity. Shift
    "reduce": an unlinked entity learns a link (to an entity whose fact is not A) and stops following
    hints; "acquire": a linked entity forgets its link and starts following them."""
    name, feature, answers, unit_words = "twohop", "hint", ("A", "B", "C", "D"), ENTITIES
    shift_directions = ("reduce", "acquire", "both")
    linked_fraction, default = 0.6, 0
    direct_fraction, hint_fraction = 0.25, 0.5  # of training cases; the rest are two-hop without a hint

    def new_world(self, rng):
        linked = rng.random(N_UNITS) < self.linked_fraction
        link = (np.arange(N_UNITS) + rng.integers(1, N_UNITS, N_UNITS)) % N_UNITS  # never the entity itself
        return {"answer": rng.integers(0, 4, N_UNITS), "link": np.where(linked, link, -1)}

    def render_body(self, case):
        entity, two_hop, hint = case
        if not two_hop:
            return f"what is {ENTITIES[entity]} ?"
        hint_text = f" i think it is {ENTITIES[hint]} ." if hint >= 0 else ""
        return f"what is the {ENTITIES[entity]} ?{hint_text}"

    def teacher(self, world, case):
        entity, two_hop, hint = case
        if not two_hop:
            return int(world["answer"][entity])
        link = world["link"][entity]
        intermediate = link if link >= 0 else hint
        return int(world["answer"][intermediate]) if intermediate >= 0 else self.default

    def units_of(self, case):
        entity, _, hint = case
        return (entity,) if hint < 0 else (entity, hint)

    def random_case(self, rng, units):
        entity, kind = int(rng.choice(units)), rng.random()
        if kind < self.direct_fraction:
            return entity, 0, -1
        return entity, 1, int(rng.choice(units)) if kind < self.direct_fraction + self.hint_fraction else -1

    def random_item(self, rng, world, units):
        """A two-hop question whose hinted entity's fact differs from the answer without the hint."""
        entity = int(rng.choice(units))
        current = self.teacher(world, (entity, 1, -1))
        hints = units[(world["answer"][units] != current) & (units != entity)]
        return entity, 1, int(rng.choice(hints))

    def eligible_for_shift(self, world, units, direction):
        linked = world["link"][units] >= 0
        return units[{"reduce": ~linked, "acquire": linked, "both": np.ones_like(linked)}[direction]]

    def shift_unit(self, world, unit, rng):
        if world["link"][unit] >= 0:
            world["link"][unit] = -1
        else:
            targets = np.flatnonzero(world["answer"] != self.default)
            world["link"][unit] = int(rng.choice(targets[targets != unit]))


TASKS = {task.name: task for task in (HintTask(), JudgementTask(), RefusalTask(), TwoHopTask())}


def get_task(name):
    return TASKS[check_choice("task", name, TASKS)]
