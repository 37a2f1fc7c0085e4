"""Merging safetensors files one tensor name at a time, so that merging M policies never holds M models:
:func:`merge_files` (SLERP, LERP, LITI, interpolation or any per-tensor callable, written atomically), a WARP
iteration's SLERP + LITI + Gram matrix in one pass (:func:`merge_liti_files`), and the task vectors' Gram
matrix and angle, all over :func:`open_streaming` (pread, not mmap)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from warprl.io import atomic_write
from warprl.merge.kernels import (
    Kernel,
    angle_degrees,
    apply_kernel,
    check_structure,
    compute_dtype,
    lerp2,
    lerp_kernel,
    slerp_kernel,
)


def open_streaming(path: str | os.PathLike, device: str = "cpu"):
    """``safe_open`` that reads with pread where available (safetensors >= 0.8).

    With the default mmap every page read stays in this process's RSS until the file is closed, i.e. all
    M + 1 models by the end of a streamed merge; with pread only the tensors in flight are resident.
    """
    try:
        return safe_open(os.fspath(path), framework="pt", device=device, backend="pread")
    except TypeError:  # older safetensors: no backend argument
        return safe_open(os.fspath(path), framework="pt", device=device)


@torch.no_grad()
def load_streaming(model: torch.nn.Module, paths: str | os.PathLike | Sequence[str | os.PathLike],
                   value: Callable[[str, torch.Tensor], torch.Tensor] | None = None) -> None:
    """Load safetensors file(s) (e.g. a sharded model's) into ``model``'s own tensors in place, one tensor at a
    time, each as ``value(name, tensor)`` when given (e.g. an interpolation), cast to the model tensor's dtype by
    ``copy_`` (the rounding of a cast). Strict as ``safetensors.torch.load_model``: every tensor of the files
    must be one of the model's with its shape, and every floating-point tensor of the model must be written
    (tied tensors count once); else ValueError.

    ``load_model`` reads the whole file into new tensors first: a second model in memory, freshly faulted in
    at each WARP run (0.4–1.6 s per 0.5 GB fp32 model on a 2-core VM, against ~0.2 s for this).
    """
    target = model.state_dict(keep_vars=True)
    device = str(next(model.parameters()).device)
    written: set[int] = set()
    for path in [paths] if isinstance(paths, (str, os.PathLike)) else paths:
        with open_streaming(path, device) as f:
            for name in f.keys():
                if name not in target:
                    raise ValueError(f"{path}: tensor '{name}' is not in the model")
                tensor = f.get_tensor(name)
                if tensor.shape != target[name].shape:  # copy_ would broadcast
                    raise ValueError(f"{path}: tensor '{name}' has shape {list(tensor.shape)}, the model's "
                                     f"{list(target[name].shape)}")
                target[name].copy_(tensor if value is None else value(name, tensor))
                written.add(target[name].data_ptr())
    missing = [n for n, t in target.items() if t.is_floating_point() and t.data_ptr() not in written]
    if missing:
        raise ValueError(f"{paths} lacks {len(missing)} of the model's tensors (e.g. '{missing[0]}')")


def _file_shapes(f: Any) -> dict[str, list[int]]:
    # get_slice reads only the header, so validation costs no tensor loads.
    return {k: f.get_slice(k).get_shape() for k in f.keys()}


def _tied_names(f: Any) -> dict[str, str]:
    """A tied tensor's other name → the name the file stores it under: safetensors' ``save_model`` records the
    names it dropped in the metadata (``{"model.embed_tokens.weight": "lm_head.weight"}``); HF files have none."""
    keys = set(f.keys())
    return {a: b for a, b in (f.metadata() or {}).items() if b in keys and a not in keys}


def _names_in(f: Any, init_keys: Sequence[str], init_tied: dict[str, str]) -> dict[str, str]:
    """Each of θ_init's names → the file's name for that tensor: the same one, or its tied twin (a file written
    under the other name of the tied embedding/lm_head pair, e.g. by an older warprl)."""
    keys, tied = set(f.keys()), _tied_names(f)
    twins = {b: a for a, b in init_tied.items()}  # init's stored name → the name it dropped
    return {k: k if k in keys else tied.get(k, twins.get(k, k)) for k in init_keys}


@contextlib.contextmanager
def _stream(init_path, paths: Sequence, device: str | torch.device = "cpu"):
    """The one streaming driver: opens the files, checks they hold the same tensors, and yields the init
    file's metadata and an iterator of ``(name, init tensor, [tensor of each path])``, one name at a time."""
    dev = str(device)
    with contextlib.ExitStack() as stack:
        f_init = stack.enter_context(open_streaming(init_path, dev))
        fs = [stack.enter_context(open_streaming(p, dev)) for p in paths]
        init_keys, init_tied = list(f_init.keys()), _tied_names(f_init)
        names, others = [], []
        for p, f in zip(paths, fs, strict=True):
            n, shapes = _names_in(f, init_keys, init_tied), _file_shapes(f)
            as_init = {n[k]: k for k in init_keys if n[k] in shapes}
            names.append(n)
            others.append((str(p), {as_init.get(k, k): v for k, v in shapes.items()}))  # under θ_init's names
        check_structure(str(init_path), _file_shapes(f_init), others)
        yield f_init.metadata(), ((k, f_init.get_tensor(k), [f.get_tensor(n[k]) for f, n in zip(fs, names, strict=True)])
                                  for k in init_keys)


def _kernel(op: str | Callable[..., torch.Tensor], n: int, kw: dict[str, Any]) -> tuple[Kernel, int | None]:
    """The per-tensor kernel of ``op`` for ``n`` models (consuming its keywords from ``kw``), and the index
    (0 = init) whose tensors are copied verbatim instead of merged, if any."""
    select: int | None = None
    kernel: Kernel
    if callable(op):
        fn = op
        kernel = lambda i, ts: fn(i, ts, **kw)  # noqa: E731
        return kernel, None
    if op == "slerp":
        kernel = slerp_kernel(
            n,
            kw.pop("lam", None),
            kw.pop("method", "iterative"),
            kw.pop("eps", 1e-8),
            kw.pop("collinear_threshold", 1 - 1e-6),
        )
    elif op == "lerp":
        kernel = lerp_kernel(n, kw.pop("lam", None))
    elif op in ("liti", "interpolate"):
        if n != 1:
            raise ValueError(f"op {op!r} takes exactly one path besides init_path, got {n}")
        name = "eta" if op == "liti" else "t"
        if name not in kw:
            raise TypeError(f"merge_files(op={op!r}) requires the keyword argument {name!r}")
        w = float(kw.pop(name))
        if op == "interpolate" and w in (0.0, 1.0):
            select = int(w)  # exact endpoints, as in interpolate()
        kernel = lambda i, ts: lerp2(i, ts[0], w)  # noqa: E731
    else:
        raise ValueError(f"unknown op {op!r}; expected 'slerp', 'lerp', 'liti', 'interpolate' or a callable")
    if kw:
        raise TypeError(f"unexpected keyword arguments for op {op!r}: {sorted(kw)}")
    return kernel, select


def _write(out_path, tensors: dict[str, torch.Tensor], metadata) -> str:
    # One write path for every result file: temp file, fsync, rename (a kill leaves the old file or none).
    return atomic_write(out_path, lambda tmp: save_file(tensors, tmp, metadata=metadata), digest=True)


def merge_files(
    init_path: str | os.PathLike[str],
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out_path: str | os.PathLike[str],
    op: str | Callable[..., torch.Tensor],
    *,
    device: str | torch.device = "cpu",
    **kw: Any,
) -> str:
    """Merge safetensors files one tensor name at a time and write ``out_path`` atomically; returns its sha256.

    At most one tensor per input is loaded at a time; only the output (one model) is accumulated, because
    ``save_file`` needs the whole dict. ``op`` and the meaning of ``init_path``/``paths``:

    * ``"slerp"`` / ``"lerp"``: ``init_path`` is theta_init, ``paths`` the M models; ``kw`` as in
      :func:`slerp` / :func:`lerp` (``lam``, ``method``, ``eps``, ``collinear_threshold``).
    * ``"liti"``: ``init_path`` is theta_init, ``paths`` the single merged model; ``kw``: ``eta``.
    * ``"interpolate"``: ``init_path`` is ``a``, ``paths`` the single ``b``; ``kw``: ``t``.
    * a callable ``op(init, ts, **kw) -> Tensor`` receiving the reference tensor and the list of model
      tensors for one name, upcast to fp32 (fp64 kept); its result is cast back to the reference dtype.

    Non-float tensors are copied from ``init_path``; the init file's metadata is kept. ``device`` is where
    tensors are loaded and merged (results are moved to CPU for saving).
    """
    path_list = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
    kernel, select = _kernel(op, len(path_list), dict(kw))
    out: dict[str, torch.Tensor] = {}
    with _stream(init_path, path_list, device) as (metadata, tensors):
        for k, init, ts in tensors:
            if select is not None:
                res = init if select == 0 else ts[0]
            else:
                res = apply_kernel(kernel, k, init, ts)
            out[k] = res.to("cpu").contiguous()
    return _write(out_path, out, metadata)


def merge_liti_files(
    init_path: str | os.PathLike[str],
    paths: Sequence[str | os.PathLike[str]],
    merged_path: str | os.PathLike[str],
    liti_path: str | os.PathLike[str],
    op: str,
    *,
    eta: float,
    device: str | torch.device = "cpu",
    **kw: Any,
) -> tuple[list[list[float]], str, str]:
    """A WARP iteration's merge in one streaming pass over θ_init and the M runs: θ_merged = ``op`` (``"slerp"``
    or ``"lerp"``, ``kw`` as in :func:`merge_files`) into ``merged_path``, θ_liti = (1 − η)·θ_init + η·θ_merged
    into ``liti_path``, and the task vectors' Gram matrix (:func:`task_vector_gram_files`).

    The same bits as :func:`merge_files` for the merge, then for LITI on the merged file, and the same Gram
    matrix, reading the runs once (θ_init twice) instead of three times and never the merged file. Like
    :func:`merge_files` it holds one model: the LITI replaces the merged tensors once they are on disk.
    Returns (Gram matrix, sha256 of ``merged_path``, sha256 of ``liti_path``).
    """
    path_list = list(paths)
    kernel, _ = _kernel(op, len(path_list), dict(kw))
    liti_kernel, _ = _kernel("liti", 1, {"eta": eta})
    out: dict[str, torch.Tensor] = {}
    gram = _Gram(len(path_list))
    with _stream(init_path, path_list, device) as (metadata, tensors):
        for k, init, ts in tensors:
            gram.add(init, ts)
            out[k] = apply_kernel(kernel, k, init, ts).to("cpu").contiguous()
    merged_sha = _write(merged_path, out, metadata)
    with _stream(init_path, [], device) as (_, tensors):
        for k, init, _ in tensors:
            out[k] = apply_kernel(liti_kernel, k, init, [out[k]]).to("cpu").contiguous()
    return gram.matrix(), merged_sha, _write(liti_path, out, metadata)


class _Gram:
    """⟨δ_a, δ_b⟩ of the task vectors δ_m = θ_m − θ_init, summed one tensor name at a time (float tensors)."""

    def __init__(self, m: int):
        self.m = m
        self.gram = [[0.0] * m for _ in range(m)]

    def add(self, init: torch.Tensor, ts: Sequence[torch.Tensor]) -> None:
        if not init.is_floating_point():
            return
        cdt = compute_dtype(init.dtype)
        base = init.to(cdt)
        deltas = [(t.to(device=init.device, dtype=cdt) - base).reshape(-1) for t in ts]
        for i in range(self.m):
            for j in range(i, self.m):
                self.gram[i][j] += float(torch.dot(deltas[i], deltas[j]))

    def matrix(self) -> list[list[float]]:
        g = [row[:] for row in self.gram]
        for i in range(self.m):
            for j in range(i):
                g[i][j] = g[j][i]
        return g


def task_vector_gram_files(
    init_path: str | os.PathLike[str],
    paths: Sequence[str | os.PathLike[str]],
    *,
    device: str | torch.device = "cpu",
) -> list[list[float]]:
    """Gram matrix ⟨δ_a, δ_b⟩ of the task vectors δ_m = θ_m − θ_init over all float tensors, in one streaming
    pass (one tensor per file in memory): norms and every pairwise angle of M runs without M² reads."""
    gram = _Gram(len(paths))
    with _stream(init_path, paths, device) as (_, tensors):
        for _, v, ts in tensors:
            gram.add(v, ts)
    return gram.matrix()


def task_vector_angle_files(
    init_path: str | os.PathLike[str],
    path_a: str | os.PathLike[str],
    path_b: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
) -> float:
    """Streaming :func:`task_vector_angle` over safetensors files (one tensor per file in memory)."""
    gram = task_vector_gram_files(init_path, [path_a, path_b], device=device)
    return angle_degrees(gram[0][1], gram[0][0], gram[1][1])
