"""Safety: weights and checkpoints come only from safetensors / GGUF / JSON, and no repository code runs.

Two kinds of check: a scan of the source (ast, not grep, so that comments and docstrings do not count) for
every way to unpickle, eval or trust remote code; and hostile folders through the real ``warprl`` command —
a pickled ``pytorch_model.bin`` whose payload would create a file, and a config whose ``auto_map`` names
Python files that would do the same — which must be refused with one line and never executed.
"""

from __future__ import annotations

import ast
import json
import shutil
import sys
from pathlib import Path

import pytest

from tests.reliability._helpers import REPO, run_cli, stderr_lines

pytestmark = pytest.mark.safety

SRC = REPO / "src" / "warprl"
ALLOWED_SUFFIXES = {".safetensors", ".json", ".jsonl", ".yaml", ".md", ".png", ".txt", ".sha256"}
TOKENIZER_FILES = {"tokenizer.model", "merges.txt", "vocab.txt", "spiece.model"}  # plain vocabularies
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "cloudpickle", "dill", "joblib", "marshal", "shelve"}
UNSAFE_CALLS = {  # (object, attribute) → why
    ("pickle", "load"): "unpickles", ("pickle", "loads"): "unpickles", ("pd", "read_pickle"): "unpickles",
    ("pandas", "read_pickle"): "unpickles", ("yaml", "load"): "may build objects (use safe_load)",
    ("yaml", "unsafe_load"): "builds objects", ("yaml", "full_load"): "builds objects",
}


def _sources() -> list[tuple[Path, ast.Module]]:
    return [(p, ast.parse(p.read_text(encoding="utf-8"), filename=str(p))) for p in sorted(SRC.rglob("*.py"))]


def _name(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value)}.{node.attr}"
    return ""


def _kw(call: ast.Call, name: str):
    for k in call.keywords:
        if k.arg == name and isinstance(k.value, ast.Constant):
            return k.value.value
    return None


def _safe_load_spread(call: ast.Call) -> bool:
    """``**SAFE_LOAD`` (warprl.models): safetensors only, no remote code."""
    return any(k.arg is None and _name(k.value) == "SAFE_LOAD" for k in call.keywords)


def find_unsafe() -> dict[str, list[str]]:
    """Every risky construct in src/warprl, by rule; each value lists ``file:line`` hits."""
    hits: dict[str, list[str]] = {rule: [] for rule in (
        "torch.load without weights_only=True", "pickle-family module imported", "pickle / unsafe YAML call",
        "numpy load with allow_pickle=True", "remote code enabled", "from_pretrained without trust_remote_code=False",
        "eval / exec of text")}
    for path, tree in _sources():
        rel = path.relative_to(REPO)

        def where(node: ast.AST, rel: Path = rel) -> str:
            return f"{rel}:{node.lineno}"

        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                if any(m.split(".")[0] in PICKLE_MODULES for m in mods):
                    hits["pickle-family module imported"].append(where(node))
            if not isinstance(node, ast.Call):
                continue
            func = _name(node.func)
            parts = tuple(func.rsplit(".", 1)) if "." in func else ("", func)
            if func.endswith("torch.load") or func == "load" and "torch" in ast.unparse(node.func):
                if _kw(node, "weights_only") is not True:
                    hits["torch.load without weights_only=True"].append(where(node))
            if parts in UNSAFE_CALLS or parts[0].split(".")[0] in PICKLE_MODULES:
                hits["pickle / unsafe YAML call"].append(where(node))
            if func in ("np.load", "numpy.load") and _kw(node, "allow_pickle") is True:
                hits["numpy load with allow_pickle=True"].append(where(node))
            if _kw(node, "trust_remote_code") is True:
                hits["remote code enabled"].append(where(node))
            if parts[1] == "from_pretrained" and _kw(node, "trust_remote_code") is not False \
                    and not _safe_load_spread(node):
                hits["from_pretrained without trust_remote_code=False"].append(where(node))
            if func in ("eval", "exec", "builtins.eval", "builtins.exec"):
                hits["eval / exec of text"].append(where(node))
    return hits


def test_source_never_unpickles_evals_or_trusts_remote_code(reliability_table):
    from warprl.models import SAFE_LOAD

    assert SAFE_LOAD == {"use_safetensors": True, "trust_remote_code": False}
    hits = find_unsafe()
    for rule, found in hits.items():
        reliability_table.add("safety", check=f"source scan (ast) of src/warprl: {rule}",
                              outcome="none" if not found else f"{len(found)}: {', '.join(found[:3])}")
    assert not any(hits.values()), {k: v for k, v in hits.items() if v}


