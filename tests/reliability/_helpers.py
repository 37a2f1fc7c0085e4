"""Shared by the reliability suites: the real CLI in a subprocess, tiny models, folder hashes, weight equality."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import PROMPT_LINES as PROMPTS  # noqa: F401  (re-exported: a .txt needs enough lines to split)

REPO = Path(__file__).resolve().parents[2]


def align_flags(policy: Path | str, prompts: Path | str, reward: str = "vader") -> list[str]:
    """A small WARP run (I=1, M=2, T=2): the finished and interrupted folders the bad inputs must leave alone."""
    return ["align", "--method", "warp", "--policy", str(policy), "--prompts", str(prompts), "--reward", str(reward),
            "--iterations", "1", "--runs", "2", "--steps", "2", "--batch-size", "2", "--k", "2",
            "--max-new-tokens", "4", "--no-bf16", "--lr", "0.03", "--checkpoint-every", "1", "--no-progress",
            "--device", "cpu"]


def cli_command() -> list[str]:
    """The installed console script (the real entry point), or the same entry() through the interpreter."""
    script = Path(sys.executable).parent / "warprl"
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "from warprl.cli import entry; entry()"]


def src_pythonpath() -> str:
    """``<repo>/src`` first, then the repo (for ``tests.…`` imports): a subprocess runs the checkout under test,
    not whatever ``warprl`` an editable install elsewhere points at."""
    return f"{REPO / 'src'}{os.pathsep}{REPO}"


def cli_env() -> dict[str, str]:
    """One torch thread everywhere (runs compare bit for bit), offline, the checkout under test."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": src_pythonpath()}


def popen(argv: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([*cli_command(), *argv], cwd=cwd, env=cli_env(), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_cli(argv: list[str], cwd: Path, timeout: float = 120,
            extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*cli_command(), *argv], cwd=cwd, env={**cli_env(), **(extra_env or {})},
                          stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)


def tree_digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` by relative path ({} when it does not exist)."""
    if not folder.exists():
        return {}
    if folder.is_file():
        return {".": hashlib.sha256(folder.read_bytes()).hexdigest()}
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def temp_leftovers(folder: Path) -> list[str]:
    """Names a write in progress leaves behind: every warprl and safetensors temporary starts with a dot.

    Safe while a process writes and deletes under ``folder`` (os.walk skips what vanished); a temporary
    folder counts once, its contents not at all.
    """
    found = []
    for root, dirs, files in os.walk(folder):
        rel = Path(root).relative_to(folder)
        found += [str(rel / name) if str(rel) != "." else name for name in dirs + files if name.startswith(".")]
        dirs[:] = [d for d in dirs if not d.startswith(".")]
    return sorted(found)


def make_tiny_llama(path: Path, hidden: int = 32, intermediate: int = 64) -> Path:
    """A 2-layer random Llama + the word tokenizer of tests/conftest.py, saved as an HF folder."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.conftest import make_word_tokenizer

    tok = make_word_tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, bos_token_id=None,
                      tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def weights_equal(a: Path, b: Path) -> list[str]:
    """The tensor names whose values differ between two safetensors files (torch.equal); [] when identical."""
    import torch
    from safetensors.torch import load_file

    sa, sb = load_file(str(a)), load_file(str(b))
    if sa.keys() != sb.keys():
        return sorted(set(sa) ^ set(sb))
    return [k for k in sa if not torch.equal(sa[k], sb[k])]


def stderr_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]
