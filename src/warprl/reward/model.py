"""Reward models: Bradley–Terry training, pairwise evaluation, and the scoring API the RL code calls.

A reward model (RM) is an encoder plus a scalar head, trained on (chosen, rejected) pairs with the
Bradley–Terry loss −log σ(r(chosen) − r(rejected)). It is saved as a standard HF folder
(``AutoModelForSequenceClassification``, ``num_labels=1``) plus ``warprl_reward.json``, which says how the head
reads the encoder:

* ``pooling: native`` — the model's own head (BERT: [CLS] → pooler dense+tanh → classifier). Plain
  ``transformers`` gives exactly our scores. The default for full fine-tuning.
* ``pooling: mean`` — masked mean of the last hidden states, L2-normalised (the sentence-transformers
  convention of all-MiniLM-L6-v2), then the classifier layer. The default with ``--freeze-backbone``: on a
  frozen MiniLM it beats the [CLS] pooler (≈83 % vs ≈78 % pairwise in a 1,200-review probe), because
  MiniLM was trained for mean pooling and its [CLS] token never was. Plain ``transformers`` loads the folder,
  but only :func:`load_reward` honours the pooling.

Scoring API (what RL and evaluation call)::

    fn = load_reward("imdb-sentiment" | "vader" | RM folder | hub id | callable, device, batch_size, normalize, bf16)
    fn(prompts, completions) -> torch.Tensor  # float32 [B] on the CPU, no grad, deterministic

The embedded ``imdb-sentiment`` is a 384→1 head (``assets/imdb-sentiment/head.safetensors``, a few KB) on the
frozen ``minilm-l6`` alias; see the README beside it for how it was trained.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from warprl.errors import UserError

ASSETS = Path(__file__).resolve().parent.parent / "assets"
EMBEDDED: dict[str, Path] = {"imdb-sentiment": ASSETS / "imdb-sentiment"}
META_FILE = "warprl_reward.json"  # beside a saved RM folder: pooling, max_length, stats, provenance
HEAD_FILE = "head.safetensors"  # a bare head on a named frozen backbone (the embedded imdb-sentiment)
FORMAT = "warprl-reward/1"
SCORE_BATCH = 32


class RewardError(UserError):
    """A reward function returned something unusable (a NaN/inf, a wrong count, a non-number)."""


# ------------------------------------------------------------------------------------------------- math


def bt_loss(chosen: torch.Tensor, rejected: torch.Tensor, center_coef: float = 0.0) -> torch.Tensor:
    """Bradley–Terry loss −log σ(r_c − r_r), averaged over pairs.

    ``center_coef`` adds TRL's ``center_rewards_coefficient`` term c·mean((r_c + r_r)²): it pins the mean
    reward near 0, which the BT loss alone leaves free (it only sees differences).
    """
    loss = -F.logsigmoid(chosen - rejected).mean()
    if center_coef:
        loss = loss + center_coef * ((chosen + rejected) ** 2).mean()
    return loss


def pairwise_accuracy(chosen: torch.Tensor, rejected: torch.Tensor) -> float:
    """Share of pairs where the chosen text scores strictly higher (ties count as wrong)."""
    return float((chosen > rejected).float().mean()) if chosen.numel() else float("nan")


def all_pairs_accuracy(pos: torch.Tensor, neg: torch.Tensor) -> float:
    """P(r(pos) > r(neg)) over every (positive, negative) combination, ties ½ — the ROC AUC.

    A steadier estimate than accuracy on N fixed pairs: it uses all |pos|·|neg| pairings at the cost of a sort.
    """
    if not pos.numel() or not neg.numel():
        return float("nan")
    neg_sorted = torch.sort(neg.double()).values
    p = pos.double()
    below = torch.searchsorted(neg_sorted, p, right=False).double()
    at_or_below = torch.searchsorted(neg_sorted, p, right=True).double()
    return float(((below + at_or_below) / 2).mean() / neg.numel())


def linear_warmup_decay(step: int, total: int, warmup: int) -> float:
    """LR multiplier: linear 0→1 over ``warmup`` steps, then linear 1→0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (total - step) / max(1, total - warmup))


def pair_metrics(chosen: torch.Tensor, rejected: torch.Tensor) -> dict[str, float]:
    """Accuracy, margin and reward moments of scored pairs (what `reward eval` and `reward train` report)."""
    c, r = chosen.double(), rejected.double()
    return {
        "accuracy": pairwise_accuracy(c, r),
        "auc": all_pairs_accuracy(c, r),
        "margin_mean": float((c - r).mean()),
        "chosen_mean": float(c.mean()),
        "chosen_std": float(c.std()) if c.numel() > 1 else 0.0,
        "rejected_mean": float(r.mean()),
        "rejected_std": float(r.std()) if r.numel() > 1 else 0.0,
        "n_pairs": int(c.numel()),
    }


