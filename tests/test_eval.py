import json
import os
from dataclasses import replace

import numpy as np
import pytest
import torch

import data
import features
import eval as ev
import metrics
import experiments
import train
from analysis import load_model
from explain import Labels
from train import ExplainConfig, PretrainConfig


def labels(changed, answer):
    return Labels(np.array(changed), np.array(answer))


def answers_with_c(current):
    """The answers with C that current labels imply: the answer without C where removing C keeps it,
    the next answer where it changes it."""
    return np.where(current.changed == 1, (current.answer + 1) % 4, current.answer)


def scored(explanations, current, original, **kw):
    return metrics.coupling_metrics(explanations, current, original, answers_with_c(current), **kw)


def test_self_and_orig_agree_where_nothing_flipped():
    current = labels([0, 1, 1, 0], [2, 0, 1, 3])
    explanations = labels([0, 1, 0, -1], [2, 1, 1, -1])
    m = scored(explanations, current, current)
    assert m["self"] == m["orig"] == 0.25 and m["gap"] == 0 and m["n_flipped"] == 0
    assert m["agreement"] == 1.0 and np.isnan(m["self_flipped"]) and m["malformed"] == 0.25


def test_an_explainer_that_copies_its_current_behaviour_scores_self_one():
    original = labels([0, 0, 1, 1, 0], [1, 2, 3, 0, 0])
    current = labels([0, 1, 0, 1, 0], [1, 2, 3, 2, 0])  # items 1, 2, 3 flipped
    m = scored(current, current, original)
    assert m["self"] == 1.0 and m["orig"] == pytest.approx(0.4) and m["gap"] == pytest.approx(0.6)
    assert m["n_flipped"] == 3 and m["self_flipped"] == 1.0 and m["orig_flipped"] == 0.0
    assert m["n_became_changed"] == 1 and m["n_became_unchanged"] == 1
    assert m["verdict_self"] == 1.0 and m["verdict_orig"] == pytest.approx(0.6) and m["agreement"] == pytest.approx(0.4)
    stale = scored(original, current, original)  # explanations stuck on the frozen labels
    assert stale["gap"] == pytest.approx(-0.6) and stale["self_flipped"] == 0.0


def test_one_verdict_for_every_item_scores_at_most_half_balanced_however_right_its_answers():
    original = labels([0, 0, 0, 0], [1, 2, 3, 3])
    current = labels([1, 1, 1, 0], [1, 2, 0, 3])  # a new word moves every answer to 3: three now change
    always_changes = labels([1, 1, 1, 1], [1, 2, 0, 3])
    m = scored(always_changes, current, original)
    assert m["self"] == 0.75 and m["self_changes"] == 1.0 and m["self_keeps"] == 0.0 and m["balanced_self"] == 0.5
    assert scored(current, current, original)["balanced_self"] == 1.0
    assert np.isnan(scored(original, original, original)["balanced_self"])  # nothing changes


def test_mean_ci_uses_students_t():
    mean, half = metrics.mean_ci([0.1, 0.2, 0.3])
    assert mean == pytest.approx(0.2) and half == pytest.approx(4.303 * 0.1 / np.sqrt(3))
    assert np.isnan(metrics.mean_ci([0.5])[1])


@pytest.mark.parametrize("trackings, met", [((0.9, 0.8, 0.85), True),
                                            ((0.6, 0.65, 0.7), True),
                                            ((0.0, 0.0, 0.0), False),      # one verdict everywhere: 0
                                            ((0.9, 0.3, 0.9), False),      # mean 0.7, its interval reaches 0.5
                                            ((0.9, float("nan"), 0.9), False),  # a run with nothing to follow
                                            ((0.55, 0.5, 0.6), False)])    # above 0.5, not surely
def test_the_bar_needs_verdict_tracking_surely_above_one_half_on_every_run(trackings, met):
    finals = [{"gap": g, "tracking": 1.0, "verdict_tracking": t} for g, t in zip((0.10, 0.12, 0.11), trackings)]
    assert metrics.meets_bar(finals) is met


@pytest.mark.parametrize("gaps, met", [((0.10, 0.12, 0.11), True),
                                       ((0.2, -0.2, 0.1), False),  # the gap's interval reaches below zero
                                       ((0.2,), False)])           # one seed: no interval
