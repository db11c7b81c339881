import os

import pytest
import torch

from config import UserError
import train
import features
from data import TASKS, TOKENIZER, token_id, unit_token_ids
from model import GPT, GPTConfig
from train import PretrainConfig, load_checkpoint, pretrain

CHANCE = {"hint": 0.25, "judgement": 0.5, "refusal": 0.5, "twohop": 0.25}


@pytest.mark.parametrize("name", list(TASKS))
def test_a_tiny_m0_learns_each_task_well_above_chance(name, tmp_path):
    cfg = PretrainConfig(task=name, steps=400, batch_size=64, lr=5e-3, warmup=20, n_embd=32, n_head=2)
    _, report = pretrain(cfg, str(tmp_path / "m0.pt"), log=lambda *a: None)
    for key in ("accuracy_with_c", "accuracy_without_c"):
        assert report[key] > CHANCE[name] + 0.3, report


def small(**kw):
    return PretrainConfig(**{"task": "refusal", "steps": 40, "batch_size": 16, "n_embd": 16, "n_head": 2,
                             "checkpoint_every": 20, "warmup": 5, **kw})


def test_a_killed_pretraining_resumes_to_the_same_weights(tmp_path, monkeypatch):
    whole, _ = pretrain(small(), str(tmp_path / "whole.pt"), log=lambda *a: None)
    save = train.save_checkpoint

    def save_then_die(*args, **kw):
        save(*args, **kw)
        raise KeyboardInterrupt

    path = str(tmp_path / "killed.pt")
    monkeypatch.setattr(train, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        pretrain(small(), path, log=lambda *a: None)
    monkeypatch.setattr(train, "save_checkpoint", save)
    assert load_checkpoint(path)["step"] == 20
    resumed, _ = pretrain(small(), path, log=lambda *a: None)
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]  # no half-written files left


def test_missing_corrupt_and_foreign_checkpoints_are_refused(tmp_path):
    with pytest.raises(UserError, match="nothere.pt does not exist"):
        load_checkpoint(str(tmp_path / "nothere.pt"))
    good = str(tmp_path / "m0.pt")
    pretrain(small(steps=5), good, log=lambda *a: None)
    corrupt = str(tmp_path / "corrupt.pt")
    with open(good, "rb") as src, open(corrupt, "wb") as dst:
        dst.write(src.read()[:300])
    with pytest.raises(ValueError, match="corrupt.pt is corrupt or truncated"):
        load_checkpoint(corrupt)
    ckpt = torch.load(good, weights_only=False)
    ckpt["tokenizer"] = "0123456789abcdef"
    foreign = str(tmp_path / "foreign.pt")
    torch.save(ckpt, foreign)
    with pytest.raises(ValueError, match="made with tokenizer 0123456789abcdef"):
        load_checkpoint(foreign)
    before = open(good, "rb").read()
    with pytest.raises(ValueError, match=r"m0.pt was made with another config \(lr 0.005 there, 0.01 here\)"):
        pretrain(small(steps=5, lr=1e-2), good, log=lambda *a: None)
    with pytest.raises(ValueError, match="another config"):
        pretrain(small(steps=5, n_embd=32), good, log=lambda *a: None)
    assert open(good, "rb").read() == before  # a refused checkpoint is left as it was


def test_a_checkpoint_resumes_under_other_runtime_settings_but_not_under_other_science_or_fields(tmp_path):
    path = str(tmp_path / "m0.pt")
    _, report = pretrain(small(steps=5), path, log=lambda *a: None)
    _, again = pretrain(small(steps=5, threads=2, checkpoint_every=3, device="cpu"), path, log=lambda *a: None)
    assert again == report  # found finished: the same model, whatever device or thread count asks
    with pytest.raises(ValueError, match=r"another config \(lr 0.005 there, 0.001 here\)"):
        pretrain(small(steps=5, lr=1e-3), path, log=lambda *a: None)
    ckpt = torch.load(path, weights_only=False)
    ckpt["config"]["lm_rows"] = 0  # a setting this code does not have, even at a harmless value
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match=r"is not a pretraining checkpoint of M0 \(.*lm_rows differ"):
        pretrain(small(steps=5), path, log=lambda *a: None)


@pytest.mark.parametrize("kw, message", [({"task": "maths"}, "task='maths' is unknown"),
                                         ({"steps": 0}, r"steps=0 must be an integer in \[1, 100000\]"),
                                         ({"lr": -1.0}, r"lr=-1.0 must be a number in \[1e-06, 1\]")])
