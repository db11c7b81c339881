"""The invariants the method rests on, each with a test that fails when it is broken.

The explanation labels are M0's, computed once with their noise and never refreshed, and a noisy label
stays one its source could produce; the shift trains each of its cases towards the new answer, and the KL
term never holds a shifted unit.
"""
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest

import eval as ev
import train
from data import encode, get_task, rng, token_id
from explain import (add_label_noise, behaviour, explanation_data, explanation_query, labels_from_behaviour, mix_labels,
                     pair_cases)
from test_eval import tiny_config


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
    mixed, other, counts = ev.frozen_labels(cfg, run.task, items, run.m0, run.runs_dir)
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
