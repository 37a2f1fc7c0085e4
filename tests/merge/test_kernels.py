"""warprl.merge.kernels: hand-computed values and mathematical properties of WARP's merges."""

from __future__ import annotations

import math

import pytest
import torch

from warprl.merge import ema, ema_, interpolate, lerp, liti, slerp, task_vector_angle

T = torch.tensor
S2 = math.sqrt(2.0) / 2.0


def _sd(**tensors: torch.Tensor) -> dict[str, torch.Tensor]:
    return dict(tensors)


def _norm(x: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(x.float()))


def _snapshot(*sds: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    return [{k: v.clone() for k, v in sd.items()} for sd in sds]


def _assert_unchanged(before: list[dict[str, torch.Tensor]], *sds: dict[str, torch.Tensor]) -> None:
    for b, sd in zip(before, sds, strict=True):
        for k in b:
            assert torch.equal(b[k], sd[k]), f"input tensor {k!r} was modified in place"


# ------------------------------------------------------------------------------------------------ EMA / LITI


def test_ema_hand_computed() -> None:
    e, s = _sd(w=T([1.0, 2.0])), _sd(w=T([3.0, 6.0]))
    before = _snapshot(e, s)
    out = ema(e, s, 0.25)
    torch.testing.assert_close(out["w"], T([1.5, 3.0]))
    _assert_unchanged(before, e, s)
    assert out["w"] is not e["w"]


def test_ema_endpoints_and_bad_mu() -> None:
    e, s = _sd(w=T([1.0, 2.0])), _sd(w=T([3.0, 6.0]))
    assert torch.equal(ema(e, s, 0.0)["w"], e["w"])
    assert torch.equal(ema(e, s, 1.0)["w"], s["w"])
    with pytest.raises(ValueError, match="mu"):
        ema(e, s, 1.5)


def test_ema_inplace_matches_ema() -> None:
    g = torch.Generator().manual_seed(0)
    shapes = [(3, 4), (5,), ()]
    ema_sd = {f"p{i}": torch.randn(s, generator=g) for i, s in enumerate(shapes)}
    ema_sd["bf"] = torch.randn(6, generator=g).bfloat16()  # goes through the fp32 slow path
    model = {k: torch.randn(v.shape, generator=g).to(v.dtype) for k, v in ema_sd.items()}
    expected = ema(ema_sd, model, 0.1)
    module = torch.nn.ParameterDict({k: torch.nn.Parameter(v.clone()) for k, v in ema_sd.items()})
    ema_(list(module.values()), [model[k] for k in module], 0.1)
    for k, v in module.items():
        assert v.dtype == ema_sd[k].dtype
        torch.testing.assert_close(v.detach(), expected[k], rtol=0, atol=1e-6)
    assert all(v.requires_grad for v in module.values())  # no_grad must not break the parameters


def test_ema_inplace_mismatch() -> None:
    with pytest.raises(ValueError):
        ema_([torch.zeros(2)], [torch.zeros(2), torch.zeros(2)], 0.5)
    with pytest.raises(ValueError, match="shape"):
        ema_([torch.zeros(2)], [torch.zeros(3)], 0.5)


def test_liti_hand_computed() -> None:
    init, merged = _sd(w=T([0.0, 4.0])), _sd(w=T([2.0, 0.0]))
    torch.testing.assert_close(liti(init, merged, 0.3)["w"], T([0.6, 2.8]))
    torch.testing.assert_close(liti(init, merged, 1.0)["w"], merged["w"])


# ------------------------------------------------------------------------------------------------ interpolate


def test_interpolate_endpoints_exact_and_midpoint() -> None:
    g = torch.Generator().manual_seed(1)
    a = _sd(w=torch.randn(7, generator=g), h=torch.randn(3, generator=g).bfloat16(), n=T([1, 2]))
    b = _sd(w=torch.randn(7, generator=g), h=torch.randn(3, generator=g).bfloat16(), n=T([1, 2]))
    out0, out1 = interpolate(a, b, 0.0), interpolate(a, b, 1.0)
    for k in a:
        assert torch.equal(out0[k], a[k]) and out0[k] is not a[k]
        assert torch.equal(out1[k], b[k])
    mid = interpolate(a, b, 0.25)
    torch.testing.assert_close(mid["w"], 0.75 * a["w"] + 0.25 * b["w"])
    assert mid["h"].dtype == torch.bfloat16


# ------------------------------------------------------------------------------------------------ lerp


def test_lerp_two_and_many() -> None:
    init = _sd(w=T([0.0, 0.0]))
    a, b, c = _sd(w=T([1.0, 2.0])), _sd(w=T([3.0, 6.0])), _sd(w=T([5.0, 1.0]))
    torch.testing.assert_close(lerp(init, [a, b])["w"], T([2.0, 4.0]))
    torch.testing.assert_close(lerp(init, [a, b], lam=0.25)["w"], T([1.5, 3.0]))
    torch.testing.assert_close(lerp(init, [a, b, c])["w"], T([3.0, 3.0]))
    with pytest.raises(ValueError, match="lam"):
        lerp(init, [a, b, c], lam=0.3)


# ------------------------------------------------------------------------------------------------ slerp


def test_slerp_endpoints() -> None:
    init = _sd(w=T([1.0, 1.0, 1.0]))
    a, b = _sd(w=T([2.0, 1.5, 1.0])), _sd(w=T([0.0, 3.0, 2.0]))
    torch.testing.assert_close(slerp(init, [a, b], lam=0.0)["w"], a["w"])
    torch.testing.assert_close(slerp(init, [a, b], lam=1.0)["w"], b["w"])


def test_slerp_orthogonal_preserves_norm_lerp_shrinks() -> None:
    init = _sd(w=T([10.0, -3.0]))
    a = _sd(w=init["w"] + T([2.0, 0.0]))
    b = _sd(w=init["w"] + T([0.0, 2.0]))
    ds = slerp(init, [a, b])["w"] - init["w"]
    dl = lerp(init, [a, b])["w"] - init["w"]
    assert _norm(ds) == pytest.approx(2.0, rel=1e-6)
    assert _norm(dl) == pytest.approx(2.0 / math.sqrt(2.0), rel=1e-6)
    torch.testing.assert_close(ds, T([2.0 * S2, 2.0 * S2]))


def test_slerp_hand_computed_60_degrees() -> None:
    # delta1 = e1, delta2 at 60 degrees, lam=0.5: coefficients sin(30)/sin(60) = 1/sqrt(3) each.
    init = _sd(w=torch.zeros(2))
    d2 = T([0.5, math.sqrt(3) / 2])
    out = slerp(init, [_sd(w=T([1.0, 0.0])), _sd(w=d2)])["w"]
    torch.testing.assert_close(out, (T([1.0, 0.0]) + d2) / math.sqrt(3))


def test_slerp_collinear_falls_back_to_lerp() -> None:
    init = _sd(w=T([1.0, 2.0, 3.0]))
    a = _sd(w=init["w"] + T([1.0, 1.0, 0.0]))
    b = _sd(w=init["w"] + T([3.0, 3.0, 0.0]))  # same direction, 3x the norm
    for lam in (0.3, 0.5):
        out = slerp(init, [a, b], lam=lam)["w"]
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out, lerp(init, [a, b], lam=lam)["w"])
    anti = _sd(w=init["w"] - T([2.0, 2.0, 0.0]))  # antipodal: sin(Omega) = 0 too
    torch.testing.assert_close(slerp(init, [a, anti])["w"], lerp(init, [a, anti])["w"])


