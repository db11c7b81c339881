import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pytest

import eval as ev
import experiments as ex
import train
from test_eval import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(REPO, "tests")


@pytest.fixture
def mine(tmp_path, monkeypatch):
    """Your store in a temporary folder; the reference stays the repository's own."""
    monkeypatch.setattr(train, "RUNS_DIR", str(tmp_path / "runs"))
    return tmp_path / "runs"


def tiny_main_configs(tasks=ex.MAIN_TASKS, seeds=(0, 1, 2), device="auto", threads=1):
    """The main suite's shape (a KL and a no-KL run per task and seed) at a size that trains in seconds."""
    configs = [tiny_config(seed, task) for seed in seeds for task in tasks]
    return [replace(c, pretrain=replace(c.pretrain, device=device, threads=threads),
                    explain=replace(c.explain, kl_weight=kl))
            for c in configs for kl in (3.0, 0.0)]


def wait_for(condition, timeout=120):
    start = time.time()
    while not condition():
        if time.time() - start > timeout:
            raise TimeoutError("the awaited file never appeared")
        time.sleep(0.05)


def test_the_main_suite_has_one_kl_and_one_control_run_per_task_and_seed_differing_only_in_kl():
    configs = ex.main_configs(seeds=(0, 1))
    assert len(configs) == 12
    for seed in (0, 1):
        for task in ex.MAIN_TASKS:
            kl, control = [c for c in configs if (c.task, c.seed) == (task, seed)]
            assert kl.explain.kl_weight == train.ExplainConfig.kl_weight > 0 and control.explain.kl_weight == 0
            assert replace(control, explain=replace(control.explain, kl_weight=kl.explain.kl_weight)) == kl


def test_a_runs_identity_and_name_ignore_runtime_settings_only():
    default = tiny_config()
    elsewhere = replace(default, pretrain=replace(default.pretrain, device="cpu", threads=2, checkpoint_every=7))
    assert ev.identity(elsewhere) == ev.identity(default) and elsewhere.name == default.name
    other = replace(default, explain=replace(default.explain, lr=1e-3))
    assert ev.identity(other) != ev.identity(default) and other.name != default.name
    saved = json.loads(json.dumps(ev.asdict(elsewhere)))  # as read back from a result file
    assert ev.identity(saved) == ev.identity(default)


def test_a_suite_on_another_device_setting_recomputes_nothing(mine, monkeypatch):
    calls = []
    run = ex.run_coupling
    monkeypatch.setattr(ex, "run_coupling", lambda cfg, *a, **kw: calls.append(cfg) or run(cfg, *a, **kw))
    ex.run_suites([("main", tiny_main_configs(("refusal",), (1,), device="auto"), False)])
    assert len(calls) == 2
    ex.run_suites([("main", tiny_main_configs(("refusal",), (1,), device="cpu"), False)])
    assert len(calls) == 2  # the same runs, loaded


def test_a_pretraining_variant_and_the_default_m0_of_one_seed_coexist(mine):
    default = tiny_config()
    variant = replace(default, pretrain=replace(default.pretrain, steps=40))
    paths = [train.m0_path(cfg.pretrain) for cfg in (default, variant)]
    assert paths[0] != paths[1] and variant.name != default.name
    for cfg in (default, variant, default):
        ev.run_coupling(cfg, str(mine / "results" / "runs" / f"{cfg.name}.json"), log=lambda *a: None)
    assert all(os.path.exists(p) for p in paths)


def tracked_reference():
    """Hashes of every file of the published reference and the README."""
    files = ["README.md", "REPORT.md", "STRESS.md"]
    for folder in ("results", "figures"):
        for root, _, names in os.walk(os.path.join(REPO, folder)):
            files += [os.path.relpath(os.path.join(root, n), REPO) for n in names]
    return {f: hashlib.sha1(open(os.path.join(REPO, f), "rb").read()).hexdigest() for f in sorted(files)}


