"""warprl.merge.files: the streamed merges equal the in-memory ones, and their errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from warprl.merge import (
    interpolate,
    lerp,
    liti,
    merge_files,
    merge_liti_files,
    slerp,
    task_vector_angle,
    task_vector_angle_files,
    task_vector_gram_files,
)


@pytest.fixture()
def model_files(
    tmp_path: Path,
) -> tuple[Path, list[Path], dict[str, torch.Tensor], list[dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(3)
    init = {
        "a.weight": torch.randn(4, 5, generator=g),
        "a.bias": torch.randn(5, generator=g).bfloat16(),
        "pos_ids": torch.arange(6),
    }
    sds = [
        {
            k: (v.float() + torch.randn(v.shape, generator=g)).to(v.dtype) if v.is_floating_point() else v + 1
            for k, v in init.items()
        }
        for _ in range(3)
    ]
    init_path = tmp_path / "init.safetensors"
    save_file(init, str(init_path), metadata={"format": "pt"})
    paths = []
    for i, sd in enumerate(sds):
        p = tmp_path / f"m{i}.safetensors"
        save_file(sd, str(p))
        paths.append(p)
    return init_path, paths, init, sds


def _assert_sd_equal(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(want)
    for k in want:
        assert got[k].dtype == want[k].dtype, k
        assert torch.equal(got[k], want[k]), k


def test_merge_files_matches_dict_versions(model_files, tmp_path: Path) -> None:
    init_path, paths, init, sds = model_files
    out = tmp_path / "out.safetensors"
    cases = [
        ("slerp", paths[:2], {}, slerp(init, sds[:2])),
        ("slerp", paths[:2], {"lam": 0.3}, slerp(init, sds[:2], lam=0.3)),
        ("slerp", paths, {}, slerp(init, sds)),
        ("slerp", paths, {"method": "spherical_mean"}, slerp(init, sds, method="spherical_mean")),
        ("lerp", paths, {}, lerp(init, sds)),
        ("liti", paths[:1], {"eta": 0.3}, liti(init, sds[0], 0.3)),
        ("interpolate", paths[:1], {"t": 0.7}, interpolate(init, sds[0], 0.7)),
        ("interpolate", paths[:1], {"t": 1.0}, sds[0]),
    ]
    for op, ps, kw, want in cases:
        merge_files(init_path, ps, out, op, **kw)
        _assert_sd_equal(load_file(str(out)), want)
        assert not Path(str(out) + ".tmp").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "init.safetensors",
        "m0.safetensors",
        "m1.safetensors",
        "m2.safetensors",
        "out.safetensors",
    ]


def test_merge_files_callable_and_errors(model_files, tmp_path: Path) -> None:
    init_path, paths, init, sds = model_files
    out = tmp_path / "out.safetensors"

    def double_first(i: torch.Tensor, ts: list[torch.Tensor], scale: float) -> torch.Tensor:
        assert i.dtype == torch.float32 and all(t.dtype == torch.float32 for t in ts)
        return ts[0] * scale

    merge_files(init_path, paths[0], out, double_first, scale=2.0)
    got = load_file(str(out))
    assert torch.equal(got["a.weight"], sds[0]["a.weight"] * 2.0)
    assert got["a.bias"].dtype == torch.bfloat16
    assert torch.equal(got["pos_ids"], init["pos_ids"])

    bad = tmp_path / "bad.safetensors"
    save_file({"a.weight": torch.zeros(4, 5)}, str(bad))
    with pytest.raises(ValueError, match="key mismatch"):
        merge_files(init_path, [paths[0], bad], tmp_path / "never.safetensors", "slerp")
    with pytest.raises(ValueError, match="unknown op"):
        merge_files(init_path, paths, out, "median")
    with pytest.raises(ValueError, match="exactly one"):
        merge_files(init_path, paths[:2], out, "liti", eta=0.5)
    with pytest.raises(TypeError):
        merge_files(init_path, paths[:2], out, "slerp", lamb=0.5)
    assert not (tmp_path / "never.safetensors").exists()
    assert not list(tmp_path.glob("*.tmp"))


def test_task_vector_angle_files(model_files) -> None:
    init_path, paths, init, sds = model_files
    got = task_vector_angle_files(init_path, paths[0], paths[1])
    assert got == pytest.approx(task_vector_angle(init, sds[0], sds[1]), abs=1e-9)
    assert 0.0 < got < 180.0


def test_task_vector_gram_files(model_files) -> None:
    """Every ⟨δ_a, δ_b⟩ of three runs in one pass equals the hand sum over the float tensors (fp32 math)."""
    init_path, paths, init, sds = model_files
    gram = task_vector_gram_files(init_path, paths)
    for a in range(3):
        for b in range(3):
            want = sum(float(torch.dot((sds[a][k].float() - init[k].float()).reshape(-1),
                                       (sds[b][k].float() - init[k].float()).reshape(-1)))
                       for k in init if init[k].is_floating_point())
            assert gram[a][b] == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("op", ["slerp", "lerp"])
def test_merge_liti_files_is_merge_then_liti_in_one_pass(model_files, tmp_path: Path, op: str) -> None:
    """The fused pass writes the same bits as merge_files twice (merge, then LITI on the merged file), returns
    the same Gram matrix as task_vector_gram_files and the sha256 of both files."""
    from warprl.io import file_digest

    init_path, paths, _, _ = model_files
    runs = paths[:2]
    merged, liti_out = tmp_path / "merged.safetensors", tmp_path / "liti.safetensors"
    gram, merged_sha, liti_sha = merge_liti_files(init_path, runs, merged, liti_out, op, eta=0.3, lam=0.25)
    ref_merged, ref_liti = tmp_path / "ref_merged.safetensors", tmp_path / "ref_liti.safetensors"
    merge_files(init_path, runs, ref_merged, op, lam=0.25)
    merge_files(init_path, [ref_merged], ref_liti, "liti", eta=0.3)
    assert merged.read_bytes() == ref_merged.read_bytes() and liti_out.read_bytes() == ref_liti.read_bytes()
    assert (merged_sha, liti_sha) == (file_digest(merged), file_digest(liti_out))
    assert gram == task_vector_gram_files(init_path, runs)
    with pytest.raises(TypeError, match="unexpected keyword"):
        merge_liti_files(init_path, runs, merged, liti_out, op, eta=0.3, lam=0.25, typo=1)


def test_load_streaming_equals_load_model_in_place_and_checks_the_file(tiny_policy_dir, tmp_path: Path) -> None:
    from safetensors.torch import load_model

    from warprl.io import save_weights, weight_tensors
    from warprl.merge import load_streaming
    from warprl.models import load_policy

    source, _ = load_policy(str(tiny_policy_dir))
    with torch.no_grad():
        for p in source.parameters():
            p.add_(0.25)
    path = tmp_path / "w.safetensors"
    save_weights(source, path)  # the tied lm_head is stored once
    for dtype in (torch.float32, torch.bfloat16):
        ours, theirs = (load_policy(str(tiny_policy_dir))[0].to(dtype) for _ in range(2))
        before = {n: p.data_ptr() for n, p in ours.named_parameters()}
        load_streaming(ours, path)
        load_model(theirs, str(path))
        assert {n: p.data_ptr() for n, p in ours.named_parameters()} == before  # in place: no new tensors
        for (n, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items(), strict=True):
            assert a.dtype == dtype and torch.equal(a, b), n  # bf16: the same rounding as load_model's cast
    model = load_policy(str(tiny_policy_dir))[0]
    sd = {k: v.contiguous() for k, v in weight_tensors(source).items()}
    first = next(iter(sd))
    save_file({k: v for k, v in sd.items() if k != first}, str(tmp_path / "missing.safetensors"))
    save_file({**sd, "extra.weight": torch.zeros(2)}, str(tmp_path / "extra.safetensors"))
    save_file({**sd, first: sd[first][None]}, str(tmp_path / "shape.safetensors"))
    for name, words in (("missing", r"lacks \d+ of the model's tensors"), ("extra", "'extra.weight' is not in the model"),
                        ("shape", f"'{first}' has shape")):
        with pytest.raises(ValueError, match=words):
            load_streaming(model, tmp_path / f"{name}.safetensors")


def test_load_streaming_reads_shards_and_maps_each_tensor(tiny_policy_dir, tmp_path: Path) -> None:
    from warprl.io import weight_tensors
    from warprl.merge import load_streaming
    from warprl.models import load_policy

    model, _ = load_policy(str(tiny_policy_dir))
    sd = {k: v.detach().clone().contiguous() for k, v in weight_tensors(model).items()}
    names = sorted(sd)
    half = len(names) // 2
    shards = [tmp_path / "a.safetensors", tmp_path / "b.safetensors"]
    save_file({k: sd[k] for k in names[:half]}, str(shards[0]))
    save_file({k: sd[k] for k in names[half:]}, str(shards[1]))
    seen = []
    load_streaming(model, shards, lambda name, t: seen.append(name) or 2 * t)
    assert sorted(seen) == names
    got = weight_tensors(model)
    assert all(torch.equal(got[k], 2 * sd[k]) for k in names)
    with pytest.raises(ValueError, match=r"lacks \d+ of the model's tensors"):
        load_streaming(model, shards[:1])
