"""Config dataclasses: defaults < YAML < flags, unknown keys and bad values refused in one line."""

import argparse
import dataclasses
from pathlib import Path

import pytest

from warprl import config as C
from warprl.commands import flags as F
from warprl.errors import UserError


def parse(cls, argv):
    p = argparse.ArgumentParser()
    F.add_arguments(p, cls)
    return F.config_from_args(cls, p.parse_args(argv))


def test_every_field_has_a_doc():
    for cls in (C.GenerateConfig, C.RewardTrainConfig, C.AlignConfig, C.EvalConfig):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("doc"), f"{cls.__name__}.{f.name} has no doc"


def test_flags_override_yaml_which_overrides_defaults(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("method: warp\nsteps: 7\nbeta: 0.1\nlr: 1e-4\nprompt-tokens: 5-15\n")
    cfg = parse(C.AlignConfig, ["--config", str(y), "--steps", "9"])
    assert (cfg.method, cfg.steps, cfg.beta, cfg.lr, cfg.prompt_tokens) == ("warp", 9, 0.1, 1e-4, "5-15")
    assert cfg.k == C.AlignConfig().k  # untouched default


@pytest.mark.parametrize("text,match", [
    ("bogus: 1\n", "unknown setting 'bogus'"),
    ("- a\n- b\n", "must be a mapping"),
    ("steps: many\n", "'steps' must be int"),
    ("method: ppo\n", "'method' must be one of"),
    ("steps: [\n", "not valid YAML"),
    ("bf16: 3\n", "'bf16' must be bool"),
])
def test_bad_yaml_is_a_one_line_user_error(tmp_path, text, match):
    y = tmp_path / "c.yaml"
    y.write_text(text)
    with pytest.raises(UserError, match=match) as e:
        parse(C.AlignConfig, ["--config", str(y)])
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("argv,match", [
    (["--iterations", "0"], "--iterations must be > 0"),
    (["--eta", "1.5"], r"--eta must be in \[0, 1\]"),
    (["--beta", "-1"], "--beta must be >= 0"),
    (["--method", "rloo", "--k", "1"], "RLOO needs --k >= 2"),
    (["--mu", "2"], r"--mu must be in \(0, 1\]"),
    (["--temperature", "0"], "--temperature must be > 0"),
    (["--prompt-tokens", "9-3"], "--prompt-tokens"),
    (["--batch-size", "6", "--grad-accum", "4"], "not divisible"),
])
def test_invalid_values_are_refused(argv, match):
    with pytest.raises(UserError, match=match):
        parse(C.AlignConfig, argv)


def test_missing_config_file():
    with pytest.raises(UserError, match="config file not found"):
        parse(C.AlignConfig, ["--config", "/nonexistent.yaml"])


def test_reinforce_accepts_k_1_and_yaml_round_trip(tmp_path):
    cfg = parse(C.AlignConfig, ["--method", "reinforce", "--k", "1"])
    y = tmp_path / "back.yaml"
    y.write_text(C.to_yaml(cfg))
    assert parse(C.AlignConfig, ["--config", str(y)]) == cfg


def test_parse_prompt_tokens():
    assert C.parse_prompt_tokens("8") == (8, 8)
    assert C.parse_prompt_tokens(8) == (8, 8)
    assert C.parse_prompt_tokens("5-15") == (5, 15)
    with pytest.raises(UserError):
        C.parse_prompt_tokens("x")


# --------------------------------------------------------------------------------------- config files

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_config_file_loads_through_its_command(path):
    """Each file names its command on line 1 and loads through that command's real parser."""
    from warprl.cli import build_parser

    first = path.read_text().splitlines()[0]
    assert first.startswith("# command: warprl "), f"{path.name}: first line must be '# command: warprl …'"
    command = first.removeprefix("# command: warprl ").split(" --")[0].split()
    assert f"--config configs/{path.name}" in first
    args = build_parser().parse_args([*command, "--config", str(path)])
    cfg = F.config_from_args(args.config_class, args)
    assert type(cfg) is args.config_class and cfg == F.config_from_args(args.config_class, args)


def test_configs_named_in_the_readme_exist():
    import re

    named = set(re.findall(r"configs/([\w.-]+\.yaml)", README.read_text()))
    assert named, "the README names no config file"
    assert not sorted(n for n in named if not (CONFIG_DIR / n).is_file())
