"""LoRA in an RL run: a frozen base θ_init plus trainable factors, seen by the loop as plain models.

The rollout engine reads plain Llama weights (fused q/k/v and gate/up views), so no peft wrapper takes part.
LoRA is a parametrisation instead (:class:`warprl.lora.Factors`):

* the base θ_init stays as loaded (fp32) and frozen; the trainable parameters are the fp32 factors A and B
  of each target layer, scale s = alpha/r;
* the compute copy that samples, scores and back-propagates is a plain model whose target weights hold
  W0 + s·B·A (computed in fp32, then cast to the compute dtype), refreshed after every optimiser step;
* only its target weights require a gradient; their gradient G gives the factors' exact gradients by the
  chain rule, dL/dA = s·Bᵀ·G and dL/dB = s·G·Aᵀ (:func:`warprl.lora.factor_grads`), handed over layer by
  layer as the backward pass produces G (so no full set of weight gradients is ever held), and AdamW,
  clipping and the NaN guard act on the factors alone;
* the EMA anchor is an EMA of the factors, θ_ema ← (1−μ)·θ_ema + μ·θ per tensor. It holds no weights of its
  own (:class:`LoraAnchor`): it runs the policy's copy, every tensor shared, and adds on each target layer the
  low-rank difference s·x·(B_ema·A_ema − B·A)ᵀ; the SFT anchor (and θ_sft for ``charts/kl_sft`` when it is
  θ_init) is the same with the EMA term left out, i.e. W0. Memory grows by one set of factors, not by a model
  or by a copy of the target layers (θ_sft of an earlier WARP iteration, not low-rank, is still built from its
  file for each measurement and dropped after it).

:class:`LoraWeights` has the interface of :class:`warprl.precision.MixedPrecision` that ``rl_step`` uses
(``compute``, ``master``, ``grads_to_master``, ``sync``), so one step serves both kinds of run.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from warprl.lora import Factors, Target, delta, factor_grads, find_targets, peft_target_modules, read_adapter
from warprl.merge import open_streaming
from warprl.precision import plain_copy
from warprl.rl.engine import share_fused_storage
from warprl.seeding import derive_seed

ADAPTER_DIR = "adapter"  # inside a LoRA run folder: peft's adapter_config.json + adapter_model.safetensors


def _weights(model: torch.nn.Module, targets: list[Target]) -> list[torch.nn.Parameter]:
    modules = dict(model.named_modules())
    return [modules[t.name].weight for t in targets]


def _hand_over(t: Target, pair: tuple[torch.Tensor, torch.Tensor], scale: float):
    """A hook run as soon as the backward pass has accumulated a target weight's gradient G: the factors'
    gradients += the chain rule of G (fp32), and G is dropped. It holds the factors only: a reference back to
    the compute copy would be a cycle through the weight's hooks that Python's collector does not see."""
    a, b = pair

    def hook(w: torch.Tensor) -> None:
        g, w.grad = w.grad, None
        da, db = factor_grads(g.to(a.dtype), a.detach(), b.detach(), scale, t.fan_in_fan_out)
        a.grad = da if a.grad is None else a.grad.add_(da)
        b.grad = db if b.grad is None else b.grad.add_(db)

    return hook


class LoraWeights:
    """A plain ``compute`` model whose target weights are W0 + s·B·A of ``master`` (a :class:`Factors`); only
    those weights take a gradient, handed over to the factors as it is produced."""

    def __init__(self, w0: list[torch.Tensor], master: Factors, compute: torch.nn.Module, targets: list[Target]):
        self.master, self.compute, self.targets = master, compute, targets
        self._w0 = w0
        self._w = _weights(compute, targets)
        for p in compute.parameters():
            p.requires_grad_(False)
        for t, w, pair in zip(targets, self._w, master.pairs, strict=True):
            w.requires_grad_(True)
            w.register_post_accumulate_grad_hook(_hand_over(t, pair, master.scale))
        compute.eval()
        self.sync()

    def grads_to_master(self) -> None:
        """Nothing left to do: the backward pass handed each layer's gradient to the factors (:func:`_hand_over`)."""

    @torch.no_grad()
    def sync(self) -> None:
        """Target weights ← W0 + s·B·A (fp32, then the compute dtype); bumps their versions for the engine."""
        for t, w0, w, (a, b) in zip(self.targets, self._w0, self._w, self.master.pairs, strict=True):
            # ΔW + W0 in place on ΔW (the same bits as W0 + ΔW): after every step, over every target matrix.
            w.copy_(delta(a, b, self.master.scale, t.fan_in_fan_out).add_(w0))


def _side_path(pair: tuple[torch.Tensor, torch.Tensor], policy: tuple[torch.Tensor, torch.Tensor],
               scale: float):
    """A forward hook on a target layer of a copy of the policy's model: out + s·((x·A_aᵀ)·B_aᵀ − (x·Aᵀ)·Bᵀ),
    in fp32, i.e. the layer with the anchor's factors ``pair`` (none: W0) in place of the policy's. The two
    products are computed apart so that equal factors give a difference of exactly 0 (an EMA anchor at its
    first step scores exactly as the policy does)."""
    a, b = policy

    def hook(module, args, out):
        x = args[0].float()
        diff = -((x @ a.T) @ b.T) if pair is None else (x @ pair[0].T) @ pair[1].T - (x @ a.T) @ b.T
        return out + (diff * scale).to(out.dtype)

    return hook