def test_no_user_command_writes_into_the_reference(mine, monkeypatch, capsys):
    import bench
    import stress
    before = tracked_reference()
    monkeypatch.setattr(ex, "main_configs", tiny_main_configs)
    ex.main(["quick", "--jobs", "1"])
    ex.main(["report"])
    ev.main(["run", "--task", "refusal", "--seed", "1", "--n-explain", "40", "--n-eval", "60", "--n-kl-prompts",
             "64", "--pretrain-steps", "60", "--pretrain-batch-size", "32", "--pretrain-n-embd", "16",
             "--pretrain-n-head", "2", "--steps", "6", "--explain-batch", "8", "--shift-batch", "8",
             "--kl-batch", "8", "--eval-every", "3"])
    monkeypatch.setattr(bench, "matmul_peak", lambda device: 1e9)
    bench.main(["--steps", "2", "--items", "20"])
    rounds = iter([[tiny_config(1, "hint")], []])
    monkeypatch.setattr(stress, "next_round", lambda *args: next(rounds))
    stress.main(["run", "--jobs", "1"])
    assert tracked_reference() == before
    assert (mine / "REPORT.md").exists() and (mine / "bench.json").exists() and (mine / "STRESS.md").exists()
    out = capsys.readouterr().out
    assert "Your numbers beside the reference" in out and "| hint | yes | yours | " in out and " of 1 |" in out  # one run of yours


def refused(argv, capsys):
    with pytest.raises(SystemExit) as stop:
        ev.main(argv)
    assert stop.value.code == 2
    return capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("where, message", [
    (lambda tmp: os.path.join(REPO, "results", "main", "hint", "x.json"), "inside the published reference"),
    (lambda tmp: str(tmp / "runs" / "checkpoints" / "x.json"), "inside the published reference"),
    (lambda tmp: str(tmp), "must be a .json file path"),
    (lambda tmp: str(tmp / "notes.txt"), "must be a .json file path"),
    (lambda tmp: str(tmp / "other.json"), "exists and is not a result of this run")])
def test_bad_out_paths_are_refused_in_one_line_before_any_work(where, message, mine, tmp_path, capsys):
    (tmp_path / "other.json").write_text('{"config": {}}')
    (tmp_path / "notes.txt").write_text("mine")
    err = refused(["run", "--task", "hint", "--seed", "0", "--out", where(tmp_path)], capsys)
    assert len(err) == 1 and message in err[0]
    assert not (mine / "checkpoints").exists()


def test_out_may_name_a_result_of_the_same_run_but_not_of_another(mine, tmp_path, capsys):
    cfg = tiny_config()
    path = str(tmp_path / "mine.json")
    ev.run_coupling(cfg, path, log=lambda *a: None)
    ev.check_out_path(path, replace(cfg, pretrain=replace(cfg.pretrain, device="cpu")))  # runtime: the same run
    with pytest.raises(ValueError, match="not a result of this run"):
        ev.check_out_path(path, replace(cfg, label_noise=0.1))


def test_show_prints_flipped_and_unflipped_items_of_a_saved_run(mine):
    cfg = replace(tiny_config(), shift_size=0.35)
    ev.run_coupling(cfg, ex.result_path("main", cfg), log=lambda *a: None)
    ev.write_json(ev.read_result(ex.result_path("main", cfg)), ex.result_path("label_noise", cfg))  # as a sweep copies it
    lines = []
    ex.show(cfg, n=2, out=lines.append)
    text = "\n".join(lines)
    assert text.count("[unflipped]") == 2 and "frozen label E(M0):" in text and "explanation:" in text
    flipped = json.loads(open(ex.result_path("main", cfg)).read())["final"]["n_flipped"]
    assert text.count("[flipped]") == min(2, flipped) and f"{flipped} of 60 held-out items flipped" in text
    with pytest.raises(ValueError, match="no saved run of refusal"):
        ex.show(replace(cfg, seed=5))


def test_show_picks_the_run_make_quick_computes_unless_told_otherwise():
    parse = ex.build_parser().parse_args
    assert parse(["show"]).seed == ex.QUICK_SEEDS[0] and parse(["show", "--seed", "3"]).seed == 3
    assert parse(["show"]).task == "hint"  # make quick's task


def fake(task, seed, gap, verdict_tracking, kl=True, cpu="Toaster CPU"):
    final = {"gap": gap, "verdict_tracking": verdict_tracking, **({"blind_gap": 0.05, "c_blind_gap": 0.2} if kl else {})}
    return {"config": {"task": task, "seed": seed, "n_explain": ev.RunConfig.n_explain,
                       "explain": {"kl_weight": 3.0 if kl else 0.0, "steps": train.ExplainConfig.steps}},
            "final": final, "curve": [final], "provenance": {"cpu": cpu, "cpu_capability": "avx2", "gpu": None}}


