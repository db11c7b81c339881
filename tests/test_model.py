import pytest
import torch

from model import GPT, GPTConfig, pick_device


def tiny(lora_rank=0, seed=0):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16, lora_rank=lora_rank))


def test_changing_a_later_token_never_changes_earlier_logits():
    model = tiny()
    idx = torch.randint(0, 50, (3, 12))
    changed = idx.clone()
    changed[:, 7] = (changed[:, 7] + 1) % 50
    a, b = model(idx), model(changed)
    assert torch.equal(a[:, :7], b[:, :7])
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_lora_at_init_equals_the_base_model():
    base, adapted = tiny(), tiny(lora_rank=4)
    adapted.load_state_dict(base.state_dict(), strict=False)
    idx = torch.randint(0, 50, (2, 10))
    assert torch.equal(base(idx), adapted(idx))
    with torch.no_grad():  # and the adapters do act once they are trained
        adapted.blocks[0].mlp.up.lora_b.fill_(0.1)
    assert not torch.allclose(base(idx), adapted(idx))


def test_outputs_at_chosen_positions_equal_the_full_computation():
    model = tiny()
    idx = torch.randint(0, 50, (3, 12))
    at = torch.tensor([[0, 5], [11, 11], [3, 9]])
    full = model.hidden(idx)
    assert torch.allclose(model.hidden(idx, at), full.gather(1, at[..., None].expand(-1, -1, 16)), atol=1e-6)


def test_padding_does_not_change_answer_logprobs():
    model = tiny()
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11]]
    answers = [20, 21, 22]
    together = model.answer_logprobs(prompts, answers)
    for row, prompt in enumerate(prompts):
        alone = model.answer_logprobs([prompt], answers)
        assert torch.allclose(together[row], alone[0], atol=1e-6)
    assert torch.allclose(together.exp().sum(-1), torch.ones(3))


def test_cached_batched_greedy_generation_equals_recomputing_each_prompt_alone():
    model = tiny(lora_rank=2)
    with torch.no_grad():  # adapters that act, so their path through the cache is checked too
        for block in model.blocks:
            block.attn.qkv.lora_b.normal_()
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 11], [9]]
    batched = model.generate(prompts, max_new_tokens=9)  # the longest prompt reaches block_size
    for prompt, out in zip(prompts, batched):
        seq = list(prompt)
        for _ in range(9):
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
        assert out == seq[len(prompt):]
    with pytest.raises(ValueError, match="exceed block_size=16"):
        model.generate(prompts, max_new_tokens=10)
    with pytest.raises(ValueError, match="max_new_tokens=0"):
        model.generate(prompts, max_new_tokens=0)


@pytest.mark.parametrize("field, value", [("n_layer", 0), ("n_embd", -8), ("vocab_size", 0), ("lora_rank", -1)])
def test_bad_model_sizes_are_refused_with_the_value(field, value):
    kwargs = dict(vocab_size=50, n_embd=16, n_head=2)
    kwargs[field] = value
    with pytest.raises(ValueError, match=f"{field}={value}"):
        GPTConfig(**kwargs)


def test_unknown_or_missing_device_is_refused():
    assert pick_device("cpu").type == "cpu"
    with pytest.raises(ValueError, match="'tpu' is unknown"):
        pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="not available"):
            pick_device("cuda")
