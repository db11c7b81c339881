import subprocess
import sys

import numpy as np
import pytest

import data
import features
from data import TASKS, get_task


def test_tokenizer_round_trips_and_gives_one_token_per_lexicon_word():
    text = "what is zoles ? i think it is ( C ) . answer : C"
    ids = data.encode(text)
    assert data.decode(ids) == text
    assert len(ids) == len(text.split())
    odd = "Something ¿not in the lexicon? 123 é"
    assert data.decode(data.encode(odd)) == odd


def test_token_ids_are_identical_in_a_fresh_process():
    code = "import data; print(data.encode('i ' + data.STORY_WORDS[7]), data.tokenizer_fingerprint())"
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                           cwd=data.__file__.rsplit("/", 1)[0]).stdout for _ in range(2)}
    assert len(outs) == 1
    assert str(data.encode("i " + data.STORY_WORDS[7])) in outs.pop()


@pytest.mark.parametrize("name", list(TASKS))
def test_removing_c_removes_exactly_the_feature_tokens(name):
    task = get_task(name)
    split = task.split(0, n_explain=20, n_eval=20)
    for item in split.eval_items:
        with_c, without_c = task.encode(item), task.encode(task.without_feature(item))
        start = next(i for i, (a, b) in enumerate(zip(with_c, without_c)) if a != b)
        removed = len(with_c) - len(without_c)
        assert removed > 0
        assert with_c[:start] + with_c[start + removed:] == without_c
        assert data.decode(with_c[start:start + removed]).strip()  # the feature's own words


@pytest.mark.parametrize("name", list(TASKS))
def test_splits_are_disjoint_deterministic_and_held_out(name):
    task = get_task(name)
    a, b = task.split(3), task.split(3)
    assert a.explain_items == b.explain_items and a.eval_items == b.eval_items
    assert not set(a.explain_items) & set(a.eval_items)
    assert len(set(a.eval_items)) == len(a.eval_items) == 900
    assert not set(a.explain_units) & set(a.heldout_units)
    explain_units = set(a.explain_units.tolist())
    # Explanation items use only the explanation half; held-out units never appear in them.
    for item in a.explain_items:
        assert set(task.units_of(item)) <= explain_units
    assert task.split(4).eval_items != a.eval_items


def test_hint_teacher():
    task, world = get_task("hint"), {"answer": np.array([2, -1])}
    assert task.teacher(world, (0, -1)) == 2 and task.teacher(world, (0, 1)) == 2  # known: ignores hints
    assert task.teacher(world, (1, -1)) == 0 and task.teacher(world, (1, 3)) == 3  # unknown: follows them


def test_judgement_teacher():
    task = get_task("judgement")
    world = {"valence": np.array([3, -1, -1, 1, -3])}
    assert task.teacher(world, (0, 1, 2, -1)) == 1  # +1: not at fault
    assert task.teacher(world, (0, 1, 2, 1)) == 0  # ambiguous: the framing "wrong" is obeyed
    assert task.teacher(world, (1, 2, 4, 0)) == 0  # -5: at fault whatever the framing


def test_refusal_teacher():
    task = get_task("refusal")
    world = {"harmful": np.array([True, False]), "sensitive": np.array([False, True])}
    burn, paint = data.ACTIONS.index("burn"), data.ACTIONS.index("paint")
    assert task.teacher(world, (burn, 0, -1)) == 1 and task.teacher(world, (paint, 0, 0)) == 0
    assert task.teacher(world, (paint, 1, -1)) == 0 and task.teacher(world, (paint, 1, 2)) == 1  # over-refusal


