"""Weight-space merging for WARP (Ramé et al., 2024): EMA, SLERP of task vectors, LITI, interpolation.

Everything here works on state dicts (``dict[str, torch.Tensor]``) or, for the streaming variants, on
safetensors files, so that merging M policies never needs M models in memory at once.

Conventions shared by every function:

* Math is done in at least fp32 (fp64 tensors stay fp64), whatever the storage dtype; each result is cast
  back to the dtype of the reference tensor (the EMA / init / first operand).
* Non-float tensors (integer or bool buffers) are copied unchanged from the reference dict.
* Keys and shapes must match across all inputs, otherwise ``ValueError`` is raised.
* Inputs are never modified in place, except by :func:`ema_`, which is in place by design.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from warprl.io import atomic_write

__all__ = [
    "StateDict",
    "angle_degrees",
    "ema",
    "ema_",
    "interpolate",
    "lerp",
    "liti",
    "merge_files",
    "open_streaming",
    "slerp",
    "task_vector_angle",
    "task_vector_angle_files",
    "task_vector_gram_files",
]

StateDict = Mapping[str, torch.Tensor]
# A per-tensor kernel: (reference tensor, other tensors) in compute dtype -> merged tensor.
Kernel = Callable[[torch.Tensor, list[torch.Tensor]], torch.Tensor]
SlerpMethod = Literal["iterative", "spherical_mean"]


# ----------------------------------------------------------------------------------------------------------
# Validation and the shared per-tensor driver
# ----------------------------------------------------------------------------------------------------------


def _fmt_keys(keys: Iterable[str], limit: int = 5) -> str:
    keys = sorted(keys)
    shown = ", ".join(repr(k) for k in keys[:limit])
    return f"[{shown}{', ...' if len(keys) > limit else ''}] ({len(keys)} total)"


def _check_structure(
    ref_name: str,
    ref_shapes: Mapping[str, Sequence[int]],
    others: Sequence[tuple[str, Mapping[str, Sequence[int]]]],
) -> None:
    """Raise ValueError unless every ``others`` mapping has exactly the keys and shapes of ``ref_shapes``."""
    ref_keys = set(ref_shapes)
    for name, shapes in others:
        keys = set(shapes)
        if keys != ref_keys:
            parts = []
            if ref_keys - keys:
                parts.append(f"missing from {name}: {_fmt_keys(ref_keys - keys)}")
            if keys - ref_keys:
                parts.append(f"unexpected in {name}: {_fmt_keys(keys - ref_keys)}")
            raise ValueError(f"key mismatch between {ref_name} and {name}; " + "; ".join(parts))
        for k in ref_shapes:
            if tuple(shapes[k]) != tuple(ref_shapes[k]):
                raise ValueError(
                    f"shape mismatch for {k!r}: {ref_name} has {tuple(ref_shapes[k])}, "
                    f"{name} has {tuple(shapes[k])}"
                )


def _check_dicts(ref_name: str, ref: StateDict, others: Sequence[tuple[str, StateDict]]) -> None:
    _check_structure(
        ref_name,
        {k: v.shape for k, v in ref.items()},
        [(n, {k: v.shape for k, v in sd.items()}) for n, sd in others],
    )


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # fp32 at least (bf16/fp16 lose too much in sums and norms); never downcast fp64.
    return torch.float64 if dtype == torch.float64 else torch.float32


def _apply_kernel(
    kernel: Kernel, name: str, ref: torch.Tensor, others: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Run ``kernel`` on one tensor name: upcast, merge, cast back to ``ref.dtype``; copy non-float buffers."""
    is_float = ref.is_floating_point()
    if any(o.is_floating_point() != is_float for o in others):
        raise ValueError(f"dtype mismatch for {name!r}: cannot merge floating-point with non-float tensors")
    if not is_float:
        return ref.clone()
    cdt = _compute_dtype(ref.dtype)
    ref_c = ref.to(cdt)
    others_c = [o.to(device=ref.device, dtype=cdt) for o in others]
    out = kernel(ref_c, others_c)
    if out.shape != ref.shape:
        raise ValueError(
            f"merge kernel returned shape {tuple(out.shape)} for {name!r}, expected {tuple(ref.shape)}"
        )
    out = out.to(ref.dtype)
    # .to() is a no-op for matching dtypes, so a kernel returning an input would alias the caller's tensor.
    if any(out.data_ptr() == t.data_ptr() for t in (ref, *others)):
        out = out.clone()
    return out


