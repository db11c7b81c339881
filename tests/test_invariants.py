"""The invariants the method rests on, each with a test that fails when it is broken.

The explanation labels are M0's, computed once with their noise and never refreshed, and a noisy label
stays one its source could produce; the shift moves only held-out units, trains each of its cases towards
the new answer, and the KL term never holds a shifted unit; each evaluation scores task accuracy against
the world the last trained step used, Self against the current labels and Orig against the frozen ones;
the input-blind bound searches every constant explanation; a run with no gap is not coupled; a run's
file name covers every science setting; the held-out word is never pretrained on, is what a trigger
run's held-out items ask about, while the words M0 learnt are checked on held-out units; and an answer
placed in the query is the model's own or, in the control, a seeded draw.
"""
from dataclasses import fields, is_dataclass, replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import eval as ev
import experiments as ex
import explain
import features
import metrics
import train
from data import encode, get_task, rng, token_id
from explain import (Labels, add_label_noise, behaviour, explanation_data, explanation_query, explanation_text,
                     labels_from_behaviour, mix_labels, pair_cases)
from test_eval import scored, tiny_config


# ---------------------------------------------------------------------------------------------------------
# One tiny run, and everything its stage B was given

@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny hint run with label noise. It records the explanation sequences of every training step and
    the shift phases and KL prompts stage B was given; M0 is loaded back from its checkpoint."""
    cfg = tiny_config(task="hint", label_noise=0.25)
    cfg = replace(cfg, explain=replace(cfg.explain, explain_batch=40))
    runs_dir = str(tmp_path_factory.mktemp("runs"))
    seen = SimpleNamespace(steps=[])
    loss, trainer = train.explanation_loss, ev.train_explainer

    def recording_loss(model, sequences):
        seen.steps.append(list(sequences))
        return loss(model, sequences)

    def recording_trainer(model, explain_cfg, seed, explain_data, shift_phases, kl_data, *rest):
        seen.shift_phases, seen.kl_data = shift_phases, kl_data
        return trainer(model, explain_cfg, seed, explain_data, shift_phases, kl_data, *rest)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train, "explanation_loss", recording_loss)
        patch.setattr(ev, "train_explainer", recording_trainer)
        ev.run_coupling(cfg, runs_dir=runs_dir, log=lambda *a: None)
    task = get_task(cfg.task)
    split = task.split(cfg.seed, cfg.n_explain, cfg.n_eval)
    m0, _ = train.pretrain(cfg.pretrain, train.m0_path(cfg.pretrain, runs_dir), log=lambda *a: None)
    return SimpleNamespace(cfg=cfg, task=task, split=split, m0=m0, runs_dir=runs_dir,
                           shifted=ev.shift_schedule(cfg, task, task, split)[1], **vars(seen))


def test_every_training_step_learns_the_frozen_labels_of_m0_with_their_noise(run):
    """E(M0) is computed once, before stage B, and label noise is part of it. Labels refreshed from the
    training model, at any step and with or without noise, would teach its current behaviour: the
    explanations would then follow the shift because they were trained on it, not by reading it."""
    with_c, without_c = behaviour(run.m0, run.task, run.split.explain_items)
    clean = labels_from_behaviour(with_c, without_c)
    frozen, flipped = add_label_noise(run.task, clean, with_c, run.cfg.label_noise, rng(run.cfg.seed, "label_noise"))
    target_of = {tuple(query): target for query, target in explanation_data(run.task, run.split.explain_items, frozen)}
    assert len(flipped) == 10 and len(run.steps) == run.cfg.explain.steps
    for step, sequences in enumerate(run.steps):
        for query, target in sequences:
            assert target == target_of[tuple(query)], f"step {step} trained on a label that is not E(M0)"
    noisy_queries = {tuple(encode(explanation_query(run.task, run.split.explain_items[i]))) for i in flipped}
    assert noisy_queries & {tuple(query) for sequences in run.steps for query, _ in sequences}  # noise is trained


def test_the_kl_prompts_never_mention_a_unit_the_shift_trains(run):
    """The KL term holds the answers of its prompts at M0's; on a shifted unit it would pull against the
    shift. Its prompts are cases on units that never shift, and the explanation items with and without C."""
    shifted_words = {token_id(run.task.unit_words[unit]) for unit in run.shifted}
    prompts = [tuple(prompt) for prompt, _ in run.kl_data]
    assert len(run.shifted) > 0 and len(prompts) > 2 * run.cfg.n_explain
    assert not [prompt for prompt in prompts if shifted_words & set(prompt)]
    assert {tuple(run.task.encode(case)) for case in pair_cases(run.task, run.split.explain_items)} <= set(prompts)


def test_shift_data_are_cases_of_shifted_units_trained_towards_their_new_answers(run):
    """The shift objective trains only cases whose answer its world changed ("pure" shift data), each
    towards the answer in that world; trained towards the old answers it would shift nothing."""
    (start, shift_data), = run.shift_phases
    (phase,), _ = ev.shift_schedule(run.cfg, run.task, run.task, run.split)
    shifted = set(run.shifted.tolist())
    assert start == run.cfg.shift_at and len(shift_data) == len(phase.cases) > 0
    for (prompt, answer), case in zip(shift_data, phase.cases):
        assert prompt == run.task.encode(case) and set(run.task.units_of(case)) <= shifted
        assert answer == run.task.teacher(phase.world, case) != run.task.teacher(run.split.world, case)


def test_label_noise_on_labels_from_another_family_stays_consistent_with_that_family(run):
    """A noisy label must still be one its source could produce: "would remain X" names the source's own
    answer with C, "would become Y" another one. Labels taken from the other family are checked against
    the other family's answers, not M0's."""
    cfg = replace(run.cfg, other_labels=0.5, label_noise=0.5)
    items = run.split.explain_items
    mixed, other, counts, _ = ev.frozen_labels(cfg, run.task, items, run.m0, run.runs_dir)
    own_with_c, own_without_c = behaviour(run.m0, run.task, items)
    other_with_c, other_without_c = behaviour(other, run.task, items)
    own, others = labels_from_behaviour(own_with_c, own_without_c), labels_from_behaviour(other_with_c, other_without_c)
    _, taken = mix_labels(own, others, cfg.other_labels, rng(cfg.seed, "label_mix"))
    source_with_c = own_with_c.copy()
    source_with_c[taken] = other_with_c[taken]
    assert counts == {"other_labels_taken": 20, "label_noise_flipped": 20}
    assert (source_with_c != own_with_c).any()  # the two families disagree on some items
    remain = mixed.changed == 0
    assert (mixed.answer[remain] == source_with_c[remain]).all()
    assert (mixed.answer[~remain] != source_with_c[~remain]).all()


@pytest.mark.parametrize("n, fraction, flipped", [(30, 0.25, 8), (7, 0.5, 4), (9, 0.3, 3)])
def test_label_noise_flips_the_nearest_whole_number_of_labels(n, fraction, flipped):
    """The noise level is the one asked, as nearly as n labels allow: 7.5 of 30 labels at 25% is 8
    (rounded, not cut down to 7)."""
    task, draws = get_task("hint"), np.random.default_rng(0)
    with_c = draws.integers(0, 4, n)
    clean = labels_from_behaviour(with_c, np.where(draws.random(n) < 0.5, with_c, (with_c + 1) % 4))
    noisy, flips = add_label_noise(task, clean, with_c, fraction, draws)
    assert len(flips) == flipped == (noisy.changed != clean.changed).sum()


# ---------------------------------------------------------------------------------------------------------
# The shift

@pytest.mark.parametrize("task_name, direction", [("hint", "reduce"), ("hint", "acquire"), ("hint", "both"),
                                                  ("judgement", "flip"), ("refusal", "reduce"), ("refusal", "both"),
                                                  ("twohop", "reduce"), ("twohop", "acquire")])
def test_the_shift_moves_only_held_out_units_and_never_an_explanation_items_answer(task_name, direction):
    """The shift touches only held-out units, so no explanation label ever contradicts the new behaviour:
    an explanation can follow the shift only by reading it."""
    cfg = ev.RunConfig(task=task_name, seed=2, shift=direction, shift_size=0.1)
    task = get_task(task_name)
    split = task.split(cfg.seed, cfg.n_explain, cfg.n_eval)
    (phase,), shifted = ev.shift_schedule(cfg, task, task, split)
    assert len(shifted) == 30 and set(shifted.tolist()) <= set(split.heldout_units.tolist())
    for key, facts in split.world.items():
        assert (phase.world[key][split.explain_units] == facts[split.explain_units]).all(), key
    cases = pair_cases(task, split.explain_items)
    assert [task.teacher(phase.world, c) for c in cases] == [task.teacher(split.world, c) for c in cases]


# ---------------------------------------------------------------------------------------------------------
# What each evaluation scores against

class WorldModel:
    """A stand-in for a model that has learnt the teacher of one world: it answers each task prompt as
    the teacher does in `world`, and explains each item by its own behaviour there, so its explanations
    are always its current labels. It records the items it is asked to explain."""

    def __init__(self, task, world, items, other_cases=()):
        self.task, self.world, self.asked = task, world, []
        self.cases = {tuple(task.encode(case)): case for case in [*pair_cases(task, items), *other_cases]}
        self.items = {tuple(encode(explanation_query(task, item))): item for item in items}

    def labels(self, items):
        answers = lambda cases: np.array([self.task.teacher(self.world, case) for case in cases])
        return labels_from_behaviour(answers(items), answers([self.task.without_feature(item) for item in items]))

    def answer_logprobs(self, prompts, answer_ids):
        answers = torch.tensor([self.task.teacher(self.world, self.cases[tuple(prompt)]) for prompt in prompts])
        return F.log_softmax(10.0 * F.one_hot(answers, len(answer_ids)).float(), -1)

    def generate(self, prompts, max_new_tokens):
        items = [self.items[tuple(prompt)] for prompt in prompts]
        self.asked.append(items)
        said = self.labels(items)
        return [encode(explanation_text(self.task, c, a)) for c, a in zip(said.changed, said.answer)]


def world_trained_at(phases, world, step):
    """The world the shift objective trained towards at `step`: the last phase started by then, or the
    world M0 learnt before the first."""
    for phase in phases:
        if phase.start <= step:
            world = phase.world
    return world


@pytest.mark.parametrize("schedule", [{"schedule": "oscillating", "shift_at": 2, "back_at": 5},
                                      {"schedule": "gradual", "shift_at": 1, "ramp_steps": 10}],
                         ids=["oscillating", "gradual"])
def test_each_evaluation_scores_against_the_world_the_last_trained_step_used(schedule):
    """At step s the model has been trained up to step s - 1: a model that learnt exactly that step's
    world has task accuracy 1 and has learnt that phase's shift fully. Scored against M0's world, or
    against the phase that starts at s, it would not; and its truthful explanations have Self 1 and Orig
    the fraction of items whose labels the shift left as they were."""
    cfg = ev.RunConfig(task="hint", seed=0, n_explain=40, n_eval=200, explain=train.ExplainConfig(steps=12),
                       **schedule)
    task = get_task("hint")
    split = task.split(cfg.seed, cfg.n_explain, cfg.n_eval)
    phases, shifted = ev.shift_schedule(cfg, task, task, split)
    cases = [case for phase in phases for case in phase.cases]
    m0 = WorldModel(task, split.world, split.eval_items, cases)
    evaluate = ev.Evaluator(cfg, split, m0, phases, shifted, log=lambda *a: None)
    model = WorldModel(task, split.world, split.eval_items, cases)
    losses = dict.fromkeys(("explain_loss", "shift_loss", "kl_loss"), float("nan"))
    frozen = m0.labels(split.eval_items)
    for step in range(cfg.explain.steps + 1):
        model.world = world_trained_at(phases, split.world, step - 1)
        evaluate(step, model, losses)
        point, learnt = evaluate.curve[-1], evaluate.curve[-1]["shift_learned"]
        assert point["task_accuracy"] == 1.0, f"step {step}"
        assert learnt == 1.0 if step - 1 >= cfg.shift_at else np.isnan(learnt), f"step {step}"
        kept = np.mean(model.labels(split.eval_items).matches(frozen))
        assert point["self"] == 1.0 and point["orig"] == pytest.approx(kept), f"step {step}"
    assert max(point["n_flipped"] for point in evaluate.curve) > 0  # the shift does change evaluated labels
    assert model.asked == [split.eval_items] * len(evaluate.curve)  # the same items at every evaluation


# ---------------------------------------------------------------------------------------------------------
# The metrics' baselines and the rule

def labels(changed, answer):
    return Labels(np.array(changed), np.array(answer))


def test_the_best_input_blind_explainer_may_write_would_become():
    """Four items said "would remain A" under M0; three now change to D. The best constant is "would
    become D" (gap 3/4), which is no frozen label and no "remain" label: a search over fewer
    candidates would report a lower bound than an input-blind explainer reaches."""
    original = labels([0, 0, 0, 0], [0, 0, 0, 0])
    current = labels([1, 1, 1, 0], [3, 3, 3, 0])
    blind = metrics.best_input_blind(current, original)
    assert blind == {"blind_self": 0.75, "blind_orig": 0.0, "blind_gap": 0.75, "blind_self_flipped": 1.0}


def test_the_input_blind_gap_is_the_best_gap_of_every_constant_explanation():
    """Checked against brute force on random labels: every explanation the task can write, each written
    for every item, and 0 (an explanation no label has)."""
    draws = np.random.default_rng(0)
    for _ in range(50):
        original = labels(draws.integers(0, 2, 12), draws.integers(0, 4, 12))
        current = labels(draws.integers(0, 2, 12), draws.integers(0, 4, 12))
        gaps = [scored(labels([c] * 12, [a] * 12), current, original)["gap"]
                for c in (0, 1) for a in range(4)]
        assert metrics.best_input_blind(current, original)["blind_gap"] == pytest.approx(max(0.0, *gaps))


def test_a_run_with_self_equal_to_orig_is_not_coupled_however_well_it_tracks():
    """Item 0 flips and its explanation follows it (tracking 1, as item 2 has no unflipped item of its
    frozen label); item 2 flips and its explanation keeps the frozen label. Self = Orig: the rule asks
    for Self > Orig."""
    original = labels([0, 0, 1], [1, 1, 2])
    current = labels([1, 0, 0], [3, 1, 0])
    evaluation = scored(labels([1, 0, 1], [3, 1, 2]), current, original)
    assert evaluation["gap"] == 0 and evaluation["tracking"] == evaluation["verdict_tracking"] == 1.0
    assert not metrics.is_coupled(evaluation)
    assert metrics.is_coupled(scored(labels([1, 0, 0], [3, 1, 3]), current, original))


# ---------------------------------------------------------------------------------------------------------
# A run's file

def setting_paths(config, path=()):
    """(path, field) of every setting of a config, nested configs walked into."""
    for f in fields(config):
        value = getattr(config, f.name)
        yield from setting_paths(value, path + (f.name,)) if is_dataclass(value) else [(path + (f.name,), f)]


def setting(config, path):
    return setting(getattr(config, path[0]), path[1:]) if len(path) > 1 else getattr(config, path[0])


def with_setting(config, path, value):
    if len(path) == 1:
        return replace(config, **{path[0]: value})
    return replace(config, **{path[0]: with_setting(getattr(config, path[0]), path[1:], value)})


def other_values(f, value):
    """Values other than `value` that a field allows, from its choices or range."""
    if "choices" in f.metadata:
        return [choice for choice in f.metadata["choices"] if choice != value]
    low, high = f.metadata["range"]
    near = (value + 1, value - 1) if isinstance(value, int) else (value / 2, value * 2, value + 0.1)
    return [v for v in (*near, low, high) if low <= v <= high and v != value]


def varied(base, path, f):
    """The configs that differ from base in this one setting (values a run refuses are left out; so are
    values it overrides, as a run sets M0's task and seed from its own)."""
    configs = []
    for other in other_values(f, setting(base, path)):
        try:
            config = with_setting(base, path, other)
        except ev.UserError:
            continue
        if ev.science(config) != ev.science(base) or f.metadata.get("runtime"):
            configs.append(config)
    return configs


# The runs each setting is varied from: the defaults, and a run with the held-out feature, whose settings
# (explained_features, feature_items) a run without it refuses to change.
BASES = (ev.RunConfig(), ev.RunConfig(shift="trigger", explained_features=2))


def test_every_science_setting_names_its_own_result_file_and_runtime_settings_do_not():
    """Two runs that differ in any science setting must never share a result file (a suite would load
    the one as the other); device, threads and checkpoint interval change no number and share it."""
    saved_as = lambda cfg: ex.result_path("runs", cfg, root="results")
    untested = set()
    for path, f in setting_paths(ev.RunConfig()):
        tried = [(base, config) for base in BASES for config in varied(base, path, f)]
        if not tried:
            untested.add(path)
        for base, config in tried:
            if f.metadata.get("runtime"):
                assert saved_as(config) == saved_as(base), path
            else:
                assert saved_as(config) != saved_as(base), path
    assert untested == {("pretrain", "task"), ("pretrain", "seed"), ("pretrain", "feature_words")}


# ---------------------------------------------------------------------------------------------------------
# The held-out feature: the word no label names is asked about, and only the shift ever teaches it

def trigger_pieces(explained_features=3, unlabelled_features=0):
    cfg = ev.RunConfig(task="hint", seed=4, shift="trigger", explained_features=explained_features,
                       unlabelled_features=unlabelled_features, feature_items=20, n_explain=60, n_eval=60)
    task, split = ev.check_feasible(cfg)
    return cfg, task, split


def test_m0_pretrains_on_the_explained_and_unlabelled_words_but_never_on_the_held_out_one(monkeypatch, tmp_path):
    seen, loss, pad = set(), train.pretrain_loss, train.GPT.pad

    def recording(model, task, world, cfg, step):
        monkeypatch.setattr(train.GPT, "pad", lambda self, sequences: (
            seen.update(t for s in sequences for t in s), pad(self, sequences))[1])
        try:
            return loss(model, task, world, cfg, step)
        finally:
            monkeypatch.setattr(train.GPT, "pad", pad)
    monkeypatch.setattr(train, "pretrain_loss", recording)
    cfg = ev.RunConfig(task="hint", shift="trigger", explained_features=3, unlabelled_features=1).pretrain
    train.pretrain(replace(cfg, steps=4, batch_size=64, n_embd=16, n_head=2), str(tmp_path / "m0.pt"),
                   log=lambda *a: None)
    held_out, *learnt = features.TriggerTask(get_task("hint"), 2, 1).words  # explained and unlabelled
    assert token_id(held_out) not in seen and {token_id(w) for w in learnt} <= seen


def test_a_trigger_runs_held_out_items_ask_about_the_held_out_word():
    cfg, task, split = trigger_pieces()
    probed, items = ev.held_out(cfg, task, split)
    assert len(items) == len(split.eval_items)
    assert all(f"if the {features.TriggerTask.word} were removed" in explanation_query(probed, item) for item in items)


def test_the_learnt_words_are_checked_on_held_out_units_only():
    cfg, task, split = trigger_pieces(unlabelled_features=2)
    probed, _ = ev.held_out(cfg, task, split)
    checks = ev.word_checks(probed, cfg.seed, split)
    for kind, words in (("explained", probed.words[1:3]), ("unlabelled", probed.words[3:])):
        units = {u for item in checks[kind] for u in probed.units_of(item)}
        assert checks[kind] and units <= set(split.heldout_units.tolist()) and not units & set(split.explain_units.tolist())
        assert {probed.feature_of(item) for item in checks[kind]} == set(words)  # never the held-out one


# ---------------------------------------------------------------------------------------------------------
# The query with an answer in its slot: the answer is the model's own, now; the control's is not

@pytest.mark.parametrize("query", ["own answer", "random answer"])
def test_an_answer_in_the_query_is_m0s_in_training_the_current_models_at_evaluation_and_random_in_the_control(
        query, tmp_path, monkeypatch):
    """Every query stage B trained on and every query an evaluation asked, with the answer in its slot
    read back: with "own answer" it is the answer with C of M0 (training, whose labels are M0's) and of
    the model being evaluated (held-out items and word checks); with "random answer" it is the same
    seeded draw whatever the models answer, and not theirs."""
    cfg = tiny_config(task="hint", shift="trigger", explained_features=2, unlabelled_features=1, feature_items=20,
                      query=query)
    trained, asked, data_of, explanations_of = [], [], ev.explanation_data, ev.explanations_of
    monkeypatch.setattr(ev, "explanation_data", lambda task, items, labels, queries: (
        trained.append((task, items, queries)), data_of(task, items, labels, queries))[1])
    monkeypatch.setattr(ev, "explanations_of", lambda model, task, items, queries=explain.QUERY: (
        asked.append((behaviour(model, task, items)[0], task, str(items), queries)),
        explanations_of(model, task, items, queries))[1])
    ev.run_coupling(cfg, str(tmp_path / "r.json"), runs_dir=str(tmp_path / "runs"), log=lambda *a: None)
    m0 = train.load_checkpoint(train.m0_path(cfg.pretrain, str(tmp_path / "runs")))
    in_slot = lambda task, queries: np.array([task.answers.index(q.split()[2]) for q in queries])
    (task, items, queries), = trained
    assert all(q.startswith(f"{task.slot} ") and q.endswith(explain.QUERY) for q in queries)
    m0_model = train.GPT(train.GPTConfig(**m0["model_config"]))
    m0_model.load_state_dict(m0["model"])
    m0_answers = behaviour(m0_model.eval(), task, items)[0]
    assert len(asked) == 9 and len({items for _, _, items, _ in asked}) == 3  # 3 evaluations of 3 kinds of item
    if query == "own answer":
        assert np.array_equal(in_slot(task, queries), m0_answers)
        assert all(np.array_equal(in_slot(t, q), answers) for answers, t, _, q in asked)
    else:
        assert not np.array_equal(in_slot(task, queries), m0_answers)
        assert not all(np.array_equal(in_slot(t, q), answers) for answers, t, _, q in asked)
        drawn = {}
        for _, t, items, q in asked:  # each kind of item keeps its draw from one evaluation to the next
            assert np.array_equal(drawn.setdefault(items, in_slot(t, q)), in_slot(t, q))
