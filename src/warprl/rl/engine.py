"""warprl's rollout engine: a decode loop for Llama-family causal LMs with a preallocated KV cache.

``rollout.sample`` calls :func:`generate` here (``engine="warprl"``/``"auto"``) instead of HF ``generate``.
It computes what ``generate(do_sample=True)`` computes, in fewer and larger operations:

* the weights of each layer are read from the HF modules once per weight version (a version is bumped by
  every in-place update: an optimiser step, ``MixedPrecision.sync``, a load) and rearranged into fused
  Q|K|V and gate|up matrices, optionally prepacked for oneDNN (``torch.ops.mkldnn._linear_pointwise``):
  4 matmuls per layer instead of 7, each on a weight layout chosen for the decode batch;
* the KV cache is preallocated for prompt + ``max_new_tokens`` positions and written in place (no
  per-token concatenation);
* each distinct prompt is prefilled once and its cache copied to its ``k`` sample rows; the prefill
  computes logits at the last position only;
* one function, :func:`warprl.rl.sampling.sample_next`, turns the raw logits of a step into the sampled
  token and its log-prob at the sampling temperature (before top-k/top-p truncation, as in ``rollout``),
  with the same operations as HF's temperature/top-k/top-p warpers and one uniform per row for the draw
  (the distribution of HF's ``torch.multinomial`` at a small part of its cost; ``OPTIONS["draw"]`` restores
  HF's);
* a decode step's attention (one query position) is three batched matmuls on a CPU, not SDPA's flash kernel;
* rows that have emitted EOS are dropped from the batch (the cache is compacted when a quarter of the
  rows have finished), so they stop costing matmuls.

Randomness comes only from torch's global RNG, in a data-dependent but deterministic order: the same RNG
state and weights give the same tokens. With ``OPTIONS["draw"] = "multinomial"`` and up to the first EOS of
any row, the RNG draws are those of HF ``generate``, so the two engines sample the same tokens wherever
their logits agree to the bit (greedy decoding agrees wherever no two logits are within rounding of each
other); with the default draw they sample the same distribution.

Supported: ``LlamaForCausalLM``-style models (model_type ``llama``; SmolLM2 is one) without attention or
MLP biases and with the SiLU MLP. Anything else goes to HF ``generate`` (see :func:`supports`).
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from warprl.precision import synchronize
from warprl.rl.sampling import sample_next

# Fused weights per model object, rebuilt when any parameter's version (in-place update counter) changes.
# torch's fused optimisers (Adam/AdamW with fused=True) do not bump versions: after such a step call
# :func:`weights_changed` (``MixedPrecision.sync`` does).
_WEIGHTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

# Levers, module-level so that benchmarks can switch them off one at a time (see benchmarks/bench_decode.py).
# ``draw`` names one of :data:`warprl.rl.sampling.DRAWS`: "inverse_cdf" (default) draws one uniform per row
# against the CDF; "multinomial" is HF generate's own draw (the same tokens as generate under the same seed),
# which races an exponential per vocabulary entry: a sampling step took 17 ms with it against 0.7 ms at 16 rows
# × 49k on a 2-core CPU (RESULTS.md, decode levers). ``decode_attention``: "bmm" (three batched matmuls, faster
# than SDPA's CPU flash kernel at one query position), "sdpa", or "auto": bmm on a CPU, SDPA elsewhere (the
# GPU was not measured).
OPTIONS = {"fuse": True, "prepack": True, "compact": True, "share_prefill": True, "draw": "inverse_cdf",
           "decode_attention": "auto"}


def weights_changed(model) -> None:
    """Tell the engine that ``model``'s weights changed in a way their version counters do not show."""
    _WEIGHTS.pop(model, None)