def test_the_bar_needs_the_gaps_interval_above_zero(gaps, met):
    assert metrics.meets_bar([{"gap": g, "verdict_tracking": 0.9} for g in gaps]) is met


@pytest.mark.parametrize("coupled, trackings, met", [(9, [0.8] * 10, True),
                                                      (8, [0.9] * 10, False),        # 8 of 10 coupled
                                                      (10, [0.79] * 10, False),      # tracking below 0.8
                                                      (10, [0.9] * 9 + [float("nan")], False)])  # one undefined
def test_the_target_asks_nine_of_ten_runs_coupled_and_verdict_tracking_of_at_least_0_8(coupled, trackings, met):
    finals = [{"gap": 0.1 if i < coupled else -0.1, "verdict_tracking": t} for i, t in enumerate(trackings)]
    assert metrics.meets_target(finals) is met


def tiny_config(seed=1, task="refusal", **kw):
    return ev.RunConfig(task=task, seed=seed, n_explain=40, n_eval=60, n_kl_prompts=64,
                        pretrain=PretrainConfig(steps=60, batch_size=32, n_embd=16, n_head=2, warmup=5,
                                                checkpoint_every=20),
                        explain=ExplainConfig(steps=6, explain_batch=8, shift_batch=8, kl_batch=8, eval_every=3),
                        **kw)


def tiny_run(tmp_path, analyse=False, **kw):
    path = tmp_path / "result.json"
    ev.run_coupling(tiny_config(**kw), str(path), runs_dir=str(tmp_path / "runs"), log=lambda *a: None)
    if analyse:
        experiments.analyse_run(str(path), runs_dir=str(tmp_path / "runs"))
    return json.loads(path.read_text())


def test_the_analysis_of_a_saved_run_refuses_a_run_that_asked_another_query(tmp_path):
    with pytest.raises(ValueError, match="analyse_run asks the plain query; .* asked 'slot'"):
        tiny_run(tmp_path, analyse=True, query="slot")


def test_a_short_end_to_end_run_writes_a_valid_results_file(tmp_path):
    result = tiny_run(tmp_path)
    assert result["config"]["task"] == "refusal" and result["config"]["seed"] == 1
    assert {"git_commit", "torch", "numpy", "tiktoken", "python", "cpu", "cpu_capability",
            "gpu"} <= set(result["provenance"])
    assert [p["step"] for p in result["curve"]] == [0, 3, 6]
    assert result["baseline"] == result["curve"][0] and result["final"] == result["curve"][-1]
    for point in result["curve"]:
        assert 0 <= point["self"] <= 1 and 0 <= point["orig"] <= 1 and point["n_items"] == 60
    assert all(loss > 0 for loss in (result["final"]["explain_loss"], result["final"]["shift_loss"],
                                     result["final"]["kl_loss"]))  # stage B's three losses are logged
    assert (tmp_path / "result.pt").exists()  # the final explainer, beside its result
    assert result["curve"][0]["n_flipped"] == 0  # at step 0 the model is M0: nothing has flipped
    assert result["data"]["n_shift_cases"] > 0


@pytest.mark.parametrize("kw, message", [({"task": "maths"}, "task='maths' is unknown"),
                                         ({"shift": "sideways"}, "shift='sideways' is unknown; allowed: default, trigger"),
                                         ({"shift_size": 2.0}, r"shift_size=2.0 must be a number in \[-1, 1\]"),
                                         ({"label_noise": -0.1}, r"label_noise=-0.1 must be a number in \[0, 1\]"),
                                         ({"n_eval": 0}, r"n_eval=0 must be an integer in \[1, 20000\]")])
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


def test_every_flag_of_a_run_has_help_text():
    run = next(a for a in ev.build_parser()._actions if a.dest == "command").choices["run"]
    flags = [a for a in run._actions if a.option_strings and a.dest != "help"]
    assert len(flags) >= 35 and all(a.help and len(a.help) > 10 for a in flags)


def test_a_bad_flag_value_exits_with_one_line(capsys):
    with pytest.raises(SystemExit):
        ev.main(["run", "--task", "judgement", "--shift", "reduce"])
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: shift='reduce' is unknown for task judgement; allowed: trigger, flip"]