def test_slerp_zero_task_vector_no_nan() -> None:
    init = _sd(w=T([1.0, 2.0]))
    a = _sd(w=init["w"].clone())  # zero task vector
    b = _sd(w=T([3.0, 5.0]))
    for method in ("iterative", "spherical_mean"):
        out = slerp(init, [a, b], method=method)["w"]
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out, lerp(init, [a, b])["w"])


def test_slerp_three_models_iterative_rule() -> None:
    # slerp(e1, e2, 1/2) = (s, s, 0) with s = sqrt(2)/2 (unit norm, 90 deg from e3);
    # slerp(that, e3, 1/3): sin(60)/sin(90) = sqrt(3)/2 and sin(30)/sin(90) = 1/2.
    init = _sd(w=T([1.0, -1.0, 2.0]))
    eye = torch.eye(3)
    sds = [_sd(w=init["w"] + eye[i]) for i in range(3)]
    expected = init["w"] + T([math.sqrt(6) / 4, math.sqrt(6) / 4, 0.5])
    torch.testing.assert_close(slerp(init, sds)["w"], expected)
    with pytest.raises(ValueError, match="lam"):
        slerp(init, sds, lam=0.5)


def test_slerp_spherical_mean() -> None:
    init = _sd(w=torch.zeros(3))
    eye = torch.eye(3)
    sds = [_sd(w=2.0 * eye[i]) for i in range(3)]
    out = slerp(init, sds, method="spherical_mean")["w"]
    # Mean unit direction (1,1,1)/sqrt(3), rescaled to the mean norm 2; symmetric under permutation.
    torch.testing.assert_close(out, torch.full((3,), 2.0 / math.sqrt(3)))
    torch.testing.assert_close(slerp(init, sds[::-1], method="spherical_mean")["w"], out)
    # Two equal-norm task vectors at lam=0.5: identical to the iterative SLERP.
    two = [_sd(w=T([1.0, 0.0, 0.0])), _sd(w=T([0.6, 0.8, 0.0]))]
    torch.testing.assert_close(slerp(init, two, method="spherical_mean")["w"], slerp(init, two)["w"])
    with pytest.raises(ValueError, match="method"):
        slerp(init, two, method="bogus")  # type: ignore[arg-type]


