import pytest

import stress


def run(accuracy=0.95, gap=0.1, self_flipped=0.8, schedule="sharp"):
    final = {"step": 300, "task_accuracy": accuracy, "gap": gap, "self_flipped": self_flipped}
    return {"config": {"seed": 0, "schedule": schedule, "back_at": 150}, "final": final,
            "curve": [dict(final, step=150, gap=-0.5), final]}


@pytest.mark.parametrize("runs, expected", [
    ([run(), run(gap=0.05, self_flipped=0.6)], "coupled"),
    ([run(gap=-0.1)], "fails"),
    ([run(self_flipped=0.4)], "fails"),
    ([run(self_flipped=None)], "fails"),  # nothing flipped: coupling is not shown
    ([run(accuracy=0.7)], "collapsed"),
    ([run(accuracy=0.7, gap=0.2)], "collapsed"),
    ([run(schedule="oscillating")], "fails"),  # judged at step 150, where its gap was -0.5
])
def test_cell_verdicts_follow_the_fixed_rules(runs, expected):
    assert stress.verdict(runs) == expected


def test_the_stress_grid_has_every_cell_once():
    headline, grid = stress.stress_configs()
    keys = [(c.task, c.seed, c.shift_size, c.schedule, c.label_noise) for c in headline + grid]
    assert len(keys) == len(set(keys))
    for task in stress.GRID_TASKS:
        for seed in stress.GRID_SEEDS:
            for size in stress.SIZES:
                for schedule in stress.SCHEDULES:
                    assert (task, seed, size, schedule, 0.0) in keys
                for noise in stress.NOISES:
                    assert (task, seed, size, "sharp", noise) in keys
    for task in stress.HEADLINE_TASKS:
        assert {seed for t, seed, *_ in keys if t == task} >= set(stress.HEADLINE_SEEDS)


def test_the_probe_table_reads_results_saved_before_a_probe_existed():
    def probed(**rows):
        leading = {"n": 9, "accuracy": 0.0, "malformed": 1.0, "follows_suggestion": 0.0}
        return {"probes": {"training query": {"n": 9, "accuracy": 0.5, "malformed": 0.0},
                           "leading: wrong explanation suggested": leading, **rows}}
    new = {"n": 4, "accuracy": 0.75, "malformed": 0.0}
    table = stress.probe_table({"hint": [probed(), probed(**{"verdict flipped: verdict forced": new})],
                                "judgement": [probed()]})
    row = next(line for line in table.splitlines() if line.startswith("| verdict flipped: verdict forced |"))
    assert row == "| verdict flipped: verdict forced | 0.75 (4) | 0.00 | n/a (n/a) | n/a |"