def test_the_comparison_puts_your_numbers_beside_the_reference_and_applies_the_bar():
    mine = [fake("hint", s, g, 0.8) for s, g in enumerate((0.10, 0.12, 0.11))] + \
           [fake("refusal", s, g, 0.6) for s, g in enumerate((0.2, -0.2, 0.1))] + [fake("hint", 0, -0.3, 0.1, kl=False)]
    reference = [fake("hint", s, 0.1, 0.9, cpu="Big CPU") for s in range(5)] + \
                [fake("refusal", s, 0.05, 0.7, cpu="Big CPU") for s in range(5)]
    text = ex.comparison(mine, reference)
    assert "| hint | yes | yours | +0.110 ± 0.025 | +0.050 | +0.200 | 0.80 ± 0.00 | 3 of 3 |\n" \
           "|  |  | reference | +0.100 ± 0.000 | +0.050 | +0.200 | 0.90 ± 0.00 | 5 of 5 |\n" \
           "| hint | no | yours | -0.300 | n/a | n/a | 0.10 | 0 of 1 |\n" \
           "| refusal | yes | yours |" in text  # no reference runs without KL here
    assert max(map(len, text.splitlines())) <= 100  # readable in a 100-column terminal
    widest = [fake("judgement", s, -0.6 + 0.1 * s, math.nan if s > 1 else -0.05 * s) for s in range(10)]
    assert max(map(len, ex.comparison(widest, widest).splitlines())) <= 100  # negative, partly undefined
    assert "- hint: the bar is met here; in the reference: met on your seeds, met on its 5." in text
    assert "- refusal: the bar is not met here; in the reference: met on your seeds, met on its 5." in text
    ten = [fake("hint", s, 0.1, 0.2 if s == 1 else 0.9) for s in range(10)]  # its seed 1 fails
    assert "- hint: the bar is met here; in the reference: not met on your seeds, met on its 10." in \
        ex.comparison(mine, ten)
    assert "- hint: the bar is met here; in the reference: met." in ex.comparison(mine, reference[:3])
    one_seed = ex.comparison(mine[:1], ten)  # the longest verdict line: one seed is undecided on both sides
    assert "in the reference: undecided (one seed has no interval) on your seeds, met on its 10." in \
        " ".join(one_seed.split())
    assert max(map(len, one_seed.splitlines())) <= 100
    assert "Yours: computed on Toaster CPU (avx2 kernels)" in text and "Reference: computed on Big CPU" in text
    alone = " ".join(ex.comparison(mine, []).split())  # a reference made with other settings is left out
    assert "in the reference: no runs." in alone and "The reference has no runs with these settings." in alone


@pytest.mark.parametrize("argv, message", [
    (["sweep", "label_noise", "--seeds", "0,x"], "error: --seeds='0,x' must be a comma-separated list of integers "
                                                 "or ranges like 0-9"),
    (["reproduce", "--seeds", "3-x"], "error: --seeds='3-x' must be a comma-separated list of integers or ranges "
                                      "like 0-9"),
    (["reproduce", "--seeds", "5-2"], "error: --seeds='5-2' names nothing; give at least one value (a range is "
                                      "low-high, low <= high)"),
    (["sweep", "label_noise", "--tasks", "maths"], "error: task='maths' is unknown; allowed: hint, judgement, refusal, twohop"),
    (["sweep", "label_noise", "--jobs", "-2"], "error: jobs=-2 must be an integer in [1, 256]"),
    (["reproduce", "--threads", "0"], "error: threads=0 must be an integer in [1, 256]"),
    (["publish", "--experiments", "nosuch"], "error: --experiments='nosuch' is unknown; allowed: main, main_threads2, "
                                             "directions, other_model, "
                                             "label_noise, learning_rate, agreement, trigger, held_out_feature, feature_items, "
                                             "held_out_arms, word_diversity, held_out_query, capacity, shift_location"),
    (["sweep", "trigger,nosuch"], "error: sweep='nosuch' is unknown; allowed: other_model, label_noise"),
    (["sweep", "held_out_arms", "--values", "e"], "error: --values of held_out_arms='e' is unknown; allowed: a, b, c, d"),
    (["show", "--task", "hint", "--seed", "3"], "no saved run of hint seed3_kl_")])
