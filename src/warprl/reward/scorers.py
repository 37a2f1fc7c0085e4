"""The scoring API that RL and evaluation call: ``fn(prompts, completions) -> float32 [B]`` on the CPU.

    fn = load_reward("imdb-sentiment" | "vader" | RM folder | hub id | callable, device, batch_size, normalize, bf16)
    fn(prompts, completions) -> torch.Tensor  # float32 [B] on the CPU, no grad, deterministic

Every source is a :class:`Scorer`: it checks one finite number per completion and can normalise with
mean/std measured on reference texts (or stored with a trained reward model).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import torch
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from warprl.data import builtin_prompts, load_reviews
from warprl.errors import UserError
from warprl.models import pick_device
from warprl.reward.model import SCORE_BATCH, RewardModel, load_reward_model


class RewardError(UserError):
    """A reward function returned something unusable (a NaN/inf, a wrong count, a non-number)."""


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