@torch.no_grad()
def share_fused_storage(model) -> None:
    """Re-point each layer's q/k/v and gate/up weights at slices of one fused buffer (values unchanged).

    Afterwards the engine reads the fused Q|K|V and gate|up matrices as views, with no copy per weight
    version: in-place updates of the parameters (``MixedPrecision.sync``) update the fused matrices too.
    Gradients stay per parameter. Only for models the engine supports; a no-op otherwise.
    """
    if not supports(model):
        return
    for layer in model.model.layers:
        for mods in ((layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj),
                     (layer.mlp.gate_proj, layer.mlp.up_proj)):
            if _adjacent([m.weight for m in mods]) is not None:
                continue
            fused = torch.cat([m.weight for m in mods])
            start = 0
            for m in mods:
                n = m.weight.shape[0]
                m.weight = torch.nn.Parameter(fused[start : start + n], requires_grad=m.weight.requires_grad)
                start += n
    _WEIGHTS.pop(model, None)


def _adjacent(weights: list) -> torch.Tensor | None:
    """The fused [Σ out, in] matrix the 2-D ``weights`` are consecutive row blocks of, if they are."""
    first = weights[0]
    if not all(w.is_contiguous() and w.dtype == first.dtype and w.shape[1] == first.shape[1] for w in weights):
        return None
    if any(w.untyped_storage().data_ptr() != first.untyped_storage().data_ptr() for w in weights):
        return None
    offset = first.storage_offset()
    for w in weights:
        if w.storage_offset() != offset:
            return None
        offset += w.numel()
    rows = sum(w.shape[0] for w in weights)
    return first.detach().new_empty(0).set_(first.untyped_storage(), first.storage_offset(), (rows, first.shape[1]))


def supports(model) -> bool:
    """True when the engine can decode ``model`` (else ``rollout.sample`` falls back to HF ``generate``)."""
    cfg = getattr(model, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) != "llama":
        return False
    if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
        return False
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return False
    inner = getattr(model, "model", None)
    return all(hasattr(inner, a) for a in ("embed_tokens", "layers", "norm", "rotary_emb")) and \
        hasattr(model, "lm_head")


# --------------------------------------------------------------------------------------------- weights


class _Linear:
    """y = x Wᵀ for 2-D x, through a oneDNN-prepacked weight when available: bit-identical to F.linear in
    bf16; in fp32 oneDNN sums in another order than MKL (≈1e-4 apart at SmolLM2's sizes), 1.3–2.3× faster at 16
    rows on an AVX2 CPU."""

    def __init__(self, weight: torch.Tensor, rows_hint: int, prepack: bool):
        self.weight = weight
        self.packed = None
        if prepack and weight.device.type == "cpu" and weight.dtype in (torch.bfloat16, torch.float32):
            try:
                packed = torch.ops.mkldnn._reorder_linear_weight(weight, rows_hint)
                probe = torch.zeros(1, weight.shape[1], dtype=weight.dtype)
                torch.ops.mkldnn._linear_pointwise(probe, packed, None, "none", [], "")
                self.packed, self.weight = packed, None  # the packed copy replaces the plain one
            except (RuntimeError, AttributeError):
                self.packed = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, None, "none", [], "")
        return F.linear(x, self.weight)


@dataclass
class _Layer:
    ln1: torch.Tensor
    ln2: torch.Tensor
    eps1: float
    eps2: float
    qkv: list  # one _Linear (fused) or three
    o: _Linear
    gate_up: list  # one _Linear (fused) or two
    down: _Linear


@dataclass
class _Weights:
    key: tuple
    layers: list
    embed: torch.Tensor
    norm: torch.Tensor
    norm_eps: float
    lm_head: _Linear
    n_heads: int
    n_kv: int
    head_dim: int
    inter: int


def _version_key(model) -> tuple:
    # The packing's batch-size hint is not part of the key: packed weights serve any batch size.
    return (OPTIONS["fuse"], OPTIONS["prepack"]) + tuple((p.data_ptr(), p._version) for p in model.parameters())