def test_slerp_offset_invariance() -> None:
    g = torch.Generator().manual_seed(2)
    init = _sd(w=torch.randn(4, 3, generator=g), b=torch.randn(3, generator=g))
    sds = [{k: v + torch.randn(v.shape, generator=g) for k, v in init.items()} for _ in range(3)]
    offset = {k: torch.randn(v.shape, generator=g) for k, v in init.items()}
    shift = lambda sd: {k: v + offset[k] for k, v in sd.items()}  # noqa: E731
    for m in (2, 3):
        base = slerp(init, sds[:m])
        moved = slerp(shift(init), [shift(sd) for sd in sds[:m]])
        for k in init:
            torch.testing.assert_close(moved[k], base[k] + offset[k], rtol=1e-5, atol=1e-5)


def test_slerp_is_per_tensor() -> None:
    # "x" task vectors are orthogonal (norm kept), "y" ones collinear (plain lerp): independent decisions.
    init = _sd(x=torch.zeros(2), y=torch.zeros(2))
    a = _sd(x=T([1.0, 0.0]), y=T([1.0, 1.0]))
    b = _sd(x=T([0.0, 1.0]), y=T([2.0, 2.0]))
    out = slerp(init, [a, b])
    torch.testing.assert_close(out["x"], T([S2, S2]))
    torch.testing.assert_close(out["y"], T([1.5, 1.5]))
    # Merging each tensor alone gives the same result as merging them together.
    for k in init:
        alone = slerp({k: init[k]}, [{k: a[k]}, {k: b[k]}])[k]
        torch.testing.assert_close(alone, out[k])


def test_slerp_bf16_storage_fp32_math() -> None:
    init = _sd(w=T([1.0, 1.0]).bfloat16())
    a, b = _sd(w=T([2.0, 1.0]).bfloat16()), _sd(w=T([1.0, 2.0]).bfloat16())
    out = slerp(init, [a, b])["w"]
    assert out.dtype == torch.bfloat16
    # fp32 result 1 + sqrt(2)/2 = 1.70710..., rounded once to bf16.
    assert torch.equal(out, torch.full((2,), 1.0 + S2).bfloat16())
    before = _snapshot(init, a, b)
    slerp(init, [a, b])
    _assert_unchanged(before, init, a, b)


def test_int_buffers_copied_unchanged() -> None:
    init = _sd(w=T([0.0, 0.0]), ids=T([0, 1, 2]), mask=T([True, False]))
    a = _sd(w=T([1.0, 0.0]), ids=T([7, 7, 7]), mask=T([False, False]))
    b = _sd(w=T([0.0, 1.0]), ids=T([9, 9, 9]), mask=T([True, True]))
    for out in (slerp(init, [a, b]), lerp(init, [a, b]), liti(init, a, 0.5), ema(init, a, 0.5)):
        assert torch.equal(out["ids"], init["ids"]) and out["ids"].dtype == torch.int64
        assert torch.equal(out["mask"], init["mask"]) and out["mask"].dtype == torch.bool
        assert out["ids"] is not init["ids"]


def test_mismatches_raise() -> None:
    init = _sd(w=torch.zeros(2), v=torch.zeros(3))
    good = _sd(w=torch.ones(2), v=torch.ones(3))
    with pytest.raises(ValueError, match="key mismatch"):
        slerp(init, [good, _sd(w=torch.ones(2))])
    with pytest.raises(ValueError, match="key mismatch"):
        ema(init, _sd(w=torch.ones(2), v=torch.ones(3), extra=torch.ones(1)), 0.5)
    with pytest.raises(ValueError, match="shape mismatch"):
        lerp(init, [good, _sd(w=torch.ones(3), v=torch.ones(3))])
    with pytest.raises(ValueError, match="key mismatch"):
        task_vector_angle(init, good, _sd(w=torch.ones(2)))
    with pytest.raises(ValueError, match="dtype"):
        liti(init, _sd(w=torch.ones(2), v=torch.ones(3, dtype=torch.int64)), 0.5)


# ------------------------------------------------------------------------------------------------ angle


def test_task_vector_angle() -> None:
    init = _sd(x=T([1.0, 1.0]), y=T([5.0]), ids=T([3]))
    # Whole-model task vectors a = (1, 1 | 1), b = (1, 0 | -1) are orthogonal; tensor "x" alone is not.
    a = _sd(x=T([2.0, 2.0]), y=T([6.0]), ids=T([4]))
    b = _sd(x=T([2.0, 1.0]), y=T([4.0]), ids=T([9]))
    assert task_vector_angle(init, a, b) == pytest.approx(90.0)
    assert task_vector_angle(init, a, a) == pytest.approx(0.0, abs=1e-3)
    assert math.isnan(task_vector_angle(init, init, a))
