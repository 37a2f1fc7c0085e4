"""Mixed precision: fp32 master weights with a bf16 compute copy; bf16 autocast for single forward passes."""

from __future__ import annotations

import copy
import functools
import gc
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch

from warprl import heap


@functools.cache
def bf16_speedup(device_type: str = "cpu") -> float:
    """How many times faster a bf16 matmul runs than an fp32 one on this device (a 128×512·512×512 probe, best of
    two after a warm-up; measured once per process). CPUs without bf16 instructions (AVX2 only: no AVX512-BF16,
    no AMX) emulate bf16 matmuls ~100× slower than fp32, which makes a bf16 compute copy a trap there."""
    if device_type == "cuda":
        return 2.0 if torch.cuda.is_bf16_supported() else 0.0  # no probe: native on Ampere and later
    if device_type != "cpu":
        return 1.0
    seconds = {}
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.ones(128, 512, dtype=dtype), torch.ones(512, 512, dtype=dtype)
        a @ b
        best = float("inf")
        for _ in range(2):
            t0 = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - t0)
        seconds[dtype] = best
    return seconds[torch.float32] / max(seconds[torch.bfloat16], 1e-9)


# x86 (AVX512-BF16, AMX) and aarch64 (the BF16 extension) names of bf16 instructions in /proc/cpuinfo
BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})


@functools.cache
def cpu_bf16_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str] | None:
    """The bf16 instruction flags the CPU declares (``flags`` lines on x86, ``Features`` on aarch64); None where
    ``cpuinfo`` cannot be read (macOS, Windows)."""
    try:
        lines = Path(cpuinfo).read_text(errors="replace").splitlines()
    except OSError:
        return None
    words = {w for line in lines if line.split(":")[0].strip() in ("flags", "Features")
             for w in line.partition(":")[2].split()}
    return frozenset(words & BF16_CPU_FLAGS)


def bf16_is_native(device: torch.device) -> bool:
    """bf16 pays on ``device``: its bf16 matmuls are not much slower than fp32 (native ones are 2–4× faster).
    A CPU that declares bf16 instructions is native without a probe: a timing probe run beside other work can
    read a native CPU as slow and flip a run's precision. Elsewhere the probe decides (AVX512 without bf16 runs
    oneDNN's bf16 kernels near fp32 speed, AVX2 alone ~100× slower)."""
    if device.type == "cpu" and cpu_bf16_flags():
        return True
    return bf16_speedup(device.type) >= 0.8


def autocast(device: torch.device, enabled: bool):
    """bf16 autocast on CPU or CUDA; master weights stay fp32.

    Fine for one forward pass; for generation on a CPU it is ~15x slower than a bf16 copy of the model,
    because the fp32 weights are cast again at every new token (see :class:`MixedPrecision`).
    """
    if not enabled:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def synchronize(device: torch.device) -> None:
    """Wait for ``device``'s queued kernels, so a phase's clock reads its own time (CUDA is asynchronous)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release_memory(device: torch.device | None = None) -> None:
    """Give back what finished work left behind: Python's reference cycles, CUDA's cached blocks, and the heap
    pages glibc keeps after many frees (``malloc_trim``: without it a process stays at its peak resident memory
    when the tensors of a finished run are gone)."""
    gc.collect()
    if device is not None and device.type == "cuda":
        torch.cuda.empty_cache()
    heap.trim()


def plain_copy(model: torch.nn.Module, dtype: torch.dtype | None = None, share: set[int] = frozenset()
               ) -> torch.nn.Module:
    """A copy of ``model`` that shares the tensors whose ids are in ``share`` and holds copies (cast to
    ``dtype`` when given, floating-point tensors only) of the others; nothing else is copied first, so a bf16
    copy of an fp32 model never holds a second fp32 model."""
    memo: dict[int, object] = {}
    for t in [*model.parameters(), *model.buffers()]:
        if id(t) in memo:
            continue
        if id(t) in share:
            memo[id(t)] = t
            continue
        c = t.detach().to(dtype if dtype is not None and t.is_floating_point() else t.dtype, copy=True)
        memo[id(t)] = torch.nn.Parameter(c, requires_grad=False) if isinstance(t, torch.nn.Parameter) else c
    return copy.deepcopy(model, memo)


def compute_copy(model, bf16: bool):
    """The model to sample and score with: a bf16 copy when ``bf16`` (unless it already is bf16), else itself."""
    if not bf16 or next(model.parameters()).dtype == torch.bfloat16:
        return model
    return copy.deepcopy(model).to(torch.bfloat16)


class MixedPrecision:
    """fp32 master weights (optimiser, EMA, checkpoints) and, with bf16, a bf16 compute copy.

    The compute copy samples, scores and back-propagates; its bf16 gradients are copied onto the fp32
    masters, the optimiser steps there, and the copy is refreshed. Generating from a bf16 copy is ~15x faster
    on a CPU than autocast (which re-casts every weight at every token), and using the same copy for the
    policy's and the anchor's log-probs makes the KL of identical weights exactly zero.
    """

    def __init__(self, master: torch.nn.Module, bf16: bool, trainable: bool = True,
                 prepare_copy: Callable[[torch.nn.Module], object] | None = None):
        self.master = master
        self.compute = plain_copy(master, torch.bfloat16) if bf16 else master  # no fp32 copy on the way
        if self.compute is not master and prepare_copy is not None:
            prepare_copy(self.compute)  # e.g. the rollout engine's fused weight buffers (rl.engine)
        # The copy trains what the master trains (a frozen LoRA base stays frozen: no weight gradients); when the
        # copy is the master itself this only ever freezes.
        for pm, pc in zip(master.parameters(), self.compute.parameters(), strict=True):
            pc.requires_grad_(trainable and pm.requires_grad)
        self.compute.eval()

    def grads_to_master(self) -> None:
        if self.compute is self.master:
            return
        for pm, pc in zip(self.master.parameters(), self.compute.parameters(), strict=True):
            pm.grad = None if pc.grad is None else pc.grad.to(pm.dtype)
            pc.grad = None

    @torch.no_grad()
    def sync(self) -> None:
        """Copy the masters into the compute copy (after an optimiser step, an EMA update or a load).

        Without a separate copy, only mark the weights as changed: torch's fused Adam/AdamW update them
        without bumping their version counters, which is how the rollout engine notices new weights.
        """
        if self.compute is not self.master:
            for pm, pc in zip(self.master.parameters(), self.compute.parameters(), strict=True):
                pc.copy_(pm)
        else:
            torch.autograd.graph.increment_version(list(self.master.parameters()))
