"""CLI basics: help, models, generate, data inspect; bad input → exit 2 with one line, no traceback."""

import json

import pandas as pd
import pytest

from warprl.cli import main


def run(capsys, argv):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("models", "generate", "data", "align"):
        assert cmd in out


def test_models_json(capsys):
    code, out, _ = run(capsys, ["models", "--json"])
    assert code == 0 and "aliases" in json.loads(out.strip().splitlines()[-1])


def test_generate_on_a_local_folder(capsys, tiny_policy_dir):
    code, out, _ = run(capsys, ["generate", "--policy", str(tiny_policy_dir), "--prompt", "the movie",
                                "--prompt", "I love", "--num-samples", "2", "--max-new-tokens", "5", "--json"])
    assert code == 0
    result = json.loads(out.strip().splitlines()[-1])
    assert len(result["samples"]) == 4 and result["samples"][0]["prompt"] == "the movie"


def test_generate_reads_yaml_config(capsys, tiny_policy_dir, tmp_path):
    y = tmp_path / "g.yaml"
    y.write_text(f"policy: {tiny_policy_dir}\nprompt: [the plot]\nmax_new_tokens: 3\n")
    code, out, _ = run(capsys, ["generate", "--config", str(y), "--json"])
    assert code == 0 and json.loads(out.splitlines()[-1])["samples"][0]["prompt"] == "the plot"


def test_data_inspect(capsys, tmp_path, tiny_policy_dir):
    p = tmp_path / "r.parquet"
    pd.DataFrame({"text": ["good movie the plot was fun", "awful film the plot was bad"] * 3,
                  "label": [1, 0] * 3}).to_parquet(p)
    code, out, _ = run(capsys, ["data", "inspect", str(p), "--policy", str(tiny_policy_dir), "--prompt-tokens", "3", "--json"])
    info = json.loads(out.strip().splitlines()[-1])
    assert code == 0 and info["rows"] == 6 and info["labels"] == {"0": 3, "1": 3} and info["pairs_per_epoch"] == 3
    assert info["example_prompts"]


@pytest.mark.parametrize("argv,match", [
    (["generate"], "needs at least one --prompt"),
    (["generate", "--prompt", "x", "--top-p", "0"], "--top-p"),
    (["generate", "--prompt", "x", "--policy", "./missing-folder"], "model path not found"),
    (["generate", "--prompt", "x", "--num-samples", "abc"], "invalid int value"),
    (["generate", "--unknown-flag"], "unrecognized arguments"),
    (["nosuchcommand"], "invalid choice"),
    (["data", "inspect", "/no/such/file.parquet"], "data file not found"),
])
def test_bad_input_exits_2_with_one_line(capsys, argv, match):
    code, out, err = run(capsys, argv)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and match in err and "Traceback" not in err
