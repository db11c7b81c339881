"""Stage B's objectives, each checked against an independent computation or a behaviour it must cause."""
import math

import pytest
import torch
import torch.nn.functional as F

import train
from data import TOKENIZER
from model import GPT, GPTConfig

ANSWERS = [10, 11, 12]


def tiny_gpt(vocab_size=40):
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16))


def test_the_explanation_loss_is_the_cross_entropy_of_each_target_token_given_everything_before_it():
    """Computed independently: one full forward pass per sequence, unpadded; the output at position t
    predicts token t + 1, so the targets are read from len(prompt) - 1 to len(prompt) + len(target) - 2."""
    model = tiny_gpt()
    sequences = [([1, 2, 3], [4, 5]), ([6, 7, 8, 9, 13], [14]), ([15], [16, 17, 18])]
    logits, targets = [], []
    for prompt, target in sequences:
        full = model.head(model.hidden(torch.tensor([prompt + target])))[0]
        logits.append(full[len(prompt) - 1: len(prompt) + len(target) - 1])
        targets += target
    expected = F.cross_entropy(torch.cat(logits), torch.tensor(targets))  # the mean over every target token
    assert torch.allclose(train.explanation_loss(model, sequences), expected, atol=1e-6)


def test_kl_to_the_reference_is_kl_of_the_current_model_from_the_reference_worked_by_hand():
    """KL(p || q) with p the current model's answers: 0.9 ln(0.9/0.5) + 0.1 ln(0.1/0.5) = 0.3681, whereas
    KL(q || p) = 0.5 ln(0.5/0.9) + 0.5 ln(0.5/0.1) = 0.5108; a second prompt whose answers agree adds 0
    to the mean over prompts."""
    current = torch.tensor([[0.9, 0.1], [0.3, 0.7]]).log()
    reference = torch.tensor([[0.5, 0.5], [0.3, 0.7]]).log()
    by_hand = (0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5) + 0.0) / 2
    assert train.kl_to_reference(current, reference).item() == pytest.approx(by_hand, abs=1e-6)
    assert by_hand == pytest.approx(0.3681 / 2, abs=1e-4)


def test_the_kl_term_holds_the_answers_of_the_kl_prompts_near_m0_under_a_shift_that_pulls_them_away():
    """A shift teaches the first answer after every prompt of some words; the KL prompts use the same
    words, so without the KL term their answers follow the shift."""
    m0 = tiny_gpt()
    kl_prompts = [[1, 2, 3], [4, 5], [6, 7, 8, 9], [2, 5, 8], [3, 6], [9, 1, 4]]
    reference = m0.answer_logprobs(kl_prompts, ANSWERS).detach()
    kl_data = list(zip(kl_prompts, reference))
    shift_data = [([1, 5, 9], 0), ([2, 6], 0), ([3, 7, 4], 0), ([8, 4, 2], 0), ([5, 3], 0)]

    def distance_from_m0(kl_weight):
        cfg = train.ExplainConfig(steps=30, lr=1e-2, warmup=0, explain_batch=4, shift_batch=8, kl_batch=8,
                                  kl_weight=kl_weight, explain_in="all")  # a tiny vocabulary has no unit words
        model = train.train_explainer(train.explainer_from(m0), cfg, 0, [([1, 2, 3], [20, 21])],
                                      [(0, shift_data)], kl_data, ANSWERS)
        with torch.no_grad():
            return train.kl_to_reference(model.answer_logprobs(kl_prompts, ANSWERS), reference).item()

    held, free = distance_from_m0(3.0), distance_from_m0(0.0)
    assert free > 0.1  # the shift does pull the KL prompts' answers away
    assert held < 0.3 * free


def test_the_learning_rate_warms_up_linearly_peaks_then_decays_to_a_tenth():
    cfg = train.ExplainConfig(steps=300, warmup=30, lr=5e-3)
    assert train.lr_at(0, cfg) == pytest.approx(5e-3 / 30)
    assert [train.lr_at(s, cfg) for s in range(30)] == pytest.approx([5e-3 * (s + 1) / 30 for s in range(30)])
    assert train.lr_at(30, cfg) == pytest.approx(5e-3)  # the peak, where the decay starts
    decay = [train.lr_at(s, cfg) for s in range(30, 300)]
    assert all(a > b for a, b in zip(decay, decay[1:]))
    assert train.lr_at(299, cfg) == pytest.approx(5e-4, rel=1e-3)  # the last step is at the floor


def record_learning_rates(monkeypatch):
    rates, take_step = [], train.take_step

    def recording(model, optimizer, loss, lr, grad_clip=None, **kw):
        rates.append(lr)
        take_step(model, optimizer, loss, lr, grad_clip, **kw)

    monkeypatch.setattr(train, "take_step", recording)
    return rates


def test_both_stages_step_at_the_scheduled_learning_rate(monkeypatch, tmp_path):
    rates = record_learning_rates(monkeypatch)
    cfg = train.ExplainConfig(steps=12, warmup=4, explain_batch=2, explain_in="all")  # no unit words in tiny_gpt
    train.train_explainer(tiny_gpt(), cfg, 0, [([1, 2, 3], [4, 5])], [], [], ANSWERS)
    assert rates == [train.lr_at(s, cfg) for s in range(12)]
    rates.clear()
    pretrain_cfg = train.PretrainConfig(task="refusal", steps=12, warmup=4, batch_size=8, n_embd=16, n_head=2)
    train.pretrain(pretrain_cfg, str(tmp_path / "m0.pt"), log=lambda *a: None)
    assert rates == [train.lr_at(s, pretrain_cfg) for s in range(12)]


