import pytest

import stress


def run(changed_m0=0.4, changed=0.4, accuracy=0.95, gap=0.1, self_flipped=0.8, seed=0):
    return {"config": {"seed": seed}, "baseline": {"changed_fraction": changed_m0},
            "final": {"changed_fraction": changed, "task_accuracy": accuracy, "gap": gap,
                      "self_flipped": self_flipped}}


@pytest.mark.parametrize("runs, expected", [
    ([run(), run(gap=0.05, self_flipped=0.6)], "coupled"),
    ([run(gap=-0.1)], "fails"),
    ([run(self_flipped=0.4)], "fails"),
    ([run(self_flipped=None)], "fails"),  # nothing flipped: coupling is not shown
    ([run(changed=0.1)], "collapsed"),  # follows C on a quarter as many items as M0
    ([run(accuracy=0.7)], "collapsed"),
])
def test_cell_verdicts_follow_the_fixed_rules(runs, expected):
    assert stress.verdict(runs) == expected


def test_the_stress_grid_has_every_cell_once():
    configs = stress.stress_configs()
    keys = [(c.task, c.seed, c.shift_size, c.schedule, c.label_noise) for c in configs]
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