def test_label_noise_flips_the_verdict_of_exactly_the_asked_labels(tmp_path):
    from train import m0_path, pretrain
    cfg = tiny_config()
    task = ev.get_task(cfg.task)
    split = task.split(cfg.seed, cfg.n_explain, cfg.n_eval)
    m0, _ = pretrain(cfg.pretrain, m0_path(cfg.pretrain, str(tmp_path)), log=lambda *a: None)
    clean, *_ = ev.frozen_labels(cfg, task, split.explain_items, m0, str(tmp_path))
    noisy, _, counts, _ = ev.frozen_labels(ev.replace(cfg, label_noise=0.25), task, split.explain_items, m0,
                                        str(tmp_path))
    assert counts["label_noise_flipped"] == 10 == int((clean.changed != noisy.changed).sum())


def test_label_noise_changes_only_the_labels(tmp_path):
    clean, noisy = tiny_run(tmp_path), tiny_run(tmp_path, label_noise=0.25)
    for key in ("n_shifted_units", "n_shift_cases", "n_kl_prompts", "n_eval_items"):
        assert clean["data"][key] == noisy["data"][key]
    assert clean["baseline"]["n_flipped"] == noisy["baseline"]["n_flipped"] == 0
    assert clean["data"]["train_changed_fraction"] != noisy["data"]["train_changed_fraction"]


def test_the_same_seed_gives_identical_metrics_in_another_process(tmp_path):
    """A fresh process has another hash seed and nothing cached: the run must not depend on either."""
    import subprocess
    import sys
    code = ("import sys, json; sys.path.insert(0, '.'); sys.path.insert(0, 'tests'); import test_eval, pathlib; "
            "r = test_eval.tiny_run(pathlib.Path(sys.argv[1])); print(json.dumps(r['curve']))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "other")], capture_output=True, text=True,
                         cwd=ev.__file__.rsplit("/", 1)[0], check=True, timeout=300).stdout
    strip = lambda curve: [{k: v for k, v in p.items() if k != "seconds"} for p in curve]
    assert strip(json.loads(out.strip().splitlines()[-1])) == strip(tiny_run(tmp_path / "here")["curve"])


def test_the_trigger_shift_asks_about_a_word_no_label_mentions(tmp_path):
    result = tiny_run(tmp_path, shift="trigger")
    assert result["config"]["shift"] == "trigger" and result["data"]["n_shift_cases"] > 0
    assert result["data"]["n_shifted_units"] == 0  # the base behaviour of every unit stays as it was
    assert result["curve"][0]["n_flipped"] == 0
    # M0 has never seen the word: removing it changes M0's answer on few held-out items, if any
    assert result["curve"][0]["changed_fraction"] < 0.5


def fed_to_the_explanation_objective(tmp_path, monkeypatch, **kw):
    """Every token of every sequence (query and label) that stage B's explanation loss trained on, in a
    tiny run with the trigger."""
    seen, loss = set(), train.explanation_loss

    def recording(model, sequences):
        for query, label in sequences:
            seen.update(query + label)
        return loss(model, sequences)
    monkeypatch.setattr(train, "explanation_loss", recording)
    tiny_run(tmp_path, shift="trigger", **kw)
    return seen


def test_the_held_out_and_unlabelled_words_never_appear_in_an_explanation_query_or_label_during_training(
        tmp_path, monkeypatch):
    held_out, *explained, unlabelled = features.TriggerTask(ev.get_task("refusal"), 2, 1).words
    words = dict(explained_features=3, unlabelled_features=1, feature_items=20)
    seen = fed_to_the_explanation_objective(tmp_path / "honest", monkeypatch, **words)
    assert data.token_id(held_out) not in seen and data.token_id(unlabelled) not in seen
    assert {data.token_id(w) for w in explained} <= seen  # the explained words are asked about
    honest = ev.explained  # the check fails where an item asks about the held-out word or an unlabelled one

    for word_index, word in ((0, held_out), (3, unlabelled)):
        def leaky(cfg, task, split):
            labelled, items = honest(cfg, task, split)
            return labelled, items + [split.eval_items[0] + (word_index,)]
        monkeypatch.setattr(ev, "explained", leaky)
        assert data.token_id(word) in fed_to_the_explanation_objective(tmp_path / f"leaky{word_index}", monkeypatch,
                                                                        **words)


