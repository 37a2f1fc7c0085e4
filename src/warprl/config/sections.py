"""Settings sections shared by several commands, the ``setting`` field helper, validators and conversions.

A command's dataclass (:mod:`warprl.config.commands`) inherits the sections it needs: flat, so YAML keys and
flags stay one level deep.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml

from warprl.errors import UserError


def setting(default: Any, doc: str, choices: tuple | None = None, positional: bool = False) -> Any:
    """A config field: its default, a one-line doc (becomes ``--help``), optional allowed values; a
    ``positional`` field is given on the command line without a flag (``data inspect PATH``)."""
    meta = {"doc": doc, "choices": choices, "positional": positional}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


# Keys that change how a command runs but not what it computes (excluded when a resume compares settings).
RUN_CONTROL_KEYS = ("resume", "overwrite", "out", "executor", "ray_address", "progress", "tensorboard")


# ------------------------------------------------------------------------------------------------ sections
# Shared settings are declared once, in a section; a command's dataclass inherits the sections it needs (flat).


@dataclass
class SamplingSettings:
    """How completions are sampled; log-probs are always taken at this temperature."""

    max_new_tokens: int = setting(24, "maximum completion tokens")
    temperature: float = setting(1.0, "sampling temperature (log-probs are taken at this temperature)")
    top_p: float = setting(1.0, "nucleus sampling mass (1 = off)")
    top_k: int = setting(0, "top-k sampling (0 = off)")
    engine: str = setting("auto", "decoder: warprl (static KV cache, shared prefill; Llama-family models), hf "
                          "(transformers generate); auto = warprl where it supports the model",
                          choices=("auto", "warprl", "hf"))

    def validate(self) -> None:
        _positive("temperature", self.temperature)
        if not 0.0 < self.top_p <= 1.0:
            raise UserError(f"--top-p must be in (0, 1], got {self.top_p}")
        _non_negative("top_k", self.top_k)
        _positive("max_new_tokens", self.max_new_tokens)


@dataclass
class OptimSettings:
    """The optimiser of an RL run."""

    lr: float = setting(1e-5, "learning rate")
    optimizer: str = setting("adamw", "optimiser", choices=("adam", "adamw"))
    weight_decay: float = setting(0.0, "AdamW weight decay")
    warmup_steps: int = setting(0, "linear learning-rate warmup steps")
    max_grad_norm: float = setting(1.0, "gradient clipping (0 = off)")

    def validate(self) -> None:
        _positive("lr", self.lr)
        _non_negative("weight_decay", self.weight_decay)
        _non_negative("warmup_steps", self.warmup_steps)
        _non_negative("max_grad_norm", self.max_grad_norm)


@dataclass
class RLSettings:
    """One RL run: T steps of REINFORCE or RLOO on r − β·KL."""

    steps: int = setting(30, "RL steps T per run")
    batch_size: int = setting(8, "prompts per step (the reference setting uses 64)")
    k: int = setting(2, "samples per prompt (RLOO needs >= 2)")
    grad_accum: int = setting(1, "micro-batches per step (memory, not maths: the step sees batch_size prompts)")
    beta: float = setting(0.05, "KL coefficient β in r − β·KL")
    kl_estimator: str = setting("k1", "per-token KL estimator", choices=("k1", "k3"))
    anchor: str = setting("sft", "KL anchor for REINFORCE/RLOO (WARP always uses ema)", choices=("sft", "ema"))
    mu: float = setting(0.01, "EMA rate μ: θ_ema ← (1−μ)·θ_ema + μ·θ after each step")
    baseline: str = setting("moving_average", "REINFORCE baseline", choices=("moving_average", "none"))
    baseline_decay: float = setting(0.9, "decay of the REINFORCE moving-average baseline")
    whiten_advantages: bool = setting(False, "normalise advantages to mean 0, std 1 per batch")
    token_mean: bool = setting(False, "average the loss over tokens instead of summing per sequence")
    min_new_tokens: int = setting(0, "minimum completion tokens before EOS is allowed")
    kl_sft_every: int = setting(10, "log charts/kl_sft (KL to SFT on the step's first sample of each prompt) "
                                "every N steps (0 = off)")
    attn_implementation: str = setting("auto", "attention kernel of the log-prob passes and the update: auto "
                                       "(eager for a bf16 compute copy on a CPU while its saved attention stays "
                                       "under 1 GiB, else sdpa), sdpa or eager", choices=("auto", "sdpa", "eager"))

    def validate(self) -> None:
        _non_negative("kl_sft_every", self.kl_sft_every)
        for name in ("steps", "batch_size", "k", "grad_accum"):
            _positive(name, getattr(self, name))
        if self.batch_size % self.grad_accum:
            raise UserError(f"--batch-size {self.batch_size} is not divisible by --grad-accum {self.grad_accum}")
        _non_negative("beta", self.beta)
        _check_mu(self.mu)
        _unit_interval("baseline_decay", self.baseline_decay)
        _non_negative("min_new_tokens", self.min_new_tokens)


@dataclass
class WarpSettings:
    """WARP's outer loop: I iterations × M runs, SLERP of their task vectors, LITI."""

    iterations: int = setting(2, "WARP iterations I")
    runs: int = setting(2, "WARP independent runs M per iteration")
    lam: float = setting(0.5, "WARP SLERP interpolation λ (two runs)")
    eta: float = setting(0.5, "WARP LITI step η: θ_init ← (1−η)·θ_init + η·θ_slerp")
    merge: str = setting("slerp", "WARP merge of the M runs", choices=("slerp", "lerp"))
    executor: str = setting("sequential", "where WARP's M runs execute: one after another, side by side in local "
                            "processes (threads split between them), or as Ray tasks",
                            choices=("sequential", "processes", "ray"))
    ray_address: str = setting("", "Ray cluster to join (empty: start a local one)")

    def validate(self) -> None:
        _positive("iterations", self.iterations)
        _positive("runs", self.runs)
        _unit_interval("lam", self.lam)
        _unit_interval("eta", self.eta)