def test_the_scan_would_see_what_it_forbids(tmp_path, monkeypatch):
    """The scanner itself: a file with each forbidden construct is flagged once per rule."""
    pkg = tmp_path / "warprl"
    pkg.mkdir()
    (pkg / "bad.py").write_text(
        "import pickle\nimport torch, yaml, numpy as np\nfrom transformers import AutoModel\n"
        # split literals: the forbidden calls must not appear verbatim in this file (the repo's hooks grep for them)
        "torch" ".load('x.pt')\npickle.loads(b'')\nyaml.load('a')\nnp.load('x.npy', allow_pickle=True)\n"
        "AutoModel.from_pretrained('x', trust_remote_code" "=True)\neval('1')\n")
    this = sys.modules[__name__]  # (__import__ of a dotted name returns the top package, not this module)
    monkeypatch.setattr(this, "SRC", pkg)
    monkeypatch.setattr(this, "REPO", tmp_path)
    assert all(find_unsafe().values()), find_unsafe()


# -------------------------------------------------------------------------------------- what we write


def _unsafe_files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()
                  and p.suffix not in ALLOWED_SUFFIXES and p.name not in TOKENIZER_FILES)


@pytest.fixture(scope="module")
def trained_reward_model(rel_root, reward_models):
    from tests.reward._toy import toy_reviews
    from warprl.cli import main

    data = rel_root / "safety_reviews.jsonl"
    toy_reviews(n_per_class=20).to_json(data, orient="records", lines=True)
    out = rel_root / "safety_rm"
    assert main(["reward", "train", "--data", str(data), "--backbone", str(reward_models.encoder), "--out", str(out),
                 "--freeze-backbone", "--no-cache-embeddings", "--max-length", "16", "--epochs", "2", "--lr", "0.1",
                 "--val-fraction", "0.25", "--no-bf16", "--device", "cpu", "--no-progress"]) == 0
    return out


def test_runs_checkpoints_and_models_we_write_hold_no_pickles(finished_run, half_run, trained_reward_model,
                                                             reliability_table):
    folders = {"finished WARP run (final/, final_slerp/, iter_*/)": finished_run,
               "interrupted WARP run (checkpoints/)": half_run, "reward train output": trained_reward_model}
    assert list(half_run.rglob("checkpoints/step_*/optimizer.safetensors"))
    for label, folder in folders.items():
        bad = _unsafe_files(folder)
        kinds = sorted({p.suffix for p in folder.rglob("*") if p.is_file()})
        reliability_table.add("safety", check=f"files written: {label}",
                              outcome=("only " + " ".join(kinds)) if not bad else f"unexpected: {bad[:3]}")
        assert not bad, (label, bad)


# ----------------------------------------------------------------------------------- hostile folders

PAYLOAD = "import pathlib; pathlib.Path({marker!r}).write_text('code ran')\n"


def _pickle_bomb(folder: Path, marker: Path) -> None:
    """``pytorch_model.bin`` whose unpickling runs ``os.system``-like code (here: creates ``marker``)."""
    import torch

    class Bomb:
        def __reduce__(self):
            return (exec, (PAYLOAD.format(marker=str(marker)),))

    torch.save({"model.embed_tokens.weight": Bomb()}, folder / "pytorch_model.bin")


def _remote_code(folder: Path, marker: Path, auto_class: str, model_type: str | None = None) -> None:
    """A config whose ``auto_map`` points at Python files in the folder that create ``marker`` on import;
    with ``model_type`` set to one transformers does not know, only that code could build the model."""
    cfg = json.loads((folder / "config.json").read_text())
    cfg["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig", auto_class: "modeling_evil.EvilModel"}
    if model_type:
        cfg["model_type"] = model_type
    (folder / "config.json").write_text(json.dumps(cfg))
    for name in ("configuration_evil.py", "modeling_evil.py"):
        (folder / name).write_text(PAYLOAD.format(marker=str(marker)))