# ------------------------------------------------------------------------------------------- the model


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence "newly initialized weights" notices while building an RM from a backbone (the head is meant
    to be new)."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def find_head(model: nn.Module) -> nn.Linear:
    """The final 1-output linear layer of a sequence-classification model (BERT ``classifier``, RoBERTa
    ``classifier.out_proj``, …): the only part trained with a frozen backbone."""
    prefix = getattr(model, "base_model_prefix", "")
    heads = [m for name, m in model.named_modules()
             if isinstance(m, nn.Linear) and m.out_features == 1 and not (prefix and name.startswith(prefix))]
    if not heads:
        raise UserError(f"{type(model).__name__} has no 1-output linear head; is it a num_labels=1 model?")
    return heads[-1]


def _collate(encodings: dict[str, list[list[int]]], rows: Sequence[int], pad_id: int,
             device: torch.device) -> dict[str, torch.Tensor]:
    """Right-pad the tokenised ``rows`` into one batch (manual: cheaper than tokenizer.pad per batch)."""
    width = max(len(encodings["input_ids"][i]) for i in rows)
    batch = {}
    for key, values in encodings.items():
        fill = pad_id if key == "input_ids" else 0
        batch[key] = torch.tensor([values[i] + [fill] * (width - len(values[i])) for i in rows],
                                  dtype=torch.long, device=device)
    return batch


def _length_batches(encodings: dict[str, list[list[int]]], batch_size: int) -> list[list[int]]:
    """Row indices grouped into batches of similar length (longest first): far less padding on a CPU.

    The order depends only on the texts, so scores are reproducible for the same input list.
    """
    lengths = [len(ids) for ids in encodings["input_ids"]]
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _own_memory(model: nn.Module) -> nn.Module:
    """Copy every weight into a fresh, allocator-aligned tensor.

    Weights read from safetensors sit at arbitrary offsets of a mapped file; CPU matmul kernels take
    different SIMD paths for different alignments and the scores then differ in the last bits. Fresh copies
    make a loaded RM score exactly like the one that was saved (and free the file).
    """
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            t.data = t.data.clone(memory_format=torch.contiguous_format)
    return model