@torch.no_grad()
def _weights(model, rows_hint: int) -> _Weights:
    key = _version_key(model)
    cached = _WEIGHTS.get(model)
    if cached is not None and cached.key == key:
        return cached
    _WEIGHTS.pop(model, None)  # free the old copy before building the new one
    fuse, prepack = OPTIONS["fuse"], OPTIONS["prepack"]
    cfg = model.config
    layers = []
    for layer in model.model.layers:
        at, mlp = layer.self_attn, layer.mlp
        qkv_w = [at.q_proj.weight, at.k_proj.weight, at.v_proj.weight]
        gu_w = [mlp.gate_proj.weight, mlp.up_proj.weight]
        if fuse:  # views when the parameters already share one buffer (share_fused_storage), else copies
            qkv_w = [_adjacent(qkv_w) if _adjacent(qkv_w) is not None else torch.cat(qkv_w)]
            gu_w = [_adjacent(gu_w) if _adjacent(gu_w) is not None else torch.cat(gu_w)]
        layers.append(_Layer(
            ln1=layer.input_layernorm.weight.detach(), ln2=layer.post_attention_layernorm.weight.detach(),
            eps1=layer.input_layernorm.variance_epsilon, eps2=layer.post_attention_layernorm.variance_epsilon,
            qkv=[_Linear(w.detach(), rows_hint, prepack) for w in qkv_w],
            o=_Linear(at.o_proj.weight.detach(), rows_hint, prepack),
            gate_up=[_Linear(w.detach(), rows_hint, prepack) for w in gu_w],
            down=_Linear(mlp.down_proj.weight.detach(), rows_hint, prepack)))
    n_heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    w = _Weights(key=key, layers=layers, embed=model.model.embed_tokens.weight.detach(),
                 norm=model.model.norm.weight.detach(), norm_eps=model.model.norm.variance_epsilon,
                 lm_head=_Linear(model.lm_head.weight.detach(), rows_hint, prepack), n_heads=n_heads,
                 n_kv=cfg.num_key_value_heads, head_dim=head_dim, inter=cfg.intermediate_size)
    _WEIGHTS[model] = w
    return w


# ---------------------------------------------------------------------------------------------- forward


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """LlamaRMSNorm, same operations (fp32 statistics, cast back, then scale)."""
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


def _linears(parts: list, x: torch.Tensor) -> torch.Tensor:
    return parts[0](x) if len(parts) == 1 else torch.cat([p(x) for p in parts], dim=-1)


class _Cache:
    """K and V for every layer: [layers, rows, kv_heads, max_len, head_dim], written in place."""

    def __init__(self, n_layers: int, rows: int, n_kv: int, max_len: int, head_dim: int, dtype, device):
        self.k = torch.zeros(n_layers, rows, n_kv, max_len, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)

    def keep(self, idx: torch.Tensor) -> None:
        self.k = self.k.index_select(1, idx)
        self.v = self.v.index_select(1, idx)


def _layer_stack(w: _Weights, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend) -> torch.Tensor:
    """The decoder layers on hidden states x [R, S, hidden]; ``attend(l, q, k, v)`` does the attention."""
    r, s, _ = x.shape
    h_, kv, d = w.n_heads, w.n_kv, w.head_dim
    for li, lw in enumerate(w.layers):
        h = _rms_norm(x, lw.ln1, lw.eps1).view(r * s, -1)
        qkv = _linears(lw.qkv, h).view(r, s, h_ + 2 * kv, d)
        qk = _rope(qkv[:, :, : h_ + kv], cos, sin)  # q and k rotated together: [R, S, H+KV, D]
        att = attend(li, qk[:, :, :h_], qk[:, :, h_:], qkv[:, :, h_ + kv :])  # → [R, S, H*D]
        x = x + lw.o(att.reshape(r * s, h_ * d)).view(r, s, -1)
        h = _rms_norm(x, lw.ln2, lw.eps2).view(r * s, -1)
        gu = _linears(lw.gate_up, h)
        x = x + lw.down(F.silu(gu[:, : w.inter]) * gu[:, w.inter :]).view(r, s, -1)
    return x


def _logits(w: _Weights, x: torch.Tensor) -> torch.Tensor:
    """Raw fp32 logits of the last hidden states x [R, hidden] (bf16 lm_head, as HF, then cast)."""
    return w.lm_head(_rms_norm(x, w.norm, w.norm_eps)).float()


# ------------------------------------------------------------------------------------------------ decode


@dataclass
class Decoded:
    completion_ids: torch.Tensor  # [B, T] (pad after EOS)
    logprobs: torch.Tensor  # [B, T] fp32, 0 after EOS
    timings: dict  # prefill_s, decode_s, decode_steps, decode_row_steps


