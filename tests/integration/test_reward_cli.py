"""`warprl reward train|eval|score` through cli.main on a tiny random BERT and a toy review file."""

import json

import pandas as pd
import pytest

from tests.unit.test_reward import make_tiny_bert, toy_reviews
from warprl import cli


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_bert_cli"))


@pytest.fixture(scope="module")
def toy_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("toy_cli") / "reviews.jsonl"
    toy_reviews().to_json(path, orient="records", lines=True)
    return path


def train_args(tiny_bert, data, out, *extra):
    return ["reward", "train", "--data", str(data), "--backbone", str(tiny_bert), "--out", str(out),
            "--max-length", "32", "--batch-size", "8", "--val-fraction", "0.25", "--no-bf16", "--device", "cpu",
            "--no-progress", "--no-cache-embeddings", *extra]


@pytest.fixture(scope="module")
def trained(tiny_bert, toy_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("rm_cli") / "rm"
    code = cli.main(train_args(tiny_bert, toy_data, out, "--freeze-backbone", "--lr", "0.1", "--epochs", "60"))
    assert code == 0
    return out


def test_train_writes_an_hf_folder_and_metrics(trained):
    from transformers import AutoModelForSequenceClassification

    for name in ("config.json", "model.safetensors", "tokenizer.json", "warprl_reward.json", "metrics.json",
                 "train_config.yaml"):
        assert (trained / name).is_file(), name
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["val"]["accuracy"] == 1.0 and metrics["mode"] == "frozen" and metrics["pooling"] == "mean"
    assert AutoModelForSequenceClassification.from_pretrained(trained).config.num_labels == 1


def test_eval_json_reports_accuracy(trained, toy_data, capsys):
    code = cli.main(["reward", "eval", "--model", str(trained), "--data", str(toy_data), "--limit", "10",
                     "--split", "val", "--val-fraction", "0.25", "--device", "cpu", "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["accuracy"] == 1.0 and result["n_pairs"] == 10
    assert {"margin_mean", "chosen_mean", "chosen_std", "rejected_mean", "rejected_std"} <= set(result)


def test_score_orders_texts(trained, capsys):
    code = cli.main(["reward", "score", "--model", str(trained), "--device", "cpu", "good great fun", "bad awful"])
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and float(lines[0].split("\t")[0]) > float(lines[1].split("\t")[0])


def test_vader_through_the_cli(toy_data, capsys):
    assert cli.main(["reward", "eval", "--model", "vader", "--data", str(toy_data), "--json"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["accuracy"] > 0.5


def test_full_fine_tuning_through_the_cli(tiny_bert, toy_data, tmp_path, capsys):
    # Wiring only (the unit tests check that full fine-tuning learns): two steps, then a saved, loadable RM.
    code = cli.main(train_args(tiny_bert, toy_data, tmp_path / "rm", "--max-pairs", "16", "--json"))
    assert code == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["mode"] == "full" and metrics["pooling"] == "native" and metrics["steps"] == 2
    assert 0.0 <= metrics["val"]["accuracy"] <= 1.0 and (tmp_path / "rm" / "model.safetensors").is_file()


def test_existing_out_is_refused_without_overwrite(trained, tiny_bert, toy_data, capsys):
    assert cli.main(train_args(tiny_bert, toy_data, trained, "--freeze-backbone")) == 2
    assert "--overwrite" in capsys.readouterr().err


BAD = {
    "missing label column": (pd.DataFrame({"text": ["good film", "bad film"]}), "missing column 'label'"),
    "one class only": (pd.DataFrame({"text": ["good film", "great film"], "label": [1, 1]}), "only positive"),
    "empty texts": (pd.DataFrame({"text": ["", "  ", "<br />"], "label": [1, 0, 1]}), "no non-empty texts"),
    "bad labels": (pd.DataFrame({"text": ["good", "bad"], "label": [5, 0]}), "must hold 0"),
}


@pytest.mark.parametrize("case", [*BAD, "missing file", "encoder without head"])
def test_bad_input_is_one_line_and_exit_2(case, tiny_bert, tmp_path, capsys):
    if case == "missing file":
        args = train_args(tiny_bert, tmp_path / "nope.parquet", tmp_path / "rm")
        expected = "not found"
    elif case == "encoder without head":
        args = ["reward", "score", "--model", str(tiny_bert), "--device", "cpu", "some text"]
        expected = "not a reward model"
    else:
        frame, expected = BAD[case]
        path = tmp_path / "bad.parquet"
        frame.to_parquet(path)
        args = train_args(tiny_bert, path, tmp_path / "rm")
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:") and expected in err, err
    assert "Traceback" not in err
