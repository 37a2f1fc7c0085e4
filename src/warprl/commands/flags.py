"""Command-line flags and YAML files for every command, generated from its settings dataclass.

One ``--flag`` per field (``--no-flag`` for booleans, repeatable for lists, positional where the field says
so), a ``--config FILE.yaml`` whose keys are the same names, and the precedence defaults < YAML < flags.

Why not transformers' ``HfArgumentParser`` (TRL's ``TrlParser``) or ``tyro``: both build flags from
dataclasses too, but HfArgumentParser spells booleans ``--no_x``, turns bad YAML into ValueErrors with
tracebacks and merges YAML with flags only through TrlParser's defaults trick; tyro is one more dependency
with its own error format. Ours is ~100 lines, keeps the flag spellings users already have, and every
mistake is a one-line :class:`~warprl.errors.UserError` (exit code 2).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml

from warprl.config import field_types
from warprl.errors import UserError, first_line


def _flag(name: str) -> str:
    return name.replace("_", "-")


def _coerce(name: str, tp: Any, value: Any, source: str) -> Any:
    """Check a YAML value against the field type, allowing the lossless conversions YAML users expect."""
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads "1e-5" as a string
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
    elif get_origin(tp) is list:
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
    expected = getattr(tp, "__name__", str(tp))
    raise UserError(f"{source}: '{name}' must be {expected}, got {value!r}")


def build_config(cls: type, yaml_values: dict[str, Any] | None = None, flags: dict[str, Any] | None = None,
                 source: str = "config"):
    """Defaults < YAML values < flags; unknown keys and bad types are a UserError; then ``validate()``."""
    types = field_types(cls)
    values: dict[str, Any] = {}
    for key, value in (yaml_values or {}).items():
        name = str(key).replace("-", "_")
        if name not in types:
            known = ", ".join(sorted(types))
            raise UserError(f"{source}: unknown setting '{key}' (known: {known})")
        values[name] = _coerce(name, types[name], value, source)
    for name, value in (flags or {}).items():
        if name not in types:
            raise UserError(f"unknown setting '{name}'")
        values[name] = value
    for f in dataclasses.fields(cls):
        choices = f.metadata.get("choices")
        if choices and f.name in values and values[f.name] not in choices:
            raise UserError(f"{source}: '{f.name}' must be one of {', '.join(choices)}, got {values[f.name]!r}")
    cfg = cls(**values)
    if getattr(cfg, "bf16", False) and "bf16" not in values:
        cfg.bf16 = default_bf16(getattr(cfg, "device", "auto"))
    cfg.validate()
    return cfg


BF16_DEFAULT = "on where the device computes bf16 natively (CUDA, a CPU with AVX512-BF16 or AMX), else off"


def default_bf16(device: str) -> bool:
    """The ``bf16`` a command uses when neither a flag nor the YAML sets it: on only where bf16 matmuls are native.
    On an AVX2-only CPU they are ~100× slower than fp32 (an RL step of SmolLM2-135M: 143 s instead of 15 s)."""
    # torch comes with these: imported only when a command runs (cli.py keeps --help fast)
    from warprl.models import pick_device
    from warprl.precision import bf16_is_native, bf16_speedup

    try:
        dev = pick_device(device)
    except UserError:
        return True  # validate() names the bad device
    if bf16_is_native(dev):
        return True
    note = (f"note: bf16 matmuls run {1 / max(bf16_speedup(dev.type), 1e-3):.0f}× slower than fp32 on this "
            f"{dev.type} (no native bf16), so this command computed in fp32; --bf16 forces bf16, --no-bf16 silences this")
    if note not in NOTES:
        NOTES.append(note)
    return False


# Notes for the user that cli.py prints once the command has run (a bad input stays a one-line error).
NOTES: list[str] = []


def add_arguments(parser: argparse.ArgumentParser, cls: type, exclude: tuple[str, ...] = ()) -> None:
    """One ``--flag`` per field; defaults are suppressed so that only given flags override the YAML."""
    types = field_types(cls)
    for f in dataclasses.fields(cls):
        if f.name in exclude:
            continue
        tp = types[f.name]
        doc = f.metadata.get("doc", "")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        shown = BF16_DEFAULT if f.name == "bf16" and default is True else repr(default)
        kw: dict[str, Any] = {"default": argparse.SUPPRESS, "help": f"{doc} (default: {shown})"}
        if f.metadata.get("positional"):
            nargs = "*" if get_origin(tp) is list else "?"
            parser.add_argument(f.name, nargs=nargs, metavar=f.name.upper(), **kw)
            continue
        kw["dest"] = f.name
        if tp is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif get_origin(tp) is list:
            kw.update(action="append", type=get_args(tp)[0], metavar=f.name.upper())
        else:
            kw.update(type=tp, metavar=f.name.upper())
            if f.metadata.get("choices"):
                kw["choices"] = f.metadata["choices"]
                kw.pop("metavar")
        parser.add_argument(f"--{_flag(f.name)}", **kw)
    parser.add_argument("--config", dest="config_file", default=None, metavar="YAML",
                        help="YAML file of settings; flags given on the command line override it")


def read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        first = first_line(e)
        raise UserError(f"config file {p} is not valid YAML: {first}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"config file {p} must be a mapping of setting: value, got {type(data).__name__}")
    return data


def config_from_args(cls: type, args: argparse.Namespace):
    """Build ``cls`` from parsed CLI args produced by :func:`add_arguments`."""
    names = {f.name for f in dataclasses.fields(cls)}
    flags = {k: v for k, v in vars(args).items() if k in names}
    path = getattr(args, "config_file", None)
    yaml_values = read_yaml(path) if path else {}
    return build_config(cls, yaml_values, flags, source=str(path) if path else "config")