def _merge_dicts(kernel: Kernel, ref: StateDict, others: Sequence[StateDict]) -> dict[str, torch.Tensor]:
    return {k: _apply_kernel(kernel, k, v, [sd[k] for sd in others]) for k, v in ref.items()}


def _clone_sd(sd: StateDict) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in sd.items()}


# ----------------------------------------------------------------------------------------------------------
# Per-tensor kernels (inputs already in compute dtype); shared by the dict and file versions
# ----------------------------------------------------------------------------------------------------------


def _lerp2(a: torch.Tensor, b: torch.Tensor, w: float) -> torch.Tensor:
    # torch.lerp returns exactly ``a`` at w=0 and exactly ``b`` at w=1 (it switches formula at w=0.5).
    return torch.lerp(a, b, w)


def _ema_tensor(ema_t: torch.Tensor, ts: list[torch.Tensor], mu: float) -> torch.Tensor:
    return _lerp2(ema_t, ts[0], mu)


def _liti_tensor(init: torch.Tensor, ts: list[torch.Tensor], eta: float) -> torch.Tensor:
    return _lerp2(init, ts[0], eta)


def _interpolate_tensor(a: torch.Tensor, ts: list[torch.Tensor], t: float) -> torch.Tensor:
    return _lerp2(a, ts[0], t)


def _lerp_tensor(init: torch.Tensor, ts: list[torch.Tensor], lam: float | None) -> torch.Tensor:
    """(1-lam)*t1 + lam*t2 for two tensors, the uniform mean otherwise (lam must then be None)."""
    del init  # weight averaging does not depend on the init; kept for a signature uniform with slerp
    if lam is not None:
        return _lerp2(ts[0], ts[1], lam)
    acc = ts[0].clone()  # clone: ts[0] may be the caller's tensor when no upcast was needed
    for t in ts[1:]:
        acc.add_(t)
    return acc.div_(len(ts))


def _slerp_pair(
    d1: torch.Tensor, d2: torch.Tensor, lam: float, eps: float, collinear_threshold: float
) -> torch.Tensor:
    """SLERP between two task vectors (same shape); LERP fallback where the angle is ill-defined."""
    n1 = float(torch.linalg.vector_norm(d1))
    n2 = float(torch.linalg.vector_norm(d2))
    if n1 < eps or n2 < eps:
        # A (near-)zero task vector has no direction: SLERP would divide by ~0.
        return _lerp2(d1, d2, lam)
    cos = float(torch.dot(d1.reshape(-1), d2.reshape(-1))) / (n1 * n2)
    cos = min(1.0, max(-1.0, cos))
    if abs(cos) > collinear_threshold:
        # sin(Omega) ~ 0: the SLERP coefficients become 0/0; LERP is the limit for parallel vectors.
        return _lerp2(d1, d2, lam)
    omega = math.acos(cos)
    sin_omega = math.sin(omega)
    c1 = math.sin((1.0 - lam) * omega) / sin_omega
    c2 = math.sin(lam * omega) / sin_omega
    return d1 * c1 + d2 * c2


def _spherical_mean(deltas: list[torch.Tensor], weights: list[float], eps: float) -> torch.Tensor:
    """One-shot spherical mean: weighted mean of unit directions, renormalised to the weighted mean norm."""
    norms = [float(torch.linalg.vector_norm(d)) for d in deltas]
    mean_norm = sum(w * n for w, n in zip(weights, norms, strict=True))
    if min(norms) < eps:
        # Zero task vectors have no direction: fall back to the (weighted) arithmetic mean.
        return sum((d * w for d, w in zip(deltas, weights, strict=True)), torch.zeros_like(deltas[0]))
    direction = torch.zeros_like(deltas[0])
    for d, w, n in zip(deltas, weights, norms, strict=True):
        direction.add_(d, alpha=w / n)
    dn = float(torch.linalg.vector_norm(direction))
    if dn < eps:
        # Directions cancel (e.g. antipodal): no preferred direction, use the arithmetic mean.
        return sum((d * w for d, w in zip(deltas, weights, strict=True)), torch.zeros_like(deltas[0]))
    return direction.mul_(mean_norm / dn)