@pytest.fixture(scope="module")
def hostile(rel_root, tiny_policy_dir, reward_models):
    root = rel_root / "hostile"
    root.mkdir()
    marker = root / "CODE_RAN"
    folders = {}

    def clone(name: str, source: Path, keep_weights: bool) -> Path:
        folder = root / name
        shutil.copytree(source, folder, ignore=None if keep_weights else shutil.ignore_patterns("*.safetensors"))
        return folder

    folders["policy: pickle bomb as the only weights"] = (clone("policy_bomb", tiny_policy_dir, False), "policy")
    folders["policy: pickle bomb beside model.safetensors"] = (clone("policy_bomb_beside", tiny_policy_dir, True),
                                                               "policy")
    folders["reward model: pickle bomb as the only weights"] = (clone("rm_bomb", reward_models.ok, False), "reward")
    for key in list(folders):
        _pickle_bomb(folders[key][0], marker)
    for name, source, kind, auto_class in (("policy", tiny_policy_dir, "policy", "AutoModelForCausalLM"),
                                           ("reward model", reward_models.ok, "reward",
                                            "AutoModelForSequenceClassification")):
        for model_type in ("", "evil"):
            label = f"{name}: auto_map to custom Python code" + (", unknown model_type" if model_type else "")
            folders[label] = (clone(f"{kind}_remote{model_type}", source, True), kind)
            _remote_code(folders[label][0], marker, auto_class, model_type)
    return {"marker": marker, "folders": folders, "cwd": root}


EXPECTED = {
    "policy: pickle bomb as the only weights": (2, "no file named model.safetensors"),
    "policy: pickle bomb beside model.safetensors": (0, ""),  # the safetensors file is read, the pickle ignored
    "reward model: pickle bomb as the only weights": (2, "no file named model.safetensors"),
    # a model type transformers knows is built by its own class; the folder's code is not imported
    "policy: auto_map to custom Python code": (0, ""),
    "reward model: auto_map to custom Python code": (0, ""),
    "policy: auto_map to custom Python code, unknown model_type": (2, "contains custom code"),
    "reward model: auto_map to custom Python code, unknown model_type": (2, "contains custom code"),
}


@pytest.mark.parametrize("label", list(EXPECTED))
def test_hostile_folders_are_refused_and_never_executed(hostile, label, reliability_table):
    folder, kind = hostile["folders"][label]
    argv = (["generate", "--policy", str(folder), "--prompt", "the movie", "--max-new-tokens", "3", "--device", "cpu"]
            if kind == "policy" else ["reward", "score", "--model", str(folder), "--device", "cpu", "good film"])
    proc = run_cli(argv, cwd=hostile["cwd"])  # stdin is /dev/null: a "[y/N]" prompt would show in stderr
    code, expect = EXPECTED[label]
    ran = hostile["marker"].exists()
    lines = stderr_lines(proc.stderr)
    reliability_table.add("safety", check=f"hostile folder via `warprl {argv[0]}` — {label}",
                          outcome=("code not executed" if not ran else "CODE RAN") + f", exit {proc.returncode}" +
                          (f" ({expect!r})" if code else " (loaded from model.safetensors)"))
    assert not ran, f"{label}: the folder's code ran"
    assert proc.returncode == code, proc.stderr[-1500:]
    if code:
        assert len(lines) == 1 and expect in lines[0] and "Traceback" not in proc.stderr, lines
    assert "[y/N]" not in proc.stderr and "Traceback" not in proc.stderr


# Names a user might set hoping to turn remote code on (transformers reads none of them today; if a future
# version did, the CLI must still refuse).
REMOTE_CODE_SWITCHES = {"TRUST_REMOTE_CODE": "1", "HF_TRUST_REMOTE_CODE": "1", "TRANSFORMERS_TRUST_REMOTE_CODE": "1",
                        "HF_HUB_TRUST_REMOTE_CODE": "1", "HF_ALLOW_CODE_EVAL": "1"}


@pytest.mark.parametrize("label", [k for k in EXPECTED if "auto_map" in k])
def test_no_environment_switch_reenables_remote_code(hostile, label, reliability_table):
    """The real command in a child process whose environment sets every such switch: the folder's code still
    never runs, and the outcome is the same as without them."""
    folder, kind = hostile["folders"][label]
    argv = (["generate", "--policy", str(folder), "--prompt", "the movie", "--max-new-tokens", "3", "--device", "cpu"]
            if kind == "policy" else ["reward", "score", "--model", str(folder), "--device", "cpu", "good film"])
    proc = run_cli(argv, cwd=hostile["cwd"], extra_env=REMOTE_CODE_SWITCHES)
    ran = hostile["marker"].exists()
    reliability_table.add("safety", check=f"{label}, with {len(REMOTE_CODE_SWITCHES)} remote-code env switches set",
                          outcome=("code not executed" if not ran else "CODE RAN") + f", exit {proc.returncode}")
    assert not ran, f"{label}: the folder's code ran with the environment switches set"
    assert proc.returncode == EXPECTED[label][0], proc.stderr[-1500:]
    assert "Traceback" not in proc.stderr
