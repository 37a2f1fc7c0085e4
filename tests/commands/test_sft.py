"""`warprl sft` and `warprl sft eval` through the CLI: outputs, NLL by hand, one-line refusals (exit 2)."""

import json

import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel

from warprl import lora
from warprl.cli import main

TEXTS = ["the movie was good and the plot was fun", "awful film the acting was bad<br />the end",
         "I love this story the cast is great", "boring scene the end was terrible"] * 6


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WARPRL_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def texts_file(tmp_path):
    p = tmp_path / "texts.parquet"
    pd.DataFrame({"text": TEXTS, "label": [1, 0, 1, 0] * 6}).to_parquet(p)
    return p


def run(capsys, argv):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def train(capsys, tiny_policy_dir, texts_file, out, *extra):
    return run(capsys, ["sft", "--policy", str(tiny_policy_dir), "--data", str(texts_file), "--out", str(out),
                        "--max-length", "12", "--batch-size", "2", "--max-tokens", "60", "--lr", "1e-2",
                        "--eval-every", "2", "--val-limit", "2", "--device", "cpu", "--no-progress", "--json", *extra])


def test_lora_run_writes_a_plain_merged_model_and_the_adapter(capsys, tiny_policy_dir, texts_file, tmp_path):
    code, out, err = train(capsys, tiny_policy_dir, texts_file, tmp_path / "run")
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["tokens_seen"] >= 60 and summary["adapter"] and len(summary["val_curve"]) >= 2
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final")
    assert type(model).__name__ == "LlamaForCausalLM"
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").is_file()
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert {"losses/train_nll", "losses/val_nll", "charts/lr", "charts/tokens_per_s"} <= set(rows[-1])
    # the adapter folder is itself a policy spec: applied onto its base, it is the merged model
    base_nll = []
    for policy in (tmp_path / "run", tmp_path / "run" / "adapter", tiny_policy_dir):
        code, out, err = run(capsys, ["sft", "eval", "--policy", str(policy), "--data", str(texts_file), "--split",
                                      "all", "--no-bf16", "--device", "cpu", "--json"])
        assert code == 0, err
        base_nll.append(json.loads(out.strip().splitlines()[-1])["nll_per_token"])
    assert abs(base_nll[0] - base_nll[1]) < 1e-5 and base_nll[0] < base_nll[2]
    # a finished run is not silently replaced
    code, _, err = train(capsys, tiny_policy_dir, texts_file, tmp_path / "run")
    assert code == 2 and "finished" in err


def test_full_fine_tune_with_length_buckets(capsys, tiny_policy_dir, texts_file, tmp_path):
    code, out, err = train(capsys, tiny_policy_dir, texts_file, tmp_path / "full", "--no-lora", "--no-packing")
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["adapter"] is None and summary["trainable_params"] > 10_000
    assert not (tmp_path / "full" / "adapter").exists()


def test_sft_eval_equals_a_hand_computation(capsys, tiny_policy_dir, tmp_path):
    from warprl.models import load_policy

    p = tmp_path / "t.jsonl"
    pd.DataFrame({"text": ["the movie was good", "bad<br />film", "I love this story the end"]}).to_json(
        p, orient="records", lines=True)
    code, out, err = run(capsys, ["sft", "eval", "--policy", str(tiny_policy_dir), "--data", str(p), "--split", "all",
                                  "--limit", "0", "--no-bf16", "--max-length", "4", "--device", "cpu", "--json"])
    assert code == 0, err
    got = json.loads(out.strip().splitlines()[-1])
    model, tok = load_policy(str(tiny_policy_dir))
    total, n = 0.0, 0
    for text in ("the movie was good", "bad film", "I love this story the end"):  # <br /> cleaned
        ids = tok(text)["input_ids"][:4]
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].double(), -1)
        total -= sum(float(logp[t - 1, ids[t]]) for t in range(1, len(ids)))
        n += len(ids) - 1
    assert got["tokens"] == n == 3 + 1 + 3
    assert abs(got["nll_per_token"] - total / n) < 1e-5


def gpt2_adapter_for(tiny_policy_dir, folder):
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=40, n_embd=16, n_layer=1, n_head=2, n_positions=32))
    model = lora.apply_lora(gpt2, r=2, alpha=4, dropout=0.0)
    model.peft_config["default"].base_model_name_or_path = str(tiny_policy_dir)  # claims the Llama as its base
    lora.save_adapter(model, folder)
    return folder


@pytest.mark.parametrize("case", ["empty_text", "no_text_column", "lora_r_0", "foreign_adapter"])
def test_bad_inputs_exit_2_with_one_line(capsys, tiny_policy_dir, tmp_path, case):
    data = tmp_path / "d.parquet"
    pd.DataFrame({"text": ["good movie", "bad film"] * 4}).to_parquet(data)
    argv = ["sft", "--policy", str(tiny_policy_dir), "--data", str(data), "--out", str(tmp_path / "o"), "--no-progress"]
    if case == "empty_text":
        pd.DataFrame({"text": ["", "  ", "<br />"]}).to_parquet(data)
        want = "no non-empty texts"
    elif case == "no_text_column":
        pd.DataFrame({"review": ["good movie"]}).to_parquet(data)
        want = "missing column 'text'"
    elif case == "lora_r_0":
        argv += ["--lora-r", "0"]
        want = "--lora-r must be > 0"
    else:
        adapter = gpt2_adapter_for(tiny_policy_dir, tmp_path / "gpt2-adapter")
        argv = ["sft", "eval", "--policy", str(adapter), "--data", str(data), "--split", "all"]
        want = "another architecture"
    code, out, err = run(capsys, argv)
    assert code == 2
    last = err.strip().splitlines()[-1]  # (HF's "Loading weights" bar may precede it; `warprl` itself hides it)
    assert last.startswith("error: ") and want in last and "Traceback" not in err
    assert not (tmp_path / "o").exists()  # nothing was started
