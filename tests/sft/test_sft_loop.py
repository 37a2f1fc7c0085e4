"""The SFT loop: loss goes down, a stopped run resumes bit for bit, checkpoints hold only what trains."""

import json
import os
import signal

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from warprl.commands.flags import build_config
from warprl.commands.sft import run_sft
from warprl.config import SFTConfig
from warprl.rl.loop import RunInterrupted
from warprl.sft import loop

TEXTS = ["the movie was good and the plot was fun", "awful film the acting was bad", "I love this story the cast is great",
         "boring scene the end was terrible", "wonderful music and a good cast", "this movie is a fun story"] * 8


@pytest.fixture
def texts_file(tmp_path):
    p = tmp_path / "texts.jsonl"
    pd.DataFrame({"text": TEXTS}).to_json(p, orient="records", lines=True)
    return p


def make_cfg(tiny_policy_dir, texts_file, out, **kw):
    flags = dict(policy=str(tiny_policy_dir), data=str(texts_file), out=str(out), max_length=12, batch_size=2,
                 max_tokens=140, lr=1e-2, lora_r=4, lora_dropout=0.1, eval_every=2, checkpoint_every=2,
                 val_limit=4, progress=False, device="cpu")
    return build_config(SFTConfig, flags={**flags, **kw})


def strip_times(path):
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/") and k != "charts/tokens_per_s"} for r in rows]


def test_stopped_run_resumes_bit_identical(tiny_policy_dir, texts_file, tmp_path, monkeypatch):
    full = run_sft(make_cfg(tiny_policy_dir, texts_file, tmp_path / "a"))
    assert full["steps"] >= 5 and full["val_nll_end"] < full["val_nll_start"]

    real_sync, calls = loop.sync_trainable, []

    def sync_then_sigterm(mp):  # a real SIGTERM in the middle of step 3: the step finishes, checkpoints, stops
        real_sync(mp)
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(loop, "sync_trainable", sync_then_sigterm)
    with pytest.raises(RunInterrupted, match="after step 3"):
        run_sft(make_cfg(tiny_policy_dir, texts_file, tmp_path / "b"))
    assert json.loads((tmp_path / "b" / "checkpoints" / "latest.json").read_text())["step"] == 3
    monkeypatch.setattr(loop, "sync_trainable", real_sync)
    resumed = run_sft(make_cfg(tiny_policy_dir, texts_file, tmp_path / "b", resume=True))

    assert resumed["steps"] == full["steps"] and resumed["val_curve"] == full["val_curve"]
    for name in ("final/model.safetensors", "adapter/adapter_model.safetensors"):
        a, b = load_file(str(tmp_path / "a" / name)), load_file(str(tmp_path / "b" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert strip_times(tmp_path / "a" / "metrics.jsonl") == strip_times(tmp_path / "b" / "metrics.jsonl")


@pytest.mark.parametrize("bf16", [False, True])
def test_checkpoint_holds_only_the_adapter(tiny_policy_dir, texts_file, tmp_path, monkeypatch, bf16):
    """Without bf16 the compute copy is the model itself: its frozen base must stay frozen there too."""
    monkeypatch.setattr(loop.shutil, "rmtree", lambda *a, **k: None)  # keep the checkpoints for a look
    run_sft(make_cfg(tiny_policy_dir, texts_file, tmp_path / "c", max_tokens=40, bf16=bf16))
    ckpt = sorted((tmp_path / "c" / "checkpoints").glob("step_*"))[-1]
    keys = load_file(str(ckpt / "trainable.safetensors")).keys()
    assert keys and all("lora_" in k for k in keys)


def test_eval_every_0_still_measures_the_end(tiny_policy_dir, texts_file, tmp_path):
    """--eval-every 0 means "only at the start and the end": the end point must be a new measurement."""
    out = run_sft(make_cfg(tiny_policy_dir, texts_file, tmp_path / "e", eval_every=0, lora_dropout=0.0))
    steps = [row[0] for row in out["val_curve"]]
    assert steps == [0, out["steps"]]
    assert out["val_nll_end"] == out["val_curve"][-1][2] != out["val_nll_start"]


def test_eager_attention_trains_the_same_model_and_is_not_saved_with_it(tiny_policy_dir, texts_file, tmp_path):
    """--attn-implementation is a training kernel: the same validation NLL as sdpa on the same weights (step 0;
    later steps drift apart by bf16 rounding amplified by lr 1e-2), training still lowers it, and final/ loads
    with the model's own default kernel."""
    from transformers import AutoModelForCausalLM

    sdpa = run_sft(make_cfg(tiny_policy_dir, texts_file, tmp_path / "s", lora_dropout=0.0))
    eager = run_sft(make_cfg(tiny_policy_dir, texts_file, tmp_path / "e", lora_dropout=0.0,
                             attn_implementation="eager"))
    assert eager["val_curve"][0][2] == pytest.approx(sdpa["val_curve"][0][2], abs=1e-3)
    assert eager["val_nll_end"] < eager["val_nll_start"]
    assert eager["val_nll_end"] == pytest.approx(sdpa["val_nll_end"], abs=0.1)
    saved = json.loads((tmp_path / "e" / "final" / "config.json").read_text())
    assert saved.get("attn_implementation") in (None, "sdpa") and saved.get("_attn_implementation") in (None, "sdpa")
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "e" / "final").config._attn_implementation != "eager"


def test_non_finite_loss_stops_before_the_update_and_keeps_the_last_good_weights(tiny_policy_dir, texts_file,
                                                                                  tmp_path, monkeypatch):
    from warprl.rl.loop import NonFiniteError

    real_nll, calls = loop.nll_sum, []

    def nan_in_step_3(model, batch):  # one micro-batch per step here: the third call is step 3's
        s, n = real_nll(model, batch)
        calls.append(1)
        return (s * float("nan"), n) if len(calls) == 3 else (s, n)

    monkeypatch.setattr(loop, "nll_sum", nan_in_step_3)
    with pytest.raises(NonFiniteError, match="non-finite loss at step 3; stopped before the update"):
        run_sft(make_cfg(tiny_policy_dir, texts_file, tmp_path / "n", eval_every=0, checkpoint_every=0))
    ckpts = tmp_path / "n" / "checkpoints"
    assert json.loads((ckpts / "latest.json").read_text())["step"] == 2
    saved = load_file(str(next(ckpts.glob("*/trainable.safetensors"))))
    assert saved and all(torch.isfinite(t).all() for t in saved.values())
