"""LoRA via peft: merged weights give the unmerged model's logits; adapters save, load and refuse misfits."""

import copy

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from tests.conftest import randomise_lora
from warprl import lora
from warprl.errors import UserError
from warprl.models import load_policy

TOL = 1e-5  # fp32: merging W + s·B·A reorders float additions, nothing more


def lora_model(tiny_policy_dir, r=4):
    model, _ = load_policy(str(tiny_policy_dir))
    return randomise_lora(lora.apply_lora(model, r=r, alpha=8, dropout=0.0), seed=0, b_std=0.5)


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


# ------------------------------------------------------------------------------ LoRA as a parametrisation


def test_targets_are_peft_s_all_linear_or_named_layers(tiny_policy_dir):
    model, _ = load_policy(str(tiny_policy_dir))
    every = lora.find_targets(model, "all-linear")
    assert {t.name.rsplit(".", 1)[-1] for t in every} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                           "up_proj", "down_proj"}
    assert len(every) == 2 * 7 and not any("lm_head" in t.name for t in every)
    q = next(t for t in every if t.name == "model.layers.0.self_attn.q_proj")
    assert (q.d_out, q.d_in, q.fan_in_fan_out) == (32, 32, False)
    named = lora.find_targets(model, "q_proj, v_proj")
    assert [t.name.rsplit(".", 1)[-1] for t in named] == ["q_proj", "v_proj"] * 2
    assert lora.peft_target_modules(model, named) == ["q_proj", "v_proj"]
    one = lora.find_targets(model, "layers.1.mlp.up_proj")
    assert lora.peft_target_modules(model, one) == ["model.layers.1.mlp.up_proj"]  # the short name would take both
    for bad in ("nosuchlayer", "q_proj,nosuchlayer", "lm_head"):
        with pytest.raises(UserError, match=r"--lora-targets .*llama has no layer named .*q_proj"):
            lora.find_targets(model, bad)


def test_factors_start_as_peft_does_from_their_seed():
    targets = [lora.Target("a.layer", 64, 256), lora.Target("b.layer", 8, 16)]
    f = lora.Factors(targets, r=4, alpha=8.0, seed=7)
    assert f.scale == 2.0
    assert list(dict(f.named_parameters())) == ["a.layer.lora_A.weight", "a.layer.lora_B.weight",
                                                "b.layer.lora_A.weight", "b.layer.lora_B.weight"]
    (a, b), (a2, _) = [(x.detach(), y.detach()) for x, y in f.pairs]
    assert a.shape == (4, 256) and b.shape == (64, 4) and a2.shape == (4, 16)
    assert float(b.abs().max()) == 0.0  # B = 0: ΔW starts at 0
    # kaiming_uniform(a=√5) on [r, d_in]: U(−1/√d_in, 1/√d_in), as peft (and nn.Linear) initialise A.
    assert float(a.abs().max()) <= 1 / 16 and float(a.abs().max()) > 0.9 / 16
    assert float(a.std()) == pytest.approx(1 / 16 / 3**0.5, rel=0.1)
    again, other = lora.Factors(targets, 4, 8.0, seed=7), lora.Factors(targets, 4, 8.0, seed=8)
    assert torch.equal(again.pairs[0][0], a) and not torch.equal(other.pairs[0][0], a)


def test_delta_and_factor_grads_by_hand():
    a = torch.tensor([[1.0, 2.0, 0.0]])  # r = 1, d_in = 3
    b = torch.tensor([[3.0], [-1.0]])  # d_out = 2
    assert torch.equal(lora.delta(a, b, 0.5), torch.tensor([[1.5, 3.0, 0.0], [-0.5, -1.0, 0.0]]))
    assert torch.equal(lora.delta(a, b, 0.5, fan_in_fan_out=True), lora.delta(a, b, 0.5).T)
    g = torch.tensor([[1.0, 0.0, 1.0], [0.0, 2.0, 0.0]])  # dL/dW
    da, db = lora.factor_grads(g, a, b, 0.5)
    # dL/dA = s·Bᵀ·G = 0.5·[3, −2, 3];  dL/dB = s·G·Aᵀ = 0.5·[1, 4]ᵀ
    assert torch.equal(da, torch.tensor([[1.5, -1.0, 1.5]])) and torch.equal(db, torch.tensor([[0.5], [2.0]]))