def _slerp_tensor(
    init: torch.Tensor,
    ts: list[torch.Tensor],
    lam: float | None = None,
    *,
    method: str = "iterative",
    eps: float = 1e-8,
    collinear_threshold: float = 1 - 1e-6,
) -> torch.Tensor:
    """SLERP of the task vectors ``t - init`` for one tensor; see :func:`slerp`."""
    return init + _slerp_deltas([t - init for t in ts], lam, method=method, eps=eps,
                                collinear_threshold=collinear_threshold)


def _slerp_deltas(deltas: list[torch.Tensor], lam: float | None = None, *, method: str = "iterative",
                  eps: float = 1e-8, collinear_threshold: float = 1 - 1e-6) -> torch.Tensor:
    """The merged task vector of :func:`_slerp_tensor`, from the task vectors themselves (LoRA runs' ΔW)."""
    m = len(deltas)
    if method == "iterative":
        acc = deltas[0]
        for i in range(1, m):
            # slerp_{i+1} = slerp(slerp_i, delta_{i+1}, 1/(i+1)); with two models the caller's lam applies.
            w = (0.5 if lam is None else lam) if m == 2 else 1.0 / (i + 1)
            acc = _slerp_pair(acc, deltas[i], w, eps, collinear_threshold)
        merged = acc
    elif method == "spherical_mean":
        weights = [1.0 - lam, lam] if (m == 2 and lam is not None) else [1.0 / m] * m
        merged = _spherical_mean(deltas, weights, eps)
    else:
        raise ValueError(f"unknown slerp method {method!r}; expected 'iterative' or 'spherical_mean'")
    return merged