def test_bad_pretraining_settings_are_refused(kw, message):
    with pytest.raises(ValueError, match=message):
        PretrainConfig(**kw)


def test_the_command_line_reports_bad_values_in_one_line(capsys):
    with pytest.raises(SystemExit):
        train.main(["--task", "maths"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "task='maths' is unknown; allowed: hint, judgement, refusal" in err


def test_kl_to_the_reference_is_zero_for_the_reference_itself():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=30, block_size=8, n_embd=16, n_head=2))
    logp = model.answer_logprobs([[1, 2, 3], [4, 5]], [7, 8, 9])
    assert train.kl_to_reference(logp, logp).item() == 0.0
    other = model.answer_logprobs([[3, 2, 1], [5, 4]], [7, 8, 9])
    assert train.kl_to_reference(logp, other).item() > 0


def test_a_nan_loss_stops_pretraining_in_one_line_with_the_step_and_what_to_lower(tmp_path, monkeypatch):
    monkeypatch.setattr(train, "pretrain_loss", lambda *args: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(UserError) as err:
        pretrain(small(), str(tmp_path / "m0.pt"), log=lambda *a: None)
    assert str(err.value) == "pretraining: the loss became nan at step 0; lower the learning rate (now 0.005)"


def test_a_nan_loss_stops_explanation_training_and_names_the_kl_weight():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=40, n_layer=1, n_head=2, n_embd=16))
    kl_data = [([1, 2], torch.full((2,), float("nan")))]
    cfg = train.ExplainConfig(steps=3, explain_batch=2, kl_batch=1, kl_weight=3.0)
    with pytest.raises(UserError) as err:
        train.train_explainer(model, cfg, 0, [([1, 2, 3], [4, 5])], [], kl_data, [10, 11])
    assert str(err.value) == ("explanation training: the loss became nan at step 0; lower the learning rate "
                              "(now 0.005) or the KL weight (now 3.0)")


def test_pretraining_logs_progress_at_a_fixed_interval_and_at_the_end_whatever_the_checkpoints(tmp_path, monkeypatch):
    monkeypatch.setattr(train, "LOG_EVERY", 10)  # 100 in a real run
    lines = []
    pretrain(small(steps=25, checkpoint_every=7), str(tmp_path / "m0.pt"), log=lines.append)
    progress = [line for line in lines if line.startswith("pretraining step")]
    assert [line.split()[2] for line in progress] == ["10/25:", "20/25:", "25/25:"]
    assert all(" loss " in line and " lr " in line and line.endswith(" s") for line in progress)


def test_lora_rank_zero_trains_everything_and_rank_r_only_the_adapters_and_embedding():
    torch.manual_seed(0)
    m0 = GPT(GPTConfig(vocab_size=50, n_layer=2, n_head=2, n_embd=16))
    idx = torch.randint(0, 50, (3, 8))
    full, adapted = train.explainer_from(m0, 0), train.explainer_from(m0, 4)
    assert all(p.requires_grad for p in full.parameters())
    assert {n for n, p in adapted.named_parameters() if p.requires_grad} == \
        {n for n, _ in adapted.named_parameters() if "lora_" in n} | {"tok_emb.weight"}
    for model in (full, adapted):  # both start as M0 itself
        assert torch.allclose(model(idx), m0(idx), atol=1e-6)
    frozen = lambda name: "lora_" not in name and name != "tok_emb.weight"
    base = {n: p.detach().clone() for n, p in adapted.named_parameters() if frozen(n)}
    optimizer = train.new_optimizer(adapted, 1e-2)
    for _ in range(3):
        train.take_step(adapted, optimizer, adapted(idx).logsumexp(-1).mean(), 1e-2)
    assert all(torch.equal(p, base[n]) for n, p in adapted.named_parameters() if frozen(n))
    assert not torch.allclose(adapted(idx), m0(idx))  # the adapters did learn
    with pytest.raises(ValueError, match=r"lora_rank=-1 must be an integer in \[0, 1024\]"):
        train.ExplainConfig(lora_rank=-1)


def test_weight_decay_shrinks_the_trained_weights_towards_zero():
    """AdamW's decay is decoupled: with a zero gradient each weight is multiplied by 1 - lr * weight_decay."""
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, n_layer=1, n_head=2, n_embd=16))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = train.new_optimizer(model, 1e-2, weight_decay=0.5)
    loss = sum(p.sum() for p in model.parameters()) * 0.0
    train.take_step(model, optimizer, loss, 1e-2)
    for n, p in model.named_parameters():
        assert torch.allclose(p, before[n] * (1 - 1e-2 * 0.5))
    assert train.ExplainConfig().weight_decay > 0  # the default regime decays (README, "Weight decay")
    with pytest.raises(ValueError, match=r"weight_decay=-0.1 must be a number in \[0, 10\]"):
        train.ExplainConfig(weight_decay=-0.1)


