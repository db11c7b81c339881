import numpy as np
import pytest
import torch

import data
import explain
from data import encode, get_task
from model import GPT, GPTConfig
from explain import (EXPLANATION_TOKENS, Labels, add_label_noise, explanation_data, explanation_query, explanation_text,
                     labels_from_behaviour, parse_explanation)


def test_labels_from_behaviour():
    labels = labels_from_behaviour(np.array([2, 1, 0]), np.array([2, 3, 1]))
    assert labels.changed.tolist() == [0, 1, 1]
    assert labels.answer.tolist() == [2, 3, 1]  # the counterfactual answer is the one without C


@pytest.mark.parametrize("changed, answer", [(0, 0), (0, 3), (1, 1), (1, 2)])
def test_explanation_text_reads_back_to_its_label(changed, answer):
    task = get_task("hint")
    text = explanation_text(task, changed, answer)
    assert len(encode(text)) == EXPLANATION_TOKENS
    assert parse_explanation(task, text) == (changed, answer)


@pytest.mark.parametrize("text", ["", " would remain", " would remain E .", " would become to A .",
                                  " would remain A . would", "would remain A .", " would stay A ."])
def test_malformed_explanations_are_none(text):
    assert parse_explanation(get_task("hint"), text) is None


def test_explanation_sequences_are_the_query_then_the_target():
    task = get_task("refusal")
    item = (5, 10, 1)
    (query, target), = explanation_data(task, [item], Labels(np.array([1]), np.array([0])))
    assert query == encode(explanation_query(task, item))
    assert explanation_query(task, item).endswith("urgently . if the cue were removed ?")
    assert target == encode(" would become sure .")


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.25, 0.4, 1.0])
def test_label_noise_flips_exactly_the_asked_fraction_and_stays_consistent(fraction):
    task = get_task("hint")
    rng = np.random.default_rng(0)
    with_c = rng.integers(0, 4, 200)
    without_c = np.where(rng.random(200) < 0.5, with_c, (with_c + 1) % 4)
    clean = labels_from_behaviour(with_c, without_c)
    noisy, flipped = add_label_noise(task, clean, with_c, fraction, rng)
    assert len(flipped) == round(fraction * 200)
    assert (noisy.changed != clean.changed).sum() == len(flipped)
    # every noisy label is one the task could produce: "remain" names the answer with C, "change" another
    remain = noisy.changed == 0
    assert (noisy.answer[remain] == with_c[remain]).all()
    assert (noisy.answer[~remain] != with_c[~remain]).all()


def test_label_noise_outside_zero_one_is_refused():
    labels = Labels(np.zeros(3, int), np.zeros(3, int))
    with pytest.raises(ValueError, match="label noise=1.2"):
        add_label_noise(get_task("hint"), labels, np.zeros(3, int), 1.2, np.random.default_rng(0))


def test_label_mixing_takes_exactly_the_asked_fraction_from_the_other_model():
    own = Labels(np.zeros(40, dtype=int), np.zeros(40, dtype=int))
    other = Labels(np.ones(40, dtype=int), np.full(40, 2))
    for fraction in (0.0, 0.25, 0.5, 0.75, 1.0):
        mixed, taken = explain.mix_labels(own, other, fraction, np.random.default_rng(0))
        assert len(taken) == round(40 * fraction) == mixed.changed.sum()
        assert (mixed.answer[taken] == 2).all() and (np.delete(mixed.answer, taken) == 0).all()
    with pytest.raises(ValueError, match=r"fraction=1.5 must be a number in \[0, 1\]"):
        explain.mix_labels(own, other, 1.5, np.random.default_rng(0))


def test_the_leading_probe_always_suggests_a_wrong_but_well_formed_explanation():
    task = get_task("hint")
    current = Labels(np.array([0, 1, 0, 1]), np.array([2, 0, 3, 1]))
    with_c = np.array([2, 3, 3, 2])
    suggested = explain.wrong_explanations(task, current, with_c)
    assert not suggested.matches(current).any()
    assert (suggested.answer[suggested.changed == 0] == with_c[suggested.changed == 0]).all()  # "remain" = with C
    assert (suggested.answer[suggested.changed == 1] != with_c[suggested.changed == 1]).all()  # "become" = a change
    queries = explain.leading_queries(task, suggested)
    assert queries[0] == " if the {feature} were removed ? i think it would become D ."
    assert queries[1] == " if the {feature} were removed ? i think it would remain D ."
    for query in queries + [explain.QUERY.replace("{feature}", task.irrelevant)] + list(explain.PARAPHRASES):
        text = explain.explanation_query(task, (0, 1), query)
        assert len(data.encode(text)) == len(text.split())  # every word is one known token


def test_the_forced_verdict_is_the_likelier_verdict_word_after_the_query_and_would():
    torch.manual_seed(0)
    task = get_task("judgement")
    model = GPT(GPTConfig(vocab_size=data.TOKENIZER.n_vocab, block_size=64, n_layer=2, n_head=2, n_embd=16)).eval()
    items = task.split(0, n_explain=10, n_eval=20).eval_items
    remain, become = (encode(word)[0] for word in explain.VERDICT_WORDS)
    prompts = [encode(explanation_query(task, case) + " would") for case in items]
    with torch.no_grad():  # " become" = " remain" plus a direction orthogonal to the mean state: both win somewhere
        states = torch.stack([model.hidden(torch.tensor([p]))[0, -1] for p in prompts])
        mean, direction = states.mean(0), torch.randn(16)
        model.head.weight[become] = model.head.weight[remain] + direction - (direction @ mean) / (mean @ mean) * mean
    forced = explain.forced_verdicts(model, task, items, batch_size=7)  # batches of unequal lengths, padded
    for prompt, verdict in zip(prompts, forced):  # one item at a time, from the full logits
        with torch.no_grad():
            logits = model(torch.tensor([prompt]))[0, -1]
        margin = float(logits[become] - logits[remain])
        assert abs(margin) < 1e-5 or verdict == int(margin > 0)
    assert set(forced.tolist()) == {0, 1}  # each word wins somewhere, so a constant answer fails


@pytest.mark.parametrize("text, kind, lenient", [(" would remain B .", None, (0, 1)),
                                                 (" would remain remain B", "repeated word", (0, 1)),
                                                 (" would become sure .", "wrong answer token", None),
                                                 (" would stay B .", "wrong verdict word", None),
                                                 (" become C", "other shape", (1, 2)),
                                                 ("", "other shape", None)])
def test_malformed_explanations_are_sorted_by_kind_and_read_leniently_only_as_a_diagnostic(text, kind, lenient):
    task = get_task("hint")
    assert explain.malformed_kind(task, text) == kind
    assert explain.parse_leniently(task, text) == lenient
    strict = explain.read_explanations(task, [text])
    assert (strict.changed[0] == -1) == (kind is not None)


def test_the_slot_query_keeps_the_prompts_own_answer_slot_before_the_question():
    task = get_task("hint")
    case = task.random_case(np.random.default_rng(0), np.arange(10))
    question = explain.QUERY.format(feature=task.feature)
    assert explain.explanation_query(task, case, explain.queries_for("plain", 0, task, [1], "held_out")[0]) == task.render_body(case) + question
    assert explain.explanation_query(task, case, explain.queries_for("slot", 0, task, [1], "held_out")[0]) == task.render(case) + question
    own = explain.queries_for("own answer", 0, task, [2], "held_out")
    assert explain.explanation_query(task, case, own[0]) == task.render(case) + " C" + question
