"""The CUDA path: skipped on a machine without a GPU (CI), run on one with `python -m pytest tests/test_cuda.py`."""
import json

import pytest
import torch

import eval as ev
import train
from data import get_task
from explain import pair_cases
from model import GPT, GPTConfig
from test_eval import tiny_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def test_cuda_behaviour_matches_cpu_within_bfloat16_rounding():
    torch.manual_seed(0)
    task = get_task("hint")
    cpu = train.new_model(train.PretrainConfig(), "cpu").eval()
    gpu = train.new_model(train.PretrainConfig(), "cuda").eval()
    gpu.load_state_dict(cpu.state_dict())
    prompts = [task.encode(case) for case in pair_cases(task, task.split(0, n_eval=64).eval_items)]
    with torch.no_grad():
        on_cpu = cpu.answer_logprobs(prompts, task.answer_ids)
        on_gpu = gpu.answer_logprobs(prompts, task.answer_ids).cpu()
    assert on_gpu.dtype == torch.float32  # the blocks run in bfloat16, the distributions do not
    assert (on_cpu - on_gpu).abs().max() < 0.05


def test_a_short_run_on_cuda_writes_a_valid_results_file(tmp_path):
    cfg = tiny_config()
    cfg = train.replace(cfg, pretrain=train.replace(cfg.pretrain, device="cuda"))
    path = tmp_path / "result.json"
    ev.run_coupling(cfg, str(path), runs_dir=str(tmp_path / "runs"), log=lambda *a: None)
    result = json.loads(path.read_text())
    assert result["config"]["pretrain"]["device"] == "cuda"
    assert [p["step"] for p in result["curve"]] == [0, 3, 6]
    for point in result["curve"]:
        assert 0 <= point["self"] <= 1 and 0 <= point["orig"] <= 1


def test_a_compiled_model_trains_on_cuda_and_its_checkpoint_loads_into_a_plain_one(tmp_path):
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=50, n_layer=1, n_head=2, n_embd=16)
    compiled = torch.compile(GPT(cfg).cuda())
    idx = torch.randint(0, 50, (4, 12), device="cuda")
    _, loss = compiled(idx, targets=idx)
    loss.backward()
    train.save_checkpoint(str(tmp_path / "c.pt"), compiled, None, {}, 0)
    plain = GPT(cfg).cuda()
    plain.load_state_dict(train.load_checkpoint(str(tmp_path / "c.pt"), "cuda")["model"])
    with torch.no_grad():
        assert torch.allclose(plain(idx)[0], compiled(idx)[0], atol=1e-2)
