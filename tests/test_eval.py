import json

import numpy as np
import pytest

import eval as ev
from explain import Labels
from train import ExplainConfig, PretrainConfig


def labels(changed, answer):
    return Labels(np.array(changed), np.array(answer))


def test_self_and_orig_agree_where_nothing_flipped():
    current = labels([0, 1, 1, 0], [2, 0, 1, 3])
    explanations = labels([0, 1, 0, -1], [2, 1, 1, -1])
    m = ev.coupling_metrics(explanations, current, current)
    assert m["self"] == m["orig"] == 0.25 and m["gap"] == 0 and m["n_flipped"] == 0
    assert m["agreement"] == 1.0 and np.isnan(m["self_flipped"]) and m["malformed"] == 0.25


def test_an_explainer_that_copies_its_current_behaviour_scores_self_one():
    original = labels([0, 0, 1, 1, 0], [1, 2, 3, 0, 0])
    current = labels([0, 1, 0, 1, 0], [1, 2, 3, 2, 0])  # items 1, 2, 3 flipped
    m = ev.coupling_metrics(current, current, original)
    assert m["self"] == 1.0 and m["orig"] == pytest.approx(0.4) and m["gap"] == pytest.approx(0.6)
    assert m["n_flipped"] == 3 and m["self_flipped"] == 1.0 and m["orig_flipped"] == 0.0
    assert m["n_became_changed"] == 1 and m["n_became_unchanged"] == 1
    assert m["has_changed_f1"] == 1.0 and m["content_match"] == 1.0 and m["agreement"] == pytest.approx(0.4)
    stale = ev.coupling_metrics(original, current, original)  # explanations stuck on the frozen labels
    assert stale["gap"] == pytest.approx(-0.6) and stale["self_flipped"] == 0.0


def test_has_changed_f1_by_hand():
    # 2 true positives, 1 false positive, 1 false negative: F1 = 4 / (4 + 1 + 1)
    assert ev.f1(np.array([1, 1, 1, 0, 0]), np.array([1, 1, 0, 1, 0])) == pytest.approx(4 / 6)


def test_mean_ci_uses_students_t():
    mean, half = ev.mean_ci([0.1, 0.2, 0.3])
    assert mean == pytest.approx(0.2) and half == pytest.approx(4.303 * 0.1 / np.sqrt(3))
    assert np.isnan(ev.mean_ci([0.5])[1])


def tiny_config(seed=1, **kw):
    return ev.RunConfig(task="refusal", seed=seed, n_explain=40, n_eval=60, n_kl_prompts=64,
                        pretrain=PretrainConfig(steps=60, batch_size=32, n_embd=16, n_head=2, warmup=5,
                                                checkpoint_every=20),
                        explain=ExplainConfig(steps=6, explain_batch=8, shift_batch=8, kl_batch=8, eval_every=3),
                        **kw)


def tiny_run(tmp_path, **kw):
    path = tmp_path / "result.json"
    ev.run_coupling(tiny_config(**kw), str(path), runs_dir=str(tmp_path / "runs"), log=lambda *a: None)
    return json.loads(path.read_text())


def test_a_short_end_to_end_run_writes_a_valid_results_file(tmp_path):
    result = tiny_run(tmp_path)
    assert result["config"]["task"] == "refusal" and result["config"]["seed"] == 1
    assert {"git_commit", "torch", "numpy", "tiktoken", "python", "cpu", "cpu_capability",
            "gpu"} <= set(result["provenance"])
    assert [p["step"] for p in result["curve"]] == [0, 3, 6]
    assert result["baseline"] == result["curve"][0] and result["final"] == result["curve"][-1]
    for point in result["curve"]:
        assert 0 <= point["self"] <= 1 and 0 <= point["orig"] <= 1
        assert point["gap"] == pytest.approx(point["self"] - point["orig"])
        assert point["n_items"] == 60
    assert result["curve"][0]["n_flipped"] == 0  # at step 0 the model is M0: nothing has flipped
    assert result["data"]["n_shift_cases"] > 0


@pytest.mark.parametrize("kw, message", [({"task": "maths"}, "task 'maths' is unknown"),
                                         ({"shift": "sideways"}, "shift='sideways' is unknown for task hint"),
                                         ({"shift_size": 2.0}, r"shift_size=2.0 is a probability"),
                                         ({"label_noise": -0.1}, r"label_noise=-0.1 is a probability"),
                                         ({"n_eval": 0}, "n_eval=0 must be a positive integer")])
def test_bad_run_settings_are_refused(kw, message):
    with pytest.raises(ValueError, match=message):
        ev.RunConfig(**kw)