def test_a_sharp_shift_changes_nothing_before_its_step_and_moves_the_weights_from_it_on():
    """Until the shift's start, a run with a scheduled shift trains exactly as a run without one; from it
    on the weights differ by far more than rounding (a padded batch of other width differs by ~1e-9)."""
    torch.manual_seed(0)
    m0 = GPT(GPTConfig(vocab_size=TOKENIZER.n_vocab, n_layer=1, n_head=2, n_embd=16))
    explain_data = [([1, 2, 3], [4, 5]), ([6, 7], [8, 9])]
    kl_data = [([1, 2], m0.answer_logprobs([[1, 2]], [10, 11])[0].detach())]
    shift_data = [([3, 4, 5], 1), ([6, 5], 0)]
    cfg = train.ExplainConfig(steps=6, explain_batch=2, shift_batch=2, kl_batch=1, eval_every=1, warmup=0)

    def weights_per_step(phases):
        snapshots = []
        record = lambda step, model, losses: snapshots.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
        train.train_explainer(train.explainer_from(m0), cfg, 0, explain_data, phases, kl_data, [10, 11], record)
        return snapshots

    plain, sharp = weights_per_step([]), weights_per_step([(3, shift_data)])
    assert all(torch.equal(a, b) for a, b in zip(plain[:4], sharp[:4]))  # steps 0-3: identical
    assert all((a - b).abs().max() > 1e-4 for a, b in zip(plain[4:], sharp[4:]))  # the shift's steps move them
    assert train.active_phase([0, 3], 2) == 0 and train.active_phase([0, 3], 3) == 1
    assert train.active_phase([5], 4) is None


def test_the_shift_is_written_only_where_shift_in_allows():
    """units: the shift's gradient reaches only the unit words' embedding rows, so a step changes the
    layers exactly as a step without the shift (one step: the head is tied to the embedding, so a moved
    unit row changes every later softmax); word: only the held-out word's row, not the unit's beside it;
    layers: the unit rows stay at M0's values while the rest trains."""
    torch.manual_seed(0)
    m0 = GPT(GPTConfig(vocab_size=TOKENIZER.n_vocab, n_layer=1, n_head=2, n_embd=16))
    unit, other = int(unit_token_ids()[0]), 4  # a unit word, and a byte token in the same shift prompt
    word = token_id(features.TriggerTask.word)
    explain_data = [([1, 2, 3], [4, 5]), ([6, 7], [8, 9])]
    shift_data = [([unit, 4, 5, word], 1), ([6, unit, word], 0)]

    def trained(shift_in, phases, steps):
        cfg = train.ExplainConfig(steps=steps, explain_batch=2, shift_batch=2, kl_batch=1, warmup=0, grad_clip=0,
                                  shift_in=shift_in)
        return train.train_explainer(train.explainer_from(m0), cfg, 0, explain_data, phases, [], [10, 11])

    layers = lambda model: torch.cat([p.detach().flatten() for n, p in model.named_parameters() if n != "tok_emb.weight"])
    row = lambda model, i: model.tok_emb.weight.detach()[i]
    no_shift, in_units, everywhere = (trained(where, phases, 1) for where, phases in
                                      (("all", []), ("units", [(0, shift_data)]), ("all", [(0, shift_data)])))
    assert torch.equal(layers(in_units), layers(no_shift)) and torch.equal(row(in_units, other), row(no_shift, other))
    assert not torch.equal(row(in_units, unit), row(no_shift, unit))  # the shift moved the unit's row
    assert not torch.equal(layers(everywhere), layers(no_shift))  # by default it moves the layers too
    in_word = trained("word", [(0, shift_data)], 1)
    assert torch.equal(layers(in_word), layers(no_shift)) and torch.equal(row(in_word, unit), row(no_shift, unit))
    assert not torch.equal(row(in_word, word), row(no_shift, word))
    in_layers = trained("layers", [(0, shift_data)], 4)
    assert torch.equal(row(in_layers, unit), row(m0, unit))
    assert not torch.equal(layers(in_layers), layers(m0)) and not torch.equal(row(in_layers, other), row(m0, other))
    with pytest.raises(ValueError, match="shift_in='weights' is unknown; allowed: all, units, layers, word"):
        train.ExplainConfig(shift_in="weights")