@torch.no_grad()
def generate(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, k: int, max_new_tokens: int,
             eos_token_id: int | None, pad_token_id: int, temperature: float = 1.0, top_k: int = 0,
             top_p: float = 1.0, min_new_tokens: int = 0) -> Decoded:
    """Sample ``k`` continuations of each left-padded prompt row; rows of the result: prompt-major.

    ``prompt_ids``/``prompt_mask`` [P, L] hold each distinct prompt once; the result has P·k rows, the k
    samples of a prompt adjacent (as if the prompt rows had been repeated k times).
    """
    t0 = time.perf_counter()
    device = prompt_ids.device
    if not OPTIONS["share_prefill"] and k > 1:
        prompt_ids, prompt_mask = prompt_ids.repeat_interleave(k, 0), prompt_mask.repeat_interleave(k, 0)
        k = 1
    n_prompts, plen = prompt_ids.shape
    rows = n_prompts * k
    w = _weights(model, rows)
    dtype = w.embed.dtype
    max_len = plen + max_new_tokens
    rotary = model.model.rotary_emb
    positions = torch.arange(max_len, device=device)[None]
    probe = torch.empty(0, dtype=dtype, device=device)
    cos_tab, sin_tab = (t[0] for t in rotary(probe, positions))  # [max_len, D] in the model's dtype
    cache = _Cache(len(w.layers), rows, w.n_kv, max_len, w.head_dim, dtype, device)
    key_mask = torch.zeros(rows, max_len, dtype=torch.bool, device=device)
    key_mask[:, :plen] = prompt_mask.bool().repeat_interleave(k, 0)
    pos_ids = (prompt_mask.long().cumsum(-1) - 1).clamp(min=0)  # as rollout.position_ids_from_mask
    next_pos = pos_ids[:, -1].repeat_interleave(k, 0) + 1  # [rows]
    scale = w.head_dim ** -0.5
    group = w.n_heads // w.n_kv
    bmm_attention = OPTIONS["decode_attention"] == "bmm" or (
        OPTIONS["decode_attention"] == "auto" and device.type == "cpu")

    # Prefill: each distinct prompt once, written into the cache rows of its k samples.
    causal = torch.ones(plen, plen, dtype=torch.bool, device=device).tril()
    pmask = causal[None] & prompt_mask.bool()[:, None, :]
    pmask |= torch.eye(plen, dtype=torch.bool, device=device)[None]  # pad queries see themselves: no NaN
    pmask = pmask[:, None]  # [P, 1, L, L]

    def attend_prefill(li, q, kk, v):
        ck = cache.k[li, :, :, :plen].view(n_prompts, k, w.n_kv, plen, w.head_dim)
        cv = cache.v[li, :, :, :plen].view(n_prompts, k, w.n_kv, plen, w.head_dim)
        kk, v = kk.transpose(1, 2), v.transpose(1, 2)  # [P, KV, L, D]
        ck.copy_(kk[:, None])
        cv.copy_(v[:, None])
        out = F.scaled_dot_product_attention(q.transpose(1, 2), kk.repeat_interleave(group, 1),
                                             v.repeat_interleave(group, 1), attn_mask=pmask, scale=scale)
        return out.transpose(1, 2)

    cos, sin = cos_tab[pos_ids][:, :, None], sin_tab[pos_ids][:, :, None]
    x = _layer_stack(w, F.embedding(prompt_ids, w.embed), cos, sin, attend_prefill)
    logits = _logits(w, x[:, -1]).repeat_interleave(k, 0)
    synchronize(device)
    t_prefill = time.perf_counter()

    out_ids = torch.full((rows, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    out_lp = torch.zeros(rows, max_new_tokens, dtype=torch.float32, device=device)
    alive = torch.arange(rows, device=device)  # original row of each row still in the batch
    unfinished = torch.ones(rows, dtype=torch.bool, device=device)
    row_steps, steps = 0, 0
    for t in range(max_new_tokens):
        ban = eos_token_id if (eos_token_id is not None and t < min_new_tokens) else None
        tokens, logp = sample_next(logits, temperature, top_k, top_p, ban, draw=OPTIONS["draw"])
        out_ids[alive, t] = tokens
        out_lp[alive, t] = logp
        steps = t + 1
        if t + 1 == max_new_tokens:
            break
        if eos_token_id is not None:
            unfinished &= tokens != eos_token_id
        n_live = int(unfinished.sum())
        if n_live == 0:
            break
        if OPTIONS["compact"] and n_live <= 0.75 * len(alive):  # drop finished rows from the batch
            keep = unfinished.nonzero().squeeze(1)
            cache.keep(keep)
            key_mask, next_pos, tokens, alive = key_mask[keep], next_pos[keep], tokens[keep], alive[keep]
            unfinished = unfinished[keep]
        # One decode step for the rows in ``alive``; finished rows not dropped yet keep decoding and what
        # they produce is padded away at the end (as HF does, they still draw from the RNG).
        cur = plen + t  # cache slot of this step's input token
        key_mask[:, cur] = True
        r = len(alive)
        cos, sin = cos_tab[next_pos][:, None, None], sin_tab[next_pos][:, None, None]
        if bmm_attention:  # the additive mask, once per step for every layer
            amask = torch.zeros(r, w.n_kv, group, cur + 1, dtype=torch.float32, device=device)
            amask.masked_fill_(~key_mask[:, None, None, : cur + 1], -float("inf"))
            amask = amask.view(r * w.n_kv, group, cur + 1)
        else:
            amask = key_mask[:, None, None, : cur + 1]  # [R, 1, 1, cur+1]

        def attend_decode(li, q, kk, v, cur=cur, r=r, amask=amask):
            cache.k[li, :, :, cur] = kk[:, 0]
            cache.v[li, :, :, cur] = v[:, 0]
            # GQA without repeating K/V: the `group` query heads of a KV head act as `group` query positions.
            qg = q.reshape(r, w.n_kv, group, w.head_dim)
            keys, values = cache.k[li, :, :, : cur + 1], cache.v[li, :, :, : cur + 1]
            if bmm_attention:
                out = _attend_one_position(qg, keys, values, amask, scale)
            else:
                out = F.scaled_dot_product_attention(qg, keys, values, attn_mask=amask, scale=scale)
            return out.reshape(r, 1, w.n_heads * w.head_dim)

        x = _layer_stack(w, F.embedding(tokens[:, None], w.embed), cos, sin, attend_decode)
        logits = _logits(w, x[:, 0])
        next_pos = next_pos + 1
        row_steps += r
    out_ids, out_lp = out_ids[:, :steps], out_lp[:, :steps]
    if eos_token_id is not None:
        _pad_after_eos(out_ids, out_lp, eos_token_id, pad_token_id)
    synchronize(device)
    t1 = time.perf_counter()
    return Decoded(out_ids, out_lp, {"prefill_s": t_prefill - t0, "decode_s": t1 - t_prefill,
                                     "decode_steps": max(steps - 1, 0), "decode_row_steps": row_steps})


def _attend_one_position(q: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor,
                         scale: float) -> torch.Tensor:
    """Attention of q [R, KV, G, D] to keys/values [R, KV, L, D] with the additive fp32 bias [R·KV, G, L].

    What SDPA computes (fp32 scores and softmax, as its CPU flash kernel does), as three batched matmuls: at
    a decode step's one query position SDPA's flash kernel spends more on its tiling than on the maths
    (0.47 against 0.27 ms a layer at 64 rows × 12 keys on 2 CPU cores; RESULTS.md, decode levers).
    """
    r, kv, g, d = q.shape
    scores = torch.baddbmm(bias, q.reshape(r * kv, g, d).float(),
                           keys.reshape(r * kv, -1, d).transpose(1, 2).float(), alpha=scale)
    return torch.bmm(scores.softmax(-1).to(values.dtype), values.reshape(r * kv, -1, d)).view(r, kv, g, d)


def _pad_after_eos(ids: torch.Tensor, lp: torch.Tensor, eos: int, pad: int) -> None:
    """After each row's first EOS: pad tokens and zero log-probs (what HF's finished rows get)."""
    is_eos = ids == eos
    after = (is_eos.long().cumsum(-1) - is_eos.long()) > 0
    ids.masked_fill_(after, pad)
    lp.masked_fill_(after, 0.0)
