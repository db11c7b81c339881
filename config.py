"""Settings as dataclasses whose fields are also the command line's flags, each with a range.

Each field is declared with option(default, help, low, high, ...): its help text is the flag's, [low, high]
is the range every value is checked against before anything runs (nan and inf never pass; upper bounds keep
memory and time sane), and its metadata says whether it is a runtime setting (how a run executes: device,
threads, checkpoint interval; never part of a run's identity). science() is what a run's numbers are made
of. A user error is a UserError (a ValueError) whose message names the value and what is allowed;
the command lines print it as one line and exit with status 2.
"""
import argparse
import math
import os
import tempfile
from dataclasses import MISSING, field, fields, is_dataclass


class UserError(ValueError):
    """A bad setting, file or training run, said in one line that names the value and what is allowed:
    the command lines print it without a traceback (any other exception is a bug and shows one)."""


SEED_MAX = 2 ** 31 - 1  # seeds go to numpy's and torch's generators; a bound every platform accepts


def check_range(name, value, low, high, integer=False):
    """value if it is a finite number in [low, high] (an integer if asked), else a one-line UserError."""
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high or (integer and value != int(value)):
        raise UserError(f"{name}={value!r} must be {kind} in [{bound_text(low)}, {bound_text(high)}]")
    return int(value) if integer else value


def bound_text(x):
    return f"{x:g}" if isinstance(x, float) else str(x)


def check_fraction(name, value):
    return check_range(name, value, 0.0, 1.0)


def check_positive(name, value, high=10 ** 6):
    return check_range(name, value, 1, high, integer=True)


def check_choice(name, value, allowed):
    if value not in allowed:
        raise UserError(f"{name}={value!r} is unknown; allowed: {', '.join(map(str, allowed))}")
    return value


def check_ranges(config):
    """Check every field of a config declared with a range or choices (see option)."""
    for f in fields(config):
        value = getattr(config, f.name)
        if "range" in f.metadata:
            setattr(config, f.name, check_range(f.name, value, *f.metadata["range"],
                                                integer=isinstance(_default(f), int)))
        if "choices" in f.metadata:
            check_choice(f.name, value, f.metadata["choices"])


def check_writable(folder, what):
    """Refuse a folder that cannot be written (or created) before any work is done, creating nothing."""
    existing = folder
    while not os.path.isdir(existing):
        if os.path.exists(existing):
            raise UserError(f"{what}: {existing} is a file, not a folder; choose another path")
        existing = os.path.dirname(existing)
    try:  # a file made and removed at once: os.access says yes to root even where writing fails
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        raise UserError(f"{what}: folder {existing} is not writable ({err.strerror}); choose another path or fix "
                        f"its permissions") from None


class Parser(argparse.ArgumentParser):
    """argparse with its errors on one line ("error: ..."), exit status 2, and no usage block."""

    def error(self, message):
        self.exit(2, f"error: {message} (see --help)\n")


def run_command(parser, work):
    """Run work() and turn a UserError (a bad value, a missing or foreign file, a loss that became nan)
    into one line and exit status 2; anything else is a bug and shows its traceback."""
    try:
        return work()
    except UserError as err:
        parser.exit(2, f"error: {err}\n")


def option(default, help, low=None, high=None, choices=None, **metadata):
    """A config field with the help text of its flag; [low, high] or choices: what values are allowed
    (check_ranges); metadata: runtime=True for a setting of how a run executes, not what it computes (at
    most the rounding changes; not part of a run's identity)."""
    allowed = {"range": (low, high)} if low is not None else {"choices": tuple(choices)} if choices else {}
    return field(default=default, metadata={"help": help, **allowed, **metadata})


def allowed_text(f):
    """The allowed values of a field, in words, for its flag's help."""
    if "range" in f.metadata:
        low, high = f.metadata["range"]
        return f"{bound_text(low)} to {bound_text(high)}"
    return ", ".join(map(str, f.metadata.get("choices", ())))


def _default(f):
    return f.default_factory() if f.default_factory is not MISSING else f.default


def add_config_flags(parser, cls, prefix="", skip=(), defaults=None):
    """A --flag for each field of the dataclass cls (nested configs and `skip` excepted), typed and
    defaulted like the field (or as `defaults` says), with its help; prefix (e.g. "pretrain-") keeps two
    configs' flags apart."""
    for f in fields(cls):
        default = (defaults or {}).get(f.name, _default(f))
        if is_dataclass(default) or f.name in skip:
            continue
        parser.add_argument(f"--{prefix}{f.name.replace('_', '-')}", dest=prefix.replace("-", "_") + f.name,
                            type=type(default), default=default, metavar=type(default).__name__.upper(),
                            help=f"{f.metadata['help']} (default: {default}; allowed: {allowed_text(f)})")


def config_from_flags(values: dict, cls, prefix=""):
    """cls built from parsed flags (vars(args)) for the fields that have one; the others keep their
    defaults."""
    dest = prefix.replace("-", "_")
    return cls(**{f.name: values[dest + f.name] for f in fields(cls) if dest + f.name in values})


def science(config) -> dict:
    """A config as a dict (nested configs too) without its runtime settings: what a run's numbers are
    made of, and so what names a run and decides whether a saved one can be reused."""
    return {f.name: science(getattr(config, f.name)) if is_dataclass(getattr(config, f.name))
            else getattr(config, f.name) for f in fields(config) if not f.metadata.get("runtime")}


def from_dict(cls, saved):
    """cls (nested configs too) from a saved config dict, which must have exactly cls's fields: a file
    made by other code is refused (KeyError naming the fields), never read with guessed settings."""
    names = {f.name for f in fields(cls)}
    if set(saved) != names:
        odd = sorted(names - set(saved)) + sorted(set(saved) - names)
        raise KeyError(f"the {cls.__name__} fields {', '.join(odd)} differ from this code's")
    return cls(**{f.name: from_dict(type(_default(f)), saved[f.name]) if is_dataclass(_default(f)) else saved[f.name]
                  for f in fields(cls)})


def differences(values, defaults):
    """The entries of a (nested) dict that differ from defaults: what names a variant."""
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            if nested := differences(value, defaults.get(key, {})):
                out[key] = nested
        elif value != defaults.get(key):
            out[key] = value
    return out
