"""Review data in every format we accept, and what RL and reward training need from it.

Sources: a hub dataset id (``stanfordnlp/imdb``), a local parquet / jsonl / json / csv file or a folder of
them, the official ``aclImdb/`` layout, or ``builtin`` (openings written for this project, the offline
default). Products: prompts (the first N policy tokens of a review), preference pairs (a positive review
preferred over a negative one) and seeded train/validation splits. Every failure is a one-line UserError.
"""

from __future__ import annotations

import hashlib
import html
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from warprl.config import parse_prompt_tokens
from warprl.errors import UserError, first_line

TABLE_SUFFIXES = (".parquet", ".jsonl", ".json", ".csv")

# Openings of movie reviews, written for warprl (no dataset text), in assets/builtin_openings.txt. Mixed in tone
# on purpose: a policy that learns positivity must do it from neutral and negative starts too. The first 64 are
# for training, the rest are held out for evaluation (see builtin_prompts).
BUILTIN_OPENINGS: tuple[str, ...] = tuple(
    line.strip() for line in (Path(__file__).parent / "assets" / "builtin_openings.txt").read_text(encoding="utf-8")
    .splitlines() if line.strip() and not line.startswith("#"))
BUILTIN_TRAIN = 64


def builtin_prompts(split: str = "train") -> list[str]:
    """The built-in openings: ``train`` (64) or ``eval`` (the held-out rest)."""
    if split == "train":
        return list(BUILTIN_OPENINGS[:BUILTIN_TRAIN])
    if split in ("eval", "validation", "test"):
        return list(BUILTIN_OPENINGS[BUILTIN_TRAIN:])
    raise ValueError(f"unknown split {split!r}")


# ------------------------------------------------------------------------------------------------ reading

_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)
_SPACE = re.compile(r"\s+")


def clean_text(text: str) -> str:
    """Remove the ``<br />`` tags IMDB reviews carry, unescape entities, collapse whitespace."""
    return _SPACE.sub(" ", html.unescape(_BR.sub(" ", text))).strip()


def _read_table(path: Path) -> pd.DataFrame:
    if path.stat().st_size == 0:
        raise UserError(f"{path}: empty file")
    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        if path.suffix == ".csv":
            return pd.read_csv(path)
        if path.suffix == ".jsonl":
            return pd.read_json(path, lines=True)
        if path.suffix == ".json":
            try:
                return pd.read_json(path)
            except ValueError:
                return pd.read_json(path, lines=True)
    except Exception as e:  # pyarrow / pandas parser errors vary by format
        first = first_line(e, 160)
        raise UserError(f"cannot read {path}: {first}") from None
    raise UserError(f"unsupported data file {path} (use {', '.join(TABLE_SUFFIXES)})")


def _acl_imdb_root(folder: Path, split: str) -> Path | None:
    """The folder holding pos/ and neg/ for the official aclImdb layout, if this is one."""
    for cand in (folder / split, folder / "aclImdb" / split, folder):
        if (cand / "pos").is_dir() or (cand / "neg").is_dir():
            return cand
    return None


def _read_acl_imdb(root: Path) -> pd.DataFrame:
    rows = []
    for name, label in (("neg", 0), ("pos", 1), ("unsup", -1)):
        sub = root / name
        if not sub.is_dir():
            continue
        for f in sorted(sub.glob("*.txt")):
            stem = f.stem  # "<id>_<rating>.txt"
            rating = int(stem.split("_")[1]) if "_" in stem and stem.split("_")[1].isdigit() else 0
            rows.append({"text": f.read_text(encoding="utf-8", errors="replace"), "label": label,
                         "rating": rating, "id": stem})
    return pd.DataFrame(rows, columns=["text", "label", "rating", "id"])


def _read_hub(dataset_id: str, split: str) -> pd.DataFrame:
    try:
        import datasets

        ds = datasets.load_dataset(dataset_id, split=split)
    except Exception as e:
        first = first_line(e, 160)
        raise UserError(f"cannot load dataset '{dataset_id}' from the hub (offline or unknown id: {first}); "
                        f"pass a local parquet/jsonl/csv file or folder, or use --prompts builtin") from None
    return ds.to_pandas()


