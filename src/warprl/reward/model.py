"""The reward-model module and its folders: an encoder with a scalar head, saved, loaded and scored.

A reward model (RM) is an encoder plus a scalar head. It is saved as a standard HF folder
(``AutoModelForSequenceClassification``, ``num_labels=1``) plus ``warprl_reward.json``, which says how the head
reads the encoder:

* ``pooling: native`` — the model's own head (BERT: [CLS] → pooler dense+tanh → classifier). Plain
  ``transformers`` gives exactly our scores. The default for full fine-tuning.
* ``pooling: mean`` — masked mean of the last hidden states, L2-normalised (the sentence-transformers
  convention of all-MiniLM-L6-v2), then the classifier layer. The default with a frozen backbone: on a
  frozen MiniLM it beats the [CLS] pooler (≈83 % vs ≈78 % pairwise in a 1,200-review probe), because
  MiniLM was trained for mean pooling and its [CLS] token never was. Plain ``transformers`` loads the folder,
  but only :func:`warprl.reward.load_reward` honours the pooling.

A bare head (``head.safetensors`` + ``config.json`` naming a frozen backbone alias) is the other folder
kind: the embedded ``imdb-sentiment`` is a 384→1 head on the frozen ``minilm-l6`` alias; see the README
beside it for how it was trained.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm
from transformers.utils import logging as hf_logging

from warprl.errors import UserError
from warprl.io import atomic_dir
from warprl.models import disable_dropout, load_encoder, resolve, save_model
from warprl.precision import autocast

ASSETS = Path(__file__).resolve().parent.parent / "assets"
EMBEDDED: dict[str, Path] = {"imdb-sentiment": ASSETS / "imdb-sentiment"}
META_FILE = "warprl_reward.json"  # beside a saved RM folder: pooling, max_length, stats, provenance
HEAD_FILE = "head.safetensors"  # a bare head on a named frozen backbone (the embedded imdb-sentiment)
FORMAT = "warprl-reward/1"
SCORE_BATCH = 32


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence "newly initialized weights" notices while building an RM from a backbone (the head is meant
    to be new)."""
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


def collate(encodings: dict[str, list[list[int]]], rows: Sequence[int], pad_id: int,
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
                    values = fn(collate(enc, rows, pad, self.device), bf16).float().cpu()
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
        self.model.config.problem_type = "regression"  # num_labels=1: what HF calls a scalar output
        files = {META_FILE: json.dumps(self.meta(meta), indent=2) + "\n", **(extra_files or {})}
        return save_model(self.model, self.tokenizer, out, extra_files=files)

    def save_head(self, out: str | Path, backbone: str, meta: dict | None = None) -> Path:
        """Only the head (weight [1, H], bias [1]) + ``config.json`` naming the frozen backbone alias."""
        if self.pooling != "mean":
            raise UserError("a bare head can only be exported for mean pooling")
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
    init_head(rm, str(path))
    rm.stats = cfg.get("stats")
    rm.source = str(path)
    return rm


def load_reward_model(spec: str, device: str | torch.device = "cpu") -> RewardModel:
    """An RM from an embedded alias, a head folder, an RM folder or a hub id; refuses encoders with no head."""
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
    disable_dropout(model)
    limit = min(512, getattr(tok, "model_max_length", 512) or 512)  # a foreign RM: as long as it allows
    return RewardModel(model, tok, pooling=meta.get("pooling", "native"), max_length=int(meta.get("max_length", limit)),
                       stats=meta.get("stats"), source=spec)


def _check_is_rm(spec: str, architectures: list[str], id2label: dict, num_labels) -> None:
    n = num_labels if num_labels is not None else (len(id2label) or None)
    if not any(a.endswith("ForSequenceClassification") for a in architectures) or (n is not None and n != 1):
        raise UserError(f"'{spec}' is not a reward model (needs a num_labels=1 sequence-classification head); "
                        f"train one with `warprl reward train --backbone {spec}` or use imdb-sentiment / vader")


def head_dir(spec: str) -> Path:
    """The folder of a bare head: an embedded alias (imdb-sentiment) or a path holding ``head.safetensors``."""
    path = EMBEDDED.get(spec, Path(spec).expanduser())
    if not (path / HEAD_FILE).is_file():
        raise UserError(f"head {spec}: no {HEAD_FILE} there (use a bare head folder or imdb-sentiment)")
    return path


def head_pooling(spec: str) -> str | None:
    """The pooling a bare head reads (from its ``config.json``)."""
    return _read_json(head_dir(spec) / "config.json").get("pooling")


def init_head(rm: RewardModel, spec: str) -> None:
    """Copy a bare head (a folder or an embedded alias) into ``rm``: its pooling and shape must match.

    Also the first step of LP-FT: fine-tuning from a trained linear probe, not a random head.
    """
    path = head_dir(spec)
    cfg = _read_json(path / "config.json")
    if cfg.get("pooling") != rm.pooling:
        raise UserError(f"head {spec} reads {cfg.get('pooling')} pooling, not {rm.pooling}")
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