class RewardModel(nn.Module):
    """An HF ``*ForSequenceClassification`` (num_labels=1) and how its scalar head reads the encoder."""

    def __init__(self, model, tokenizer, pooling: str = "native", max_length: int = 256,
                 stats: dict | None = None, source: str = ""):
        super().__init__()
        if pooling not in ("native", "mean"):
            raise UserError(f"unknown pooling {pooling!r} (native or mean)")
        self.model = _own_memory(model)
        self.tokenizer = tokenizer
        self.pooling = pooling
        self.max_length = max_length
        self.stats = stats  # mean/std of the rewards on reference texts, saved with the model
        self.source = source

    @property
    def head(self) -> nn.Linear:
        return find_head(self.model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def backbone_parameters(self) -> list[nn.Parameter]:
        head = set(map(id, self.head.parameters()))
        return [p for p in self.model.parameters() if id(p) not in head]

    def tokenize(self, texts: list[str]) -> dict[str, list[list[int]]]:
        enc = self.tokenizer(list(texts), truncation=True, max_length=self.max_length)
        names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in enc]
        return {n: enc[n] for n in names}

    def features(self, batch: dict[str, torch.Tensor], bf16: bool = False) -> torch.Tensor:
        """What the head reads, in fp32: the pooled embedding [B, H]."""
        from warprl.precision import autocast

        if self.pooling == "mean":
            with autocast(self.device, bf16):
                hidden = self.model.base_model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(torch.float32)
            pooled = (hidden.float() * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return F.normalize(pooled, p=2, dim=-1)
        captured: list[torch.Tensor] = []
        hook = self.head.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
        try:
            with autocast(self.device, bf16):
                self.model(**batch)
        finally:
            hook.remove()
        return captured[-1].float()

    def forward(self, batch: dict[str, torch.Tensor], bf16: bool = False) -> torch.Tensor:
        """Rewards [B] in fp32. The head always runs in fp32 (outside autocast), as in frozen training."""
        return self.head(self.features(batch, bf16)).squeeze(-1).float()

    def _run(self, texts: list[str], fn: Callable, batch_size: int, bf16: bool, progress: bool,
             desc: str) -> torch.Tensor:
        enc = self.tokenize(texts)
        batches = _length_batches(enc, batch_size)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        out: list[torch.Tensor | None] = [None] * len(texts)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), tqdm(total=len(texts), desc=desc, disable=not progress,
                                              unit="text", leave=False) as bar:
                for rows in batches:
                    values = fn(_collate(enc, rows, pad, self.device), bf16).float().cpu()
                    for i, v in zip(rows, values, strict=True):
                        out[i] = v
                    bar.update(len(rows))
        finally:
            self.model.train(was_training)
        return torch.stack(out) if texts else torch.zeros(0)  # type: ignore[arg-type]

    def score(self, texts: list[str], batch_size: int = SCORE_BATCH, bf16: bool = False,
              progress: bool = False) -> torch.Tensor:
        """Rewards of ``texts`` (float32 [N], CPU): eval mode, no grad, length-sorted fixed batches."""
        return self._run(texts, self.forward, batch_size, bf16, progress, "scoring")

    def embed(self, texts: list[str], batch_size: int = SCORE_BATCH, bf16: bool = False,
              progress: bool = False) -> torch.Tensor:
        """Pooled features of ``texts`` (float32 [N, H], CPU), batched exactly as :meth:`score` does."""
        return self._run(texts, self.features, batch_size, bf16, progress, "embedding")

    # -------------------------------------------------------------------------------------- save / load

    def meta(self, extra: dict | None = None) -> dict:
        return {"format": FORMAT, "pooling": self.pooling, "normalize_embeddings": self.pooling == "mean",
                "max_length": self.max_length, "stats": self.stats, **(extra or {})}

    def save(self, out: str | Path, extra_files: dict[str, str] | None = None, meta: dict | None = None) -> Path:
        """A standard HF folder (model + tokenizer, safetensors) plus ``warprl_reward.json``."""
        from warprl.models import save_model

        self.model.config.problem_type = "regression"  # num_labels=1: what HF calls a scalar output
        files = {META_FILE: json.dumps(self.meta(meta), indent=2) + "\n", **(extra_files or {})}
        return save_model(self.model, self.tokenizer, out, extra_files=files)

    def save_head(self, out: str | Path, backbone: str, meta: dict | None = None) -> Path:
        """Only the head (weight [1, H], bias [1]) + ``config.json`` naming the frozen backbone alias."""
        from safetensors.torch import save_file

        from warprl.io import atomic_dir

        if self.pooling != "mean":
            raise UserError("a bare head can only be exported for mean pooling (--pooling mean)")
        head = self.head
        tensors = {"weight": head.weight.detach().float().cpu().contiguous(),
                   "bias": head.bias.detach().float().cpu().contiguous()}
        config = {**self.meta(meta), "backbone": backbone, "hidden_size": int(head.in_features)}

        def fill(tmp: Path) -> None:
            save_file(tensors, str(tmp / HEAD_FILE))
            (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")

        out = Path(out)
        keep = {p.name: p.read_bytes() for p in out.glob("*.md")} if out.is_dir() else {}  # the provenance README

        def fill_keep(tmp: Path) -> None:
            fill(tmp)
            for name, data in keep.items():
                (tmp / name).write_bytes(data)
            tmp.chmod(0o755)  # mkdtemp makes it private; package data must be readable by everyone
            for f in tmp.iterdir():
                f.chmod(0o644)

        atomic_dir(out, fill_keep)
        return out


def from_backbone(spec: str, device: str | torch.device = "cpu", pooling: str = "native",
                  max_length: int = 256) -> RewardModel:
    """A fresh RM: the encoder ``spec`` with a new 1-output head (its init follows torch's global seed)."""
    from warprl.models import load_encoder

    with _quiet_transformers():
        model, tok = load_encoder(spec, device=device, sequence_classification=True)
    return RewardModel(model, tok, pooling=pooling, max_length=max_length, source=spec)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path}: {e}") from None


def load_head_dir(path: str | Path, device: str | torch.device = "cpu") -> RewardModel:
    """A bare head folder (``head.safetensors`` + ``config.json``) on its named frozen backbone."""
    path = Path(path)
    cfg = _read_json(path / "config.json")
    if "backbone" not in cfg:
        raise UserError(f"{path}/config.json does not name a backbone")
    rm = from_backbone(cfg["backbone"], device=device, pooling=cfg.get("pooling", "mean"),
                       max_length=int(cfg.get("max_length", 256)))
    _init_head(rm, str(path))
    rm.stats = cfg.get("stats")
    rm.source = str(path)
    return rm


def load_reward_model(spec: str, device: str | torch.device = "cpu") -> RewardModel:
    """An RM from an embedded alias, a head folder, an RM folder or a hub id; refuses encoders with no head."""
    from warprl.models import load_encoder, resolve

    if spec in EMBEDDED:
        return load_head_dir(EMBEDDED[spec], device)
    p = Path(spec).expanduser()
    if p.is_dir() and (p / HEAD_FILE).is_file():
        return load_head_dir(p, device)
    resolved = resolve(spec, "encoder")
    meta: dict = {}
    if resolved.kind == "folder":
        folder = Path(resolved.location)
        cfg = _read_json(folder / "config.json")
        _check_is_rm(spec, cfg.get("architectures") or [], cfg.get("id2label") or {}, cfg.get("num_labels"))
        if (folder / META_FILE).is_file():
            meta = _read_json(folder / META_FILE)
    model, tok = load_encoder(spec, device=device, sequence_classification=True)
    if resolved.kind == "hub":
        _check_is_rm(spec, model.config.architectures or [], {}, model.config.num_labels)
    from warprl.models import disable_dropout

    disable_dropout(model)
    limit = min(512, getattr(tok, "model_max_length", 512) or 512)  # a foreign RM: as long as it allows
    return RewardModel(model, tok, pooling=meta.get("pooling", "native"), max_length=int(meta.get("max_length", limit)),
                       stats=meta.get("stats"), source=spec)


