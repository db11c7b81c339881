"""Every bad input gets one line naming the value and what is allowed, exit status 2, before anything is
trained or written; a bug still shows its traceback."""
import json
import math
from dataclasses import fields, replace

import pytest
import torch

import bench
import config
import eval as ev
import experiments as ex
import stress
import train
from config import UserError
from test_eval import tiny_config


@pytest.fixture(autouse=True)
def mine(tmp_path, monkeypatch):
    monkeypatch.setattr(train, "RUNS_DIR", str(tmp_path / "runs"))
    return tmp_path / "runs"


def one_line(main, argv, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def bad_values(f):
    """Values outside a field's declared range or choices, and things that are not numbers."""
    if "choices" in f.metadata:
        return ["sideways"]
    low, high = f.metadata["range"]
    return [repr(low - 1), repr(high * 10 + 1), "nan", "inf", "-inf", "abc"]


def run_flags():
    """(flag, config class, field) for every setting of eval.py run."""
    flags = []
    for cls, prefix, skip in ((ev.RunConfig, "", ()), (train.ExplainConfig, "", ()),
                              (train.PretrainConfig, "pretrain-", ("task", "seed", "feature_words") + ev.RUNTIME_FLAGS)):
        flags += [(f"--{prefix}{f.name.replace('_', '-')}", f) for f in fields(cls)
                  if f.name not in skip and f.name not in ("pretrain", "explain")]
    flags += [(f"--{name.replace('_', '-')}", next(f for f in fields(train.PretrainConfig) if f.name == name))
              for name in ev.RUNTIME_FLAGS]
    return flags


@pytest.mark.parametrize("flag, f", run_flags(), ids=lambda x: x if isinstance(x, str) else "")
def test_every_run_setting_outside_its_range_is_refused_in_one_line_before_any_work(flag, f, capsys, mine):
    for value in bad_values(f):
        line = one_line(ev.main, ["run", f"{flag}={value}"], capsys)
        assert f.name in line or flag in line, line
        assert value in line or "invalid" in line, line
    assert not mine.exists()  # nothing written, not even a folder


@pytest.mark.parametrize("argv, message", [
    (["--grad-clip", "-1"], "grad_clip=-1.0 must be a number in [0, 1000]"),
    (["--lora-rank", "100000"], "lora_rank=100000 must be an integer in [0, 1024]"),
    (["--lora-rank", "100"], "lora_rank=100 must be at most the model width n_embd=64"),
    (["--n-explain", "10000000"], "n_explain=10000000 must be an integer in [1, 20000]"),
    (["--n-kl-prompts", "1000000000"], "n_kl_prompts=1000000000 must be an integer in [1, 100000]"),
    (["--explain-batch", "100000"], "explain_batch=100000 must be an integer in [1, 4096]"),
    (["--lr", "inf"], "lr=inf must be a number in [1e-06, 1]"),
    (["--kl-weight", "inf"], "kl_weight=inf must be a number in [0, 1000]"),
    (["--weight-decay", "nan"], "weight_decay=nan must be a number in [0, 10]"),
    (["--seed", "-1"], "seed=-1 must be an integer in [0, 2147483647]"),
    (["--seed", "99999999999"], "seed=99999999999 must be an integer in [0, 2147483647]"),
    (["--pretrain-warmup", "-5"], "warmup=-5 must be an integer in [0, 100000]"),
    (["--pretrain-n-embd", "6", "--pretrain-n-head", "4"], "n_embd=6 must be n_head=4 times an even head dimension"),
    (["--device", "tpu"], "device='tpu' is unknown; allowed: auto, cpu, cuda, mps"),
    (["--shift-size=-0.5"], "shift_size=-0.5 must be -1 (the task's default) or lie in [0, 1]"),
    (["--other-labels", "0.5", "--pretrain-n-head", "5", "--pretrain-n-embd", "80"],
     "other_labels=0.5 needs another model family with this run's settings, but for it: n_embd=96 must be"),
    (["--seed", "2147483000", "--other-labels", "0.5"], "but for it: seed=2147484000 must be an integer"),
    (["--out", ""], "--out= must be a .json file path"),
    (["--steps", "1e3"], "argument --steps: invalid int value: '1e3'")])
def test_named_bad_inputs_get_one_line_naming_the_value_and_what_is_allowed(argv, message, capsys, mine):
    assert message in one_line(ev.main, ["run", *argv], capsys)
    assert not mine.exists()


def test_an_infeasible_shift_or_item_count_is_refused_before_m0_is_trained(capsys, mine):
    line = one_line(ev.main, ["run", "--task", "refusal", "--shift-size", "0.9"], capsys)
    assert "shift size 0.9 asks for" in line and "allowed: at most" in line
    line = one_line(ev.main, ["run", "--task", "hint", "--n-eval", "2000"], capsys)
    assert "could not draw 2000 distinct items" in line and "at most about 900" in line
    line = one_line(ev.main, ["run", "--shift", "trigger", "--explained-features", "2", "--feature-items", "2000"], capsys)
    assert "feature_items=2000 asks for more than the task has" in line and "at most about 1500" in line
    assert not mine.exists()


def test_a_suite_with_one_infeasible_run_refuses_before_its_first_run(mine):
    good, bad = tiny_config(1), replace(tiny_config(2), shift_size=0.9)
    with pytest.raises(UserError, match="shift size 0.9 asks for"):
        ex.run_suites([("sweep", [good, bad], False)])
    good = tiny_config(1, task="hint", shift="trigger", explained_features=2, feature_items=20)
    with pytest.raises(UserError, match="feature_items=2000 asks for more"):  # the same run but for feature_items
        ex.run_suites([("sweep", [good, replace(good, feature_items=2000)], False)])
    assert not list(mine.rglob("*.json")) and not list(mine.rglob("*.pt"))


def test_a_nan_loss_stops_in_one_line_naming_stage_step_and_what_to_lower(capsys, monkeypatch, mine):
    monkeypatch.setattr(train, "pretrain_loss", lambda *a: torch.tensor(math.nan, requires_grad=True))
    line = one_line(train.main, ["--steps", "5"], capsys)
    assert line == "error: pretraining: the loss became nan at step 0; lower the learning rate (now 0.005)"


def test_pretraining_errors_after_the_config_is_built_are_one_line(tmp_path, capsys, mine):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    assert "corrupt.pt is corrupt or truncated" in one_line(train.main, ["--out", str(corrupt)], capsys)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    assert "a_file is a file, not a folder" in one_line(train.main, ["--out", str(blocker / "m0.pt")], capsys)
    assert "must be a checkpoint file path ending in .pt" in one_line(train.main, ["--out", str(tmp_path)], capsys)
    if not torch.cuda.is_available():
        assert "device='cuda' is not available" in one_line(train.main, ["--device", "cuda", "--steps", "1"], capsys)


@pytest.mark.parametrize("argv, message", [
    (["reproduce", "--seeds", "-3"], "--seeds: seed=-3 must be an integer in [0, 2147483647]"),
    (["reproduce", "--seeds", "5-2"], "--seeds='5-2' names nothing"),
    (["reproduce", "--seeds", "0-99999"], "names 100000 values; at most 1000"),
    (["reproduce", "--seeds", "0-2000000000"], "names 2000000001 values; at most 1000"),
    (["reproduce", "--seeds", "0,0"], "--seeds='0,0' repeats 0; name each once"),
    (["sweep", "label_noise", "--tasks", "hint,hint"], "--tasks='hint,hint' repeats hint"),
    (["reproduce", "--seeds", "3000000000"], "--seeds: seed=3000000000 must be an integer in"),
    (["quick", "--jobs", "1000"], "jobs=1000 must be an integer in [1, 256]"),
    (["quick", "--device", "tpu"], "device='tpu' is unknown"),
    (["sweep", "nosuch"], "sweep='nosuch' is unknown; allowed: other_model"),
    (["sweep", "trigger,trigger"], "--sweep='trigger,trigger' repeats trigger"),
    (["show", "--n", "0"], "n=0 must be an integer in [1, 1000]"),
    (["report"], "no results of yours to report under")])
def test_suite_commands_refuse_bad_input_in_one_line(argv, message, capsys, mine):
    assert message in one_line(ex.main, argv, capsys)
    assert not list(mine.rglob("*.json"))


@pytest.mark.parametrize("argv, message", [(["--jobs", "-1"], "jobs=-1 must be an integer in [1, 256]"),
                                           (["publish", "--device", "tpu"], "device='tpu' is unknown"),
                                           (["--device", "tpu"], "device='tpu' is unknown"),
                                           (["report"], "no stress results of yours"),
                                           (["point", "--task", "twohop"], "--task='twohop' is unknown"),
                                           (["point", "--shift-size", "2"], "--shift-size=2.0 must"),
                                           (["point", "--label-noise", "nan"], "--label-noise=nan must"),
                                           (["point", "--label-noise", "0.3", "--schedule", "gradual"],
                                            "no map has that point"),
                                           (["point", "--seeds", "1,1"], "repeats 1")])
def test_the_stress_command_refuses_bad_input_in_one_line(argv, message, capsys):
    assert message in one_line(stress.main, argv, capsys)


@pytest.mark.parametrize("argv, message", [(["--steps", "0"], "steps=0 must be an integer in [1, 10000]"),
                                           (["--items", "100000"], "items=100000 must be an integer in [1, 20000]"),
                                           (["--threads", "0"], "threads=0 must be an integer in [1, 256]")])
def test_the_benchmark_refuses_bad_input_in_one_line(argv, message, capsys, mine):
    assert message in one_line(bench.main, argv, capsys)
    assert not mine.exists()


def test_a_report_names_the_result_file_it_cannot_read_and_writes_nothing(mine, capsys):
    cfg = tiny_config()
    path = ex.result_path("main", cfg)
    ev.run_coupling(cfg, path, log=lambda *a: None)
    result = json.loads(open(path).read())
    del result["curve"][1]["self"]
    open(path, "w").write(json.dumps(result))
    line = one_line(ex.main, ["report"], capsys)
    assert path in line and "self of an evaluation" in line
    assert not (mine / "REPORT.md").exists() and not (mine / "figures").exists()


def test_a_bug_is_not_disguised_as_a_bad_input(monkeypatch):
    monkeypatch.setattr(ex, "run_suites", lambda *a, **kw: [][1])  # a bug: IndexError
    with pytest.raises(IndexError):
        ex.main(["quick"])
    monkeypatch.setattr(ex, "run_suites", lambda *a, **kw: int("x"))  # a ValueError that is not a UserError
    with pytest.raises(ValueError, match="invalid literal"):
        ex.main(["quick"])


def test_check_range_refuses_what_is_not_a_finite_number_in_range():
    assert config.check_range("x", 3, 1, 5, integer=True) == 3
    for value in (0, 6, 2.5, math.nan, math.inf, True, "3"):
        with pytest.raises(UserError, match=f"x={value!r} must be"):
            config.check_range("x", value, 1, 5, integer=True)


def test_a_report_with_nothing_to_report_is_refused_in_one_line(mine, capsys):
    (mine / "results" / "runs").mkdir(parents=True)  # only single runs of eval.py run, no suite
    assert "no results of yours to report" in one_line(ex.main, ["report"], capsys)


def test_pretraining_refuses_to_resume_from_a_final_explainer(tmp_path, capsys, mine):
    cfg = tiny_config()
    ev.run_coupling(cfg, str(tmp_path / "r.json"), log=lambda *a: None)
    line = one_line(train.main, ["--seed", "1", "--out", str(tmp_path / "r.pt")], capsys)
    assert "is not a pretraining checkpoint of M0" in line