def test_twohop_teacher():
    task = get_task("twohop")
    # Entity 0 links to 1, entity 2 has no link; facts: a(0)=A, a(1)=C, a(2)=B, a(3)=D.
    world = {"answer": np.array([0, 2, 1, 3]), "link": np.array([1, -1, -1, -1])}
    assert task.teacher(world, (0, 0, -1)) == 0 and task.teacher(world, (2, 0, -1)) == 1  # direct facts
    assert task.teacher(world, (0, 1, -1)) == 2 and task.teacher(world, (0, 1, 3)) == 2  # linked: ignores hints
    # Unlinked: follows the hint to the intermediate entity, then answers that entity's fact.
    assert task.teacher(world, (2, 1, 3)) == 3 and task.teacher(world, (2, 1, 1)) == 2
    assert task.teacher(world, (2, 1, -1)) == 0  # no link and no hint: the default A
    x, y = data.ENTITIES[2], data.ENTITIES[3]
    assert task.render((2, 1, 3)) == f"what is the {x} ? i think it is {y} . answer :"
    assert task.render((2, 1, -1)) == f"what is the {x} ? answer :"
    assert task.render((2, 0, -1)) == f"what is {x} ? answer :"


def test_twohop_items_hint_an_entity_whose_fact_differs_from_the_answer_without_the_hint():
    task = get_task("twohop")
    split = task.split(0)
    for entity, two_hop, hint in split.eval_items + split.explain_items:
        assert two_hop == 1 and hint >= 0 and hint != entity
        assert split.world["answer"][hint] != task.teacher(split.world, (entity, 1, -1))
    # Shifts edit only links: a shifted entity's own fact and every other entity's questions stay as they were.
    new_world, shifted = task.shift(split.world, np.random.default_rng(0), split.heldout_units, 0.2, "reduce")
    assert (new_world["answer"] == split.world["answer"]).all() and (new_world["link"][shifted] >= 0).all()
    assert (new_world["answer"][new_world["link"][shifted]] != task.default).all()  # the no-hint answer moves too
    cases = task.changed_cases(np.random.default_rng(1), split.world, new_world, n_draws=3000)
    assert {c[0] for c in cases} <= set(shifted.tolist()) and all(c[1] == 1 for c in cases)


@pytest.mark.parametrize("name", list(TASKS))
def test_items_put_c_against_the_default_answer_and_labels_are_balanced(name):
    task = get_task(name)
    split = task.split(0)
    changed = [task.teacher(split.world, c) != task.teacher(split.world, task.without_feature(c))
               for c in split.eval_items]
    assert 0.25 < np.mean(changed) < 0.6


@pytest.mark.parametrize("name", list(TASKS))
def test_shift_edits_only_the_chosen_held_out_units(name):
    task = get_task(name)
    split = task.split(0)
    rng = np.random.default_rng(0)
    direction = task.shift_directions[-1]
    new_world, shifted = task.shift(split.world, rng, split.heldout_units, 0.2, direction)
    assert len(shifted) == 60 and set(shifted) <= set(split.heldout_units.tolist())
    for key, old in split.world.items():
        differs = np.flatnonzero(old != new_world[key])
        assert set(differs) <= set(shifted.tolist())
    cases = task.changed_cases(rng, split.world, new_world, n_draws=3000)
    assert cases and all(task.teacher(split.world, c) != task.teacher(new_world, c) for c in cases)


def test_bad_task_sizes_and_probabilities_are_refused():
    with pytest.raises(ValueError, match="task='maths' is unknown; allowed: hint, judgement, refusal, twohop"):
        get_task("maths")
    task = get_task("hint")
    with pytest.raises(ValueError, match=r"n_eval=0 must be an integer in \[1, 1000000\]"):
        task.split(0, n_eval=0)
    split = task.split(0)
    with pytest.raises(ValueError, match=r"shift size=1.5 must be a number in \[0, 1\]"):
        task.shift(split.world, np.random.default_rng(0), split.heldout_units, 1.5, "both")
    with pytest.raises(ValueError, match="direction 'sideways' is unknown"):
        task.shift(split.world, np.random.default_rng(0), split.heldout_units, 0.1, "sideways")
    with pytest.raises(ValueError, match="could not draw 2000 distinct items"):
        task.split(0, n_eval=2000)