def _check_is_rm(spec: str, architectures: list[str], id2label: dict, num_labels) -> None:
    n = num_labels if num_labels is not None else (len(id2label) or None)
    if not any(a.endswith("ForSequenceClassification") for a in architectures) or (n is not None and n != 1):
        raise UserError(f"'{spec}' is not a reward model (needs a num_labels=1 sequence-classification head); "
                        f"train one with `warprl reward train --backbone {spec}` or use imdb-sentiment / vader")


# ------------------------------------------------------------------------------------------ scoring API


class RewardFunction(Protocol):
    """f(prompts, completions) -> float32 tensor [B] on the CPU."""

    def __call__(self, prompts: list[str], completions: list[str]) -> torch.Tensor: ...


class Scorer:
    """Shared by every reward source: count and finiteness checks, optional normalisation, ``.stats``."""

    name: str = "reward"

    def __init__(self) -> None:
        self.stats: dict | None = None  # {"mean", "std", "n", "source"} when normalising

    def _raw(self, prompts: list[str], completions: list[str]):
        raise NotImplementedError

    def raw(self, prompts: list[str], completions: list[str]) -> torch.Tensor:
        """Unnormalised rewards, checked: one finite float per completion."""
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
        if not completions:
            return torch.zeros(0, dtype=torch.float32)
        values = self._raw(list(prompts), list(completions))
        if isinstance(values, torch.Tensor):
            out = values.detach().to("cpu", torch.float32).reshape(-1)
        else:
            try:
                out = torch.tensor([float(v) for v in values], dtype=torch.float32)
            except (TypeError, ValueError):
                raise RewardError(f"reward '{self.name}' returned a value that is not a number") from None
        if out.numel() != len(completions):
            raise RewardError(f"reward '{self.name}' returned {out.numel()} values for {len(completions)} completions")
        if not torch.isfinite(out).all():
            raise RewardError(f"reward '{self.name}' returned a non-finite value")
        return out

    def __call__(self, prompts: list[str], completions: list[str]) -> torch.Tensor:
        r = self.raw(prompts, completions)
        if self.stats is not None:
            r = (r - self.stats["mean"]) / self.stats["std"]
        return r

    def score_texts(self, texts: list[str]) -> torch.Tensor:
        """Rewards of whole texts (the prompt is empty): what pairwise evaluation and normalisation use."""
        return self([""] * len(texts), list(texts))

    def set_normalization(self, reference: list[str], source: str) -> dict:
        """Measure mean/std of the raw reward on ``reference`` texts; later calls return (r − mean) / std."""
        if not reference:
            raise UserError("normalisation needs at least one reference text")
        r = self.raw([""] * len(reference), list(reference)).double()
        std = float(r.std()) if r.numel() > 1 else 0.0
        self.stats = {"mean": float(r.mean()), "std": std if std > 1e-8 else 1.0, "n": int(r.numel()),
                      "source": source}
        return self.stats


class ModelReward(Scorer):
    """An RM on ``prompt + completion`` text (never another model's token ids), batched, no grad."""

    def __init__(self, rm: RewardModel, name: str, batch_size: int = SCORE_BATCH, bf16: bool = False,
                 progress: bool = False):
        super().__init__()
        self.rm, self.name, self.batch_size, self.bf16, self.progress = rm, name, batch_size, bf16, progress
        rm.eval()

    def _raw(self, prompts, completions):
        texts = [p + c for p, c in zip(prompts, completions, strict=True)]
        return self.rm.score(texts, batch_size=self.batch_size, bf16=self.bf16, progress=self.progress)


class VaderReward(Scorer):
    """VADER's compound sentiment in [−1, 1] of the completion only: as a judge it must not credit the prompt."""

    name = "vader"

    def __init__(self) -> None:
        super().__init__()
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self.analyzer = SentimentIntensityAnalyzer()

    def _raw(self, prompts, completions):
        return [self.analyzer.polarity_scores(c)["compound"] for c in completions]


class CallableReward(Scorer):
    """Any Python f(prompts, completions) -> list[float] (or a tensor), as TRL's reward functions."""

    def __init__(self, fn: Callable, name: str | None = None):
        super().__init__()
        self.fn = fn
        self.name = name or getattr(fn, "__name__", type(fn).__name__)

    def _raw(self, prompts, completions):
        return self.fn(prompts, completions)


