"""LoRA through peft: wrap a causal LM, merge the adapter into plain weights, save it, load it onto a base.

The targets default to every linear layer of attention and MLP (peft's ``all-linear``: the output layer
excluded; GPT-2's Conv1D layers included). A saved adapter is peft's own folder (``adapter_config.json`` +
``adapter_model.safetensors``), so peft, TRL and warprl all read it.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

from warprl.errors import UserError, first_line

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_LORA_FIELDS = {f.name for f in dataclasses.fields(LoraConfig) if f.init}


def parse_targets(targets: str) -> str | list[str]:
    """``all-linear`` or a comma-separated list of module names (``q_proj,v_proj``)."""
    names = [t.strip() for t in str(targets).split(",") if t.strip()]
    if not names:
        raise UserError("--lora-targets is empty (use all-linear or names such as q_proj,v_proj)")
    return "all-linear" if names == ["all-linear"] else names


def apply_lora(model, r: int, alpha: float, dropout: float, targets: str = "all-linear"):
    """Wrap ``model`` in a peft LoRA model: only the adapter's A and B matrices are trainable (B starts at 0)."""
    if r < 1:
        raise UserError(f"--lora-r must be >= 1, got {r}")
    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=parse_targets(targets),
                     bias="none", task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, cfg)
    except ValueError as e:  # "Target modules {...} not found in the base model"
        raise UserError(f"--lora-targets {targets}: {first_line(e)}") from None


def merge(peft_model):
    """The plain base model with ``W + (alpha/r)·B·A`` folded into each target layer (the wrapper removed)."""
    return peft_model.merge_and_unload()


def save_adapter(peft_model, folder: str | Path, dtype: torch.dtype | None = None) -> Path:
    """peft's ``save_pretrained`` (safetensors); with ``dtype`` the stored tensors are cast (e.g. bf16)."""
    folder = Path(folder)
    peft_model.save_pretrained(str(folder), safe_serialization=True)
    if dtype is not None:
        path = folder / ADAPTER_WEIGHTS
        tensors = {k: v.to(dtype).contiguous() for k, v in load_file(str(path)).items()}
        save_file(tensors, str(path), metadata={"format": "pt"})
    return folder


def _check_adapter(base, folder: Path) -> None:
    """Refuse, in one line, an adapter whose tensors do not fit ``base`` (another architecture or size)."""
    try:
        cfg = json.loads((folder / ADAPTER_CONFIG).read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{folder}: not a LoRA adapter folder ({first_line(e, 120)})") from None
    if cfg.get("peft_type", "LORA") != "LORA":
        raise UserError(f"{folder}: a {cfg.get('peft_type')} adapter, only LoRA is supported")
    weights = folder / ADAPTER_WEIGHTS
    if not weights.is_file():
        raise UserError(f"{folder}: no {ADAPTER_WEIGHTS}")
    modules = dict(base.named_modules())
    for key, tensor in load_file(str(weights)).items():
        # "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" → "model.layers.0.self_attn.q_proj"
        key = key.removeprefix("base_model.model.")
        name = key.split(".lora_")[0] if ".lora_" in key else key.rsplit(".", 1)[0]
        layer = modules.get(name)
        if layer is None:
            raise UserError(f"{folder}: adapter for another architecture ({base.config.model_type} has no "
                            f"layer '{name}')")
        w = getattr(layer, "weight", None)
        if ".lora_" not in key:  # a saved full layer (modules_to_save, resized embeddings)
            if w is not None and tuple(w.shape) != tuple(tensor.shape):
                raise UserError(f"{folder}: adapter for another architecture ('{name}' is {tuple(w.shape)} in "
                                f"{base.config.model_type}, {tuple(tensor.shape)} in the adapter)")
            continue
        if w is None:
            raise UserError(f"{folder}: adapter layer '{name}' is not a linear layer of {base.config.model_type}")
        # Linear weight is [out, in]; GPT-2's Conv1D stores [in, out].
        d_out, d_in = (w.shape[1], w.shape[0]) if type(layer).__name__ == "Conv1D" else (w.shape[0], w.shape[1])
        want = d_in if ".lora_A." in key else d_out
        got = tensor.shape[1] if ".lora_A." in key else tensor.shape[0]
        if got != want:
            raise UserError(f"{folder}: adapter for another architecture ('{name}' expects {want} features, "
                            f"the adapter has {got})")


def load_adapter(base, folder: str | Path, merged: bool = True):
    """Put the LoRA adapter in ``folder`` onto ``base``; return the merged plain model (or the peft model)."""
    folder = Path(folder)
    _check_adapter(base, folder)
    # Built from the two files by hand rather than PeftModel.from_pretrained: only adapter_config.json (JSON)
    # and adapter_model.safetensors are read, never a pickled adapter_model.bin and never a hub.
    settings = json.loads((folder / ADAPTER_CONFIG).read_text())
    try:
        config = LoraConfig(**{k: v for k, v in settings.items() if k in _LORA_FIELDS})
        config.inference_mode = True
        model = PeftModel(base, config)
        result = set_peft_model_state_dict(model, load_file(str(folder / ADAPTER_WEIGHTS)))
    except Exception as e:  # peft/safetensors raise ValueError, KeyError, RuntimeError on mismatches
        raise UserError(f"cannot apply adapter {folder}: {first_line(e)}") from None
    unused = list(getattr(result, "unexpected_keys", []))
    if unused:
        raise UserError(f"cannot apply adapter {folder}: {len(unused)} tensors fit no layer, e.g. {unused[0]}")
    # Adapters stored in bf16/fp16 are upcast to the base's dtype (peft keeps the stored dtype otherwise).
    dtype = next(base.parameters()).dtype
    for n, p in model.named_parameters():
        if "lora_" in n and p.dtype != dtype:
            p.data = p.data.to(dtype)
    return merge(model) if merged else model