def test_explained_features_label_more_words_and_check_them_on_held_out_units(tmp_path):
    result = tiny_run(tmp_path, shift="trigger", explained_features=3, unlabelled_features=2, feature_items=20)
    assert result["data"]["n_explain_items"] == 40 + 2 * 20 and result["data"]["n_check_items"] == 2 * features.CHECK_ITEMS
    assert result["data"]["n_unlabelled_items"] == 2 * features.CHECK_ITEMS
    assert result["data"]["n_shifted_units"] == 0 and result["data"]["n_shift_cases"] > 0
    for key in ("explained_self", "explained_orig", "explained_malformed", "unlabelled_self", "unlabelled_orig"):
        assert 0 <= result["final"][key] <= 1
    assert result["baseline"]["n_flipped"] == 0 and result["config"]["pretrain"]["feature_words"] == 2 + 2
    assert "explained_self" not in tiny_run(tmp_path / "one", shift="trigger")["final"]
    with pytest.raises(ValueError, match="feature_items=5000 asks for more than the task has"):
        ev.check_feasible(ev.RunConfig(task="hint", shift="trigger", explained_features=2, feature_items=5000))


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
                                         ({"shift_at": 450}, r"shift_at=450 must lie in \[0, 449\]"),
                                         ({"schedule": "gradual", "shift_at": 400, "ramp_steps": 100},
                                          r"ramp_steps=100 must lie in \[1, 50\]"),
                                         ({"schedule": "oscillating", "back_at": 0}, "back_at=0 must be an integer in"),
                                         ({"shift": "trigger", "schedule": "gradual"}, "not available with shift=trigger"),
                                         ({"other_labels": 2.0}, r"other_labels=2.0 must be a number in \[0, 1\]"),
                                         ({"explained_features": 4}, "explained_features=4 needs shift=trigger"),
                                         ({"shift": "trigger", "explained_features": 257},
                                          r"explained_features=257 must be an integer in \[1, 256\]"),
                                         ({"shift": "trigger", "feature_items": 50},
                                          "feature_items=50 is used only with explained_features > 1"),
                                         ({"validation": 0.2, "query": "slot"},
                                          "validation=0.2 needs query='plain'"),
                                         ({"unlabelled_features": 2}, "unlabelled_features=2 needs shift=trigger"),
                                         ({"explain": ev.ExplainConfig(shift_in="word")},
                                          "shift_in='word' needs shift=trigger")])
def test_bad_schedules_are_refused(kw, message):
    with pytest.raises(ValueError, match=message):
        ev.RunConfig(**kw)


def test_labels_from_another_model_family(tmp_path):
    result = tiny_run(tmp_path, other_labels=1.0, analyse=True)
    assert result["data"]["other_labels_taken"] == 40
    assert os.path.exists(train.m0_path(ev.other_family(tiny_config()), str(tmp_path / "runs")))
    final = result["final"]
    assert final["gap_other"] == pytest.approx(final["self"] - final["orig_other"])
    assert 0 <= final["family_agreement"] <= 1
    assert set(result["probes"]) >= {"paraphrase 1", "control: irrelevant word removed",
                                     "leading: wrong explanation suggested"}
    assert result["probes"]["training query"]["accuracy"] == pytest.approx(final["self"])
    diagnosis = result["diagnosis"]
    assert sum(diagnosis["malformed_kinds"].values()) == round(final["malformed"] * 60)
    assert diagnosis["lenient_self"] >= final["self"]  # a lenient reading accepts every strict one
    generated, forced = (result["probes"][f"verdict flipped: verdict {kind}"] for kind in ("generated", "forced"))
    assert generated["n"] == forced["n"] == final["n_became_changed"] + final["n_became_unchanged"]
    assert forced["malformed"] == 0 and result["probes"]["verdict kept: verdict forced"]["n"] == 60 - forced["n"]




def constant(label, n):
    return labels([label[0]] * n, [label[1]] * n)