def test_command_line_flags_reach_every_part_of_the_config():
    args = ev.build_parser().parse_args(["run", "--task", "judgement", "--seed", "4", "--pretrain-steps", "7",
                                         "--lr", "0.01", "--weight-decay", "0.2", "--shift-size", "0.1", "--no-kl"])
    cfg = ev.config_from_args(args)
    assert (cfg.task, cfg.seed, cfg.pretrain.steps, cfg.pretrain.task, cfg.pretrain.seed) == ("judgement", 4, 7,
                                                                                                "judgement", 4)
    assert cfg.explain.lr == 0.01 and cfg.explain.kl_weight == 0.0 and cfg.shift_size == 0.1
    assert cfg.explain.weight_decay == 0.2


def test_a_bad_flag_value_exits_with_one_line(capsys):
    with pytest.raises(SystemExit):
        ev.main(["run", "--task", "hint", "--shift", "sideways"])
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: shift='sideways' is unknown for task hint; allowed: trigger, reduce, acquire, both"]


def test_label_noise_changes_only_the_labels(tmp_path):
    clean, noisy = tiny_run(tmp_path), tiny_run(tmp_path, label_noise=0.25)
    assert noisy["data"]["label_noise_flipped"] == 10
    for key in ("n_shifted_units", "n_shift_cases", "n_kl_prompts", "n_eval_items"):
        assert clean["data"][key] == noisy["data"][key]
    assert clean["baseline"]["n_flipped"] == noisy["baseline"]["n_flipped"] == 0
    assert clean["data"]["train_changed_fraction"] != noisy["data"]["train_changed_fraction"]


def test_the_same_seed_gives_identical_metrics_in_two_fresh_processes(tmp_path):
    import subprocess
    import sys
    code = ("import sys, json; sys.path.insert(0, '.'); sys.path.insert(0, 'tests'); import test_eval, pathlib; "
            "r = test_eval.tiny_run(pathlib.Path(sys.argv[1])); print(json.dumps(r['curve']))")
    curves = []
    for k in range(2):
        out = subprocess.run([sys.executable, "-c", code, str(tmp_path / f"p{k}")], capture_output=True,
                             text=True, cwd=ev.__file__.rsplit("/", 1)[0], check=True).stdout
        curves.append([{key: v for key, v in point.items() if key != "seconds"}
                       for point in json.loads(out.strip().splitlines()[-1])])
    assert curves[0] == curves[1]


