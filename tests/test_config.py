"""Configs as flags, a run's identity (its science settings), where M0 is saved, and atomic files, on a full
disk too."""
import argparse
import errno
import io
import os
from dataclasses import dataclass, field, fields

import pytest

import config
import eval as ev
import figures
import report
import train
from config import UserError
from model import GPT, GPTConfig
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


def test_a_config_keeps_its_range_beside_the_help():
    decay = {f.name: f for f in fields(ExplainConfig)}["weight_decay"]
    assert decay.metadata["range"] == (0.0, 10.0) and decay.metadata["help"]


def test_science_settings_leave_out_the_runtime_ones_even_nested():
    runtime = {"device", "threads", "checkpoint_every"}
    assert set(config.science(PretrainConfig())) == {f.name for f in fields(PretrainConfig)} - runtime
    nested = config.science(Outer(pretrain=PretrainConfig(steps=300, threads=4)))
    assert nested["name"] == "x" and nested["pretrain"]["steps"] == 300 and not runtime & set(nested["pretrain"])
    assert config.science(PretrainConfig(threads=4, device="cpu")) == config.science(PretrainConfig())


def test_each_variant_of_m0_and_each_draw_has_its_own_checkpoint_and_other_runtime_settings_share_one(
        tmp_path, monkeypatch):
    assert train.RUNS_DIR == os.path.join(os.path.dirname(os.path.abspath(train.__file__)), "runs")
    monkeypatch.setattr(train, "RUNS_DIR", str(tmp_path))
    default = train.m0_path(PretrainConfig())
    assert os.path.dirname(default) == str(tmp_path / "checkpoints" / "hint" / "seed0")
    assert os.path.basename(default).startswith("m0_") and len(os.path.basename(default)) == len("m0_12345678.pt")
    variants = [PretrainConfig(steps=300), PretrainConfig(n_layer=3), PretrainConfig(world_variation=0.2),
                PretrainConfig(feature_words=3)]
    assert len({default, *(train.m0_path(v) for v in variants)}) == 5
    assert train.m0_path(PretrainConfig(device="cpu", checkpoint_every=50)) == default
    assert train.m0_path(PretrainConfig(threads=2)) == default.replace(".pt", "_threads2.pt")  # another draw
    assert train.m0_path(PretrainConfig(), runs_dir="elsewhere").startswith(os.path.join("elsewhere", "checkpoints"))


def test_the_command_line_saves_m0_at_its_variants_path(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train, "RUNS_DIR", str(tmp_path))
    flags = {"task": "refusal", "steps": 3, "warmup": 1, "batch_size": 8, "n_embd": 16, "n_head": 2}
    train.main([arg for name, value in flags.items() for arg in (f"--{name.replace('_', '-')}", str(value))])
    path = train.m0_path(PretrainConfig(**flags))
    assert os.path.exists(path) and capsys.readouterr().out.strip().endswith(path)


def disk_filling_up(folder, room=64, code=errno.ENOSPC):
    """An open() for train.py as if the disk holding `folder` had `room` bytes free: a file written under
    it stores its first `room` bytes, then the write fails as the operating system's does (errno `code`);
    files elsewhere are written as usual."""
    class FillingFile(io.FileIO):
        def write(self, data):
            super().write(bytes(data)[:room])
            raise OSError(code, os.strerror(code))

    def filling_open(path, mode="r", *args, **kw):
        if "w" in mode and os.path.abspath(path).startswith(str(folder) + os.sep):
            return FillingFile(path, "w")
        return open(path, mode, *args, **kw)
    return filling_open


WRITERS = {  # every kind of file a command writes, each through its own writer
    "result.json": lambda path: train.write_json({"self": 0.5, "self_flipped": float("nan")}, path),
    "m0.pt": lambda path: train.save_checkpoint(path, GPT(GPTConfig(vocab_size=40, n_layer=1, n_head=2, n_embd=16)),
                                                None, {}, 0),
    "REPORT.md": lambda path: report.write_text("# Your runs: KL(current ‖ M0)\n", path),
    "figure.png": lambda path: figures.save_figure(figures.pyplot().figure(figsize=(2, 2)), path),
}


@pytest.mark.parametrize("name", WRITERS)
def test_a_full_disk_is_one_line_naming_the_file_its_folder_and_size_and_leaves_the_earlier_file_whole(name, tmp_path,
                                                                                                     monkeypatch):
    """A file is written whole or not at all: on a full disk the half-written temporary file is removed
    and the earlier version stays, so the same command resumes once there is room."""
    write = WRITERS[name]
    write(str(tmp_path / "roomy" / name))  # the folder is made
    size = os.path.getsize(tmp_path / "roomy" / name)
    target = tmp_path / "full" / name
    target.parent.mkdir()
    target.write_bytes(b"the earlier version")
    monkeypatch.setattr(train, "open", disk_filling_up(target.parent), raising=False)
    with pytest.raises(UserError) as err:
        write(str(target))
    message = str(err.value)
    assert "\n" not in message and f"could not write {name} ({size:,} bytes) in {target.parent}: " in message
    assert "No space left on device; free some space there" in message
    assert os.listdir(target.parent) == [name] and target.read_bytes() == b"the earlier version"


@pytest.mark.parametrize("code, said", [(errno.EDQUOT, "free some of your quota there"),
                                        (errno.EROFS, "make it writable"), (errno.EIO, None)])
def test_a_full_quota_or_a_read_only_disk_is_one_line_too_but_a_disk_error_keeps_its_traceback(code, said, tmp_path,
                                                                                              monkeypatch):
    """Room and permissions are the user's to fix; an input/output error is not, and is not disguised.
    Either way no temporary file is left."""
    monkeypatch.setattr(train, "open", disk_filling_up(tmp_path, code=code), raising=False)
    with pytest.raises((UserError, OSError)) as err:
        train.write_json({"self": 0.5}, str(tmp_path / "result.json"))
    assert (said in str(err.value)) if said else (type(err.value) is OSError and err.value.errno == code)
    assert os.listdir(tmp_path) == []


def test_a_run_that_fills_the_disk_ends_in_one_line_and_the_same_command_then_resumes(tmp_path, monkeypatch, capsys):
    """The disk of --out fills up after M0 is saved elsewhere: one line and exit status 2, nothing
    half-written; run again with room, M0 is loaded, not trained again, and the result is written."""
    monkeypatch.setattr(train, "RUNS_DIR", str(tmp_path / "runs"))
    out = tmp_path / "out" / "result.json"
    flags = {"task": "refusal", "seed": 1, "n_explain": 10, "n_eval": 10, "n_kl_prompts": 16, "steps": 2,
             "explain_batch": 4, "shift_batch": 4, "kl_batch": 4, "pretrain_steps": 20, "pretrain_batch_size": 16,
             "pretrain_n_embd": 16, "pretrain_n_head": 2, "pretrain_warmup": 2, "out": out}
    argv = ["run"] + [arg for name, value in flags.items() for arg in (f"--{name.replace('_', '-')}", str(value))]
    with monkeypatch.context() as full:
        full.setattr(train, "open", disk_filling_up(out.parent), raising=False)
        with pytest.raises(SystemExit) as stop:
            ev.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1 and err[0].startswith("error: could not write result.pt (")
    assert os.listdir(out.parent) == [] and len(list((tmp_path / "runs" / "checkpoints").rglob("m0_*.pt"))) == 1
    ev.main(argv)
    assert "pretraining step" not in capsys.readouterr().out and ev.read_result(str(out))["config"]["seed"] == 1
