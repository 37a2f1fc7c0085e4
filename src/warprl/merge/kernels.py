"""Merging in memory: the per-tensor kernels (EMA, LERP, SLERP of task vectors with its LERP fallback, LITI,
interpolation) and their state-dict API. Pure functions of tensors; :mod:`warprl.merge.files` runs the same
kernels streamed over safetensors files.

The helpers without a leading underscore that :mod:`warprl.merge` does not re-export (``apply_kernel``,
``check_structure``, ``compute_dtype``, the kernel factories) are shared with :mod:`warprl.merge.files` and
:mod:`warprl.lora_merge`, so that every merge path checks and computes the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Literal

import torch

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


def check_structure(
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
    check_structure(
        ref_name,
        {k: v.shape for k, v in ref.items()},
        [(n, {k: v.shape for k, v in sd.items()}) for n, sd in others],
    )


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # fp32 at least (bf16/fp16 lose too much in sums and norms); never downcast fp64.
    return torch.float64 if dtype == torch.float64 else torch.float32


def apply_kernel(
    kernel: Kernel, name: str, ref: torch.Tensor, others: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Run ``kernel`` on one tensor name: upcast, merge, cast back to ``ref.dtype``; copy non-float buffers."""
    is_float = ref.is_floating_point()
    if any(o.is_floating_point() != is_float for o in others):
        raise ValueError(f"dtype mismatch for {name!r}: cannot merge floating-point with non-float tensors")
    if not is_float:
        return ref.clone()
    cdt = compute_dtype(ref.dtype)
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
    return {k: apply_kernel(kernel, k, v, [sd[k] for sd in others]) for k, v in ref.items()}


def _clone_sd(sd: StateDict) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in sd.items()}


# ----------------------------------------------------------------------------------------------------------
# Per-tensor kernels (inputs already in compute dtype); shared by the dict and file versions
# ----------------------------------------------------------------------------------------------------------


def lerp2(a: torch.Tensor, b: torch.Tensor, w: float) -> torch.Tensor:
    # torch.lerp returns exactly ``a`` at w=0 and exactly ``b`` at w=1 (it switches formula at w=0.5).
    return torch.lerp(a, b, w)


def _ema_tensor(ema_t: torch.Tensor, ts: list[torch.Tensor], mu: float) -> torch.Tensor:
    return lerp2(ema_t, ts[0], mu)


def _liti_tensor(init: torch.Tensor, ts: list[torch.Tensor], eta: float) -> torch.Tensor:
    return lerp2(init, ts[0], eta)


def _interpolate_tensor(a: torch.Tensor, ts: list[torch.Tensor], t: float) -> torch.Tensor:
    return lerp2(a, ts[0], t)


def _lerp_tensor(init: torch.Tensor, ts: list[torch.Tensor], lam: float | None) -> torch.Tensor:
    """(1-lam)*t1 + lam*t2 for two tensors, the uniform mean otherwise (lam must then be None)."""
    del init  # weight averaging does not depend on the init; kept for a signature uniform with slerp
    if lam is not None:
        return lerp2(ts[0], ts[1], lam)
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
        return lerp2(d1, d2, lam)
    cos = float(torch.dot(d1.reshape(-1), d2.reshape(-1))) / (n1 * n2)
    cos = min(1.0, max(-1.0, cos))
    if abs(cos) > collinear_threshold:
        # sin(Omega) ~ 0: the SLERP coefficients become 0/0; LERP is the limit for parallel vectors.
        return lerp2(d1, d2, lam)
    omega = math.acos(cos)
    sin_omega = math.sin(omega)
    c1 = math.sin((1.0 - lam) * omega) / sin_omega
    c2 = math.sin(lam * omega) / sin_omega
    return torch.mul(d1, c1).add_(d2, alpha=c2)  # one temporary: the merge streams 100 MB tensors


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
    merged = slerp_deltas([t - init for t in ts], lam, method=method, eps=eps, collinear_threshold=collinear_threshold)
    return merged.add_(init)  # in place: the deltas, hence the merged one, are this call's own tensors


def slerp_deltas(deltas: list[torch.Tensor], lam: float | None = None, *, method: str = "iterative",
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
    cdt = compute_dtype(init.dtype)
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


def check_n_models(n: int, lam: float | None, what: str) -> None:
    if n < 1:
        raise ValueError(f"{what} needs at least one model")
    if lam is not None and n != 2:
        raise ValueError(f"{what}: lam is only defined for exactly two models (got {n}); pass lam=None")


def slerp_kernel(n: int, lam: float | None, method: str, eps: float, collinear_threshold: float) -> Kernel:
    check_n_models(n, lam, "slerp")
    if method not in ("iterative", "spherical_mean"):
        raise ValueError(f"unknown slerp method {method!r}; expected 'iterative' or 'spherical_mean'")

    def kernel(init: torch.Tensor, ts: list[torch.Tensor]) -> torch.Tensor:
        return _slerp_tensor(init, ts, lam, method=method, eps=eps, collinear_threshold=collinear_threshold)

    return kernel


def lerp_kernel(n: int, lam: float | None) -> Kernel:
    check_n_models(n, lam, "lerp")
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
            e_c = e.to(compute_dtype(e.dtype))
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
    kernel = lerp_kernel(len(sds), lam)
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
    kernel = slerp_kernel(len(sds), lam, method, eps, collinear_threshold)
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