def test_an_unwritable_results_folder_is_refused_before_any_work(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(ValueError, match="a_file/out is not writable"):
        ev.run_coupling(tiny_config(), str(blocker / "out" / "r.json"), runs_dir=str(tmp_path / "runs"))
    assert not list((tmp_path / "runs").rglob("*.pt"))  # refused before M0 was trained


SUITE = ("import sys; sys.path[:0] = [{repo!r}, {tests!r}]; import eval as ev, test_eval; "
         "ev.run_suite('crash', [test_eval.tiny_config(seed) for seed in (1, 2, 3)])")


def test_a_killed_suite_resumes_to_the_same_results_without_redoing_finished_runs(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    here = os.path.dirname(os.path.abspath(__file__))
    code = SUITE.format(repo=os.path.dirname(here), tests=here)

    def results(folder):
        found = {}
        for path in sorted((folder / "results" / "crash").rglob("*.json")):
            curve = json.loads(path.read_text())["curve"]
            found[path.name] = [{k: v for k, v in p.items() if k != "seconds"} for p in curve]
        return found

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    for folder in (whole, killed):
        folder.mkdir()
    subprocess.run([sys.executable, "-c", code], cwd=whole, check=True, capture_output=True)
    process = subprocess.Popen([sys.executable, "-c", code], cwd=killed, stdout=subprocess.DEVNULL)
    first = killed / "results" / "crash" / "refusal" / "seed1_kl.json"
    while not first.exists():  # kill it in the middle of the second run's pretraining
        time.sleep(0.05)
    while not list((killed / "runs" / "refusal" / "seed2").glob("*.pt")):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = first.stat().st_mtime_ns
    subprocess.run([sys.executable, "-c", code], cwd=killed, check=True, capture_output=True)
    assert first.stat().st_mtime_ns == finished  # the finished run was loaded, not run again
    assert results(killed) == results(whole) and len(results(whole)) == 3


def test_parallel_runs_give_the_same_results_as_one_at_a_time(tmp_path, monkeypatch):
    # the last run needs the first one's M0: in parallel it waits until that model is pretrained
    configs = [tiny_config(seed) for seed in (1, 2, 3)] + [tiny_config(1, label_noise=0.25)]
    curves = []
    for jobs in (1, 2):
        (tmp_path / str(jobs)).mkdir()
        monkeypatch.chdir(tmp_path / str(jobs))  # results/ and runs/ of their own
        results = ev.run_suite("parallel", configs, tagged=True, jobs=jobs)
        assert [r["config"]["seed"] for r in results] == [1, 2, 3, 1]  # in the order asked
        assert results[3]["config"]["label_noise"] == 0.25
        curves.append(ev._nan_to_none([[{k: v for k, v in p.items() if k != "seconds"} for p in r["curve"]]
                                       for r in results]))
    assert curves[0] == curves[1]


def test_a_config_asked_for_by_two_suites_runs_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    calls = []
    run = ev.run_coupling
    monkeypatch.setattr(ev, "run_coupling", lambda cfg, *a, **kw: calls.append(cfg) or run(cfg, *a, **kw))
    first, second = ev.run_suites([("one", [tiny_config()], False, True), ("two", [tiny_config()], True, False)])
    assert len(calls) == 1 and first == second
    assert {p.parent.parent.name for p in (tmp_path / "results").rglob("*.json")} == {"one", "two"}
    ev.run_suites([("one", [tiny_config()], False, True)])
    assert len(calls) == 1  # loaded, not run again


def test_the_trigger_shift_asks_about_a_word_no_label_mentions(tmp_path):
    result = tiny_run(tmp_path, shift="trigger")
    assert result["config"]["shift"] == "trigger" and result["data"]["n_shift_cases"] > 0
    assert result["data"]["n_shifted_units"] == 0  # the base behaviour of every unit stays as it was
    assert result["curve"][0]["n_flipped"] == 0
    # M0 has never seen the word: removing it changes M0's answer on few held-out items, if any
    assert result["curve"][0]["changed_fraction"] < 0.5


@pytest.mark.parametrize("argv, message", [
    (["sweep", "nosuch"], "error: sweep 'nosuch' is unknown; allowed: other_model, label_noise, learning_rate, agreement, "
                          "trigger, capacity, shift_location"),
    (["sweep", "label_noise", "--seeds", "0,x"], "error: --seeds='0,x' must be a comma-separated list of integers "
                                                 "or ranges like 0-9"),
    (["reproduce", "--seeds", "3-x"], "error: --seeds='3-x' must be a comma-separated list of integers or ranges "
                                      "like 0-9"),
    (["reproduce", "--seeds", "5-3"], "error: --seeds is empty; give at least one value"),
    (["sweep", "label_noise", "--tasks", "maths"], "error: task 'maths' is unknown; allowed: hint, judgement, refusal, twohop"),
    (["sweep", "label_noise", "--jobs", "-2"], "error: jobs=-2 must be a positive integer"),
    (["report", "--experiment", "nosuch"], "error: no results under results/nosuch; run `make reproduce`")])
def test_unknown_experiments_and_bad_suite_flags_exit_with_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no results here, and nothing may be written
    with pytest.raises(SystemExit):
        ev.main(argv)
    assert capsys.readouterr().err.strip().splitlines() == [message]
    assert not list(tmp_path.rglob("*.json"))


def test_seed_lists_take_ranges():
    assert ev.parse_list("0-2,5", "seeds", int) == [0, 1, 2, 5]
    assert ev.parse_list("7", "seeds", int) == [7]
    assert ev.parse_list("hint,refusal", "tasks", str) == ["hint", "refusal"]


def phases_of(**kw):
    cfg = ev.RunConfig(task="hint", seed=0, **kw)
    task = ev.get_task("hint")
    return ev.shift_schedule(cfg, task, task, task.split(0))


def test_shift_schedules():
    (sharp,), shifted = phases_of()
    assert sharp.start == 0 and len(shifted) == 60 and sharp.cases
    gradual, same_units = phases_of(schedule="gradual", shift_at=20, ramp_steps=100)
    assert [p.start for p in gradual] == list(range(20, 120, 10)) and (same_units == shifted).all()
    sizes = [len(p.cases) for p in gradual]
    assert sizes == sorted(sizes) and gradual[-1].cases == sharp.cases  # units join until all have
    there, back = phases_of(schedule="oscillating", back_at=100)[0]
    assert (there.start, back.start) == (0, 100) and there.cases == back.cases == sharp.cases
    split = ev.get_task("hint").split(0)
    assert back.world["answer"].tolist() == split.world["answer"].tolist()  # trained back to M0's world
    assert phases_of(schedule="none")[0] == []


@pytest.mark.parametrize("kw, message", [({"schedule": "wobbly"}, "schedule='wobbly' is unknown"),
                                         ({"shift_at": 300}, r"shift_at=300 must lie in \[0, 299\]"),
                                         ({"schedule": "gradual", "shift_at": 250, "ramp_steps": 100},
                                          r"ramp_steps=100 must lie in \[1, 50\]"),
                                         ({"schedule": "oscillating", "back_at": 0}, "back_at=0 must lie in"),
                                         ({"shift": "trigger", "schedule": "gradual"}, "not available with shift=trigger"),
                                         ({"other_labels": 2.0}, "other_labels=2.0 is a probability")])
def test_bad_schedules_are_refused(kw, message):
    with pytest.raises(ValueError, match=message):
        ev.RunConfig(**kw)


def test_labels_from_another_model_family(tmp_path):
    result = tiny_run(tmp_path, other_labels=1.0)
    assert result["data"]["other_labels_taken"] == 40
    assert (tmp_path / "runs" / "refusal" / "seed1" / "other_m0.pt").exists()
    final = result["final"]
    assert final["gap_other"] == pytest.approx(final["self"] - final["orig_other"])
    assert 0 <= final["family_agreement"] <= 1
    assert set(result["probes"]) >= {"paraphrase 1", "control: irrelevant word removed",
                                     "leading: wrong explanation suggested"}
    assert result["probes"]["training query"]["accuracy"] == pytest.approx(final["self"])
    generated, forced = (result["probes"][f"verdict flipped: verdict {kind}"] for kind in ("generated", "forced"))
    assert generated["n"] == forced["n"] == final["n_became_changed"] + final["n_became_unchanged"]
    assert forced["malformed"] == 0 and result["probes"]["verdict kept: verdict forced"]["n"] == 60 - forced["n"]


def test_the_report_tables_every_seed_and_says_where_it_ran(tmp_path, monkeypatch):
    results = [tiny_run(tmp_path / f"seed{seed}", seed=seed) for seed in (1, 2)]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "results" / "tiny").mkdir(parents=True)
    (tmp_path / "results" / "tiny" / "ABOUT.md").write_text("Runs made on a toaster.\n")
    ev.write_report("tiny", "REPORT.md", results)
    text = (tmp_path / "REPORT.md").read_text()
    assert text.startswith("# Introspective coupling: results\n\nRuns made on a toaster.\n\nGenerated by")
    gap, half = ev.mean_ci([r["final"]["gap"] for r in results])
    assert f"| refusal | yes | 2 |" in text and f"**{gap:+.3f} ± {half:.3f}**" in text
    assert f"Computed on: {ev.machine(results[0]['provenance'])}." in text
    assert ev.machine({"git_commit": "old"}) == "a machine not recorded"
    assert "## Shared circuits" in text
    figures = {p.name for p in (tmp_path / "figures").iterdir()}
    assert figures >= {"tiny_curves.png", "tiny_gap.png", "tiny_flipped_runs.png"}
    assert "coupled at an earlier evaluation" in text or "Every run with KL is coupled at the end." in text


def test_the_main_report_takes_other_saved_seeds_only_if_made_with_the_current_settings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert ev.saved_main_runs([0]) == []  # no results folder at all
    same, changed = ev.main_configs(tasks=("hint",), seeds=(7,))[0], ev.main_configs(tasks=("hint",), seeds=(8,))[0]
    changed = ev.replace(changed, explain=ev.replace(changed.explain, lr=1e-3))
    for cfg in (same, changed):
        ev.write_json({"config": ev.asdict(cfg), "final": {}}, ev.result_path("main", cfg))
    assert [r["config"]["seed"] for r in ev.saved_main_runs([0, 1, 2])] == [7]
    assert ev.saved_main_runs([7]) == []


def test_saved_results_load_in_seed_order_not_file_name_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for cfg in ev.main_configs(tasks=("hint",), seeds=(10, 2)):
        ev.write_json({"config": ev.asdict(cfg), "final": {}}, ev.result_path("main", cfg))
    assert [r["config"]["seed"] for r in ev.load_results("main")] == [2, 2, 10, 10]  # "seed10" sorts before "seed2"


def test_a_failed_run_that_was_coupled_earlier_is_told_apart_from_one_that_never_was():
    point = lambda gap, self_flipped: {"gap": gap, "self_flipped": self_flipped}
    run = lambda seed, *curve: {"config": {"seed": seed}, "curve": list(curve), "final": curve[-1]}
    runs = [run(0, point(0.1, 0.9), point(0.2, 0.8)),          # coupled throughout
            run(1, point(0.1, 0.7), point(-0.1, 0.2)),         # coupled, then lost it
            run(2, point(0.0, 0.0), point(0.1, 0.4)),          # never coupled: Self@flipped stays below 0.5
            run(3, point(0.05, None), point(-0.2, 0.1))]       # no flipped items at first: not coupled then
    assert [ev.is_coupled(r["final"]) for r in runs] == [True, False, False, False]
    assert ev.lost_coupling(runs) == ([1, 2, 3], [1])
