"""Learning-rate schedules against hand-computed values, and the optimiser factory."""

import math

import pytest
import torch

from warprl import optim


def test_warmup_constant_hand_values():
    # lr 0.3, warmup 3: 0.1, 0.2, 0.3, then 0.3 for ever.
    assert [optim.warmup_constant(s, 3, lr=0.3) for s in range(5)] == pytest.approx([0.1, 0.2, 0.3, 0.3, 0.3])
    assert [optim.warmup_constant(s, 0, lr=0.3) for s in range(3)] == [0.3, 0.3, 0.3]  # no warmup
    assert optim.warmup_constant(0, 4) == 0.25  # lr 1: the multiplier


def test_linear_warmup_decay_hand_values():
    # total 10, warmup 2: 1/2, 1, then (10 − s)/8 for s = 2…9.
    lrs = [optim.linear_warmup_decay(s, total=10, warmup=2) for s in range(11)]
    assert lrs == pytest.approx([0.5, 1.0, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125, 0.0])
    assert optim.linear_warmup_decay(12, total=10, warmup=2) == 0.0  # never negative
    assert optim.linear_warmup_decay(3, total=10, warmup=2, lr=0.02) == pytest.approx(0.0175)
    assert optim.linear_warmup_decay(0, total=1, warmup=0) == 1.0


def test_warmup_cosine_hand_values():
    # total 6, warmup 2, lr 2: warmup 1, 2; then 2·½(1 + cos(π·k/4)) for k = 0…4 (steps 2…6).
    expected = [1.0, 2.0, 2.0, 1 + math.cos(math.pi / 4), 1.0, 1 - math.cos(math.pi / 4), 0.0]
    assert [optim.warmup_cosine(s, total=6, warmup=2, lr=2.0) for s in range(7)] == pytest.approx(expected)
    assert optim.warmup_cosine(9, total=6, warmup=2, lr=2.0) == pytest.approx(0.0)  # stays at the floor
    # A floor of 10 %: halfway down the cosine is 0.1 + 0.9·½ = 0.55.
    assert optim.warmup_cosine(4, total=6, warmup=2, min_ratio=0.1) == pytest.approx(0.55)
    assert optim.warmup_cosine(6, total=6, warmup=2, min_ratio=0.1) == pytest.approx(0.1)


def test_make_optimizer_kinds_and_set_lr():
    w = torch.nn.Parameter(torch.ones(3))
    adamw = optim.make_optimizer([w], 0.1, kind="adamw", weight_decay=0.01)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["weight_decay"] == 0.01
    assert adamw.defaults["fused"] is True
    adam = optim.make_optimizer([w], 0.1, kind="adam", weight_decay=0.5)
    assert type(adam) is torch.optim.Adam and adam.defaults["weight_decay"] == 0  # Adam takes no decay
    groups = optim.make_optimizer([{"params": [w], "weight_decay": 0.2}], 0.1, fused=False)
    assert groups.param_groups[0]["weight_decay"] == 0.2 and not groups.defaults["fused"]
    optim.set_lr(groups, 0.05)
    assert groups.param_groups[0]["lr"] == 0.05
    with pytest.raises(ValueError, match="unknown optimiser"):
        optim.make_optimizer([w], 0.1, kind="sgd")


def test_one_adamw_step_by_hand():
    # First AdamW step: m̂ = g, v̂ = g², so the update is lr·g/(|g| + eps) plus the decoupled decay lr·wd·w.
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    opt = optim.make_optimizer([w], 0.1, weight_decay=0.5)
    w.grad = torch.tensor([0.5, -4.0])
    opt.step()
    decayed = torch.tensor([1.0, -2.0]) * (1 - 0.1 * 0.5)
    assert torch.allclose(w.detach(), decayed - 0.1 * torch.tensor([1.0, -1.0]), atol=1e-6)
