"""WARP's merge of LoRA runs: the SLERP of their low-rank task vectors ΔW = s·B·A, streamed over θ_init, equals the
dense SLERP of the merged weights; hand-checked on 2×2 matrices."""

import math

import pytest
import torch
from safetensors.torch import load_file, save_file

from warprl import lora, merge
from warprl.lora_merge import merge_adapter_files, merge_task_vectors, task_vector_gram_adapters

W0 = torch.tensor([[0.5, -1.0], [2.0, 0.25]])
NORM = torch.tensor([1.0, 1.0])  # a tensor no adapter touches (a norm's weight): its task vector is 0


def adapter(folder, a, b, alpha=1.0):
    """A rank-len(a) adapter on the 2×2 layer ``layer`` with the given A [r, 2] and B [2, r]."""
    r = len(a)
    factors = lora.Factors([lora.Target("layer", 2, 2)], r=r, alpha=alpha)
    with torch.no_grad():
        factors.pairs[0][0].copy_(torch.tensor(a))
        factors.pairs[0][1].copy_(torch.tensor(b))
    return lora.write_adapter(factors, folder)


@pytest.fixture
def files(tmp_path):
    init = tmp_path / "init.safetensors"
    save_file({"layer.weight": W0, "norm.weight": NORM}, str(init))
    # ΔW1 = 1·[1,0]ᵀ[1,0] = [[1,0],[0,0]];  ΔW2 = (alpha 2 / r 1)·[0.5,0]ᵀ[1,1] = [[1,1],[0,0]]
    ad1 = adapter(tmp_path / "run_1", a=[[1.0, 0.0]], b=[[1.0], [0.0]])
    ad2 = adapter(tmp_path / "run_2", a=[[1.0, 1.0]], b=[[0.5], [0.0]], alpha=2.0)
    return tmp_path, init, ad1, ad2


def test_slerp_of_two_low_rank_task_vectors_by_hand(files):
    """ΔW1 = [[1,0],[0,0]], ΔW2 = [[1,1],[0,0]]: cos Ω = 1/(1·√2), Ω = 45°. With λ = 1/2 each gets
    sin(22.5°)/sin(45°) = 0.3826834/0.7071068 = 0.5411961, so Δ = 0.5411961·[[2,1],[0,0]] =
    [[1.0823922, 0.5411961],[0,0]] and θ_slerp = W0 + Δ = [[1.5823922, -0.4588039],[2, 0.25]]."""
    tmp, init, ad1, ad2 = files
    out = tmp / "slerp.safetensors"
    merge_adapter_files(init, [ad1, ad2], out, "slerp", lam=0.5)
    got = load_file(str(out))
    want = torch.tensor([[1.5823922, -0.4588039], [2.0, 0.25]])
    torch.testing.assert_close(got["layer.weight"], want, rtol=0, atol=1e-6)
    assert torch.equal(got["norm.weight"], NORM)  # zero task vector: copied
    # The same as the dense SLERP of the merged weights W0 + ΔW_m (full runs' merge).
    dense = merge.slerp({"layer.weight": W0, "norm.weight": NORM},
                        [{"layer.weight": W0 + torch.tensor([[1.0, 0.0], [0.0, 0.0]]), "norm.weight": NORM},
                         {"layer.weight": W0 + torch.tensor([[1.0, 1.0], [0.0, 0.0]]), "norm.weight": NORM}], lam=0.5)
    torch.testing.assert_close(got["layer.weight"], dense["layer.weight"], rtol=0, atol=1e-6)
    # Their Gram matrix from the factors: |ΔW1|² = 1, |ΔW2|² = 2, ⟨ΔW1, ΔW2⟩ = 1 → 45°.
    gram = task_vector_gram_adapters([ad1, ad2])
    assert [x for row in gram for x in row] == pytest.approx([1.0, 1.0, 1.0, 2.0], abs=1e-12)
    assert merge.angle_degrees(gram[0][1], gram[0][0], gram[1][1]) == pytest.approx(45.0, abs=1e-9)


def test_lam_lerp_fallback_and_more_runs_follow_the_dense_rules(files):
    tmp, init, ad1, ad2 = files
    d1, d2 = torch.tensor([[1.0, 0.0], [0.0, 0.0]]), torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    # λ = 0.25: sin(0.75·45°)/sin 45° · ΔW1 + sin(0.25·45°)/sin 45° · ΔW2
    c1, c2 = math.sin(math.radians(33.75)) / math.sin(math.radians(45)), \
        math.sin(math.radians(11.25)) / math.sin(math.radians(45))
    torch.testing.assert_close(merge_task_vectors([d1, d2], "slerp", 0.25), c1 * d1 + c2 * d2, rtol=0, atol=1e-6)
    # Parallel task vectors (ΔW2 = 2·ΔW1): the angle is 0, SLERP falls back to LERP.
    torch.testing.assert_close(merge_task_vectors([d1, 2 * d1], "slerp", 0.5), 1.5 * d1, rtol=0, atol=1e-7)
    torch.testing.assert_close(merge_task_vectors([d1, d2], "lerp", 0.5), (d1 + d2) / 2, rtol=0, atol=0)
    # Three runs: the iterated SLERP with 1/m weights, as merge.slerp does on the dense weights.
    ad3 = adapter(tmp / "run_3", a=[[0.0, 1.0]], b=[[0.0], [-1.0]])  # ΔW3 = [[0,0],[0,-1]]
    out = tmp / "three.safetensors"
    merge_adapter_files(init, [ad1, ad2, ad3], out, "slerp")
    dense = merge.slerp({"w": W0}, [{"w": W0 + d} for d in (d1, d2, torch.tensor([[0.0, 0.0], [0.0, -1.0]]))])
    torch.testing.assert_close(load_file(str(out))["layer.weight"], dense["w"], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="lam is only defined for exactly two"):
        merge_adapter_files(init, [ad1, ad2, ad3], out, "slerp", lam=0.5)


def test_adapters_of_other_layers_are_refused(files, tmp_path):
    _, init, ad1, _ = files
    other = lora.Factors([lora.Target("elsewhere", 2, 2)], r=1, alpha=1.0)
    lora.write_adapter(other, tmp_path / "other")
    with pytest.raises(ValueError, match="adapts other layers"):
        merge_adapter_files(init, [ad1, tmp_path / "other"], tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match="no weight for the adapted layer 'elsewhere'"):
        merge_adapter_files(init, [tmp_path / "other"], tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()