def load_reviews(source: str, split: str = "train", require_label: bool = False) -> pd.DataFrame:
    """Read reviews into a DataFrame with a ``text`` column (and ``label`` when present), texts cleaned."""
    if not source:
        raise UserError("no data source given")
    path = Path(source).expanduser()
    if path.is_file():
        df = _read_table(path)
    elif path.is_dir():
        acl = _acl_imdb_root(path, split)
        if acl is not None:
            df = _read_acl_imdb(acl)
        else:
            files = sorted(p for p in path.iterdir() if p.suffix in TABLE_SUFFIXES)
            if not files:
                raise UserError(f"{path} holds no {'/'.join(TABLE_SUFFIXES)} files and is not an aclImdb folder")
            df = pd.concat([_read_table(f) for f in files], ignore_index=True)
    elif source.startswith((".", "/", "~")) or Path(source).suffix in TABLE_SUFFIXES:
        raise UserError(f"data file not found: {source}")
    else:
        df = _read_hub(source, split)
    if "text" not in df.columns:
        raise UserError(f"{source}: missing column 'text' (found: {', '.join(map(str, df.columns))})")
    if require_label and "label" not in df.columns:
        raise UserError(f"{source}: missing column 'label' (found: {', '.join(map(str, df.columns))})")
    df = df.copy()
    df["text"] = df["text"].astype(str).map(clean_text)
    df = df[df["text"].str.len() > 0].reset_index(drop=True)
    if df.empty:
        raise UserError(f"{source}: no non-empty texts")
    return df


