"""WARP's pieces that need no training: file merges on tied weights, task-vector statistics, atomicity."""

import math

import pytest
import torch
from safetensors.torch import load_file, load_model, save_model
from torch import nn

from warprl import merge
from warprl.io import WriteError, remove_stale_temp_files
from warprl.rl import warp


class TiedLM(nn.Module):
    """Embeddings tied to the output layer, as in SmolLM2: one storage under two names."""

    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(11, 6)
        self.body = nn.Linear(6, 6)
        self.head = nn.Linear(6, 11, bias=False)
        self.head.weight = self.embed.weight
        self.register_buffer("count", torch.tensor([seed]), persistent=True)


def _save(tmp_path, name, seed):
    path = tmp_path / f"{name}.safetensors"
    save_model(TiedLM(seed), str(path))
    return path


def test_merge_files_on_tied_weights_keeps_one_name_and_reloads_tied(tmp_path):
    init, a, b = (_save(tmp_path, n, s) for n, s in (("init", 0), ("a", 1), ("b", 2)))
    out = tmp_path / "slerp.safetensors"
    merge.merge_files(init, [a, b], out, "slerp", lam=0.5)
    # save_model drops the duplicate name the same way in every file, so the keys line up for the merge.
    keys = set(load_file(str(init)))
    assert keys == set(load_file(str(a))) == set(load_file(str(out)))
    assert sum(k in keys for k in ("embed.weight", "head.weight")) == 1
    expected = merge.slerp(load_file(str(init)), [load_file(str(a)), load_file(str(b))], lam=0.5)
    got = load_file(str(out))
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    model = TiedLM(9)
    load_model(model, str(out))
    assert model.head.weight is model.embed.weight and torch.equal(model.body.weight, expected["body.weight"])
    assert torch.equal(got["count"], load_file(str(init))["count"])  # integer buffers come from θ_init


def test_merges_read_either_name_of_a_tied_tensor(tmp_path):
    """Files that store the tied pair under its other name (safetensors' save_model keeps the first name in
    sorted order and records the dropped one in the metadata, so an older warprl wrote SmolLM2's as
    lm_head.weight; save_weights keeps save_pretrained's) merge together, under θ_init's names."""
    from safetensors.torch import save_file

    from warprl.io import save_weights

    init, a, b = (_save(tmp_path, n, s) for n, s in (("init", 0), ("a", 1), ("b", 2)))
    b_hf = tmp_path / "b_other_name.safetensors"
    tensors = load_file(str(b))
    tensors["head.weight"] = tensors.pop("embed.weight")
    save_file(tensors, str(b_hf), metadata={"embed.weight": "head.weight"})
    for op in ("slerp", "lerp"):
        merge.merge_files(init, [a, b], tmp_path / "old.safetensors", op, lam=0.5)
        merge.merge_files(init, [a, b_hf], tmp_path / "mixed.safetensors", op, lam=0.5)
        assert (tmp_path / "old.safetensors").read_bytes() == (tmp_path / "mixed.safetensors").read_bytes()
    gram, _, _ = merge.merge_liti_files(b_hf, [a, init], tmp_path / "m.safetensors", tmp_path / "l.safetensors",
                                        "slerp", eta=0.5)
    assert gram == merge.task_vector_gram_files(b, [a, init])
    assert set(load_file(str(tmp_path / "l.safetensors"))) == set(load_file(str(b_hf)))  # θ_init's names
    save_weights(nn.Linear(2, 2), tmp_path / "other.safetensors")  # another model: still refused
    with pytest.raises(ValueError, match="key mismatch"):
        merge.merge_files(init, [tmp_path / "other.safetensors"], tmp_path / "x.safetensors", "slerp")


def test_task_vector_stats_match_merge(tmp_path):
    init, a, b, c = (_save(tmp_path, n, s) for n, s in (("init", 0), ("a", 1), ("b", 2), ("c", 3)))
    two = warp.task_vector_stats(init, [a, b])
    assert two["charts/task_vector_angle_deg"] == pytest.approx(merge.task_vector_angle_files(init, a, b), abs=1e-9)
    sd = {n: load_file(str(p)) for n, p in (("init", init), ("a", a), ("b", b), ("c", c))}

    def norm(name):
        return math.sqrt(sum(float(((sd[name][k] - v) ** 2).sum()) for k, v in sd["init"].items()
                             if v.is_floating_point()))

    assert two["charts/task_vector_norm_mean"] == pytest.approx((norm("a") + norm("b")) / 2, rel=1e-6)
    three = warp.task_vector_stats(init, [a, b, c])
    pairs = [("a", "b"), ("a", "c"), ("b", "c")]
    mean_angle = sum(merge.task_vector_angle(sd["init"], sd[x], sd[y]) for x, y in pairs) / 3
    assert three["charts/task_vector_angle_deg"] == pytest.approx(mean_angle, abs=1e-6)


def test_a_failed_merge_leaves_no_file(tmp_path, monkeypatch):
    init, a, b = (_save(tmp_path, n, s) for n, s in (("init", 0), ("a", 1), ("b", 2)))

    def dies_half_way(tensors, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(merge.files, "save_file", dies_half_way)
    out = tmp_path / "iter_1" / "slerp.safetensors"
    with pytest.raises(WriteError, match=r"cannot write .*slerp.safetensors: disk full"):
        warp.write_merge(out, init, [a, b], "slerp", lam=0.5)
    assert list(out.parent.iterdir()) == []


def test_stale_temp_files_are_removed_and_results_kept(tmp_path):
    (tmp_path / ".slerp.safetensors.abc.tmp").write_text("x")
    (tmp_path / ".slerp.safetensors.abc.tmp.tmp").write_text("x")
    (tmp_path / ".final.xyz.tmp").mkdir()
    (tmp_path / "slerp.safetensors").write_text("kept")
    (tmp_path / "run_1").mkdir()
    remove_stale_temp_files(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run_1", "slerp.safetensors"]


def test_layout_and_seeds(tmp_path):
    assert warp.init_path(tmp_path, 1) == tmp_path / "sft.safetensors"
    assert warp.init_path(tmp_path, 3) == tmp_path / "iter_2" / "init.safetensors"
    assert warp.run_dir(tmp_path, 2, 1) == tmp_path / "iter_2" / "run_1"
    seeds = {warp.run_seed(0, i, m) for i in (1, 2) for m in (1, 2, 3)}
    assert len(seeds) == 6 and warp.run_seed(0, 1, 1) == warp.run_seed(0, 1, 1) != warp.run_seed(1, 1, 1)

