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


def test_a_checkpoint_saved_on_cuda_loads_on_the_cpu_with_the_same_weights(tmp_path):
    torch.manual_seed(0)
    on_gpu = GPT(GPTConfig(vocab_size=50, n_layer=1, n_head=2, n_embd=16)).cuda()
    train.save_checkpoint(str(tmp_path / "c.pt"), on_gpu, None, {}, 0)
    on_cpu = GPT(on_gpu.cfg)
    on_cpu.load_state_dict(train.load_checkpoint(str(tmp_path / "c.pt"), "cpu")["model"])
    assert all(torch.equal(a.cpu(), b) for a, b in zip(on_gpu.state_dict().values(), on_cpu.state_dict().values()))