@dataclass
class LoraSettings:
    """LoRA instead of full fine-tuning: the base weights frozen, trainable A and B per target layer."""

    lora_r: int = setting(0, "LoRA rank r (0 = full fine-tuning): freeze the base, train A [r, d_in] and B [d_out, r] "
                          "per target layer, W = W0 + alpha/r · B·A")
    lora_alpha: float = setting(32.0, "LoRA scaling alpha (the update is alpha/r · B·A); LoRA usually wants ~10x the lr")
    lora_targets: str = setting("all-linear", "layers that get an adapter: all-linear (attention + MLP) or names, "
                                "e.g. q_proj,v_proj")
    lora_dropout: float = setting(0.0, "must be 0: the adapter is folded into the plain weights that sample and "
                                  "train, where no dropout on its input exists")

    def validate(self) -> None:
        if not (isinstance(self.lora_r, int) and not isinstance(self.lora_r, bool) and self.lora_r >= 0):
            raise UserError(f"--lora-r must be an integer >= 0 (0 = full fine-tuning), got {self.lora_r}")
        if self.lora_dropout != 0:
            raise UserError(f"--lora-dropout must be 0 here, got {self.lora_dropout}: the adapter is folded into the "
                            f"plain weights the rollout engine samples and trains with, where no dropout on its "
                            f"input exists")
        if self.lora_r:
            _positive("lora_alpha", self.lora_alpha)
            if not [t for t in str(self.lora_targets).split(",") if t.strip()]:
                raise UserError("--lora-targets is empty (use all-linear or names such as q_proj,v_proj)")


