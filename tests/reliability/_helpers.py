"""Shared by the reliability suites: the real CLI in a subprocess, tiny models, folder hashes, weight equality."""

from __future__ import annotations

import hashlib
import os
import signal
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


# ------------------------------------------------------------------- killed processes without the start-up

# A process that is to be killed at its Nth write event spends most of its life starting: importing torch and
# transformers takes ≈ 8 s on 2 cores, the tiny run ≈ 1 s. The long kill chains therefore fork each process from
# a fork server that imported them once (a fresh interpreter started by multiprocessing, with the CLI's
# environment, that never computed: no thread pool to break by forking). Each child is still a process of its
# own, killed by SIGKILL for real; it runs warprl.cli.entry, the console script's own function. The console script itself
# is what the fault suite's reference, the signal tests and the bad-input tests run.

_PRELOAD = ["torch", "safetensors.torch", "tokenizers", "transformers", "transformers.models.auto.modeling_auto",
            "transformers.models.auto.tokenization_auto", "transformers.models.llama.modeling_llama",
            "transformers.models.encoder_decoder.configuration_encoder_decoder", "vaderSentiment.vaderSentiment",
            "warprl.cli", "warprl.commands.align", "warprl.io", "warprl.models", "warprl.lora_merge",
            "warprl.reward.scorers", "warprl.rl.loop", "warprl.rl.warp", "warprl.rl.executors", "tests.reliability._helpers"]
_FORK: dict = {}


def _forkserver():
    import multiprocessing

    if "ctx" not in _FORK:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(_PRELOAD)
        saved = dict(os.environ)
        os.environ.update(cli_env())  # the server, hence every child, starts with the CLI's environment
        try:
            from multiprocessing import forkserver

            forkserver.ensure_running()
        finally:
            os.environ.clear()
            os.environ.update(saved)
        _FORK["ctx"] = ctx
    return _FORK["ctx"]


def _forked_main(argv: list[str], cwd: str, env: dict[str, str], stdout: str, stderr: str) -> None:
    """In the forked child: the console script's ``entry()`` on ``argv``, its output into two files."""
    for fd, name in ((1, stdout), (2, stderr)):
        f = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(f, fd)
        os.close(f)
    sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115  (the process ends below: nothing to close)
    sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
    code = 1
    try:
        os.chdir(cwd)
        os.environ.update(env)
        import torch

        import warprl
        from warprl import io
        from warprl.cli import entry

        if Path(warprl.__file__).resolve() != REPO / "src" / "warprl" / "__init__.py":
            raise RuntimeError(f"the fork server imported {warprl.__file__}, not the checkout under test")
        torch.set_num_threads(1)  # as OMP_NUM_THREADS=1 does for the console script
        spec = env.get("WARPRL_FAULT", "")
        if spec:  # warprl.io read the variable when the server imported it (without it): read it again
            n, _, action = spec.partition(":")
            io.inject_fault(int(n), action or "ENOSPC")
        import threading

        import tqdm

        # tqdm's default lock is a multiprocessing semaphore: a child killed by SIGKILL could not unregister it,
        # and multiprocessing's resource tracker would warn about it at the end of the session.
        tqdm.tqdm.set_lock(threading.RLock())
        sys.argv = ["warprl", *argv]
        entry()  # the console script's own function: it ends with sys.exit(main())
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


class Forked:
    """A child of the fork server running ``warprl`` on ``argv``, with the part of :class:`subprocess.Popen` the
    tests use: ``pid``, ``poll``, ``send_signal``, ``kill``, ``wait``, ``communicate``, ``returncode``."""

    def __init__(self, argv: list[str], cwd: Path, extra_env: dict[str, str] | None = None):
        import tempfile

        self.args = [*cli_command(), *argv]
        self._tmp = tempfile.TemporaryDirectory(prefix="warprl-fork-")
        self._files = (os.path.join(self._tmp.name, "stdout"), os.path.join(self._tmp.name, "stderr"))
        self._proc = _forkserver().Process(target=_forked_main, args=(list(argv), str(cwd),
                                                                      {**cli_env(), **(extra_env or {})},
                                                                      *self._files))
        self._proc.start()
        self.pid = self._proc.pid

    @property
    def returncode(self) -> int | None:
        return self._proc.exitcode

    def poll(self) -> int | None:
        return self._proc.exitcode

    def send_signal(self, sig: int) -> None:
        if self._proc.exitcode is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int:
        self._proc.join(timeout)
        if self._proc.exitcode is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self._proc.exitcode

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        self.wait(timeout)
        texts = tuple(Path(f).read_text() if os.path.exists(f) else "" for f in self._files)
        self._tmp.cleanup()
        return texts


def run_forked(argv: list[str], cwd: Path, timeout: float = 120,
               extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """:func:`run_cli` in a child of the fork server: the same exit code (``-9`` when it killed itself), stdout and
    stderr, without ≈ 8 s of imports."""
    proc = Forked(argv, cwd, extra_env)
    try:
        out, err = proc.communicate(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()  # reaps it and removes its output files
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


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
