"""LoRA: through peft (wrap a causal LM, merge, save, load onto a base) and as a parametrisation of plain weights.

The targets default to every linear layer of attention and MLP (peft's ``all-linear``: the output layer
excluded; GPT-2's Conv1D layers included). A saved adapter is peft's own folder (``adapter_config.json`` +
``adapter_model.safetensors``), so peft, TRL and warprl all read it.

``warprl align --lora-r`` does not wrap the model: the rollout engine reads plain weights. There LoRA is a
parametrisation (:class:`Factors`): each target weight is ``W0 + (alpha/r)·B·A`` with W0 frozen, the plain
model holds that sum, and the gradients of A and B follow from the plain weight's gradient G by the chain
rule (:func:`factor_grads`). The maths here is pure tensors; peft is imported only where it is used (~2 s).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from warprl.errors import UserError, first_line

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # peft's saved keys: base_model.model.<module>.lora_A.weight


def parse_targets(targets: str) -> str | list[str]:
    """``all-linear`` or a comma-separated list of module names (``q_proj,v_proj``)."""
    names = [t.strip() for t in str(targets).split(",") if t.strip()]
    if not names:
        raise UserError("--lora-targets is empty (use all-linear or names such as q_proj,v_proj)")
    return "all-linear" if names == ["all-linear"] else names


def apply_lora(model, r: int, alpha: float, dropout: float, targets: str = "all-linear"):
    """Wrap ``model`` in a peft LoRA model: only the adapter's A and B matrices are trainable (B starts at 0)."""
    from peft import LoraConfig, get_peft_model

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
    from peft import LoraConfig, PeftModel, set_peft_model_state_dict

    # Built from the two files by hand rather than PeftModel.from_pretrained: only adapter_config.json (JSON)
    # and adapter_model.safetensors are read, never a pickled adapter_model.bin and never a hub.
    settings = json.loads((folder / ADAPTER_CONFIG).read_text())
    fields = {f.name for f in dataclasses.fields(LoraConfig) if f.init}
    try:
        config = LoraConfig(**{k: v for k, v in settings.items() if k in fields})
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


# ------------------------------------------------------------------------------ LoRA as a parametrisation


@dataclass(frozen=True)
class Target:
    """One adapted layer: its module name, the shape [d_out, d_in] of its update, and whether the layer stores
    its weight transposed ([in, out]: GPT-2's Conv1D, peft's ``fan_in_fan_out``)."""

    name: str
    d_out: int
    d_in: int
    fan_in_fan_out: bool = False