@dataclass
class RunSettings:
    """Where and how a command runs; none of these change a result but ``seed``."""

    seed: int = setting(0, "random seed")
    bf16: bool = setting(True, "bf16 compute copy with fp32 master weights")
    device: str = setting("auto", "cpu, cuda, cuda:N or auto")


@dataclass
class EvalSettings(SamplingSettings):
    """How held-out completions are sampled and scored; shared by `evaluate`, `pareto` and `quickstart`."""

    reward: str = setting("imdb-sentiment", "reward model or alias")
    judge: str = setting("vader", "independent judge reward (never trained on)")
    gold: str = setting("", "gold reward model RL never optimises (e.g. a `reward train` folder; empty = none)")
    prompts: str = setting("builtin", "held-out prompts: builtin, data file/folder, .txt or hub id")
    prompt_tokens: str = setting("8", "prompt length in policy tokens: N or a range such as 5-15")
    n_prompts: int = setting(100, "held-out prompts per evaluation (capped by what exists)")
    samples_per_prompt: int = setting(1, "completions per prompt")
    batch_size: int = setting(16, "prompts per generation batch")
    seed: int = setting(1234, "random seed (the same for every policy compared)")
    bf16: bool = setting(True, "evaluate bf16 copies of the models (weights cast once)")
    device: str = setting("auto", "cpu, cuda, cuda:N or auto")

    def validate(self) -> None:
        SamplingSettings.validate(self)
        _positive("n_prompts", self.n_prompts)
        _positive("samples_per_prompt", self.samples_per_prompt)
        _positive("batch_size", self.batch_size)
        parse_prompt_tokens(self.prompt_tokens)


def derive(cls: type, source, exclude: tuple[str, ...] = (), **overrides):
    """A ``cls`` config from the settings ``source`` shares with it by name (not ``exclude``), then ``overrides``.

    How one command hands its settings to another (quickstart → align, pareto → evaluate). ``exclude``: settings
    whose meaning differs (quickstart's ``batch_size`` is prompts per RL step, pareto's per generation batch).
    """
    names = {f.name for f in dataclasses.fields(cls)} - set(exclude)
    values = {f.name: getattr(source, f.name) for f in dataclasses.fields(source) if f.name in names}
    cfg = cls(**{**values, **overrides})
    cfg.validate()
    return cfg


# ---------------------------------------------------------------------------------------------- validators


def _positive(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise UserError(f"--{_flag(name)} must be > 0, got {value}")


def _non_negative(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value >= 0):
        raise UserError(f"--{_flag(name)} must be >= 0, got {value}")


def _unit_interval(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and 0.0 <= value <= 1.0):
        raise UserError(f"--{_flag(name)} must be in [0, 1], got {value}")


def _open_unit_interval(name: str, value: float) -> None:
    """A share that must leave something on both sides (e.g. a validation fraction)."""
    if not (isinstance(value, int | float) and 0.0 < value < 1.0):
        raise UserError(f"--{_flag(name)} must be in (0, 1), got {value}")


def _check_mu(mu: float) -> None:
    if not (isinstance(mu, int | float) and 0.0 < mu <= 1.0):
        raise UserError(f"--mu must be in (0, 1], got {mu}")


def parse_prompt_tokens(spec: str | int) -> tuple[int, int]:
    """``"8"`` → (8, 8); ``"5-15"`` → (5, 15)."""
    text = str(spec).strip()
    try:
        lo, _, hi = text.partition("-")
        lo_i, hi_i = int(lo), int(hi or lo)
    except ValueError:
        raise UserError(f"--prompt-tokens must be N or LO-HI, got {spec!r}") from None
    if lo_i < 1 or hi_i < lo_i:
        raise UserError(f"--prompt-tokens must be >= 1 with LO <= HI, got {spec!r}")
    return lo_i, hi_i


# ------------------------------------------------------------------------------------------ from values


def _flag(name: str) -> str:
    return name.replace("_", "-")


def field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def to_dict(cfg) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def to_yaml(cfg) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)