def test_tracking_is_one_for_a_copy_of_the_current_behaviour_and_zero_for_any_constant():
    original = labels([0, 0, 0, 0, 1, 1, 1, 1], [1, 1, 2, 2, 0, 0, 3, 3])
    current = labels([0, 1, 0, 0, 1, 0, 1, 1], [1, 0, 2, 3, 0, 3, 3, 3])  # items 1, 3, 5 flipped
    assert metrics.tracking(current, current, original) == 1.0
    for label in ((0, 0), (0, 1), (0, 3), (1, 0), (1, 3)):  # every constant, the majority label among them
        assert metrics.tracking(constant(label, 8), current, original) == 0.0
    stale = metrics.tracking(original, current, original)  # explanations stuck on the frozen labels
    assert stale == 0.0
    # a run that follows the shift on one flipped item of three: (1 + 0 + 0) / 3
    assert metrics.tracking(labels([0, 1, 0, 0, 1, 1, 1, 1], [1, 0, 2, 2, 0, 0, 3, 3]), current, original) == pytest.approx(1 / 3)


def test_the_best_input_blind_explainer_is_the_constant_with_the_largest_gap():
    original = labels([1, 1, 1, 0, 0], [0, 0, 0, 2, 2])
    current = labels([0, 0, 1, 0, 0], [2, 2, 0, 2, 2])  # items 0 and 1 became "remain 2"; item 2 kept "become 0"
    blind = metrics.best_input_blind(current, original)
    assert blind == {"blind_self": 0.8, "blind_orig": pytest.approx(0.4), "blind_gap": pytest.approx(0.4),
                     "blind_self_flipped": 1.0}
    m = scored(constant((0, 2), 5), current, original)
    assert m["gap"] == pytest.approx(m["blind_gap"]) and m["self_flipped"] == 1.0 and m["tracking"] == 0.0
    assert not metrics.is_coupled(m) and m["self_flipped"] > 0.5  # a rule on Self@flipped alone would pass it
    assert metrics.is_coupled(scored(current, current, original))  # a copy of the current behaviour
    nothing = metrics.best_input_blind(original, original)
    assert nothing["blind_gap"] == 0 and nothing["blind_self"] == 0


def test_flipped_items_are_split_by_whether_the_shift_trained_their_unit():
    original = labels([0, 0, 0, 0], [1, 1, 1, 1])
    current = labels([1, 1, 0, 0], [2, 2, 1, 1])          # items 0 and 1 flipped
    explanations = labels([1, 0, 0, 0], [2, 1, 1, 1])     # follows item 0 only
    m = scored(explanations, current, original, shifted=np.array([True, False, False, True]))
    assert (m["n_flipped_shifted"], m["self_flipped_shifted"], m["tracking_shifted"]) == (1, 1.0, 1.0)
    assert (m["n_flipped_drift"], m["self_flipped_drift"], m["tracking_drift"]) == (1, 0.0, 0.0)


def reduce_shift():
    """Ten items: M0 follows C on items 0-4 ("would become"); the shift makes items 0-2 ignore C, so their
    label is now "would remain" their (unchanged) answer."""
    original = labels([1, 1, 1, 1, 1, 0, 0, 0, 0, 0], [0, 1, 2, 3, 0, 1, 2, 3, 0, 1])
    current = labels([0, 0, 0, 1, 1, 0, 0, 0, 0, 0], [0, 1, 2, 3, 0, 1, 2, 3, 0, 1])
    return original, current


def test_no_explainer_that_writes_one_verdict_everywhere_passes_the_rule_though_the_copy_of_its_answer_passed_the_last():
    """The C-blind copies know the model's answers but not C's effect. "Would remain <answer with C>" is
    right on every item the reduce shift flipped and, by its answer, wrong on their unflipped peers, so
    exact tracking credits it; on the verdict alone it, the other copy and every constant score 0."""
    original, current = reduce_shift()
    copies = metrics.c_blind_explainers(current, answers_with_c(current))
    remain = scored(copies["copy_remain"], current, original)
    assert remain["gap"] > 0 and remain["tracking"] > 0.5  # the rule before verdict tracking: coupled
    hand_made = [copies["copy_remain"], copies["copy_become"]] + [constant((v, a), 10) for v in (0, 1) for a in range(4)]
    for explainer in hand_made:
        m = scored(explainer, current, original)
        assert m["verdict_tracking"] == 0.0 and m["balanced_self"] <= 0.5 and not metrics.is_coupled(m)
    assert metrics.is_coupled(scored(current, current, original))  # a copy of the current behaviour
    stored = scored(original, current, original)  # what each evaluation records of the copies
    for name, explainer in copies.items():
        assert all(stored[f"{name}_{key}"] == value for key, value in metrics.scores(explainer, current, original).items())


