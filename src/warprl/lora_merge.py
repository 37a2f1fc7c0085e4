"""WARP's merge of LoRA runs: SLERP (or LERP) of their low-rank task vectors, streamed over θ_init.

A LoRA run's task vector is, per adapted matrix, its dense ΔW_m = s_m·B_m·A_m (zero on every other tensor).
:func:`merge_adapter_files` streams θ_init from its safetensors file one tensor at a time, forms the M ΔW of
that tensor from the runs' adapter folders (a few MB each, read once), merges them with :mod:`warprl.merge`'s
kernels (the same LERP fallback where the angle is ill-defined, the same λ for two runs and 1/m weights
for more), and writes θ_init + Δ_merged as a full weights file; tensors without an adapter are copied
unchanged. LITI on the result is :func:`warprl.merge.merge_files` as for full runs. The Gram matrix of the
task vectors (norms, angles) comes from the factors without forming any ΔW:
⟨B_a·A_a, B_b·A_b⟩ = Σ (B_aᵀ·B_b) ⊙ (A_a·A_bᵀ).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from safetensors.torch import save_file

from warprl import merge
from warprl.io import atomic_write
from warprl.lora import delta, read_adapter
from warprl.merge import kernels

Adapter = tuple[float, bool, dict[str, tuple[torch.Tensor, torch.Tensor]]]


def _read_all(adapters: Sequence[str | os.PathLike]) -> list[Adapter]:
    """Every adapter (scale, fan_in_fan_out, {module: (A, B)}); they must adapt the same layers."""
    read = [read_adapter(a) for a in adapters]
    if not read:
        raise ValueError("a merge needs at least one adapter")
    names = set(read[0][2])
    for folder, (_, _, pairs) in zip(adapters, read, strict=True):
        if set(pairs) != names:
            raise ValueError(f"{folder} adapts other layers than {adapters[0]}")
    return read


def merge_task_vectors(deltas: list[torch.Tensor], op: str = "slerp", lam: float | None = None) -> torch.Tensor:
    """The merged task vector of one tensor from its M task vectors: ``op`` ``slerp`` (as
    :func:`warprl.merge.slerp`: λ for two, iterated with 1/m weights for more, LERP where the angle is
    ill-defined) or ``lerp`` (as :func:`warprl.merge.lerp`). In fp32 at least."""
    cdt = kernels.compute_dtype(deltas[0].dtype)
    ds = [d.to(cdt) for d in deltas]
    if op == "slerp":
        kernels.check_n_models(len(ds), lam, "slerp")
        return kernels.slerp_deltas(ds, lam)
    if op == "lerp":
        return kernels.lerp_kernel(len(ds), lam)(None, ds)
    raise ValueError(f"unknown op {op!r}; expected 'slerp' or 'lerp'")


def merge_adapter_files(init_path: str | os.PathLike, adapters: Sequence[str | os.PathLike],
                        out_path: str | os.PathLike, op: str = "slerp", lam: float | None = None) -> str:
    """θ_init + merge of the adapters' ΔW into ``out_path`` (atomically), one tensor of θ_init at a time;
    returns the file's sha256."""
    read = _read_all(adapters)
    modules = set(read[0][2])
    out: dict[str, torch.Tensor] = {}
    with merge.open_streaming(init_path) as f:
        metadata = f.metadata()
        keys = list(f.keys())
        missing = sorted(m for m in modules if f"{m}.weight" not in keys)
        if missing:
            raise ValueError(f"{init_path} has no weight for the adapted layer {missing[0]!r}")
        for key in keys:
            w0 = f.get_tensor(key)
            module = key.removesuffix(".weight")
            if key.endswith(".weight") and module in modules:
                deltas = [delta(pairs[module][0], pairs[module][1], scale, fan) for scale, fan, pairs in read]
                if deltas[0].shape != w0.shape:
                    raise ValueError(f"shape mismatch for {key!r}: {tuple(w0.shape)} in {init_path}, "
                                     f"{tuple(deltas[0].shape)} from the adapters")
                cdt = kernels.compute_dtype(w0.dtype)
                w0 = (w0.to(cdt) + merge_task_vectors(deltas, op, lam).to(cdt)).to(w0.dtype)
            out[key] = w0.contiguous()
    return atomic_write(out_path, lambda tmp: save_file(out, tmp, metadata=metadata), digest=True)


def task_vector_gram_adapters(adapters: Sequence[str | os.PathLike]) -> list[list[float]]:
    """Gram matrix ⟨ΔW_a, ΔW_b⟩ of the runs' task vectors, summed over the adapted matrices (fp64 sums)."""
    read = _read_all(adapters)
    m = len(read)
    gram = [[0.0] * m for _ in range(m)]
    for module in read[0][2]:
        for i in range(m):
            s_i, _, p_i = read[i]
            a_i, b_i = p_i[module]
            for j in range(i, m):
                s_j, _, p_j = read[j]
                a_j, b_j = p_j[module]
                dot = ((b_i.double().T @ b_j.double()) * (a_i.double() @ a_j.double().T)).sum()
                gram[i][j] += float(dot) * s_i * s_j
    for i in range(m):
        for j in range(i):
            gram[i][j] = gram[j][i]
    return gram