def _linear_layers(model) -> list[tuple[str, torch.nn.Module]]:
    """(name, layer) of every Linear/Conv1D of ``model`` but the output layer (peft's ``all-linear`` set)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return [(n, m) for n, m in model.named_modules()
            if (isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D") and m is not head]


def find_targets(model, targets: str = "all-linear") -> list[Target]:
    """The layers ``--lora-targets`` selects in ``model``, in module order, as peft matches them: ``all-linear``
    is every Linear (or Conv1D) layer but the output layer; a name matches a layer called so or ending in
    ``.name``. A name that matches no layer is refused in one line."""
    names = parse_targets(targets)
    layers = _linear_layers(model)
    found, matched = [], set()
    for name, module in layers:
        hits = {"all-linear"} if names == "all-linear" else {t for t in names if name == t or name.endswith("." + t)}
        if not hits:
            continue
        matched |= hits
        fan = type(module).__name__ == "Conv1D"
        w = module.weight
        d_out, d_in = (w.shape[1], w.shape[0]) if fan else (w.shape[0], w.shape[1])
        found.append(Target(name, int(d_out), int(d_in), fan))
    missing = [t for t in ([] if names == "all-linear" else names) if t not in matched]
    if missing or not found:
        kinds = ", ".join(sorted({n.rsplit(".", 1)[-1] for n, _ in layers}))
        what = f"no layer named {missing[0]!r}" if missing else "no linear layer"
        raise UserError(f"--lora-targets {targets}: {getattr(model.config, 'model_type', 'the model')} has {what} "
                        f"that takes an adapter (the output layer never does); use all-linear or some of: {kinds}")
    return found


def peft_target_modules(model, targets: list[Target]) -> list[str]:
    """``target_modules`` for adapter_config.json: the layers' last names when they select exactly ``targets``
    (e.g. q_proj, v_proj), else the full module names."""
    short = sorted({t.name.rsplit(".", 1)[-1] for t in targets})
    same = [n for n, _ in _linear_layers(model) if n.rsplit(".", 1)[-1] in short] == [t.name for t in targets]
    return short if same else [t.name for t in targets]


def delta(a: torch.Tensor, b: torch.Tensor, scale: float, fan_in_fan_out: bool = False) -> torch.Tensor:
    """ΔW = scale·B·A in the layer's storage layout; the same operations as peft's ``get_delta_weight``. A fresh
    tensor (or a transposed view of one) that the caller may modify in place."""
    d = (b @ a).mul_(scale)  # in place: the same bits as ``* scale``, one temporary fewer per matrix
    return d.T if fan_in_fan_out else d


def factor_grads(grad: torch.Tensor, a: torch.Tensor, b: torch.Tensor, scale: float,
                 fan_in_fan_out: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """dL/dA = s·Bᵀ·G and dL/dB = s·G·Aᵀ from G = dL/dW of the plain weight W = W0 + s·B·A (exact: W is
    linear in each factor)."""
    g = grad.T if fan_in_fan_out else grad
    return (b.T @ g) * scale, (g @ a.T) * scale


class Factors(torch.nn.Module):
    """The A [r, d_in] and B [d_out, r] of every target layer, as parameters named like peft's
    (``<module>.lora_A.weight``): ``state_dict()`` holds a peft adapter's tensors without its
    ``base_model.model.`` prefix, and checkpoints save and load it like any module.

    peft's initialisation: A kaiming-uniform (a = √5, as ``nn.Linear``), drawn from ``seed``; B = 0, so ΔW
    starts at 0 and the adapted model starts as the base.
    """

    def __init__(self, targets: list[Target], r: int, alpha: float, seed: int = 0,
                 device: torch.device | str | None = None, target_modules: list[str] | None = None):
        super().__init__()
        if r < 1:
            raise UserError(f"--lora-r must be >= 1, got {r}")
        self.targets, self.r, self.alpha, self.scale = list(targets), int(r), float(alpha), float(alpha) / int(r)
        self.target_modules = target_modules or [t.name for t in targets]
        gen = torch.Generator().manual_seed(int(seed))
        self.pairs: list[tuple[torch.nn.Parameter, torch.nn.Parameter]] = []
        for t in self.targets:
            a = torch.empty(r, t.d_in)
            torch.nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=gen)
            pair = (torch.nn.Parameter(a.to(device)), torch.nn.Parameter(torch.zeros(t.d_out, r, device=device)))
            node = self
            for part in t.name.split("."):
                if part not in node._modules:
                    node.add_module(part, torch.nn.Module())
                node = node._modules[part]
            for which, p in zip(("lora_A", "lora_B"), pair, strict=True):
                node.add_module(which, torch.nn.Module())
                node._modules[which].register_parameter("weight", p)
            self.pairs.append(pair)

    def deltas(self):
        """(target, ΔW) for each target layer, one dense ΔW at a time (fp32)."""
        for t, (a, b) in zip(self.targets, self.pairs, strict=True):
            yield t, delta(a.detach(), b.detach(), self.scale, t.fan_in_fan_out)


def adapter_config(factors: Factors, base: str = "") -> dict:
    """peft's ``adapter_config.json`` for ``factors`` (dropout 0: see ``warprl align --lora-dropout``)."""
    return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base, "r": factors.r,
            "lora_alpha": factors.alpha, "lora_dropout": 0.0, "target_modules": factors.target_modules,
            "bias": "none", "fan_in_fan_out": any(t.fan_in_fan_out for t in factors.targets),
            "init_lora_weights": True, "inference_mode": True, "modules_to_save": None}


def write_adapter(factors: Factors, folder: str | Path, base: str = "") -> Path:
    """``adapter_config.json`` + ``adapter_model.safetensors`` (fp32) into ``folder``: peft, ``load_adapter`` and
    :func:`read_adapter` read it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {PEFT_PREFIX + k: v.detach().to("cpu").contiguous() for k, v in factors.state_dict().items()}
    save_file(tensors, str(folder / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    (folder / ADAPTER_CONFIG).write_text(json.dumps(adapter_config(factors, base), indent=2, sort_keys=True) + "\n")
    return folder


def load_factors(factors: Factors, folder: str | Path) -> None:
    """Put the tensors of an adapter folder written by :func:`write_adapter` into ``factors`` (strict)."""
    tensors = load_file(str(Path(folder) / ADAPTER_WEIGHTS))
    factors.load_state_dict({k.removeprefix(PEFT_PREFIX): v for k, v in tensors.items()})


def read_adapter(folder: str | Path) -> tuple[float, bool, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """(scale = alpha/r, fan_in_fan_out, {module name: (A, B)}) of a LoRA adapter folder (fp32)."""
    folder = Path(folder)
    try:
        cfg = json.loads((folder / ADAPTER_CONFIG).read_text())
        scale = float(cfg["lora_alpha"]) / int(cfg["r"])
        tensors = load_file(str(folder / ADAPTER_WEIGHTS))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{folder}: not a readable LoRA adapter ({first_line(e, 120)})") from None
    pairs: dict[str, list] = {}
    for key, t in tensors.items():
        name, sep, which = key.removeprefix(PEFT_PREFIX).partition(".lora_")
        if not sep or which not in ("A.weight", "B.weight"):
            raise UserError(f"{folder}: unexpected tensor {key!r} in a LoRA adapter")
        pairs.setdefault(name, [None, None])[which[0] == "B"] = t.to(torch.float32)
    if any(p[0] is None or p[1] is None for p in pairs.values()):
        raise UserError(f"{folder}: a LoRA layer without its A or B matrix")
    return scale, bool(cfg.get("fan_in_fan_out", False)), {n: (p[0], p[1]) for n, p in pairs.items()}
