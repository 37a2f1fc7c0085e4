"""Shared by the benchmark scripts: write one ``## title`` section of benchmarks/RESULTS.md.

Each benchmark owns its section; rerunning a benchmark replaces its section and leaves the others alone. The
section it replaces is kept once, right below, as ``## title — previous run`` (figures from another machine or
before a change stay readable beside the new ones; the run before that is dropped, so the file stays bounded).
The file is rewritten atomically (temp file + rename) under a lock, so two benchmarks finishing at the same
moment cannot lose each other's sections.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
PREVIOUS = " — previous run"
HEADER = "# Benchmark results\n\nWritten by the scripts in benchmarks/ (one section each); rerun a script to refresh its section.\n"


@contextlib.contextmanager
def switches(options: dict, **values):
    """A module's dict of switches (``engine.OPTIONS``, ``rollout.SHARED_PROMPT``, …) updated with ``values``
    inside the block, restored whole after it."""
    saved = dict(options)
    options.update(values)
    try:
        yield
    finally:
        options.clear()
        options.update(saved)


def run_and_publish(run, render, args, title: str) -> dict:
    """The end of a benchmark's main(): ``run(args, tmp)`` in a scratch folder removed afterwards, whatever
    happens; ``render(got, command)`` written as the section ``title`` (never for --smoke) and printed; with
    --json, ``got`` as one JSON object on the last line (what the smoke tests read). Returns ``got``."""
    tmp = Path(tempfile.mkdtemp(prefix=f"{Path(sys.argv[0]).stem}."))
    try:
        got = run(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    command = f"python benchmarks/{Path(sys.argv[0]).name} {' '.join(sys.argv[1:])}".strip()
    text = render(got, command)
    if not args.smoke:
        write_section(title, text)
    print(text)
    if args.json:
        print(json.dumps(got))
    return got


def machine(device=None) -> str:
    """One line describing where the numbers were measured (with the GPU's name when ``device`` is CUDA)."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    host = (f"{os.cpu_count()} cores {cpu}, Python {platform.python_version()}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads")
    if device is not None and torch.device(device).type == "cuda":
        return f"{torch.cuda.get_device_name(torch.device(device))} (CUDA {torch.version.cuda}), host {host}"
    return host


def _split(text: str) -> tuple[str, list[tuple[str, str]]]:
    """(preamble, [(title, body)]) of a Markdown file cut at its ``## `` headings."""
    parts = re.split(r"^## (.+)$", text, flags=re.MULTILINE)
    preamble, rest = parts[0], parts[1:]
    return preamble, [(rest[i].strip(), rest[i + 1]) for i in range(0, len(rest), 2)]


def write_section(title: str, markdown: str, path: Path = RESULTS, keep_previous: bool = True) -> Path:
    """Replace the section ``## title`` of RESULTS.md with ``markdown`` (or append it); the replaced one, when it
    differs, becomes ``## title — previous run`` below the new one (``keep_previous=False``: dropped)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = os.open(path.parent, os.O_RDONLY)  # lock the folder: no stray lock file left behind
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        text = path.read_text(encoding="utf-8") if path.exists() else HEADER
        preamble, sections = _split(text)
        sections = replace_section(sections, title, "\n\n" + markdown.strip() + "\n\n", keep_previous)
        # Each body ends with one blank line (the file's last lost it to the final rstrip when it was written).
        out = preamble.rstrip("\n") + "\n\n" + "".join(f"## {t}{b.rstrip()}\n\n" for t, b in sections)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".RESULTS.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(out.rstrip("\n") + "\n")
        os.replace(tmp, path)
    finally:
        os.close(lock)  # closing releases the lock
    return path


def section_titles(path: Path = RESULTS) -> list[str]:
    """The ``## `` titles of RESULTS.md (none when it does not exist)."""
    return [t for t, _ in _split(path.read_text(encoding="utf-8"))[1]] if path.exists() else []


def replace_section(sections: list[tuple[str, str]], title: str, body: str,
                    keep_previous: bool = True) -> list[tuple[str, str]]:
    """``sections`` with ``title``'s body replaced by ``body`` (appended when new); the old body moves to
    ``title + PREVIOUS`` right after it, replacing an older one, unless it equals the new body."""
    old = next((b for t, b in sections if t == title), None)
    if old is None:
        return [*sections, (title, body)]
    keep = keep_previous and old.strip() != body.strip()
    out: list[tuple[str, str]] = []
    for t, b in sections:
        if t == title:
            out.append((title, body))
            if keep:
                out.append((title + PREVIOUS, old))
        elif not (keep and t == title + PREVIOUS):
            out.append((t, b))
    return out


def matmul_peak(dtype, n: int = 0, reps: int = 10, device="cpu") -> float:
    """FLOP/s of an n × n matmul in ``dtype`` (a torch dtype), the best of three rounds of ``reps``.

    n defaults to 2048 on a CPU and 8192 on a GPU (where 2048² is too small to fill the card).
    """
    import torch

    from warprl.precision import synchronize

    device = torch.device(device)
    n = n or (8192 if device.type == "cuda" else 2048)
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    a @ b
    best = float("inf")
    for _ in range(3):
        synchronize(device)
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        synchronize(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 * reps / best


def read_bandwidth(gib: float = 1.0, reps: int = 5, device="cpu") -> float:
    """Bytes/s read from memory: the best of ``reps`` sums over a ``gib`` GiB fp32 tensor (on ``device``)."""
    import torch

    from warprl.precision import synchronize

    device = torch.device(device)
    x = torch.ones(int(gib * 2**30) // 4, dtype=torch.float32, device=device)
    x.sum()  # fault the pages in (CPU) / load the kernel (GPU) first
    inner = 20 if device.type == "cuda" else 1  # a GPU reads 1 GiB in ~0.3 ms: time 20 at once
    best = float("inf")
    for _ in range(reps):
        synchronize(device)
        t = time.perf_counter()
        for _ in range(inner):
            x.sum()
        synchronize(device)
        best = min(best, (time.perf_counter() - t) / inner)
    return x.numel() * 4 / best