def split_train_val(df: pd.DataFrame, val_fraction: float = 0.1, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A seeded split; stratified by label when there is one, so both halves keep the class balance."""
    rng = random.Random(seed)
    groups = [df.index[df["label"] == v].tolist() for v in sorted(df["label"].unique())] \
        if "label" in df.columns else [df.index.tolist()]
    train_idx, val_idx = [], []
    for idx in groups:
        rng.shuffle(idx)
        n_val = int(round(len(idx) * val_fraction))
        val_idx += idx[:n_val]
        train_idx += idx[n_val:]
    return df.loc[sorted(train_idx)].reset_index(drop=True), df.loc[sorted(val_idx)].reset_index(drop=True)


# -------------------------------------------------------------------------------------------------- pairs


def read_labelled(data: str) -> pd.DataFrame:
    """Reviews with labels 0 (negative) / 1 (positive) and both classes present; unlabelled rows dropped."""
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
    train, val = split_train_val(df, val_fraction=val_fraction, seed=seed)
    val = val[~val["text"].isin(set(train["text"]))].reset_index(drop=True)  # IMDB repeats a few reviews
    for name, part in (("training", train), ("validation", val)):
        if set(part["label"].unique().tolist()) != {0, 1}:
            raise UserError(f"{data}: too few reviews for a {name} split with both classes "
                            f"({len(df)} labelled reviews, validation fraction {val_fraction})")
    if max_pairs:  # a seeded per-class subset: every epoch re-pairs these same reviews
        parts = [g.sample(n=min(len(g), max_pairs), random_state=seed) for _, g in train.groupby("label")]
        train = pd.concat(parts).sort_index().reset_index(drop=True)
    return train, val


@dataclass(frozen=True)
class Pair:
    chosen: str
    rejected: str


def preference_pairs(df: pd.DataFrame, seed: int = 0, epoch: int = 0, limit: int = 0) -> list[Pair]:
    """(positive review, negative review) pairs; each review is used at most once per epoch.

    The pairing is a fresh seeded shuffle per ``epoch``, so more epochs see new combinations.
    """
    if "label" not in df.columns:
        raise UserError("preference pairs need a 'label' column (1 positive, 0 negative)")
    pos = df.loc[df["label"] == 1, "text"].tolist()
    neg = df.loc[df["label"] == 0, "text"].tolist()
    if not pos or not neg:
        have = "positive" if pos else "negative"
        raise UserError(f"preference pairs need both classes, the data has only {have} reviews "
                        f"(labels found: {sorted(df['label'].unique().tolist())})")
    rng = random.Random(f"{seed}/{epoch}")
    rng.shuffle(pos)
    rng.shuffle(neg)
    pairs = [Pair(c, r) for c, r in zip(pos, neg, strict=False)]
    return pairs[:limit] if limit else pairs


# ------------------------------------------------------------------------------------------------ prompts


def make_prompts(texts: list[str], tokenizer, n_tokens: str | int = "8", seed: int = 0,
                 limit: int = 0) -> list[str]:
    """The first N policy tokens of each text (N fixed, or drawn per text from a LO-HI range), decoded.

    Texts with no more than N tokens are skipped: there would be nothing left to continue.
    """
    lo, hi = parse_prompt_tokens(n_tokens)
    rng = random.Random(seed)
    prompts: list[str] = []
    for text in texts:
        n = lo if lo == hi else rng.randint(lo, hi)
        ids = tokenizer(clean_text(text), add_special_tokens=False)["input_ids"]
        if len(ids) <= n:
            continue
        prompt = tokenizer.decode(ids[:n], skip_special_tokens=True).strip()
        if prompt:
            prompts.append(prompt)
        if limit and len(prompts) >= limit:
            break
    return prompts


# The train/eval split of prompts never depends on a training seed: a review (or a line of a .txt file) is
# held out by a hash of its own text, so `warprl align --seed S` trains on the same side for every S and
# `warprl evaluate` always evaluates on the other one.
SPLIT_SALT = "warprl-split-v1"
MIN_SPLIT_LINES = 2  # a .txt file must leave at least this many lines on each side


def text_hash(text: str, salt: str = SPLIT_SALT) -> int:
    """A 64-bit hash of ``text`` that is the same in every process and on every machine (unlike ``hash``)."""
    return int.from_bytes(hashlib.blake2b(f"{salt}\0{text}".encode(), digest_size=8).digest(), "big")


def is_held_out(text: str, val_fraction: float) -> bool:
    """Whether a review belongs to the evaluation side: its hash, scaled to [0, 1), is below ``val_fraction``."""
    return text_hash(text) / 2.0**64 < val_fraction


def split_lines(lines: list[str], val_fraction: float, source: str = "") -> tuple[list[str], list[str]]:
    """(training, evaluation) lines of a prompt file: the ⌈n·val_fraction⌉ lines of smallest hash are held out.

    Duplicate lines are kept once (a line cannot be on both sides). Ranking by hash makes the split a
    function of the file alone; a file too short for :data:`MIN_SPLIT_LINES` lines on each side is refused.
    """
    unique = list(dict.fromkeys(lines))
    n_eval = math.ceil(len(unique) * val_fraction)
    held = set(sorted(unique, key=text_hash)[:n_eval])
    train = [ln for ln in unique if ln not in held]
    evaluation = [ln for ln in unique if ln in held]
    if len(train) < MIN_SPLIT_LINES or len(evaluation) < MIN_SPLIT_LINES:
        need = max(math.ceil(MIN_SPLIT_LINES / val_fraction), MIN_SPLIT_LINES * 2) if val_fraction > 0 else 0
        raise UserError(f"{source or 'prompt file'}: {len(unique)} distinct prompts leave {len(train)} for training and "
                        f"{len(evaluation)} held out (validation fraction {val_fraction}); a prompt file needs at least "
                        f"{MIN_SPLIT_LINES} on each side, i.e. at least {need} distinct lines")
    return train, evaluation


def cut_prompts(texts: list[str], tokenizer, n_tokens: str | int = "8") -> list[str]:
    """The prompt of each review: its first N policy tokens, N fixed or drawn from LO-HI by a hash of the text.

    A pure function of (text, N, tokenizer): the same review gives the same prompt for every seed, so the
    training and evaluation prompt sets can be compared exactly. ``""`` where a review is not longer than N.
    """
    lo, hi = parse_prompt_tokens(n_tokens)
    out: list[str] = []
    for i in range(0, len(texts), 1024):  # batched: the fast tokenizer's batch call runs in Rust
        chunk = texts[i : i + 1024]
        # Only the start of a review matters; a bounded prefix keeps 25k reviews within seconds.
        ids = tokenizer([clean_text(t[: 16 * hi + 64]) for t in chunk], add_special_tokens=False)["input_ids"]
        for text, row in zip(chunk, ids, strict=True):
            n = lo + text_hash(text, "prompt-length") % (hi - lo + 1)
            out.append(tokenizer.decode(row[:n], skip_special_tokens=True).strip() if len(row) > n else "")
    return out


def load_prompts(spec: str, tokenizer=None, split: str = "train", n_tokens: str | int = "8", seed: int = 0,
                 limit: int = 0, val_fraction: float = 0.1) -> list[str]:
    """Prompts for RL (``split="train"``) or evaluation (``split="eval"``), never overlapping, for any seed.

    ``builtin`` uses the built-in openings (64 for training, the rest held out); a ``.txt`` file is one prompt
    per line, split by :func:`split_lines`; anything else is review data, split by :func:`is_held_out` (a hash
    of each review, independent of ``seed``), and an evaluation prompt that some training review also yields
    is dropped. ``seed`` only orders the training prompts; evaluation prompts come in one fixed order.
    """
    if split not in ("train", "eval", "validation", "test"):
        raise ValueError(f"unknown split {split!r}")
    train_side = split == "train"
    if spec == "builtin":
        prompts = builtin_prompts("train" if train_side else "eval")
        return prompts[:limit] if limit else prompts
    path = Path(spec).expanduser()
    if path.suffix == ".txt":
        if not path.is_file():
            raise UserError(f"prompt file not found: {path}")
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        if not lines:
            raise UserError(f"{path}: no prompts (empty file)")
        train, held = split_lines(lines, val_fraction, str(path))
        prompts = train if train_side else held
        return prompts[:limit] if limit else prompts
    if tokenizer is None:
        raise ValueError("a tokenizer is needed to cut prompts from review data")
    df = load_reviews(spec, split="train")
    if "label" in df.columns:
        df = df[df["label"] != -1] if (df["label"] != -1).any() else df
    texts = list(dict.fromkeys(df["text"].tolist()))  # IMDB repeats a few reviews: one side each
    held = [is_held_out(t, val_fraction) for t in texts]
    train_texts = [t for t, h in zip(texts, held, strict=True) if not h]
    if train_side:
        random.Random(seed).shuffle(train_texts)
        prompts = [p for p in cut_prompts(train_texts, tokenizer, n_tokens) if p]
    else:
        # Every prompt a training review yields (for any seed: prompts do not depend on it) is excluded.
        seen = set(cut_prompts(train_texts, tokenizer, n_tokens))
        eval_texts = sorted((t for t, h in zip(texts, held, strict=True) if h), key=text_hash)
        prompts = []
        for p in cut_prompts(eval_texts, tokenizer, n_tokens):
            if p and p not in seen:
                seen.add(p)
                prompts.append(p)
    prompts = prompts[:limit] if limit else prompts
    if not prompts:
        side = "training" if train_side else "held-out"
        raise UserError(f"{spec}: no {side} texts longer than the prompt length {n_tokens} "
                        f"(validation fraction {val_fraction})")
    return prompts


def inspect(source: str, tokenizer=None, n_tokens: str | int = "8", examples: int = 3, seed: int = 0) -> dict:
    """Counts, label balance, example prompts and pairs (for `warprl data inspect`)."""
    df = load_reviews(source)
    info: dict = {"source": source, "rows": int(len(df)), "columns": [str(c) for c in df.columns]}
    lengths = df["text"].str.split().str.len()
    info["words_mean"] = round(float(lengths.mean()), 1)
    if "label" in df.columns:
        info["labels"] = {str(k): int(v) for k, v in df["label"].value_counts().sort_index().items()}
        try:
            pairs = preference_pairs(df, seed=seed)
            info["pairs_per_epoch"] = len(pairs)
            info["example_pairs"] = [{"chosen": p.chosen[:160], "rejected": p.rejected[:160]}
                                     for p in pairs[:examples]]
        except UserError as e:
            info["pairs_per_epoch"] = 0
            info["pairs_note"] = str(e)
    if tokenizer is not None:
        texts = df["text"].tolist()
        random.Random(seed).shuffle(texts)
        info["example_prompts"] = make_prompts(texts[: examples * 4], tokenizer, n_tokens, seed=seed, limit=examples)
    return info