class LoraAnchor:
    """The anchor of a LoRA run without weights of its own: a model that shares every tensor of ``policy``'s
    compute copy (whose targets hold W0 + s·B·A) and adds, per target layer, s·x·(B_a·A_a − B·A)ᵀ, which gives
    W0 + s·B_a·A_a for the anchor's factors ``master`` (an EMA of the policy's) and W0 when ``master`` is None.

    The hooks read the factors at each forward, so :meth:`sync` has nothing to do; they hold the factors only
    (as :func:`_hand_over` does). The anchor only scores (``anchor_logprobs``, the HF forward): the rollout
    engine, which reads fused weights and would skip the hooks, never samples from it."""

    def __init__(self, policy: LoraWeights, master: Factors | None):
        self.master, self.targets = master, policy.targets
        compute = policy.compute
        self.compute = plain_copy(compute, None, {id(t) for t in [*compute.parameters(), *compute.buffers()]})
        modules = dict(self.compute.named_modules())
        pairs = master.pairs if master is not None else [None] * len(self.targets)
        for t, pair, own in zip(self.targets, pairs, policy.master.pairs, strict=True):
            modules[t.name].register_forward_hook(_side_path(pair, own, policy.master.scale))
        self.compute.eval()

    def grads_to_master(self) -> None:
        """A frozen model: nothing to hand over."""

    def sync(self) -> None:
        """Nothing to refresh: the side path reads the factors themselves."""


class LoraRun:
    """The parts of one LoRA RL run on ``base`` (θ_init, frozen while the run lives): the trainable factors,
    their EMA (anchor ``ema``) and, once a checkpoint has been loaded into those, the compute models."""

    def __init__(self, cfg, base: torch.nn.Module, anchor_kind: str, seed: int):
        self.base = base
        self.targets = find_targets(base, cfg.lora_targets)
        device = next(base.parameters()).device
        # Each run draws its own A (WARP's M runs differ from their first step, as full runs do by sampling).
        self.factors = Factors(self.targets, cfg.lora_r, cfg.lora_alpha, seed=derive_seed(seed, "lora_init"),
                               device=device, target_modules=peft_target_modules(base, self.targets))
        self.ema = copy.deepcopy(self.factors) if anchor_kind == "ema" else None
        self._requires_grad = [p.requires_grad for p in base.parameters()]
        for p in base.parameters():
            p.requires_grad_(False)

    def models(self, bf16: bool, sft_weights: Path | None, kl_sft: bool):
        """(policy, anchor, θ_sft or None): the policy's compute copy (bf16, or fp32 sharing the base's frozen
        tensors) with the rollout engine's fused storage, and the anchor as a side path on it
        (:class:`LoraAnchor`). θ_sft is a function that returns its model: the SFT anchor, W0 as a side path
        when the anchor is an EMA, or, for an SFT policy other than θ_init, a copy made from its file for the
        measurement (sharing every non-target tensor) and dropped after it."""
        base, targets = self.base, self.targets
        w0 = _weights(base, targets)
        own = {id(w) for w in w0}
        share = set() if bf16 else {id(t) for t in [*base.parameters(), *base.buffers()] if id(t) not in own}
        compute = plain_copy(base, torch.bfloat16 if bf16 else None, share)
        share_fused_storage(compute)  # q/k/v and gate/up as slices of one buffer: the engine reads views
        policy = LoraWeights(w0, self.factors, compute, targets)
        anchor = LoraAnchor(policy, self.ema)
        if not kl_sft:
            return policy, anchor, None
        if sft_weights is None:
            if self.ema is None:
                return policy, anchor, lambda: anchor.compute  # the SFT anchor is θ_sft
            w0_model = LoraAnchor(policy, None).compute
            return policy, anchor, lambda: w0_model
        own = {id(w) for w in policy._w}
        shared = {id(t) for t in [*compute.parameters(), *compute.buffers()] if id(t) not in own}

        def sft() -> torch.nn.Module:
            model = plain_copy(compute, None, shared)
            with open_streaming(sft_weights, str(w0[0].device)) as f, torch.no_grad():
                for t, w in zip(targets, _weights(model, targets), strict=True):
                    w.copy_(f.get_tensor(f"{t.name}.weight"))  # one fp32 tensor in memory at a time
            return model

        return policy, anchor, sft

    @torch.no_grad()
    def fold(self) -> None:
        """The base's target weights ← W0 + s·B·A of the trained factors (fp32): the run's final policy, the
        same numbers as :func:`fold_adapter` of its saved adapter."""
        for t, w, (a, b) in zip(self.targets, _weights(self.base, self.targets), self.factors.pairs, strict=True):
            w.copy_(w + delta(a, b, self.factors.scale, t.fan_in_fan_out))

    def close(self) -> None:
        for p, flag in zip(self.base.parameters(), self._requires_grad, strict=True):
            p.requires_grad_(flag)


@torch.no_grad()
def fold_adapter(model: torch.nn.Module, folder: str | Path) -> None:
    """``model``'s target weights += s·B·A of the adapter in ``folder`` (fp32), as :meth:`LoraRun.fold` does."""
    scale, fan, pairs = read_adapter(folder)
    modules = dict(model.named_modules())
    for name, (a, b) in pairs.items():
        w = modules[name].weight
        w.copy_(w + delta(a.to(w.device), b.to(w.device), scale, fan))
