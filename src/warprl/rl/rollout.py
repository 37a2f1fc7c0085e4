"""Sampling completions and per-token log-probs of the sampled tokens.

Log-probs are always taken from ``log_softmax(logits / temperature)``: the distribution the token was
actually sampled from (before top-p/top-k truncation, as TRL and the RLOO paper do). Prompts are left
padded, so position ids are rebuilt from the attention mask in every separate forward pass: that is what
``generate`` does internally, and without it the log-probs of padded rows would differ.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from warprl.precision import autocast
from warprl.rl.algorithms import completion_mask


@dataclass
class SamplingConfig:
    max_new_tokens: int = 24
    min_new_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    engine: str = "auto"  # auto (warprl's engine where it supports the model, else HF), warprl, hf


ENGINES = ("auto", "warprl", "hf")


@dataclass
class Rollout:
    """One batch of samples. Row order: the k samples of each prompt are adjacent (RLOO's grouping)."""

    prompts: list[str]  # [B] prompt text of each row
    completions: list[str]  # [B] decoded completion text (special tokens removed)
    input_ids: torch.Tensor  # [B, P+T] left-padded prompt followed by the completion
    attention_mask: torch.Tensor  # [B, P+T] 1 for real prompt tokens and unmasked completion tokens
    completion_ids: torch.Tensor  # [B, T]
    mask: torch.Tensor  # [B, T] float, 1 up to and including the first EOS
    logprobs: torch.Tensor  # [B, T] log π(y_t) at the sampling temperature, no grad
    ref_logprobs: torch.Tensor | None = None  # [B, T] under the anchor, filled by ``anchor_logprobs``
    timings: dict | None = None  # the warprl engine's prefill_s, decode_s, decode_steps, decode_row_steps

    @property
    def prompt_len(self) -> int:
        return self.input_ids.shape[1] - self.completion_ids.shape[1]

    @property
    def lengths(self) -> torch.Tensor:
        return self.mask.sum(-1)

    def rows(self, which: slice) -> Rollout:
        """The rows ``which`` of this batch (e.g. ``slice(None, None, k)``: the first sample of each prompt)."""
        pick = lambda t: None if t is None else t[which]  # noqa: E731
        return Rollout(self.prompts[which], self.completions[which], self.input_ids[which],
                       self.attention_mask[which], self.completion_ids[which], self.mask[which],
                       self.logprobs[which], pick(self.ref_logprobs), self.timings)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def tokenize_prompts(tokenizer, prompts: list[str], device: torch.device) -> dict[str, torch.Tensor]:
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    if enc["input_ids"].shape[1] == 0:
        raise ValueError("all prompts are empty")
    return {"input_ids": enc["input_ids"].to(device), "attention_mask": enc["attention_mask"].to(device)}


def _gather_logprobs(logits: torch.Tensor, tokens: torch.Tensor,
                     temperature: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """log softmax(logits / T) at ``tokens`` in fp32, without keeping a [B, T, V] log-softmax around.

    Returns (log-probs, the scaled logits, their log-normaliser) so that callers can reuse the last two.
    """
    scaled = logits.float() / temperature
    lse = torch.logsumexp(scaled, dim=-1)
    return torch.gather(scaled, -1, tokens.unsqueeze(-1)).squeeze(-1) - lse, scaled, lse


@torch.no_grad()
def sample(model, tokenizer, prompts: list[str], cfg: SamplingConfig, k: int = 1, bf16: bool = False,
           generator_seed: int | None = None) -> Rollout:
    """Sample ``k`` completions per prompt with the KV cache; return ids, masks, texts and log π.

    Randomness comes from torch's global RNG (what ``generate`` uses); pass ``generator_seed`` to fix it.
    ``cfg.engine`` picks the decoder: warprl's (:mod:`warprl.rl.engine`: static KV cache, one prefill per
    prompt, fused weights) or HF ``generate``; "auto" takes warprl's where it supports the model. Both
    return the same contract; the log-probs are those of the same tempered distribution.
    """
    from warprl.rl import engine as E

    if cfg.engine not in ENGINES:
        raise ValueError(f"unknown engine {cfg.engine!r} (choose from {', '.join(ENGINES)})")
    supported = E.supports(model)
    if cfg.engine == "warprl" and not supported:
        raise ValueError(f"the warprl engine does not support {type(model).__name__}; use engine 'hf' or 'auto'")
    device = next(model.parameters()).device
    rows = [p for p in prompts for _ in range(k)]
    if generator_seed is not None:
        torch.manual_seed(generator_seed)
    if cfg.engine != "hf" and supported and not bf16:  # bf16 autocast is HF's path; the engine runs in the weights' dtype
        return _sample_engine(model, tokenizer, prompts, rows, cfg, k, device)
    enc = tokenize_prompts(tokenizer, rows, device)
    gen_kwargs = dict(
        do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k or None,
        max_new_tokens=cfg.max_new_tokens, min_new_tokens=cfg.min_new_tokens or None,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        return_dict_in_generate=True, output_logits=True, use_cache=True,
    )
    was_training = model.training
    model.eval()
    with autocast(device, bf16):
        out = model.generate(**enc, **gen_kwargs)
    model.train(was_training)
    prompt_len = enc["input_ids"].shape[1]
    completion_ids = out.sequences[:, prompt_len:]
    # The raw logits of each step (before temperature and truncation): log-probs at the sampling temperature.
    logits = torch.stack(out.logits, dim=1)[:, : completion_ids.shape[1]]
    logprobs = _gather_logprobs(logits, completion_ids, cfg.temperature)[0]
    mask = completion_mask(completion_ids, tokenizer.eos_token_id).to(logprobs.dtype)
    logprobs = logprobs * mask
    attention_mask = torch.cat([enc["attention_mask"], mask.long()], dim=1)
    completions = tokenizer.batch_decode(
        [ids[: int(m.sum())] for ids, m in zip(completion_ids, mask, strict=True)], skip_special_tokens=True)
    return Rollout(prompts=rows, completions=completions, input_ids=out.sequences, attention_mask=attention_mask,
                   completion_ids=completion_ids, mask=mask, logprobs=logprobs)


def _sample_engine(model, tokenizer, prompts: list[str], rows: list[str], cfg: SamplingConfig, k: int,
                   device) -> Rollout:
    from warprl.rl import engine as E

    enc = tokenize_prompts(tokenizer, list(prompts), device)  # each prompt once: its prefill is shared
    dec = E.generate(model, enc["input_ids"], enc["attention_mask"], k, cfg.max_new_tokens,
                     tokenizer.eos_token_id, tokenizer.pad_token_id, cfg.temperature, cfg.top_k, cfg.top_p,
                     cfg.min_new_tokens)
    completion_ids = dec.completion_ids
    mask = completion_mask(completion_ids, tokenizer.eos_token_id).to(torch.float32)
    prompt_ids = enc["input_ids"].repeat_interleave(k, 0)
    prompt_mask = enc["attention_mask"].repeat_interleave(k, 0)
    completions = tokenizer.batch_decode(
        [ids[: int(m.sum())] for ids, m in zip(completion_ids, mask, strict=True)], skip_special_tokens=True)
    roll = Rollout(prompts=rows, completions=completions, input_ids=torch.cat([prompt_ids, completion_ids], 1),
                   attention_mask=torch.cat([prompt_mask, mask.long()], 1), completion_ids=completion_ids,
                   mask=mask, logprobs=dec.logprobs * mask, timings=dec.timings)
    return roll


# Models whose logits are exactly ``lm_head(last_hidden_state)`` (no soft-capping or logit scale): for them
# the log-probs are computed from the hidden states of the completion positions only, chunk by chunk.
_PLAIN_HEAD = ("llama", "mistral", "qwen2", "qwen3", "gpt2")
FUSED_HEAD = {"enabled": True, "chunk_bytes": 1 << 26}  # switch / size of one fp32 logits chunk (benchmarks)
# Scoring a rollout's k samples of a prompt with one pass over the prompt (``group`` below): a switch for benchmarks,
# and the fewest prompt tokens it must save. The second pass has fixed costs (more, smaller matmuls; each weight's
# gradient summed over two uses): on a 2-core CPU, SmolLM2-135M in bf16, saving 72 tokens (8 prompts × k=2) made
# the update and the anchor pass slower (0.93×, 0.96×); saving 176–528 made them 1.08–1.21× and 1.04–1.07× faster
# (benchmarks/bench_scoring.py, RESULTS.md "Scoring: one pass per prompt").
SHARED_PROMPT = {"enabled": True, "min_tokens": 128}


class _HeadLogprob(torch.autograd.Function):
    """log softmax(h Wᵀ / T) at ``tokens`` for hidden rows h [N, d], without a [N, V] tensor kept for backward.

    Forward and backward go through the rows in chunks: the logits of a chunk are computed (in the weights'
    dtype, as ``lm_head`` does, then fp32), reduced to the log-prob, the log-normaliser and the entropy,
    and dropped; the backward recomputes them and forms d log p / d z = onehot − softmax(z) in place.
    The weight gradient is accumulated over chunks in fp32.
    """

    @staticmethod
    def forward(ctx, hidden, weight, tokens, temperature, chunk, with_entropy):
        n = hidden.shape[0]
        logp = torch.empty(n, dtype=torch.float32, device=hidden.device)
        lse = torch.empty_like(logp)
        # The entropy costs a second pass over the fp32 logits (≈ 30 % of this function): only when asked.
        ent = torch.empty_like(logp) if with_entropy else None
        for s in range(0, n, chunk):
            z = torch.nn.functional.linear(hidden[s : s + chunk], weight).float().div_(temperature)
            lz = torch.logsumexp(z, dim=-1)
            logp[s : s + chunk] = z.gather(-1, tokens[s : s + chunk, None]).squeeze(-1) - lz
            lse[s : s + chunk] = lz
            if with_entropy:
                ent[s : s + chunk] = lz - (torch.exp(z - lz[:, None]) * z).sum(-1)  # H = lse − Σ p·z
        ctx.save_for_backward(hidden, weight, tokens, lse)
        ctx.temperature, ctx.chunk = temperature, chunk
        if with_entropy:
            ctx.mark_non_differentiable(ent)
        return logp, ent

    @staticmethod
    def backward(ctx, grad_logp, _grad_ent):
        hidden, weight, tokens, lse = ctx.saved_tensors
        t, chunk = ctx.temperature, ctx.chunk
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        for s in range(0, hidden.shape[0], chunk):
            h = hidden[s : s + chunk]
            g = grad_logp[s : s + chunk].float()
            z = torch.nn.functional.linear(h, weight).float().div_(t)
            dz = torch.exp_(z.sub_(lse[s : s + chunk, None])).mul_(-g[:, None] / t)  # −softmax·g/T
            dz.scatter_add_(-1, tokens[s : s + chunk, None], (g / t)[:, None])  # + onehot·g/T
            dz = dz.to(hidden.dtype)
            if need_h:
                grad_h[s : s + chunk] = dz @ weight
            if need_w:
                grad_w.add_((dz.t() @ h).float())
        return grad_h, (grad_w.to(weight.dtype) if need_w else None), None, None, None, None


def _fused_head_ok(model) -> bool:
    if not FUSED_HEAD["enabled"]:
        return False
    cfg = getattr(model, "config", None)
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return (getattr(cfg, "model_type", None) in _PLAIN_HEAD and isinstance(head, torch.nn.Linear)
            and head.bias is None and hasattr(model, getattr(model, "base_model_prefix", "") or "-"))


def _predicting(module, field: str, input_ids: torch.Tensor, attention_mask: torch.Tensor, n_completion: int,
                group: int) -> torch.Tensor:
    """``module``'s output ``field`` (a base model's ``last_hidden_state``, a causal LM's ``logits``) at the
    positions that predict the last ``n_completion`` tokens: [B, n_completion, ·].

    With ``group`` > 1 the rows come in groups of ``group`` sharing one prompt (a rollout's k samples): each
    prompt runs once and its key/value cache is repeated for the completions of its group, which attend to it
    as they would to their own copy. The values are those of the full pass (the same sums, in other batch
    shapes); the prompt positions cost 1/``group`` of their share, forward and backward. The last token
    predicts nothing and is not fed in either way.
    """
    position_ids = position_ids_from_mask(attention_mask)
    if group == 1:
        out = module(input_ids=input_ids[:, :-1], attention_mask=attention_mask[:, :-1],
                     position_ids=position_ids[:, :-1], use_cache=False)
        return getattr(out, field)[:, -n_completion:]
    split = input_ids.shape[1] - n_completion
    prompt = module(input_ids=input_ids[::group, :split], attention_mask=attention_mask[::group, :split],
                    position_ids=position_ids[::group, :split], use_cache=True)
    first = getattr(prompt, field)[:, -1:].repeat_interleave(group, 0)  # predicts the first completion token
    if n_completion == 1:
        return first
    cache = prompt.cache
    cache.batch_repeat_interleave(group)  # differentiable: a prompt's gradient sums over its group
    rest = module(input_ids=input_ids[:, split:-1], attention_mask=attention_mask[:, :-1],
                  position_ids=position_ids[:, split:-1], cache=cache, use_cache=True)
    return torch.cat([first, getattr(rest, field)], 1)


def prompt_tokens_saved(rows: int, prompt_width: int, group: int) -> int:
    """Prompt tokens (padding included) that one pass per group of ``group`` rows does not run again."""
    return (group - 1) * (rows // group) * prompt_width


def prompt_group(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, n_completion: int,
                 group: int) -> int:
    """``group`` if groups of that many rows should share one pass over their prompt (else 1): a model type
    whose cache is known to work, and enough prompt tokens saved (``SHARED_PROMPT``). ValueError if the rows
    do not come in such groups."""
    if group <= 1:
        return 1
    rows, split = input_ids.shape[0], input_ids.shape[1] - n_completion
    if rows % group:
        raise ValueError(f"{rows} rows do not form groups of {group} samples per prompt")
    for t in (input_ids, attention_mask):
        first = t[::group, :split]
        if not torch.equal(first.repeat_interleave(group, 0), t[:, :split]):
            raise ValueError(f"the rows do not come in groups of {group} sharing one prompt")
    cfg = getattr(model, "config", None)
    shared = (SHARED_PROMPT["enabled"] and getattr(cfg, "model_type", None) in _PLAIN_HEAD
              and prompt_tokens_saved(rows, split, group) >= SHARED_PROMPT["min_tokens"])
    return group if shared else 1


def sequence_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, n_completion: int,
                      temperature: float = 1.0, bf16: bool = False, return_entropy: bool = False,
                      group: int = 1) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Per-token log π of the last ``n_completion`` tokens given everything before them (grad enabled).

    With ``return_entropy`` also the per-token entropy of the temperature-scaled distribution (no grad).
    For plain-head models (Llama, Qwen2, GPT-2, …) the lm_head runs on the completion positions only and
    chunk by chunk (:class:`_HeadLogprob`): no fp32 [B, T, V] log-softmax is materialised. ``group`` = k when
    the rows are a rollout's k samples of each prompt, adjacent: the prompt is then run once per group
    (:func:`_predicting`).
    """
    device = input_ids.device
    targets = input_ids[:, -n_completion:]
    group = prompt_group(model, input_ids, attention_mask, n_completion, group)
    if _fused_head_ok(model):
        base = getattr(model, model.base_model_prefix)
        with autocast(device, bf16):
            h = _predicting(base, "last_hidden_state", input_ids, attention_mask, n_completion, group)
            weight = model.get_output_embeddings().weight
            if bf16 and h.dtype != weight.dtype:
                weight = weight.to(h.dtype)
        b, n, d = h.shape
        chunk = max(1, FUSED_HEAD["chunk_bytes"] // (4 * weight.shape[0]))
        logp, entropy = _HeadLogprob.apply(h.reshape(b * n, d), weight, targets.reshape(-1), float(temperature),
                                           chunk, return_entropy)
        return (logp.view(b, n), entropy.view(b, n)) if return_entropy else logp.view(b, n)
    with autocast(device, bf16):
        logits = _predicting(model, "logits", input_ids, attention_mask, n_completion, group)
    logp, scaled, lse = _gather_logprobs(logits, targets, temperature)
    if not return_entropy:
        return logp
    with torch.no_grad():  # reuses the log-normaliser: H = lse − Σ p·z
        entropy = lse - (torch.exp(scaled - lse.unsqueeze(-1)) * scaled).sum(-1)
    return logp, entropy


@torch.no_grad()
def anchor_logprobs(model, rollout: Rollout, temperature: float, bf16: bool = False,
                    micro_batch: int = 0, group: int = 1) -> torch.Tensor:
    """log π_anchor of the sampled completion tokens (masked), in micro-batches to bound memory (a multiple of
    ``group``, the samples per prompt whose prompt is run once: see :func:`sequence_logprobs`)."""
    n = rollout.completion_ids.shape[1]
    b = rollout.input_ids.shape[0]
    step = micro_batch or b
    parts = []
    for i in range(0, b, step):
        lp = sequence_logprobs(model, rollout.input_ids[i : i + step], rollout.attention_mask[i : i + step], n,
                               temperature, bf16, group=group)
        parts.append(lp)
    return torch.cat(parts) * rollout.mask