def reference_texts(normalize: bool | str) -> tuple[list[str], str]:
    """The texts normalisation is measured on: True → the built-in training openings; a path → its texts."""
    from warprl.data import builtin_prompts, load_reviews

    if normalize is True or normalize == "builtin":
        return builtin_prompts("train"), "builtin"
    path = Path(str(normalize)).expanduser()
    if path.suffix == ".txt":
        if not path.is_file():
            raise UserError(f"normalisation reference file not found: {path}")
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        return lines, str(path)
    texts = load_reviews(str(normalize))["text"].tolist()
    random.Random(0).shuffle(texts)
    return texts[:256], str(path)


def load_reward(spec: str | Callable, device: str | torch.device = "cpu", batch_size: int = SCORE_BATCH,
                normalize: bool | str = False, bf16: bool = False, *, reference: list[str] | None = None,
                progress: bool = False) -> Scorer:
    """The reward used by RL and evaluation: ``fn(prompts, completions) -> float32 [B]`` on the CPU.

    ``spec``: ``"imdb-sentiment"`` (embedded head on frozen MiniLM), ``"vader"`` (rule-based, completion
    only), an RM folder (``warprl reward train`` output or any num_labels=1 sequence-classification folder),
    a bare-head folder, a hub id, or a callable ``f(prompts, completions) -> list[float]``.

    ``normalize``: ``False`` raw; ``True`` mean/std measured now on the built-in training openings (or on
    ``reference`` texts when given); ``"stored"`` the stats saved with the model; a ``.txt``/data path: texts
    from that file. The stats are exposed as ``.stats``. A NaN/inf reward raises :class:`RewardError`.
    """
    from warprl.models import pick_device

    if callable(spec):
        scorer: Scorer = CallableReward(spec)
    elif spec == "vader":
        scorer = VaderReward()
    else:
        dev = pick_device(device) if isinstance(device, str) else device
        rm = load_reward_model(str(spec), device=dev)
        scorer = ModelReward(rm, name=str(spec), batch_size=batch_size, bf16=bf16, progress=progress)
    if normalize == "stored":
        stats = getattr(getattr(scorer, "rm", None), "stats", None)
        if not stats or not stats.get("std"):
            raise UserError(f"reward '{scorer.name}' has no stored normalisation stats; use normalize=True")
        scorer.stats = dict(stats)
    elif reference is not None and normalize is not False:
        scorer.set_normalization(list(reference), "reference")
    elif normalize:
        texts, source = reference_texts(normalize)
        scorer.set_normalization(texts, source)
    return scorer


# -------------------------------------------------------------------------------------------- training


def _fingerprint(rm: RewardModel) -> str:
    """A content hash of the backbone weights: the embedding cache key changes whenever they do."""
    h = hashlib.sha256()
    for p in rm.backbone_parameters():
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def cached_embeddings(rm: RewardModel, texts: list[str], bf16: bool, progress: bool, use_cache: bool,
                      batch_size: int = SCORE_BATCH) -> tuple[torch.Tensor, float]:
    """Pooled features of ``texts`` (computed once; kept on disk as safetensors keyed by weights + texts).

    Returns ``(features, texts_per_second)``; the rate is 0 when they came from the cache.
    """
    from safetensors.torch import load_file, save_file

    from warprl.io import atomic_write
    from warprl.models import cache_dir

    path = None
    if use_cache:
        h = hashlib.sha256()
        h.update(f"{_fingerprint(rm)}|{rm.pooling}|{rm.max_length}|{bf16}|{batch_size}|".encode())
        for t in texts:
            h.update(t.encode("utf-8", "surrogatepass") + b"\0")
        path = cache_dir() / "embeddings" / f"{h.hexdigest()[:24]}.safetensors"
        if path.is_file():
            try:
                return load_file(str(path))["features"], 0.0
            except Exception:  # a damaged cache entry is recomputed
                pass
    t0 = time.perf_counter()
    feats = rm.embed(texts, batch_size=batch_size, bf16=bf16, progress=progress)
    rate = len(texts) / max(time.perf_counter() - t0, 1e-9)
    if path is not None:
        try:
            atomic_write(path, lambda tmp: save_file({"features": feats.contiguous()}, tmp))
        except OSError:
            pass  # a read-only cache only costs time
    return feats, rate


def read_labelled(data: str) -> pd.DataFrame:
    """Reviews with labels 0 (negative) / 1 (positive) and both classes present; unlabelled rows dropped."""
    from warprl.data import load_reviews

    df = load_reviews(data, require_label=True)
    try:
        labels = df["label"].astype(int)
    except (TypeError, ValueError):
        raise UserError(f"{data}: column 'label' must hold 0 (negative) and 1 (positive)") from None
    if not labels.isin([0, 1, -1]).all():
        bad = sorted(set(labels.unique().tolist()) - {0, 1, -1})[:5]
        raise UserError(f"{data}: column 'label' must hold 0 (negative) and 1 (positive), found {bad}")
    df = df.assign(label=labels)
    df = df[df["label"] != -1].reset_index(drop=True)  # unlabelled (unsup) reviews cannot form pairs
    present = set(df["label"].unique().tolist())
    if present != {0, 1}:
        have = "no labelled" if not present else ("only positive" if present == {1} else "only negative")
        raise UserError(f"{data}: preference pairs need both classes, the data has {have} reviews")
    return df