def test_bad_suite_flags_exit_with_one_line_and_write_nothing(argv, message, capsys, mine):
    with pytest.raises(SystemExit) as stop:
        ex.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and message in err[0]
    assert not list(mine.rglob("*.json"))


def test_seed_lists_take_ranges():
    assert ex.parse_list("0-2,5", "seeds", int) == [0, 1, 2, 5]
    assert ex.parse_list("7", "seeds", int) == [7]
    assert ex.parse_list("hint,refusal", "tasks", str) == ["hint", "refusal"]


def saved(cfg):
    """A result file of cfg with every key a result has, and made-up numbers."""
    point = {key: 0.5 for key in ev.EVALUATION_KEYS}
    ev.write_json({"config": ev.asdict(cfg), "provenance": {}, "m0": {}, "data": {}, "baseline": point,
                   "final": point, "curve": [point], "failure": None, "seconds": 1.0}, ex.result_path("main", cfg))


def test_reports_take_saved_main_runs_only_if_made_with_the_current_settings(mine):
    same, changed = ex.main_configs(tasks=("hint",), seeds=(7, 8))[0:3:2]
    changed = replace(changed, explain=replace(changed.explain, lr=1e-3))
    for cfg in (same, changed):
        saved(cfg)
    found = ex.load_results(str(mine / "results" / "main"))
    assert [r["config"]["seed"] for r in found] == [7, 8]
    assert [r["config"]["seed"] for r in ex.current_main_runs(found)] == [7]


def test_saved_results_load_in_seed_order_not_file_name_order(mine):
    for cfg in ex.main_configs(tasks=("hint",), seeds=(10, 2)):
        saved(cfg)
    assert [r["config"]["seed"] for r in ex.load_results(str(mine / "results"))] == [2, 2, 10, 10]


def test_a_truncated_result_file_is_named_in_its_error(mine):
    path = mine / "results" / "main" / "hint" / "seed0_kl_x.json"
    path.parent.mkdir(parents=True)
    path.write_text('{"config": {"task": "hint"')
    with pytest.raises(ValueError, match=f"{path} is not a readable result file"):
        ex.load_results(str(mine / "results"))


SUITE = ("import sys; sys.path[:0] = [{repo!r}, {tests!r}]; import train; train.RUNS_DIR = sys.argv[1]; "
         "import experiments as ex, test_eval; "
         "ex.run_suites([('crash', [test_eval.tiny_config(seed) for seed in (1, 2, 3)], False)])")


def test_a_killed_suite_resumes_to_the_same_results_without_redoing_finished_runs(tmp_path, monkeypatch):
    code = SUITE.format(repo=REPO, tests=TESTS)

    def results(folder):
        found = {}
        for path in sorted((folder / "results" / "crash").rglob("*.json")):
            curve = json.loads(path.read_text())["curve"]
            found[path.name] = [{k: v for k, v in p.items() if k != "seconds"} for p in curve]
        return found

    whole, killed = tmp_path / "whole", tmp_path / "killed"
    monkeypatch.setattr(train, "RUNS_DIR", str(whole))  # the uninterrupted suite, in this process
    ex.run_suites([("crash", [tiny_config(seed) for seed in (1, 2, 3)], False)])
    process = subprocess.Popen([sys.executable, "-c", code, str(killed)], stdout=subprocess.DEVNULL)
    try:
        first = killed / "results" / "crash" / "refusal" / f"{tiny_config(1).name}.json"
        wait_for(first.exists)  # then kill it in the middle of the second run's pretraining
        wait_for(lambda: list((killed / "checkpoints" / "refusal" / "seed2").glob("*.pt")))
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finished = first.stat().st_mtime_ns
    subprocess.run([sys.executable, "-c", code, str(killed)], check=True, capture_output=True, timeout=300)
    assert first.stat().st_mtime_ns == finished  # the finished run was loaded, not run again
    assert results(killed) == results(whole) and len(results(whole)) == 3


def test_parallel_runs_give_the_same_results_as_one_at_a_time(tmp_path, monkeypatch):
    # the last run needs the first one's M0: in parallel it waits until that model is pretrained
    configs = [tiny_config(seed) for seed in (1, 2)] + [tiny_config(1, label_noise=0.25)]
    curves = []
    for jobs in (1, 2):
        monkeypatch.setattr(train, "RUNS_DIR", str(tmp_path / str(jobs)))
        results = ex.run_suites([("parallel", configs, False)], jobs=jobs)[0]
        assert [r["config"]["seed"] for r in results] == [1, 2, 1]  # in the order asked
        assert results[2]["config"]["label_noise"] == 0.25
        curves.append(train._nan_to_none([[{k: v for k, v in p.items() if k != "seconds"} for p in r["curve"]]
                                       for r in results]))
    assert curves[0] == curves[1]
    assert not os.path.exists(os.path.join(REPO, "runs", "results", "parallel"))


