"""Config dataclasses: defaults < YAML < flags, unknown keys and bad values refused in one line."""

import argparse
import dataclasses

import pytest

from warprl import config as C
from warprl.errors import UserError


def parse(cls, argv):
    p = argparse.ArgumentParser()
    C.add_arguments(p, cls)
    return C.config_from_args(cls, p.parse_args(argv))


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
