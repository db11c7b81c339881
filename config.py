"""Settings as dataclasses whose fields are also the command line's flags.

Each field is declared with option(default, help, ...): its help text is the flag's, and its metadata says
whether it is a runtime setting (how a run executes: device, threads, checkpoint interval; never part of a
run's identity) and what an older saved config meant when it lacked the field. science() is what a run's
numbers are made of; with_defaults() reads configs saved by older versions.
"""
from dataclasses import MISSING, field, fields, is_dataclass


def check_fraction(name, value):
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name}={value} is a probability and must lie in [0, 1]")
    return value


def check_positive(name, value):
    if int(value) != value or value <= 0:
        raise ValueError(f"{name}={value} must be a positive integer")
    return int(value)



def option(default, help, **metadata):
    """A config field with the help text of its flag, and optional metadata: runtime=True for a setting
    of how a run executes, not what it computes (at most the rounding changes; not part of a run's
    identity); absent_means=value for what an older saved config meant when it lacked the field."""
    return field(default=default, metadata={"help": help, **metadata})


def _default(f):
    return f.default_factory() if f.default_factory is not MISSING else f.default


def add_config_flags(parser, cls, prefix="", skip=()):
    """A --flag for each field of the dataclass cls (nested configs and `skip` excepted), typed and
    defaulted like the field, with its help; prefix (e.g. "pretrain-") keeps two configs' flags apart."""
    for f in fields(cls):
        default = _default(f)
        if is_dataclass(default) or f.name in skip:
            continue
        parser.add_argument(f"--{prefix}{f.name.replace('_', '-')}", dest=prefix.replace("-", "_") + f.name,
                            type=type(default), default=default,
                            help=f"{f.metadata['help']} (default: {default})")


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


def with_defaults(saved, cls):
    """A config dict saved by an older version, completed for the fields added since: with the value the
    code had before the field existed (its metadata's "absent_means") or else its default, so that old
    checkpoints and results stay valid, and an old result never passes for a run of a changed default."""
    full = dict(saved)
    for f in fields(cls):
        default = _default(f)
        if is_dataclass(default):
            full[f.name] = with_defaults(saved.get(f.name, {}), type(default))
        elif f.name not in saved:
            full[f.name] = f.metadata.get("absent_means", default)
    return full
