"""Unit tests for warprl.algorithms (hand-computed values and properties)."""

from __future__ import annotations

import math

import pytest
import torch

from warprl.rl.algorithms import (
    completion_mask,
    entropy_from_logits,
    kl_per_token,
    kl_regularised_reward,
    masked_mean,
    masked_sum,
    policy_gradient_loss,
    reinforce_advantages,
    rloo_advantages,
    sequence_kl,
    update_baseline,
    whiten,
)


def _close(a: torch.Tensor, b: list[float] | torch.Tensor, atol: float = 1e-6) -> None:
    torch.testing.assert_close(a, torch.as_tensor(b, dtype=a.dtype), atol=atol, rtol=1e-5)


# --------------------------------------------------------------------------- RLOO


def test_rloo_k2_hand_example() -> None:
    adv = rloo_advantages(torch.tensor([1.0, 2.0, 3.0, 6.0]), k=2)
    _close(adv, [-1.0, 1.0, -3.0, 3.0])


def test_rloo_k4_hand_example() -> None:
    adv = rloo_advantages(torch.tensor([1.0, 2.0, 3.0, 6.0]), k=4)
    _close(adv, [1 - 11 / 3, 2 - 10 / 3, 3 - 3, 6 - 2])


def test_rloo_equals_scaled_centered_and_sums_to_zero() -> None:
    torch.manual_seed(0)
    k, p = 4, 5
    rewards = torch.randn(p * k, dtype=torch.float64)
    adv = rloo_advantages(rewards, k)
    grouped = rewards.view(p, k)
    expected = k / (k - 1) * (grouped - grouped.mean(dim=1, keepdim=True))
    _close(adv, expected.reshape(-1), atol=1e-10)
    _close(adv.view(p, k).sum(dim=1), torch.zeros(p, dtype=torch.float64), atol=1e-10)


@pytest.mark.parametrize(("n", "k"), [(4, 1), (4, 0), (5, 2), (6, 4)])
def test_rloo_invalid(n: int, k: int) -> None:
    with pytest.raises(ValueError):
        rloo_advantages(torch.zeros(n), k)


# --------------------------------------------------------------------------- KL


def test_kl_of_policy_against_itself_is_zero() -> None:
    torch.manual_seed(0)
    logp = -torch.rand(3, 5) * 4
    mask = torch.ones(3, 5)
    for est in ("k1", "k3"):
        _close(kl_per_token(logp, logp.clone(), mask, estimator=est), torch.zeros(3, 5))
        _close(sequence_kl(logp, logp.clone(), mask, estimator=est), torch.zeros(3))


def test_k3_nonnegative_random() -> None:
    gen = torch.Generator().manual_seed(123)
    for _ in range(20):
        logp = -torch.rand(8, 16, generator=gen) * 10
        logp_ref = -torch.rand(8, 16, generator=gen) * 10
        mask = (torch.rand(8, 16, generator=gen) > 0.3).float()
        kl = kl_per_token(logp, logp_ref, mask, estimator="k3")
        assert (kl >= 0).all()
        assert (kl[mask == 0] == 0).all()


