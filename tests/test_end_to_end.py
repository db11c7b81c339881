"""The effect end to end at the default settings, the one test that trains M0 and stage B at full size
(about a minute and a half on two cores): `make quick`'s run with KL couples, its run without KL does not."""
import metrics
import experiments as ex
import train


def test_make_quicks_run_couples_with_kl_and_not_without(tmp_path, monkeypatch):
    monkeypatch.setattr(train, "RUNS_DIR", str(tmp_path / "runs"))
    with_kl, without_kl = ex.run_suites([("main", ex.main_configs(("hint",), ex.QUICK_SEEDS, "cpu"), False)],
                                        jobs=2)[0]
    assert with_kl["config"]["explain"]["kl_weight"] > 0 and without_kl["config"]["explain"]["kl_weight"] == 0
    assert metrics.is_coupled(with_kl["final"]), with_kl["final"]
    assert not metrics.is_coupled(without_kl["final"]), without_kl["final"]
