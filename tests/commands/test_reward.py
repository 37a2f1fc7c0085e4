"""`warprl reward train|eval|score` through cli.main on a tiny random BERT and a toy review file."""

import json

import pandas as pd
import pytest

from tests.reward._toy import make_tiny_bert, toy_reviews
from warprl import cli
from warprl.commands import reward as reward_cmd
from warprl.config import RewardEvalConfig, RewardTrainConfig
from warprl.data import preference_pairs, read_labelled, split_labelled
from warprl.errors import UserError


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


def _last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_full_fine_tuning_learns_and_eval_agrees_with_score(tiny_bert, toy_data, tmp_path, capsys):
    code = cli.main(train_args(tiny_bert, toy_data, tmp_path / "rm", "--lr", "3e-3", "--epochs", "6", "--json"))
    assert code == 0
    metrics = _last_json(capsys)
    assert metrics["mode"] == "full" and metrics["pooling"] == "native" and metrics["steps"] == 36
    assert metrics["val"]["accuracy"] >= 0.9 and metrics["val"]["n_pairs"] == 15  # chance is 0.5
    # `reward eval` on the held-out pairs: the numbers training reported for its saved model.
    assert cli.main(["reward", "eval", "--model", str(tmp_path / "rm"), "--data", str(toy_data), "--split", "val",
                     "--val-fraction", "0.25", "--device", "cpu", "--json"]) == 0
    result = _last_json(capsys)
    assert result["accuracy"] == metrics["val"]["accuracy"] and result["n_pairs"] == 15
    assert result["margin_mean"] == pytest.approx(metrics["val"]["margin_mean"], abs=1e-5)
    # …and by hand from `reward score` on the same pairs (same texts, same order: the same batches).
    val = split_labelled(read_labelled(str(toy_data)), str(toy_data), 0.25, 0)[1]
    pairs = preference_pairs(val, seed=0, limit=1000)
    texts = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    assert cli.main(["reward", "score", "--model", str(tmp_path / "rm"), "--device", "cpu", "--json", *texts]) == 0
    scores = [row["reward"] for row in _last_json(capsys)["scores"]]
    n = len(pairs)
    wins = sum(c > r for c, r in zip(scores[:n], scores[n:], strict=True))
    assert result["accuracy"] == wins / n
    assert result["margin_mean"] == pytest.approx(sum(scores[:n]) / n - sum(scores[n:]) / n, abs=1e-6)


def test_eval_and_score_read_a_config_file(trained, toy_data, tmp_path, capsys):
    eval_yaml = tmp_path / "eval.yaml"
    eval_yaml.write_text(f"model: {trained}\ndata: {toy_data}\nsplit: val\nval_fraction: 0.25\nlimit: 10\n"
                         f"device: cpu\n")
    assert cli.main(["reward", "eval", "--config", str(eval_yaml), "--json"]) == 0
    result = _last_json(capsys)
    assert result["split"] == "val" and result["n_pairs"] == 10 and result["accuracy"] == 1.0
    assert cli.main(["reward", "eval", "--config", str(eval_yaml), "--limit", "4", "--json"]) == 0  # flags win
    assert _last_json(capsys)["n_pairs"] == 4
    score_yaml = tmp_path / "score.yaml"
    score_yaml.write_text(f"model: {trained}\ndevice: cpu\ntext: [good great fun, bad awful]\n")
    assert cli.main(["reward", "score", "--config", str(score_yaml), "--json"]) == 0
    from_yaml = _last_json(capsys)["scores"]
    assert [r["text"] for r in from_yaml] == ["good great fun", "bad awful"]
    assert from_yaml[0]["reward"] > from_yaml[1]["reward"]
    assert cli.main(["reward", "score", "--config", str(score_yaml), "--json", "fun"]) == 0  # positionals win
    assert [r["text"] for r in _last_json(capsys)["scores"]] == ["fun"]


@pytest.mark.parametrize("command", ["eval", "score"])
def test_an_unknown_config_key_exits_2_with_one_line(command, tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("model: vader\nlimitt: 3\n")
    texts = ["some text"] if command == "score" else []
    assert cli.main(["reward", command, "--config", str(path), *texts]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error:") and "unknown setting 'limitt'" in err, err


def test_the_command_layer_takes_configs(trained, toy_data):
    result = reward_cmd.evaluate(RewardEvalConfig(model=str(trained), data=str(toy_data), limit=5, device="cpu"))
    assert result["n_pairs"] == 5 and result["split"] == "all"
    with pytest.raises(UserError, match="--export-head needs --freeze-backbone"):
        reward_cmd.train(RewardTrainConfig(data=str(toy_data), out=str(trained.parent / "x"), export_head="h"))
    assert not (trained.parent / "x").exists()


def test_existing_out_is_refused_without_overwrite(trained, tiny_bert, toy_data, tmp_path, capsys):
    assert cli.main(train_args(tiny_bert, toy_data, trained, "--freeze-backbone")) == 2
    assert "holds a finished reward model; pass --overwrite" in capsys.readouterr().err
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    assert cli.main(train_args(tiny_bert, toy_data, other, "--freeze-backbone")) == 2
    assert "not empty and holds no warprl reward model" in capsys.readouterr().err
    assert (other / "notes.txt").read_text() == "keep"
    # --overwrite replaces it, but only once a model exists: a bad input leaves the folder alone.
    bad = tmp_path / "one_class.parquet"
    pd.DataFrame({"text": ["good film", "great film"], "label": [1, 1]}).to_parquet(bad)
    assert cli.main(train_args(tiny_bert, bad, other, "--freeze-backbone", "--overwrite")) == 2
    assert (other / "notes.txt").read_text() == "keep"
    capsys.readouterr()
    assert cli.main(train_args(tiny_bert, toy_data, other, "--freeze-backbone", "--epochs", "1", "--overwrite")) == 0
    assert not (other / "notes.txt").exists() and (other / "metrics.json").is_file()


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


def test_trained_folder_and_exported_head_score_as_during_training(tiny_bert, toy_data, tmp_path):
    cfg = RewardTrainConfig(data=str(toy_data), backbone=str(tiny_bert), out=str(tmp_path / "rm"), max_length=32,
                            batch_size=8, val_fraction=0.25, bf16=False, device="cpu", progress=False,
                            cache_embeddings=False, warmup_ratio=0.1, freeze_backbone=True, lr=5e-2, epochs=5,
                            export_head=str(tmp_path / "head"))
    metrics = reward_cmd.train(cfg)
    for spec in (tmp_path / "rm", tmp_path / "head"):
        again = reward_cmd.evaluate(RewardEvalConfig(model=str(spec), data=str(toy_data), split="val",
                                                     val_fraction=0.25, device="cpu"))
        assert again["accuracy"] == metrics["val"]["accuracy"]
        assert again["margin_mean"] == pytest.approx(metrics["val"]["margin_mean"], abs=1e-5)


def test_every_reward_setting_has_a_doc():
    import dataclasses

    from warprl.config import RewardScoreConfig

    for cls in (RewardTrainConfig, RewardEvalConfig, RewardScoreConfig):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("doc"), f"{cls.__name__}.{f.name} has no doc"