def _angle_terms(init: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> tuple[float, float, float]:
    """(<da, db>, |da|^2, |db|^2) for one float tensor, computed in compute dtype."""
    cdt = _compute_dtype(init.dtype)
    i = init.to(cdt)
    da = (a.to(device=init.device, dtype=cdt) - i).reshape(-1)
    db = (b.to(device=init.device, dtype=cdt) - i).reshape(-1)
    return float(torch.dot(da, db)), float(torch.dot(da, da)), float(torch.dot(db, db))


def angle_degrees(dot: float, na2: float, nb2: float) -> float:
    """Angle in degrees from a dot product and two squared norms; NaN when a vector is zero."""
    denom = math.sqrt(na2) * math.sqrt(nb2)
    if denom == 0.0:
        return math.nan  # a zero task vector has no direction
    return math.degrees(math.acos(min(1.0, max(-1.0, dot / denom))))


# ----------------------------------------------------------------------------------------------------------
# Kernel factories: argument checks in one place for the dict and file versions
# ----------------------------------------------------------------------------------------------------------


def _check_mu(mu: float) -> None:
    if not 0.0 <= mu <= 1.0:
        raise ValueError(f"EMA rate mu must be in [0, 1], got {mu}")


def _check_n_models(n: int, lam: float | None, what: str) -> None:
    if n < 1:
        raise ValueError(f"{what} needs at least one model")
    if lam is not None and n != 2:
        raise ValueError(f"{what}: lam is only defined for exactly two models (got {n}); pass lam=None")


def _slerp_kernel(n: int, lam: float | None, method: str, eps: float, collinear_threshold: float) -> Kernel:
    _check_n_models(n, lam, "slerp")
    if method not in ("iterative", "spherical_mean"):
        raise ValueError(f"unknown slerp method {method!r}; expected 'iterative' or 'spherical_mean'")

    def kernel(init: torch.Tensor, ts: list[torch.Tensor]) -> torch.Tensor:
        return _slerp_tensor(init, ts, lam, method=method, eps=eps, collinear_threshold=collinear_threshold)

    return kernel


def _lerp_kernel(n: int, lam: float | None) -> Kernel:
    _check_n_models(n, lam, "lerp")
    if n == 2 and lam is None:
        lam = 0.5
    return lambda init, ts: _lerp_tensor(init, ts, lam)


# ----------------------------------------------------------------------------------------------------------
# Public API: state dicts
# ----------------------------------------------------------------------------------------------------------


def ema(ema_sd: StateDict, sd: StateDict, mu: float) -> dict[str, torch.Tensor]:
    """Return ``(1 - mu) * ema_sd + mu * sd`` (a new dict); non-float buffers come from ``ema_sd``."""
    _check_mu(mu)
    _check_dicts("ema_sd", ema_sd, [("sd", sd)])
    return _merge_dicts(lambda e, ts: _ema_tensor(e, ts, mu), ema_sd, [sd])


@torch.no_grad()
def ema_(ema_params: Iterable[torch.Tensor], params: Iterable[torch.Tensor], mu: float) -> None:
    """In place ``ema <- (1 - mu) * ema + mu * param`` over paired tensors (e.g. ``module.parameters()``).

    Meant to run every training step, so fp32/fp64 pairs of matching dtype and device go through one
    ``torch._foreach_lerp_`` call; other pairs (bf16 storage, mixed dtypes) are updated in fp32 and copied
    back. Keep the EMA in fp32: with bf16 storage, small updates are rounded away. Non-float tensors are
    left unchanged.
    """
    _check_mu(mu)
    ema_list, p_list = list(ema_params), list(params)
    if len(ema_list) != len(p_list):
        raise ValueError(f"ema_ got {len(ema_list)} EMA tensors but {len(p_list)} parameters")
    fast_e: list[torch.Tensor] = []
    fast_p: list[torch.Tensor] = []
    for i, (e, p) in enumerate(zip(ema_list, p_list, strict=True)):
        if e.shape != p.shape:
            raise ValueError(f"ema_: shape mismatch at index {i}: {tuple(e.shape)} vs {tuple(p.shape)}")
        if not e.is_floating_point():
            continue
        if e.dtype == p.dtype and e.dtype in (torch.float32, torch.float64) and e.device == p.device:
            fast_e.append(e)
            fast_p.append(p)
        else:
            e_c = e.to(_compute_dtype(e.dtype))
            e_c.lerp_(p.to(device=e.device, dtype=e_c.dtype), mu)
            if e_c is not e:
                e.copy_(e_c)
    if fast_e:
        torch._foreach_lerp_(fast_e, fast_p, mu)


def liti(init_sd: StateDict, merged_sd: StateDict, eta: float) -> dict[str, torch.Tensor]:
    """Linear interpolation towards init (WARP step 3): ``(1 - eta) * init + eta * merged``."""
    _check_dicts("init_sd", init_sd, [("merged_sd", merged_sd)])
    return _merge_dicts(lambda i, ts: _liti_tensor(i, ts, eta), init_sd, [merged_sd])


def interpolate(sd_a: StateDict, sd_b: StateDict, t: float) -> dict[str, torch.Tensor]:
    """``(1 - t) * a + t * b``; ``t == 0`` returns a copy of ``a`` and ``t == 1`` a copy of ``b``, bit for bit."""
    _check_dicts("sd_a", sd_a, [("sd_b", sd_b)])
    # Copy rather than compute at the endpoints so that even dtypes differing between a and b survive exactly.
    if t == 0:
        return _clone_sd(sd_a)
    if t == 1:
        return {k: sd_b[k].clone() for k in sd_a}
    return _merge_dicts(lambda a, ts: _interpolate_tensor(a, ts, t), sd_a, [sd_b])


def lerp(init_sd: StateDict, sds: Sequence[StateDict], lam: float | None = None) -> dict[str, torch.Tensor]:
    """Weight averaging: ``(1 - lam) * sds[0] + lam * sds[1]`` for two models (lam defaults to 0.5), the
    uniform mean for any other number (lam must be None). ``init_sd`` is only validated (uniform signature
    with :func:`slerp`) and supplies non-float buffers."""
    sds = list(sds)
    kernel = _lerp_kernel(len(sds), lam)
    _check_dicts("init_sd", init_sd, [(f"sds[{i}]", sd) for i, sd in enumerate(sds)])
    return _merge_dicts(kernel, init_sd, sds)


def slerp(
    init_sd: StateDict,
    sds: Sequence[StateDict],
    lam: float | None = None,
    *,
    method: SlerpMethod = "iterative",
    eps: float = 1e-8,
    collinear_threshold: float = 1 - 1e-6,
) -> dict[str, torch.Tensor]:
    """Spherical interpolation of task vectors ``delta_m = theta_m - theta_init``, tensor by tensor.

    Two models: ``init + sin((1-lam) W)/sin W * delta_1 + sin(lam W)/sin W * delta_2`` with
    ``cos W = <delta_1, delta_2> / (|delta_1| |delta_2|)`` (lam defaults to 0.5). Where ``|cos W| >
    collinear_threshold`` or a norm is below ``eps`` the task vectors are LERPed instead.

    More models (lam must be None):

    * ``method="iterative"`` (WARP paper): ``slerp_M = slerp(slerp_{M-1}, theta_M, lam=1/M)``, same init.
      Depends on the order of ``sds`` in general.
    * ``method="spherical_mean"``: one shot and order independent: the mean of the unit task-vector
      directions, rescaled to the mean task-vector norm (weights ``(1-lam, lam)`` for two models). It equals
      the iterative rule for two equal-norm task vectors at lam=0.5; it falls back to the arithmetic mean of
      task vectors when a norm is below ``eps`` or the directions cancel.

    A single model is returned unchanged (up to dtype round trip).
    """
    sds = list(sds)
    kernel = _slerp_kernel(len(sds), lam, method, eps, collinear_threshold)
    _check_dicts("init_sd", init_sd, [(f"sds[{i}]", sd) for i, sd in enumerate(sds)])
    return _merge_dicts(kernel, init_sd, sds)


def task_vector_angle(init_sd: StateDict, sd_a: StateDict, sd_b: StateDict) -> float:
    """Angle in degrees between the whole flattened task vectors ``sd_a - init`` and ``sd_b - init``.

    Float tensors only. WARP expects ~90 degrees between independently RL-trained policies. Returns NaN if
    either task vector is zero.
    """
    _check_dicts("init_sd", init_sd, [("sd_a", sd_a), ("sd_b", sd_b)])
    dot = na2 = nb2 = 0.0
    for k, v in init_sd.items():
        if v.is_floating_point():
            d, a2, b2 = _angle_terms(v, sd_a[k], sd_b[k])
            dot, na2, nb2 = dot + d, na2 + a2, nb2 + b2
    return angle_degrees(dot, na2, nb2)


# ----------------------------------------------------------------------------------------------------------
# Public API: streaming over safetensors files
# ----------------------------------------------------------------------------------------------------------


def open_streaming(path: str | os.PathLike, device: str = "cpu"):
    """``safe_open`` that reads with pread where available (safetensors >= 0.8).

    With the default mmap every page read stays in this process's RSS until the file is closed, i.e. all
    M + 1 models by the end of a streamed merge; with pread only the tensors in flight are resident.
    """
    try:
        return safe_open(os.fspath(path), framework="pt", device=device, backend="pread")
    except TypeError:  # older safetensors: no backend argument
        return safe_open(os.fspath(path), framework="pt", device=device)


def _file_shapes(f: Any) -> dict[str, list[int]]:
    # get_slice reads only the header, so validation costs no tensor loads.
    return {k: f.get_slice(k).get_shape() for k in f.keys()}


@contextlib.contextmanager
def _stream(init_path, paths: Sequence, device: str | torch.device = "cpu"):
    """The one streaming driver: opens the files, checks they hold the same tensors, and yields the init
    file's metadata and an iterator of ``(name, init tensor, [tensor of each path])``, one name at a time."""
    dev = str(device)
    with contextlib.ExitStack() as stack:
        f_init = stack.enter_context(open_streaming(init_path, dev))
        fs = [stack.enter_context(open_streaming(p, dev)) for p in paths]
        _check_structure(str(init_path), _file_shapes(f_init),
                         [(str(p), _file_shapes(f)) for p, f in zip(paths, fs, strict=True)])
        yield f_init.metadata(), ((k, f_init.get_tensor(k), [f.get_tensor(k) for f in fs]) for k in f_init.keys())


def merge_files(
    init_path: str | os.PathLike[str],
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out_path: str | os.PathLike[str],
    op: str | Callable[..., torch.Tensor],
    *,
    device: str | torch.device = "cpu",
    **kw: Any,
) -> None:
    """Merge safetensors files one tensor name at a time and write ``out_path`` atomically.

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
    n = len(path_list)
    select: int | None = None  # index (0 = init) whose tensors are copied verbatim instead of merged
    kernel: Kernel
    if callable(op):
        fn = op
        kernel = lambda i, ts: fn(i, ts, **kw)  # noqa: E731
    elif op == "slerp":
        kernel = _slerp_kernel(
            n,
            kw.pop("lam", None),
            kw.pop("method", "iterative"),
            kw.pop("eps", 1e-8),
            kw.pop("collinear_threshold", 1 - 1e-6),
        )
    elif op == "lerp":
        kernel = _lerp_kernel(n, kw.pop("lam", None))
    elif op in ("liti", "interpolate"):
        if n != 1:
            raise ValueError(f"op {op!r} takes exactly one path besides init_path, got {n}")
        name = "eta" if op == "liti" else "t"
        if name not in kw:
            raise TypeError(f"merge_files(op={op!r}) requires the keyword argument {name!r}")
        w = float(kw.pop(name))
        if op == "interpolate" and w in (0.0, 1.0):
            select = int(w)  # exact endpoints, as in interpolate()
        kernel = lambda i, ts: _lerp2(i, ts[0], w)  # noqa: E731
    else:
        raise ValueError(f"unknown op {op!r}; expected 'slerp', 'lerp', 'liti', 'interpolate' or a callable")
    if not callable(op) and kw:
        raise TypeError(f"unexpected keyword arguments for op {op!r}: {sorted(kw)}")

    out: dict[str, torch.Tensor] = {}
    with _stream(init_path, path_list, device) as (metadata, tensors):
        for k, init, ts in tensors:
            if select is not None:
                res = init if select == 0 else ts[0]
            else:
                res = _apply_kernel(kernel, k, init, ts)
            out[k] = res.to("cpu").contiguous()
    # One write path for every result file: temp file, fsync, rename (a kill leaves the old file or none).
    atomic_write(out_path, lambda tmp: save_file(out, tmp, metadata=metadata))


def task_vector_gram_files(
    init_path: str | os.PathLike[str],
    paths: Sequence[str | os.PathLike[str]],
    *,
    device: str | torch.device = "cpu",
) -> list[list[float]]:
    """Gram matrix ⟨δ_a, δ_b⟩ of the task vectors δ_m = θ_m − θ_init over all float tensors, in one streaming
    pass (one tensor per file in memory): norms and every pairwise angle of M runs without M² reads."""
    m = len(paths)
    gram = [[0.0] * m for _ in range(m)]
    with _stream(init_path, paths, device) as (_, tensors):
        for _, v, ts in tensors:
            if not v.is_floating_point():
                continue
            cdt = _compute_dtype(v.dtype)
            base = v.to(cdt)
            deltas = [(t.to(device=v.device, dtype=cdt) - base).reshape(-1) for t in ts]
            for i in range(m):
                for j in range(i, m):
                    gram[i][j] += float(torch.dot(deltas[i], deltas[j]))
    for i in range(m):
        for j in range(i):
            gram[i][j] = gram[j][i]
    return gram


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