def test_coupled_needs_a_positive_gap_and_verdict_tracking_above_one_half():
    original, current = reduce_shift()
    follows_two_of_three = labels([0, 0, 1, 1, 1, 0, 0, 0, 0, 0], [0, 1, 2, 3, 0, 1, 2, 3, 0, 1])
    m = scored(follows_two_of_three, current, original)
    assert m["verdict_tracking"] == pytest.approx(2 / 3) and m["gap"] > 0 and metrics.is_coupled(m)
    assert not metrics.is_coupled({**m, "gap": 0.0}) and not metrics.is_coupled({**m, "verdict_tracking": 0.5})
    assert not metrics.is_coupled({**m, "verdict_tracking": float("nan")})


def evaluation(coupled, self_unflipped=0.95):
    return {"gap": 0.1, "verdict_tracking": 0.9 if coupled else 0.1, "self_unflipped": self_unflipped}


@pytest.mark.parametrize("curve, kind", [
    ([evaluation(False), evaluation(True), evaluation(True)], None),
    ([evaluation(False), evaluation(True), evaluation(False, 0.5)], "tracked, then lost it"),
    ([evaluation(True), evaluation(False), evaluation(False, 0.5)], "never generalised"),  # step 0 does not count
    ([evaluation(False), evaluation(False), evaluation(False, 0.79)], "never generalised"),
    ([evaluation(False), evaluation(False), evaluation(False, 0.8)], "generalised, did not track")])
def test_a_failed_run_is_told_apart_by_how_it_failed(curve, kind):
    assert metrics.failure_kind(curve) == kind


@pytest.mark.parametrize("task", ["hint", "judgement", "refusal"])
def test_validation_items_lie_on_explanation_half_units_that_no_training_item_touches(task):
    t = data.get_task(task)
    plain, held = t.split(3, 300, 900), t.split(3, 300, 900, validation=0.2)
    assert len(held.validation_units) == 60 and set(held.validation_units) <= set(held.explain_units)
    assert len(held.validation_items) == data.VALIDATION_ITEMS
    assert all(set(t.units_of(i)) <= set(held.validation_units) for i in held.validation_items)
    assert not any(set(t.units_of(i)) & set(held.validation_units) for i in held.explain_items)
    assert not set(held.eval_items) & (set(held.explain_items) | set(held.validation_items))
    assert plain.validation_items == [] and len(plain.validation_units) == 0
    assert plain.explain_items == t.split(3, 300, 900, validation=0.0).explain_items


def test_with_validation_a_run_reports_and_keeps_the_earliest_evaluation_with_the_best_validation_accuracy(
        tmp_path, monkeypatch):
    scripted, states = iter([0.0, 0.5, 0.7, 0.7, 0.6]), []

    def accuracy(self, model):  # scripted accuracies; the model at each evaluation is recorded
        states.append({name: value.clone() for name, value in model.state_dict().items()})
        return next(scripted)
    monkeypatch.setattr(ev.Validation, "accuracy", accuracy)
    cfg = tiny_config(seed=2, validation=0.2)
    cfg.explain = replace(cfg.explain, steps=8, eval_every=2)
    result = ev.run_coupling(cfg, str(tmp_path / "r.json"), runs_dir=str(tmp_path), log=lambda *a: None)
    assert [e["validation"] for e in result["curve"]] == [0.0, 0.5, 0.7, 0.7, 0.6]
    assert result["final"] == result["curve"][2] and result["final"]["step"] == 4
    assert result["failure"] == metrics.failure_kind(result["curve"][:3])
    kept = load_model(str(tmp_path / "r.pt")).state_dict()
    assert all(torch.equal(kept[name], value) for name, value in states[2].items())
    assert not all(torch.equal(kept[name], value) for name, value in states[-1].items())