def test_each_evaluation_receives_the_mean_losses_since_the_previous_one():
    """One sequence, one shift case and one KL prompt, so every batch repeats them and the losses of the
    first step are those of M0 itself; the shift loss is its real value even where only its gradient
    on the unit embeddings is used, and the KL loss is before its weight."""
    m0 = tiny_gpt(TOKENIZER.n_vocab)  # shift_in="units" reads the unit words' rows
    sequence, shift_case, kl_prompt = ([1, 2, 3], [4, 5]), ([6, 7], 2), [8, 9]
    reference = torch.log_softmax(torch.tensor([0.0, 1.0, 2.0]), -1)
    calls = []
    cfg = train.ExplainConfig(steps=4, eval_every=2, explain_batch=3, shift_batch=3, kl_batch=3, shift_in="units")
    train.train_explainer(train.explainer_from(m0), cfg, 0, [sequence], [(0, [shift_case])], [(kl_prompt, reference)],
                          ANSWERS, on_eval=lambda step, model, losses: calls.append((step, losses)))
    assert [step for step, _ in calls] == [0, 2, 4]
    assert all(math.isnan(value) for value in calls[0][1].values())  # no step yet
    assert all(math.isfinite(value) for _, losses in calls[1:] for value in losses.values())

    cfg = train.ExplainConfig(steps=1, eval_every=1, explain_batch=3, shift_batch=3, kl_batch=3, shift_in="units")
    calls.clear()
    train.train_explainer(train.explainer_from(m0), cfg, 0, [sequence], [(0, [shift_case])], [(kl_prompt, reference)],
                          ANSWERS, on_eval=lambda step, model, losses: calls.append(losses))
    with torch.no_grad():
        logp = m0.answer_logprobs([shift_case[0], kl_prompt], ANSWERS)
        expected = {"explain_loss": train.explanation_loss(m0, [sequence]).item(),
                    "shift_loss": -logp[0, shift_case[1]].item(),
                    "kl_loss": train.kl_to_reference(logp[1:], reference[None]).item()}
    assert calls[1] == pytest.approx(expected, abs=1e-5)

    calls.clear()
    train.train_explainer(train.explainer_from(m0), cfg, 0, [sequence], [], [], ANSWERS,
                          on_eval=lambda step, model, losses: calls.append(losses))
    assert math.isnan(calls[1]["shift_loss"]) and math.isnan(calls[1]["kl_loss"])  # parts absent: nan


@pytest.mark.parametrize("explain_in, units_move", [("all", True), ("layers", False)])
def test_explain_in_layers_keeps_the_explanation_objective_off_the_unit_words_embeddings(explain_in, units_move):
    """Explanation sequences that name units, and no other objective: the unit words' rows move only when
    the explanation objective may write everywhere; the other rows and the layers move either way."""
    from data import unit_token_ids
    m0 = tiny_gpt(TOKENIZER.n_vocab)
    unit = [int(u) for u in unit_token_ids()[:3]]
    sequences = [([1, unit[0], 3], [4, 5]), ([unit[1], 7], [unit[2], 8])]
    cfg = train.ExplainConfig(steps=5, warmup=0, explain_batch=2, weight_decay=0.0, explain_in=explain_in)
    model = train.train_explainer(train.explainer_from(m0), cfg, 0, sequences, [], [], ANSWERS)
    moved = (model.tok_emb.weight - m0.tok_emb.weight).abs().sum(1) > 0
    assert bool(moved[unit].any()) is units_move and bool(moved[[1, 3, 4, 5, 7, 8]].all())
    assert not torch.equal(model.blocks[0].attn.qkv.weight, m0.blocks[0].attn.qkv.weight)


def test_dropout_acts_only_while_the_explainer_trains_and_its_masks_follow_the_seed():
    """An explainer with dropout answers as M0 in evaluation mode and differently in training mode; its
    training is the same from the same seed whatever random draws came before (a loaded M0 or a trained
    one); without dropout the blocks hold no dropout at all."""
    m0 = tiny_gpt(TOKENIZER.n_vocab)
    dropped = train.explainer_from(m0, dropout=0.5)
    idx = torch.tensor([[1, 2, 3, 4]])
    assert torch.equal(dropped(idx), m0.eval()(idx)) and not torch.equal(dropped.train()(idx), m0(idx))
    assert not any(isinstance(m, torch.nn.Dropout) for m in train.explainer_from(m0).modules())
    cfg = train.ExplainConfig(steps=3, explain_batch=2, dropout=0.5)
    data = [([1, 2, 3], [4, 5]), ([6, 7], [8, 9])]

    def trained(noise):
        torch.rand(noise)  # draws made before stage B, as pretraining M0 makes and loading it does not
        return train.train_explainer(train.explainer_from(m0, dropout=0.5), cfg, 7, data, [], [], ANSWERS)
    assert all(torch.equal(a, b) for a, b in zip(trained(1).parameters(), trained(100).parameters()))
