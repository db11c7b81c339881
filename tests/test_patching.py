import json
import math

import numpy as np
import pytest
import torch

from data import encode, get_task, token_id
from explain import QUERY, behaviour, explanation_query
from patching import _effects, component_names, effect, mean_profiles, patched_metrics, patching_effects
from train import PretrainConfig, new_model, pretrain

TASK = get_task("hint")
ITEMS = [(0, 1), (5, 2), (17, 3), (42, 1), (99, 2)]  # (entity, hint): cases with C


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return new_model(PretrainConfig(n_layer=2, n_embd=32, n_head=2), "cpu").eval()


def behaviour_pairs():
    """Clean (with C) and source (without C) task prompts, and arbitrary answer pairs to compare."""
    clean = [TASK.encode(c) for c in ITEMS]
    source = [TASK.encode(TASK.without_feature(c)) for c in ITEMS]
    answer_ids = np.array(TASK.answer_ids)
    return clean, source, encode(TASK.slot), answer_ids[[1, 2, 3, 1, 2]], answer_ids[[0, 0, 0, 2, 3]]


def hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_patching_a_run_into_itself_changes_nothing(model):
    clean, _, suffix, plus, minus = behaviour_pairs()
    m_clean, m_source, patched = patched_metrics(model, clean, clean, suffix, plus, minus)
    assert np.array_equal(m_clean, m_source)
    assert list(patched) == component_names(model)
    for name, m in patched.items():
        assert np.array_equal(m, m_clean), name


def test_patched_metrics_match_an_unhooked_forward_pass(model):
    clean, source, suffix, plus, minus = behaviour_pairs()
    m_clean, m_source, _ = patched_metrics(model, clean, source, suffix, plus, minus)
    for prompts, m in ((clean, m_clean), (source, m_source)):
        logits = torch.stack([model(torch.tensor([p]))[0, -1] for p in prompts]).detach()
        expected = logits[torch.arange(len(prompts)), plus] - logits[torch.arange(len(prompts)), minus]
        assert np.allclose(m, expected.numpy(), atol=1e-5)
    assert not np.allclose(m_clean, m_source)  # removing the hint moves the metric: the test can fail


@pytest.mark.parametrize("batch_size", [2, 256])
def test_patching_the_last_residual_stream_reproduces_the_source(model, batch_size):
    clean, source, suffix, plus, minus = behaviour_pairs()
    m_clean, m_source, patched = patched_metrics(model, clean, source, suffix, plus, minus, batch_size)
    last = f"L{len(model.blocks) - 1} resid"
    assert np.allclose(patched[last], m_source, atol=1e-5)
    assert effect(m_clean, m_source, patched[last]) == pytest.approx(1.0, abs=1e-4)
    assert not np.allclose(patched["L0 attn"], m_source, atol=1e-5)  # an early component alone does not


def test_explanation_prompts_share_the_query_suffix(model):
    suffix = encode(QUERY.format(feature=TASK.feature) + " would")
    clean = [encode(explanation_query(TASK, c) + " would") for c in ITEMS]
    source = [encode(explanation_query(TASK, TASK.without_feature(c)) + " would") for c in ITEMS]
    plus, minus = [token_id("become")] * len(ITEMS), [token_id("remain")] * len(ITEMS)
    m_clean, m_source, patched = patched_metrics(model, clean, source, suffix, plus, minus)
    assert np.allclose(patched[f"L{len(model.blocks) - 1} resid"], m_source, atol=1e-5)


def test_no_hooks_remain_afterwards_even_after_an_error(model):
    clean, source, suffix, plus, minus = behaviour_pairs()
    before = hooks(model)
    patched_metrics(model, clean, source, suffix, plus, minus)
    patching_effects(model, TASK, ITEMS)
    assert hooks(model) == before

    def fail(module, inputs, output):
        raise RuntimeError("boom")

    failing = model.ln_f.register_forward_hook(fail)  # fails inside the first hooked forward pass
    try:
        with pytest.raises(RuntimeError, match="boom"):
            patched_metrics(model, clean, source, suffix, plus, minus)
    finally:
        failing.remove()
    assert hooks(model) == before