def test_k1_and_k3_hand_example() -> None:
    logp = torch.tensor([[math.log(0.5), math.log(0.25), 0.0]])
    logp_ref = torch.tensor([[math.log(0.25), math.log(0.5), 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    _close(kl_per_token(logp, logp_ref, mask, "k1"), [[math.log(2), -math.log(2), 0.0]])
    # token 0: r = 0.5 -> -0.5 + log 2 ; token 1: r = 2 -> 1 - log 2
    _close(kl_per_token(logp, logp_ref, mask, "k3"), [[-0.5 + math.log(2), 1 - math.log(2), 0.0]])
    _close(sequence_kl(logp, logp_ref, mask, "k1"), [0.0])
    _close(sequence_kl(logp, logp_ref, mask, "k3"), [0.5])


def test_kl_unknown_estimator() -> None:
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError):
        kl_per_token(x, x, x, estimator="k2")  # type: ignore[arg-type]


@pytest.mark.parametrize("est", ["k1", "k3"])
def test_sequence_kl_ignores_masked_tokens(est: str) -> None:
    torch.manual_seed(1)
    logp = -torch.rand(2, 6)
    logp_ref = -torch.rand(2, 6)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    base = sequence_kl(logp, logp_ref, mask, est)  # type: ignore[arg-type]
    logp2, ref2 = logp.clone(), logp_ref.clone()
    logp2[~mask] = -50.0
    ref2[~mask] = float("-inf")  # even inf in padding must not leak
    _close(sequence_kl(logp2, ref2, mask, est), base)  # type: ignore[arg-type]


def test_kl_regularised_reward() -> None:
    out = kl_regularised_reward(torch.tensor([1.0, 0.5]), torch.tensor([2.0, -1.0]), beta=0.1)
    _close(out, [0.8, 0.6])


# --------------------------------------------------------------------------- REINFORCE baseline


def test_reinforce_advantages() -> None:
    r = torch.tensor([1.0, 3.0])
    _close(reinforce_advantages(r, None), [1.0, 3.0])
    _close(reinforce_advantages(r, 1.5), [-0.5, 1.5])


def test_update_baseline() -> None:
    b = update_baseline(None, torch.tensor([1.0, 3.0]))
    assert b == pytest.approx(2.0)
    b = update_baseline(b, torch.tensor([4.0, 6.0]), decay=0.9)
    assert b == pytest.approx(0.9 * 2.0 + 0.1 * 5.0)
    assert isinstance(b, float)


# --------------------------------------------------------------------------- whiten / masked ops


def test_whiten() -> None:
    torch.manual_seed(0)
    x = torch.randn(100, dtype=torch.float64) * 3 + 7
    w = whiten(x)
    assert w.mean().item() == pytest.approx(0.0, abs=1e-9)
    assert w.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-6)
    w2 = whiten(x, shift_mean=False)
    assert w2.mean().item() == pytest.approx(x.mean().item(), abs=1e-9)
    assert w2.std(unbiased=False).item() == pytest.approx(1.0, abs=1e-6)


def test_whiten_constant_is_finite() -> None:
    assert torch.isfinite(whiten(torch.ones(4))).all()
    assert torch.isfinite(whiten(torch.ones(1))).all()


def test_masked_mean_and_sum() -> None:
    x = torch.tensor([[1.0, 2.0, 100.0], [4.0, 100.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert masked_sum(x, mask).item() == pytest.approx(7.0)
    assert masked_mean(x, mask).item() == pytest.approx(7.0 / 3)
    _close(masked_sum(x, mask, dim=-1), [3.0, 4.0])
    _close(masked_mean(x, mask, dim=-1), [1.5, 4.0])
    _close(masked_mean(x, torch.zeros_like(mask), dim=-1), [0.0, 0.0])


# --------------------------------------------------------------------------- loss


def _loss_inputs() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    logp = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -9.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    adv = torch.tensor([2.0, -1.0], requires_grad=True)
    return logp, mask, adv


def test_policy_gradient_loss_sequence_mean() -> None:
    logp, mask, adv = _loss_inputs()
    loss = policy_gradient_loss(logp, mask, adv)
    # seq logp: [-3, -10]; A*logp: [-6, 10]; -mean = -2
    assert loss.item() == pytest.approx(-2.0)
    loss.backward()
    _close(logp.grad, [[-1.0, -1.0, 0.0], [0.5, 0.5, 0.5]])
    assert adv.grad is None


def test_policy_gradient_loss_token_mean() -> None:
    logp, mask, adv = _loss_inputs()
    loss = policy_gradient_loss(logp, mask, adv, token_mean=True)
    # sum(A*logp*mask) = 2*(-3) + (-1)*(-10) = 4 over 5 tokens -> -0.8
    assert loss.item() == pytest.approx(-0.8)
    loss.backward()
    _close(logp.grad, [[-0.4, -0.4, 0.0], [0.2, 0.2, 0.2]])
    assert adv.grad is None


# --------------------------------------------------------------------------- entropy


def test_entropy_uniform_and_onehot() -> None:
    v = 7
    h = entropy_from_logits(torch.zeros(2, 3, v))
    assert h.shape == (2, 3)
    _close(h, torch.full((2, 3), math.log(v)), atol=1e-5)
    # very peaked logits stay finite and ~0 (numerical stability)
    peaked = torch.tensor([[[1e4, 0.0, 0.0]]])
    assert entropy_from_logits(peaked).item() == pytest.approx(0.0, abs=1e-6)
    masked_vocab = torch.tensor([[[0.0, 0.0, float("-inf")]]])
    assert entropy_from_logits(masked_vocab).item() == pytest.approx(math.log(2), abs=1e-6)


# --------------------------------------------------------------------------- completion mask


def test_completion_mask_examples() -> None:
    eos, pad = 2, 0
    ids = torch.tensor([[5, 6, eos, 7, 8], [5, 6, 7, 8, 9], [eos, 5, eos, 6, 7]])
    _close(
        completion_mask(ids, eos),
        [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]],
    )
    # eos == pad: first EOS kept, everything after masked
    ids = torch.tensor([[5, 6, pad, pad, pad], [5, 6, 7, 8, 9]])
    _close(completion_mask(ids, eos_token_id=pad, pad_token_id=pad), [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    # distinct pad: positions after EOS masked regardless; trailing pad run masked
    ids = torch.tensor([[5, eos, pad, pad, pad], [5, pad, 6, pad, pad]])
    _close(completion_mask(ids, eos, pad_token_id=pad), [[1, 1, 0, 0, 0], [1, 1, 1, 0, 0]])
