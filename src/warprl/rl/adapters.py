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
* the EMA anchor is an EMA of the factors, θ_ema ← (1−μ)·θ_ema + μ·θ per tensor, and its compute copy
  (W0 + s·B_ema·A_ema on the targets) shares every other tensor (embeddings, norms) with the policy's copy;
  the SFT anchor is W0 itself; θ_sft for ``charts/kl_sft`` is built only while it is measured. Memory grows by
  the target layers of one copy, not by a model.

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
    """A plain ``compute`` model whose target weights are W0 + s·B·A of ``master`` (a :class:`Factors`), or W0
    itself when ``master`` is None (a frozen model: W0 is dropped once copied)."""

    def __init__(self, w0: list[torch.Tensor], master: Factors | None, compute: torch.nn.Module, trainable: bool,
                 targets: list[Target]):
        self.master, self.compute, self.targets = master, compute, targets
        self._w0: list[torch.Tensor] | None = w0
        self._w = _weights(compute, targets)
        for p in compute.parameters():
            p.requires_grad_(False)
        for w in self._w:
            w.requires_grad_(trainable)
        if trainable:
            for t, w, pair in zip(targets, self._w, master.pairs, strict=True):
                w.register_post_accumulate_grad_hook(_hand_over(t, pair, master.scale))
        compute.eval()
        self.sync()
        if master is None:
            self._w0 = None

    def grads_to_master(self) -> None:
        """Nothing left to do: the backward pass handed each layer's gradient to the factors (:func:`_hand_over`)."""

    @torch.no_grad()
    def sync(self) -> None:
        """Target weights ← W0 + s·B·A (fp32, then the compute dtype); bumps their versions for the engine."""
        if self._w0 is None:
            return
        pairs = self.master.pairs if self.master is not None else [None] * len(self.targets)
        for t, w0, w, pair in zip(self.targets, self._w0, self._w, pairs, strict=True):
            w.copy_(w0 if pair is None else w0 + delta(pair[0], pair[1], self.master.scale, t.fan_in_fan_out))


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
        tensors) with the rollout engine's fused storage; the anchor's copy shares every non-target tensor with
        it. θ_sft is a function that returns its model: the SFT anchor, or a copy made for the measurement
        (sharing the same tensors) and dropped after it, so that it costs no memory during the RL steps."""
        base, targets = self.base, self.targets
        w0 = _weights(base, targets)
        own = {id(w) for w in w0}
        share = set() if bf16 else {id(t) for t in [*base.parameters(), *base.buffers()] if id(t) not in own}
        compute = plain_copy(base, torch.bfloat16 if bf16 else None, share)
        share_fused_storage(compute)  # q/k/v and gate/up as slices of one buffer: the engine reads views
        policy = LoraWeights(w0, self.factors, compute, True, targets)
        own = {id(w) for w in policy._w}
        shared = {id(t) for t in [*compute.parameters(), *compute.buffers()] if id(t) not in own}
        anchor = LoraWeights(w0, self.ema, plain_copy(compute, None, shared), False, targets)
        if not kl_sft:
            return policy, anchor, None
        if self.ema is None and sft_weights is None:
            return policy, anchor, lambda: anchor.compute  # the SFT anchor is θ_sft

        def sft() -> torch.nn.Module:
            model = plain_copy(compute, None, shared)
            if sft_weights is None:
                return LoraWeights(w0, None, model, False, targets).compute
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