def split_labelled(df: pd.DataFrame, data: str, val_fraction: float, seed: int,
                   max_pairs: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training, validation) reviews, seeded and stratified; ``max_pairs`` caps each training class."""
    from warprl.data import split_train_val

    train, val = split_train_val(df, val_fraction=val_fraction, seed=seed)
    val = val[~val["text"].isin(set(train["text"]))].reset_index(drop=True)  # IMDB repeats a few reviews
    for name, part in (("training", train), ("validation", val)):
        if set(part["label"].unique().tolist()) != {0, 1}:
            raise UserError(f"{data}: too few reviews for a {name} split with both classes "
                            f"({len(df)} labelled reviews, --val-fraction {val_fraction})")
    if max_pairs:  # a seeded per-class subset: every epoch re-pairs these same reviews
        parts = [g.sample(n=min(len(g), max_pairs), random_state=seed) for _, g in train.groupby("label")]
        train = pd.concat(parts).sort_index().reset_index(drop=True)
    return train, val


def _prepare_out(cfg) -> Path:
    out = Path(cfg.out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not cfg.overwrite:
        raise UserError(f"--out {out} exists and is not empty; pass --overwrite to replace it")
    return out


def _epoch_pairs(train, seed: int, epoch: int, index: dict[str, int]) -> list[tuple[int, int]]:
    """This epoch's (chosen, rejected) rows: a fresh seeded positive×negative pairing per epoch."""
    from warprl.data import preference_pairs

    return [(index[p.chosen], index[p.rejected]) for p in preference_pairs(train, seed=seed, epoch=epoch)]


def _steps(cfg, n_pairs: int) -> tuple[int, int]:
    per_epoch = math.ceil(n_pairs / cfg.batch_size)
    return per_epoch, max(1, math.ceil(cfg.epochs * per_epoch))


def _init_head(rm: RewardModel, spec: str) -> None:
    """Copy a bare head (a folder or an embedded alias) into ``rm``: its pooling and shape must match.

    Also the first step of LP-FT (``--init-head``): fine-tuning from a trained linear probe, not a random head.
    """
    path = EMBEDDED.get(spec, Path(spec).expanduser())
    if not (path / HEAD_FILE).is_file():
        raise UserError(f"head {spec}: no {HEAD_FILE} there (use a bare head folder or imdb-sentiment)")
    from safetensors.torch import load_file

    cfg = _read_json(path / "config.json")
    if cfg.get("pooling") != rm.pooling:
        raise UserError(f"head {spec} reads {cfg.get('pooling')} pooling, not {rm.pooling} (see --pooling)")
    try:
        tensors = load_file(str(path / HEAD_FILE))
    except Exception as e:  # safetensors raises its own error type on a damaged file
        raise UserError(f"cannot read {path / HEAD_FILE}: {e}") from None
    head = rm.head
    if "weight" not in tensors or "bias" not in tensors:
        raise UserError(f"{path / HEAD_FILE} must hold 'weight' and 'bias'")
    if tuple(tensors["weight"].shape) != tuple(head.weight.shape):
        raise UserError(f"head {spec}: shape {tuple(tensors['weight'].shape)} does not fit the "
                        f"backbone's {tuple(head.weight.shape)}")
    with torch.no_grad():
        head.weight.copy_(tensors["weight"])
        head.bias.copy_(tensors["bias"].reshape(head.bias.shape))


def _train_head(cfg, rm: RewardModel, feats: torch.Tensor, train, index: dict[str, int],
                val_feats: torch.Tensor, val_rows: list[tuple[int, int]]) -> dict:
    """Frozen backbone: BT on cached features, only the head learns (each step costs microseconds)."""
    head = rm.head
    if not cfg.init_head:
        with torch.no_grad():  # the BT problem on fixed features is convex: start at 0, no init noise
            head.weight.zero_()
            head.bias.zero_()
    head.float().train()
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n_pairs = len(_epoch_pairs(train, cfg.seed, 0, index))
    per_epoch, total = _steps(cfg, n_pairs)
    warmup = int(cfg.warmup_ratio * total)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: linear_warmup_decay(s, total, warmup))
    history: list[dict] = []
    losses: list[float] = []
    pairs: list[tuple[int, int]] = []
    with tqdm(total=total, desc="reward train (head)", disable=not cfg.progress, unit="step") as bar:
        for step in range(total):
            epoch, k = divmod(step, per_epoch)
            if k == 0:
                pairs = _epoch_pairs(train, cfg.seed, epoch, index)
            rows = torch.tensor(pairs[k * cfg.batch_size : (k + 1) * cfg.batch_size])
            chosen = head(feats[rows[:, 0]]).squeeze(-1)
            rejected = head(feats[rows[:, 1]]).squeeze(-1)
            loss = bt_loss(chosen, rejected, cfg.center_rewards)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            if k == per_epoch - 1 or step == total - 1:
                with torch.no_grad():
                    v = head(val_feats).squeeze(-1)
                    vr = torch.tensor(val_rows)
                    val_acc = pairwise_accuracy(v[vr[:, 0]], v[vr[:, 1]])
                history.append({"epoch": epoch + 1, "train_loss": sum(losses) / len(losses), "val_accuracy": val_acc})
                bar.set_postfix(loss=f"{history[-1]['train_loss']:.4f}", val_acc=f"{val_acc:.3f}")
                losses = []
            bar.update(1)
    head.eval()
    return {"steps": total, "train_pairs_per_epoch": n_pairs, "history": history}


