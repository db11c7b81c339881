"""Configs as flags, a run's identity (its science settings), where M0 is saved, and atomic files."""
import argparse
import os
from dataclasses import dataclass, field, fields

import pytest

import config
import train
from train import ExplainConfig, PretrainConfig


@dataclass
class Outer:  # a config with a nested one, as a run's config holds both stages'
    name: str = config.option("x", "a name")
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)


@pytest.mark.parametrize("cls", [PretrainConfig, ExplainConfig])
def test_every_field_has_help_and_every_flag_shows_its_default_and_range(cls):
    assert all(f.metadata.get("help") for f in fields(cls))
    assert all("range" in f.metadata or "choices" in f.metadata for f in fields(cls))
    parser = argparse.ArgumentParser()
    config.add_config_flags(parser, cls)
    flags = [a for a in parser._actions if a.dest != "help"]
    assert len(flags) == len(fields(cls))
    assert all(f"(default: {a.default}; allowed: " in a.help for a in flags)


def test_flags_parse_into_the_config_with_a_prefix_and_skipped_fields():
    parser = argparse.ArgumentParser()
    config.add_config_flags(parser, PretrainConfig, prefix="pretrain-", skip=("task",))
    values = vars(parser.parse_args(["--pretrain-steps", "300", "--pretrain-lr", "0.01", "--pretrain-n-layer", "3"]))
    assert values["pretrain_steps"] == 300 and isinstance(values["pretrain_lr"], float)
    cfg = config.config_from_flags(values, PretrainConfig, prefix="pretrain-")
    assert cfg == PretrainConfig(steps=300, lr=0.01, n_layer=3)
    with pytest.raises(SystemExit):
        parser.parse_args(["--pretrain-task", "judgement"])
    parser = argparse.ArgumentParser()
    config.add_config_flags(parser, Outer)  # nested configs get no flags of their own
    assert config.config_from_flags(vars(parser.parse_args(["--name", "y"])), Outer) == Outer(name="y")


def test_a_config_keeps_its_metadata_beside_the_help():
    decay = {f.name: f for f in fields(ExplainConfig)}["weight_decay"]
    assert decay.metadata["absent_means"] == 0.0 and decay.metadata["help"]


def test_science_settings_leave_out_the_runtime_ones_even_nested():
    runtime = {"device", "threads", "checkpoint_every"}
    assert set(config.science(PretrainConfig())) == {f.name for f in fields(PretrainConfig)} - runtime
    nested = config.science(Outer(pretrain=PretrainConfig(steps=300, threads=4)))
    assert nested["name"] == "x" and nested["pretrain"]["steps"] == 300 and not runtime & set(nested["pretrain"])
    assert config.science(PretrainConfig(threads=4, device="cpu")) == config.science(PretrainConfig())


def test_each_variant_of_m0_has_its_own_checkpoint_and_runtime_settings_share_one(tmp_path, monkeypatch):
    assert train.RUNS_DIR == os.path.join(os.path.dirname(os.path.abspath(train.__file__)), "runs")
    monkeypatch.setattr(train, "RUNS_DIR", str(tmp_path))
    default = train.m0_path(PretrainConfig())
    assert os.path.dirname(default) == str(tmp_path / "checkpoints" / "hint" / "seed0")
    assert os.path.basename(default).startswith("m0_") and len(os.path.basename(default)) == len("m0_12345678.pt")
    variants = [PretrainConfig(steps=300), PretrainConfig(n_layer=3), PretrainConfig(world_variation=0.2),
                PretrainConfig(feature_words=3)]
    assert len({default, *(train.m0_path(v) for v in variants)}) == 5
    assert train.m0_path(PretrainConfig(threads=2, device="cpu", checkpoint_every=50)) == default
    assert train.m0_path(PretrainConfig(), runs_dir="elsewhere").startswith(os.path.join("elsewhere", "checkpoints"))


def test_a_field_added_since_leaves_the_names_of_older_checkpoints_as_they_were():
    """feature_words came after M0s were saved; at the value the code had before it, it is not hashed."""
    published = os.path.join("r", "checkpoints", "hint", "seed0", "m0_53bb5408.pt")  # as the reference's runs named it
    assert train.m0_path(PretrainConfig(), runs_dir="r") == published
    assert "feature_words" in config.science(PretrainConfig())
    assert "feature_words" not in config.as_before(PretrainConfig())
    assert config.as_before(PretrainConfig(feature_words=2))["feature_words"] == 2


def test_the_command_line_saves_m0_at_its_variants_path(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train, "RUNS_DIR", str(tmp_path))
    flags = {"task": "refusal", "steps": 3, "warmup": 1, "batch_size": 8, "n_embd": 16, "n_head": 2}
    train.main([arg for name, value in flags.items() for arg in (f"--{name.replace('_', '-')}", str(value))])
    path = train.m0_path(PretrainConfig(**flags))
    assert os.path.exists(path) and capsys.readouterr().out.strip().endswith(path)


def test_an_atomic_write_leaves_the_old_file_when_writing_fails_and_keeps_the_extension_last(tmp_path):
    path = str(tmp_path / "new" / "figure.png")  # the folder is made
    seen = []

    def write(tmp):
        seen.append(tmp)
        with open(tmp, "w") as f:
            f.write("new")

    train.atomic_write(path, write)
    assert open(path).read() == "new" and seen[0].endswith(".png") and seen[0] != path

    def fail(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        train.atomic_write(path, fail)
    assert open(path).read() == "new" and os.listdir(tmp_path / "new") == ["figure.png"]
