"""warprl.heap: freed memory kept by glibc's malloc (checked in child processes: the setting is process-wide)."""

import json
import os
import subprocess
import sys

import pytest

import warprl.cli as cli
from warprl import heap
from warprl.rl import executors

# A step's pattern in miniature: two large tensors (64 and 32 MiB, above glibc's largest mmap threshold of 32
# MiB) allocated, filled and freed, eight times. The page faults of each round tell whether the pages were
# reused or mapped afresh; the resident size whether what is kept stops growing.
CHILD = """
import json, resource, torch
from warprl.heap import keep_freed_memory
kept = keep_freed_memory()
faults, rss = [], []
for _ in range(8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = torch.empty(16 * 2**20); a.fill_(1.0)
    b = torch.empty(8 * 2**20); b.fill_(1.0)
    del a, b
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    rss.append(int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20)
print(json.dumps({"kept": kept, "faults": faults, "rss_mib": rss}))
"""
PAGES = 24 * 2**20 // 4096  # of the two tensors: 24,576 pages of 4 KiB

glibc_only = pytest.mark.skipif(heap._libc() is None, reason="glibc's malloc only")


def _child(env_value: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != heap.OPT_OUT}
    if env_value is not None:
        env[heap.OPT_OUT] = env_value
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc_only
def test_kept_memory_is_reused_without_page_faults():
    got = _child(None)
    assert got["kept"] is True
    # After a few rounds the heap holds blocks that fit both tensors: they fault (almost) never again...
    assert max(got["faults"][-3:]) < PAGES // 50, got
    # ...and what is kept stops growing.
    assert max(got["rss_mib"][-3:]) - min(got["rss_mib"][-3:]) < 8, got


@glibc_only
def test_the_opt_out_leaves_glibc_alone():
    got = _child("default")
    assert got["kept"] is False
    assert min(got["faults"]) > PAGES * 9 // 10, got  # glibc maps both tensors afresh every round


def test_the_command_sets_the_heap_before_running(monkeypatch):
    calls = []
    monkeypatch.setattr(heap, "keep_freed_memory", lambda: calls.append("heap") or True)
    monkeypatch.setattr(cli, "main", lambda argv=None: calls.append("main") or 0)
    with pytest.raises(SystemExit) as e:
        cli.entry()
    assert e.value.code == 0 and calls == ["heap", "main"]


def test_process_workers_set_the_heap_too(monkeypatch):
    # A spawned worker starts with glibc's defaults: its initializer sets the heap as the command does.
    calls = []
    monkeypatch.setattr(executors, "keep_freed_memory", lambda: calls.append("heap") or True)
    monkeypatch.setattr(executors, "_load_worker_models", lambda: None)
    monkeypatch.setattr(executors.threading, "Thread", lambda **kw: type("T", (), {"start": lambda self: None})())
    monkeypatch.setattr(executors.torch, "set_num_threads", lambda n: None)
    monkeypatch.setattr(executors.signal, "signal", lambda *a: None)
    monkeypatch.setattr(executors, "_WORKER", {})
    monkeypatch.setattr("transformers.utils.logging.disable_progress_bar", lambda: None)
    monkeypatch.setattr(executors.ctypes, "CDLL", lambda *a, **kw: type("L", (), {"prctl": lambda self, *a: 0})())
    executors._process_worker_init(os.getppid(), 1, None, None, None, "cpu")
    assert calls == ["heap"]