def _train_full(cfg, rm: RewardModel, train, index: dict[str, int], enc: dict) -> dict:
    """Full fine-tuning: BT through the whole encoder, AdamW, warmup + linear decay, clipping, bf16 autocast."""
    from warprl.models import disable_dropout

    model = rm.model
    model.train()
    if cfg.disable_dropout:  # BT on pairs overfits little; dropout costs 2x on a CPU (no fused attention)
        disable_dropout(model)
    decay, no_decay = [], []
    for name, p in model.named_parameters():  # no weight decay on biases and LayerNorm gains (BERT recipe)
        (no_decay if p.ndim < 2 or "LayerNorm" in name else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    n_pairs = len(_epoch_pairs(train, cfg.seed, 0, index))
    per_epoch, total = _steps(cfg, n_pairs)
    warmup = int(cfg.warmup_ratio * total)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: linear_warmup_decay(s, total, warmup))
    pad = rm.tokenizer.pad_token_id if rm.tokenizer.pad_token_id is not None else 0
    history: list[dict] = []
    losses: list[float] = []
    correct = seen = 0
    pairs: list[tuple[int, int]] = []
    t0 = time.perf_counter()
    with tqdm(total=total, desc="reward train", disable=not cfg.progress, unit="step") as bar:
        for step in range(total):
            epoch, k = divmod(step, per_epoch)
            if k == 0:
                pairs = _epoch_pairs(train, cfg.seed, epoch, index)
            chunk = pairs[k * cfg.batch_size : (k + 1) * cfg.batch_size]
            rows = [c for c, _ in chunk] + [r for _, r in chunk]  # one forward for chosen and rejected
            r = rm(_collate(enc, rows, pad, rm.device), bf16=cfg.bf16)
            chosen, rejected = r[: len(chunk)], r[len(chunk) :]
            loss = bt_loss(chosen, rejected, cfg.center_rewards)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            correct += int((chosen > rejected).sum())
            seen += len(chunk)
            bar.set_postfix(loss=f"{sum(losses[-20:]) / len(losses[-20:]):.4f}", acc=f"{correct / seen:.3f}")
            bar.update(1)
            if k == per_epoch - 1 or step == total - 1:
                history.append({"epoch": epoch + 1, "train_loss": sum(losses) / len(losses),
                                "train_accuracy": correct / seen})
                losses, correct, seen = [], 0, 0
    elapsed = time.perf_counter() - t0
    model.eval()
    return {"steps": total, "train_pairs_per_epoch": n_pairs, "history": history,
            "train_pairs_per_s": round(min(total * cfg.batch_size, n_pairs * cfg.epochs) / elapsed, 3)}


