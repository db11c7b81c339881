from dataclasses import asdict

import pytest

import probes
import stress


def run(accuracy=0.95, gap=0.1, tracking=0.8, schedule="sharp", seed=0):
    final = {"step": 300, "task_accuracy": accuracy, "gap": gap, "verdict_tracking": tracking, "self_flipped": 0.9}
    return {"config": {"seed": seed, "schedule": schedule, "back_at": 150}, "final": final,
            "curve": [dict(final, step=150, gap=-0.5), final]}


@pytest.mark.parametrize("runs, expected", [
    ([run(), run(gap=0.05, tracking=0.6)], "coupled"),
    ([run(), run(gap=-0.1)], "coupled"),  # half its runs couple
    ([run(gap=-0.1)], "fails"),
    ([run(tracking=0.4)], "fails"),  # Self@flipped 0.9 alone no longer passes
    ([run(tracking=None)], "fails"),  # nothing flipped: coupling is not shown
    ([run(accuracy=0.7)], "collapsed"),
    ([run(accuracy=0.7, gap=0.2)], "collapsed"),
    ([run(schedule="oscillating")], "fails"),  # judged at step 150, where its gap was -0.5
])
def test_point_verdicts_follow_the_fixed_rules(runs, expected):
    assert stress.verdict(runs) == expected


def test_a_known_step_gives_the_known_boundary():
    levels = [0.0, 0.125, 0.25, 0.375, 0.5]
    found = stress.boundary(levels, [[1], [1], [1, 1, 1], [0, 0, 0], [0]])
    assert found["bracket"] == (0.25, 0.375) and found["falls"]
    assert found["at"] == pytest.approx(0.3125)
    assert (found["low"], found["high"]) == (0.25, 0.375)  # seeds agree: the grid is the uncertainty


def test_the_boundary_is_interpolated_and_widened_where_seeds_disagree():
    levels = [0.0, 0.25, 0.5]
    found = stress.boundary(levels, [[1, 1, 1], [1, 1, 0], [0, 0, 0]])
    assert found["at"] == pytest.approx(0.25 + (2 / 3 - 0.5) / (2 / 3) * 0.25)
    assert found["low"] < 0.25  # a draw of the middle level below one half moves the crossing down
    rising = stress.boundary(levels, [[0], [1], [1]])
    assert not rising["falls"] and rising["at"] == pytest.approx(0.125)
    assert stress.boundary(levels, [[1], [1], [1]]) is None
    assert stress.boundary(levels, [[0, 0], [0], [0]]) is None


def fake_result(cfg, coupled):
    final = {"step": 300, "task_accuracy": 0.95, "gap": 0.1 if coupled else -0.01,
             "verdict_tracking": 0.8 if coupled else 0.1}
    return {"config": asdict(cfg), "final": final, "curve": [dict(final, step=150), final]}


def designed(truth, dense=False):
    """Every run the adaptive design asks for when `truth(config)` says which runs couple."""
    results, rounds = [], 0
    while configs := stress.next_round(stress.map_points(results), dense):
        rounds += 1
        results += [fake_result(cfg, truth(cfg)) for cfg in configs]
        assert rounds < 20
    return stress.map_points(results)


def test_the_design_spends_three_seeds_next_to_each_reported_boundary():
    table = designed(lambda cfg: cfg.label_noise < 0.3 and cfg.shift_size > 0.03)
    assert sum(map(len, table.values())) <= 90  # the budget of `make stress`, about 30 minutes on 2 cores
    for line in stress.map_lines(table):
        found = stress.boundary(*stress.line_outcomes(line, table))
        if line.knob == "label noise" and line.size > 0.03:
            assert found["bracket"] == (0.25, 0.375)  # bisected down to neighbours on the grid
        if line.reported and found:
            assert [len(table[line.point(level)]) for level in found["bracket"]] == [3, 3]
    hint_size = next(line for line in stress.map_lines(table) if line.task == "hint" and line.knob == "shift size"
                     and line.reported)
    assert stress.boundary(*stress.line_outcomes(hint_size, table))["bracket"] == (0.025, 0.05)
    assert ("hint", 0.1, "sharp", 0.375) not in table  # a clear row gets no runs


def test_the_dense_design_runs_every_point_three_times():
    table = designed(lambda cfg: True, dense=True)
    for task in stress.MAP_TASKS:
        for size in stress.SIZES[task]:
            for noise in stress.NOISES:
                assert len(table[(task, size, "sharp", noise)]) == 3
            for schedule in stress.SCHEDULES:
                assert len(table[(task, size, schedule, 0.0)]) == 3


def test_a_run_with_other_settings_never_joins_a_map():
    cfg = stress.point_config("hint", 0.2, 0.25, "sharp", seed=1)
    assert stress.point_of(asdict(cfg)) == ("hint", 0.2, "sharp", 0.25)
    other = asdict(cfg)
    other["n_explain"] = 200
    assert stress.point_of(other) is None


def test_the_probe_table_gives_each_probes_mean_per_task_and_the_leading_probes_followers():
    def probed(accuracy, follows):
        leading = {"n": 9, "accuracy": 0.0, "malformed": 1.0, "follows_suggestion": follows}
        return {"probes": {"training query": {"n": 9, "accuracy": accuracy, "malformed": 0.0},
                           "leading: wrong explanation suggested": leading}}
    table = probes.probe_table({"hint": [probed(0.5, 0.0), probed(0.7, 1.0)], "judgement": [probed(0.9, 0.0)],
                                "twohop": []})
    assert "| training query | 0.60 ± 1.27 (9) | 0.00 ± 0.00 | 0.90 (9) | 0.00 |" in table
    assert table.endswith("repeat the wrong suggestion: hint: 0.50 ± 6.35 | judgement: 0.00.")


def test_publishing_without_a_map_run_of_the_current_settings_leaves_the_reports_as_they_are(tmp_path, monkeypatch,
                                                                                             capsys):
    earlier = {"config": asdict(stress.point_config("hint", 0.2, 0.0, "sharp", 0)), "final": {}}
    earlier["config"]["n_explain"] = 300  # a map run of an earlier recipe
    monkeypatch.setattr(stress, "copy_to_reference", lambda experiment: None)
    monkeypatch.setattr(stress, "load_results", lambda folder: [earlier])
    monkeypatch.setattr(stress, "write_stress_report", lambda *a: pytest.fail("STRESS.md rewritten"))
    monkeypatch.setattr(stress, "fill_readme", lambda blocks: pytest.fail("README rewritten"))
    stress.publish()
    assert "left as they are" in capsys.readouterr().out
