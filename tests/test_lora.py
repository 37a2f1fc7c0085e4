"""LoRA via peft: merged weights give the unmerged model's logits; adapters save, load and refuse misfits."""

import copy

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from warprl import lora
from warprl.errors import UserError
from warprl.models import load_policy

TOL = 1e-5  # fp32: merging W + s·B·A reorders float additions, nothing more


def lora_model(tiny_policy_dir, r=4):
    model, _ = load_policy(str(tiny_policy_dir))
    torch.manual_seed(0)
    peft_model = lora.apply_lora(model, r=r, alpha=8, dropout=0.0)
    with torch.no_grad():  # B starts at zero: make the adapter do something
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    return peft_model


def test_only_the_adapter_trains_on_every_attention_and_mlp_linear(tiny_policy_dir):
    m = lora_model(tiny_policy_dir)
    names = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n, p in m.named_parameters() if p.requires_grad}
    assert names == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert all("lora_" in n for n, p in m.named_parameters() if p.requires_grad)


def test_merged_logits_equal_peft_unmerged_logits(tiny_policy_dir):
    m = lora_model(tiny_policy_dir)
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        unmerged = m(input_ids=ids).logits
        merged_model = lora.merge(copy.deepcopy(m))
        merged = merged_model(input_ids=ids).logits
        base = m.get_base_model()
        with m.disable_adapter():
            plain = base(input_ids=ids).logits
    assert type(merged_model).__name__ == "LlamaForCausalLM"
    assert (unmerged - plain).abs().max() > 1e-2  # the adapter changes the output …
    assert torch.allclose(merged, unmerged, atol=TOL, rtol=0)  # … and merging keeps it


@pytest.mark.parametrize("dtype,tol", [(None, TOL), (torch.bfloat16, 5e-2)])
def test_saved_adapter_loads_onto_a_fresh_base(tiny_policy_dir, tmp_path, dtype, tol):
    m = lora_model(tiny_policy_dir)
    lora.save_adapter(m, tmp_path / "ad", dtype=dtype)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        want = m(input_ids=ids).logits
        base, _ = load_policy(str(tiny_policy_dir))
        got = lora.load_adapter(base, tmp_path / "ad")(input_ids=ids).logits
    assert torch.allclose(got, want, atol=tol, rtol=0)


def test_adapter_for_another_architecture_is_refused(tiny_policy_dir, tmp_path):
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=40, n_embd=16, n_layer=1, n_head=2, n_positions=32))
    lora.save_adapter(lora.apply_lora(gpt2, r=2, alpha=4, dropout=0.0), tmp_path / "gpt2-ad")
    base, _ = load_policy(str(tiny_policy_dir))
    with pytest.raises(UserError, match="another architecture"):
        lora.load_adapter(base, tmp_path / "gpt2-ad")
    # same names, other sizes: a LoRA of a wider Llama
    wide = lora_model(tiny_policy_dir, r=2)
    lora.save_adapter(wide, tmp_path / "llama-ad")
    from safetensors.torch import load_file, save_file
    f = tmp_path / "llama-ad" / lora.ADAPTER_WEIGHTS
    save_file({k: torch.zeros(v.shape[0], v.shape[1] * 2) if "lora_A" in k else v for k, v in load_file(str(f)).items()}, str(f))
    with pytest.raises(UserError, match=r"another architecture .*expects \d+ features"):
        lora.load_adapter(load_policy(str(tiny_policy_dir))[0], tmp_path / "llama-ad")


def test_bad_lora_settings(tiny_policy_dir):
    model, _ = load_policy(str(tiny_policy_dir))
    with pytest.raises(UserError, match="--lora-r"):
        lora.apply_lora(model, r=0, alpha=8, dropout=0.0)
    with pytest.raises(UserError, match="--lora-targets"):
        lora.apply_lora(model, r=2, alpha=8, dropout=0.0, targets="no_such_layer")