def test_prompts_without_the_common_suffix_are_refused(model):
    clean, source, suffix, plus, minus = behaviour_pairs()
    with pytest.raises(ValueError, match="must end with the suffix"):
        patched_metrics(model, clean, [p[:-1] for p in source], suffix, plus, minus)
    with pytest.raises(ValueError, match="one entry per item"):
        patched_metrics(model, clean, source[:-1], suffix, plus, minus)


def test_effect_is_nan_without_items_or_without_a_difference():
    assert math.isnan(effect(np.zeros(0), np.zeros(0), np.zeros(0)))
    assert math.isnan(effect(np.ones(3), np.ones(3) + 1e-9, np.ones(3)))
    assert effect(np.array([0.0, 2.0]), np.array([4.0, 6.0]), np.array([1.0, 3.0])) == pytest.approx(0.25)


def test_items_flipping_in_opposite_directions_do_not_cancel():
    """One verdict flips become -> remain, the other remain -> become; the patch moves each halfway."""
    m_clean, m_source = np.array([2.0, -2.0]), np.array([-2.0, 2.0])
    patched = {"L0 attn": np.array([0.0, 0.0])}
    assert math.isnan(effect(m_clean, m_source, patched["L0 attn"]))  # unsigned: the means cancel
    effects, means = _effects((m_clean, m_source, patched), ["L0 attn"], np.arange(2))
    assert effects == [pytest.approx(0.5)] and means == {"clean": -2.0, "source": 2.0}


def test_no_items_gives_nan_effects_not_an_exception(model):
    result = patching_effects(model, TASK, [])
    assert result["n_items"] == 0
    assert result["components"] == component_names(model)
    assert all(math.isnan(v) for v in result["behaviour"] + result["explanation"])


def test_patching_effects_on_a_briefly_trained_model(tmp_path_factory):
    """A random model gives the same answer with and without the hint; after 100 steps the hint decides
    the answer for entities without a taught one, so some items change."""
    cfg = PretrainConfig(task="hint", steps=100, batch_size=64, warmup=20, n_embd=32, n_head=2)
    trained, _ = pretrain(cfg, str(tmp_path_factory.mktemp("m0") / "m0.pt"), log=lambda *a: None)
    items = TASK.split(0, 50, 200).eval_items
    result = patching_effects(trained, TASK, items, max_items=20)
    assert 0 < result["n_items"] <= 20 and result["n_items"] <= result["n_answer_changed"]
    # The items kept are those whose explanation verdict also changes when the hint is removed.
    with_c, without_c = behaviour(trained, TASK, items)
    changed = [c for c, a, b in zip(items, with_c, without_c) if a != b]
    assert len(changed) == result["n_answer_changed"]
    verdict = {c: [trained.answer_logprobs([encode(explanation_query(TASK, case) + " would")],
                                           [token_id("become"), token_id("remain")])[0].argmax().item()
                   for case in (c, TASK.without_feature(c))] for c in changed}
    assert result["n_items"] == min(20, sum(v[0] != v[1] for v in verdict.values()))
    assert set(result) >= {"n_items", "components", "behaviour", "explanation"}
    last = result["components"].index(f"L{len(trained.blocks) - 1} resid")
    assert result["behaviour"][last] == pytest.approx(1.0, abs=1e-4)
    assert result["explanation"][last] == pytest.approx(1.0, abs=1e-4)
    # At layer 0 the suffix tokens are the same in both runs, so C can reach them only through attention:
    # patching L0's attention output is patching its whole residual stream.
    assert result["behaviour"][0] == pytest.approx(result["behaviour"][2], abs=1e-6)
    assert json.dumps(result) == json.dumps(patching_effects(trained, TASK, items, max_items=20))  # deterministic


def test_a_run_without_items_is_left_out_of_the_mean_profile():
    names = ["L0 attn", "L0 mlp", "L0 resid"]
    runs = [{"config": {"task": "hint", "seed": seed},
             "patching": {"n_items": n, "components": names, "behaviour": effects, "explanation": effects}}
            for seed, n, effects in ((0, 5, [0.2, 0.4, 1.0]), (1, 0, [None, None, None]))]
    _, behaviour_mean, _, _, kept = mean_profiles(runs)["hint"]
    assert [run["config"]["seed"] for run in kept] == [0]
    assert behaviour_mean.tolist() == [0.2, 0.4, 1.0]