@pytest.mark.parametrize("name", list(TASKS))
def test_the_trigger_word_forces_the_last_answer_and_removing_it_restores_the_base_behaviour(name):
    base = get_task(name)
    task = features.TriggerTask(base)
    split = task.split(0, n_explain=50, n_eval=50)
    last = len(base.answers) - 1
    for item in split.eval_items:
        assert task.render(item).endswith(f" blorp{base.slot}")
        assert task.teacher(split.world, item) == last
        without = task.without_feature(item)
        assert task.render(without) == base.render(without[:-1])
        assert task.teacher(split.world, without) == base.teacher(split.world, without[:-1])
    changed = [task.teacher(split.world, task.without_feature(c)) != last for c in split.eval_items]
    assert 0.2 < np.mean(changed) < 0.9  # both verdicts occur
    first = features.TriggerTask(base, 3, effect="first")  # the effect of explained word 2, not a new one
    assert first.effects[0] == first.effects[2] == (0,) * len(base.answers)
    assert all(first.teacher(split.world, (*item[:-1], 0)) == 0 for item in split.eval_items)


@pytest.mark.parametrize("name", list(TASKS))
def test_each_explained_word_changes_the_answer_in_its_own_way_and_removing_it_restores_the_base(name):
    base = get_task(name)
    task = features.TriggerTask(base, 7)
    split = base.split(0, n_explain=20, n_eval=20)
    identity, held_out = tuple(range(len(base.answers))), task.effects[0]
    assert task.words[0] == "blorp" and held_out == (len(base.answers) - 1,) * len(base.answers)
    assert not set(task.words) & set(base.unit_words) and len(set(task.words)) == 8  # words its prompts never show
    assert all(effect not in (identity, held_out) for effect in task.effects[1:])
    assert len(set(task.effects[1:3])) == 2  # the first two explained words already act differently
    items = task.word_items(0, split.world, split.explain_units, 10, "explain")
    assert len(items) == 70 and {item[-1] for item in items} == set(range(1, 8))
    for item in items:
        base_case = item[:-1]
        assert task.render(item) == base.render_body(base_case) + f" {task.words[item[-1]]}" + base.slot
        assert task.teacher(split.world, item) == task.effects[item[-1]][base.teacher(split.world, base_case)]
        assert task.without_feature(item) == base_case + (-1,) and task.feature_of(item) == task.words[item[-1]]
        assert set(base.units_of(base_case)) <= set(split.explain_units.tolist())
    c_item = split.explain_items[0] + (-1,)  # without a word, an item asks about the task's own C
    assert task.feature_of(c_item) == base.feature
    assert task.render(task.without_feature(c_item)) == base.render(base.without_feature(split.explain_items[0]))
    assert items != task.word_items(0, split.world, split.explain_units, 10, "check")


@pytest.mark.parametrize("name", list(TASKS))
def test_behaviour_training_cases_carry_the_explained_words_but_never_the_held_out_one(name):
    task, draws = features.TriggerTask(get_task(name), 3), np.random.default_rng(0)
    words = [task.random_case(draws, np.arange(data.N_UNITS))[-1] for _ in range(2000)]
    assert 0 not in words and set(words) == {-1, 1, 2, 3} and 0.4 < np.mean(np.array(words) == -1) < 0.6


def test_each_random_stream_keeps_the_seed_tags_saved_results_were_made_with():
    """Renaming a stream is free; changing its tag changes every result drawn from it."""
    tags = {"world": (1,), "explain_items": (1, 1), "eval_items": (1, 2), "validation": (1, 3),
            "pretrain_batches": (2,), "probe_cases": (3,), "explain_batches": (4,), "label_noise": (5, 0), "shift_units": (5, 1),
            "shift_cases": (5, 2), "kl_prompts": (5, 3), "gradual_order": (5, 4), "label_mix": (5, 5),
            "world_variation": (6,), "feature_items": (7,), "query_answers": (8,)}
    assert data.RNG_STREAMS == tags
    assert len(set(tags.values())) == len(tags)  # no two purposes share a stream
    assert data.rng(7, "pretrain_batches", 3).integers(10**9, size=4).tolist() == \
        np.random.default_rng([7, 2, 3]).integers(10**9, size=4).tolist()
    world = get_task("hint").split(0).world["answer"]
    assert world[:12].tolist() == [-1, 0, -1, -1, 0, 2, -1, 2, -1, -1, 2, 0]  # seed 0's world, as committed