def test_a_run_asked_for_by_two_suites_runs_once(mine, monkeypatch):
    calls = []
    run = ex.run_coupling
    monkeypatch.setattr(ex, "run_coupling", lambda cfg, *a, **kw: calls.append(cfg) or run(cfg, *a, **kw))
    first, second = ex.run_suites([("one", [tiny_config()], True), ("two", [tiny_config()], False)])
    assert len(calls) == 1 and first[0]["final"] == second[0]["final"] and "probes" in first[0]
    assert {p.parent.parent.name for p in (mine / "results").rglob("*.json")} == {"one", "two"}
    ex.run_suites([("one", [tiny_config()], True)])
    assert len(calls) == 1  # loaded, not run again


def test_the_directions_suite_runs_the_other_shifts_of_hint_and_refusal_with_and_without_kl():
    configs = ex.directions_configs(seeds=(0,))
    assert sorted((c.task, c.shift, c.explain.kl_weight > 0) for c in configs) == \
        sorted((t, s, kl) for t in ("hint", "refusal") for s in ("acquire", "both") for kl in (True, False))
    assert len({c.name for c in configs if c.task == "hint"}) == 4  # each its own result file


def test_another_thread_count_is_a_new_draw_saved_apart_with_its_own_m0(mine, monkeypatch):
    monkeypatch.setattr(ex, "main_configs", tiny_main_configs)
    monkeypatch.setattr(ex, "report_yours", lambda mine, command: None)
    ex.main(["quick", "--jobs", "1"])
    ex.main(["quick", "--jobs", "1", "--threads", "2"])
    one, two = (ex.load_results(str(mine / "results" / folder)) for folder in ("main", "main_threads2"))
    assert [r["provenance"]["threads"] for r in one + two] == [1, 1, 2, 2]
    m0s = sorted(path.name for path in (mine / "checkpoints").rglob("m0_*.pt"))
    assert len(m0s) == 2 and m0s[1] == m0s[0].replace(".pt", "_threads2.pt")


def test_your_runs_are_put_beside_the_reference_draw_of_their_thread_count_where_it_is_published():
    runs = lambda threads: [{"config": {"pretrain": {"threads": threads}}}]
    assert ex.reference_draw(runs(1)) == "main"
    assert ex.reference_draw(runs(2)) == "main_threads2"  # published: the same runs on the reference's machine
    assert ex.reference_draw(runs(4)) == "main"  # not published
    assert ex.reference_draw(runs(1) + runs(2)) == "main"


def test_a_sweep_value_may_set_several_fields_and_is_read_back_from_a_saved_config():
    from dataclasses import asdict
    from suites import SWEEPS, sweep_configs
    arms = sweep_configs("held_out_arms", seeds=(5,))
    assert [(c.schedule, c.explain.shift_in, c.trigger_effect, c.shift, c.explained_features, c.unlabelled_features)
            for c in arms] == [("none", "all", "last", "trigger", 8, 4), ("sharp", "all", "last", "trigger", 8, 4),
                               ("sharp", "word", "last", "trigger", 8, 4), ("sharp", "all", "first", "trigger", 8, 4)]
    assert [SWEEPS["held_out_arms"].value_of(asdict(c)) for c in arms] == ["a", "b", "c", "d"]
    diverse = sweep_configs("word_diversity", seeds=(0,))
    assert [c.explained_features for c in diverse] == [8, 16, 32, 64, 128, 256]
    assert all(2000 <= c.feature_items * (c.explained_features - 1) <= 2200 for c in diverse)  # about fixed
    assert [SWEEPS["word_diversity"].value_of(asdict(c)) for c in diverse] == [8, 16, 32, 64, 128, 256]
    assert [c.explain.lr for c in sweep_configs("learning_rate", seeds=(0,), values=[2e-3])] == [2e-3]
    assert ex.chosen_values("held_out_arms", "c,a") == ["c", "a"] and ex.chosen_values("held_out_arms", "") is None