def train_reward_model(cfg) -> dict:
    """`warprl reward train`: BT-train an RM on ``cfg.data`` into ``cfg.out``; returns the metrics.

    The validation reviews (``val_fraction``, seeded) are never trained on; the metrics are measured on up to
    ``val_pairs`` positive/negative pairs of them with the saved model's own scoring path.
    """
    from warprl.config import to_dict, to_yaml
    from warprl.data import preference_pairs
    from warprl.models import pick_device

    out = _prepare_out(cfg)
    if cfg.export_head and not cfg.freeze_backbone:
        raise UserError("--export-head needs --freeze-backbone (a bare head only fits an unchanged backbone)")
    pooling = cfg.pooling if cfg.pooling != "auto" else ("mean" if cfg.freeze_backbone else "native")
    train, val = split_labelled(read_labelled(cfg.data), cfg.data, cfg.val_fraction, cfg.seed, cfg.max_pairs)
    val_pairs = preference_pairs(val, seed=cfg.seed, limit=cfg.val_pairs)
    device = pick_device(cfg.device)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    rm = from_backbone(cfg.backbone, device=device, pooling=pooling, max_length=cfg.max_length)
    if cfg.init_head:
        _init_head(rm, cfg.init_head)
    texts = list(dict.fromkeys(train["text"].tolist()))  # unique, in order: a duplicate review is one row
    index = {t: i for i, t in enumerate(texts)}
    val_texts = list(dict.fromkeys([p.chosen for p in val_pairs] + [p.rejected for p in val_pairs]))
    val_index = {t: i for i, t in enumerate(val_texts)}
    val_rows = [(val_index[p.chosen], val_index[p.rejected]) for p in val_pairs]
    t0 = time.perf_counter()
    metrics: dict = {"mode": "frozen" if cfg.freeze_backbone else "full", "backbone": cfg.backbone,
                     "pooling": pooling, "data": cfg.data, "seed": cfg.seed, "train_reviews": len(texts),
                     "val_reviews": len(val), "bf16": cfg.bf16}
    if cfg.freeze_backbone:
        for p in rm.backbone_parameters():
            p.requires_grad_(False)
        rm.model.eval()
        feats, rate = cached_embeddings(rm, texts, cfg.bf16, cfg.progress, cfg.cache_embeddings)
        val_feats, _ = cached_embeddings(rm, val_texts, cfg.bf16, cfg.progress, cfg.cache_embeddings)
        metrics["embed_texts_per_s"] = round(rate, 2)
        metrics.update(_train_head(cfg, rm, feats, train, index, val_feats, val_rows))
        with torch.no_grad():
            train_scores = rm.head(feats).squeeze(-1)
            val_scores = rm.head(val_feats).squeeze(-1)
        metrics["train_accuracy_all_pairs"] = all_pairs_accuracy(
            train_scores[torch.tensor([index[t] for t in train.loc[train.label == 1, "text"]])],
            train_scores[torch.tensor([index[t] for t in train.loc[train.label == 0, "text"]])])
    else:
        metrics.update(_train_full(cfg, rm, train, index, rm.tokenize(texts)))
        t1 = time.perf_counter()
        val_scores = rm.score(val_texts, bf16=cfg.bf16, progress=cfg.progress)
        metrics["score_texts_per_s"] = round(len(val_texts) / (time.perf_counter() - t1), 2)
    metrics["train_seconds"] = round(time.perf_counter() - t0, 2)
    vr = torch.tensor(val_rows)
    metrics["val"] = pair_metrics(val_scores[vr[:, 0]], val_scores[vr[:, 1]])
    v = val_scores.double()
    rm.stats = {"mean": float(v.mean()), "std": float(v.std()) if v.numel() > 1 else 1.0, "n": int(v.numel()),
                "source": "validation reviews"}
    provenance = {"train": {"data": cfg.data, "backbone": cfg.backbone, "seed": cfg.seed, "mode": metrics["mode"],
                            "val_accuracy": metrics["val"]["accuracy"], "val_auc": metrics["val"]["auc"]}}
    metrics["out"] = str(out)
    rm.save(out, meta=provenance, extra_files={"metrics.json": json.dumps(metrics, indent=2) + "\n",
                                               "train_config.yaml": to_yaml(cfg)})
    if cfg.export_head:
        rm.save_head(cfg.export_head, backbone=cfg.backbone, meta={**provenance, "config": to_dict(cfg)})
        metrics["export_head"] = cfg.export_head
    return metrics


# ------------------------------------------------------------------------------------------ evaluation


def evaluate_pairs(fn: Scorer, pairs: list, progress: bool = False) -> dict:
    """Pairwise accuracy, AUC, margin and reward moments of ``fn`` on (chosen, rejected) pairs."""
    if not pairs:
        raise UserError("no preference pairs to evaluate")
    if isinstance(fn, ModelReward):
        fn.progress = progress
    texts = [p.chosen for p in pairs] + [p.rejected for p in pairs]
    t0 = time.perf_counter()
    scores = fn.score_texts(texts)
    rate = len(texts) / max(time.perf_counter() - t0, 1e-9)
    n = len(pairs)
    return {**pair_metrics(scores[:n], scores[n:]), "texts_per_s": round(rate, 2)}


def eval_reward(model: str, data: str, limit: int = 1000, split: str = "all", val_fraction: float = 0.1,
                seed: int = 0, device: str = "auto", batch_size: int = SCORE_BATCH, bf16: bool = False,
                progress: bool = False) -> dict:
    """`warprl reward eval`: pairwise metrics of ``model`` on pairs from ``data`` (``split="val"``: only the
    validation reviews `reward train` held out with the same fraction and seed)."""
    from warprl.data import preference_pairs

    if split not in ("all", "val"):
        raise UserError(f"unknown split {split!r} (all or val)")
    df = read_labelled(data)
    if split == "val":
        df = split_labelled(df, data, val_fraction, seed)[1]
    pairs = preference_pairs(df, seed=seed, limit=limit)
    fn = load_reward(model, device=device, batch_size=batch_size, bf16=bf16)
    return {"model": model, "data": data, "split": split, **evaluate_pairs(fn, pairs, progress=progress)}
