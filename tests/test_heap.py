"""warprl.heap: freed memory kept by glibc's malloc (checked in child processes: the setting is process-wide)."""

import json
import os
import subprocess
import sys

import pytest

import warprl.cli as cli
from warprl import heap
from warprl.rl import executors

# Two large tensors (64 and 32 MiB, above glibc's largest mmap threshold of 32 MiB) allocated, filled and freed,
# twelve rounds, the heap watcher's check after each. Kept, glibc may not fit the next round's blocks into the
# freed ones (CI saw the heap grow by 64 MiB every round): only the trim bounds what it holds.
CHILD = """
import json, torch
from warprl import heap
kept = heap.keep_freed_memory()
before = heap.heap_info().hblkhd
a = torch.empty(16 * 2**20)
mmapped = heap.heap_info().hblkhd - before  # bytes of mmapped blocks the 64 MiB tensor added
del a
rss, trims = [], 0
for _ in range(12):
    a = torch.empty(16 * 2**20); a.fill_(1.0)
    b = torch.empty(8 * 2**20); b.fill_(1.0)
    del a, b
    trims += heap.trim_if_hoarding(128 * 2**20)
    rss.append(int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20)
bound = max(128 * 2**20, heap.heap_info().uordblks) / 2**20
print(json.dumps({"kept": kept, "mmapped": mmapped, "rss_mib": rss, "trims": trims, "bound_mib": bound}))
"""

glibc_only = pytest.mark.skipif(heap._libc() is None, reason="glibc's malloc only")


def _child(env_value: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != heap.ENV_VAR}
    if env_value is not None:
        env[heap.ENV_VAR] = env_value
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc_only
def test_kept_memory_comes_from_the_heap_and_stays_bounded():
    got = _child("kept")
    assert got["kept"] is True
    assert got["mmapped"] == 0, got  # the 64 MiB tensor came from the heap, not a fresh mmap
    # Whatever glibc manages to reuse, the free memory it holds stays under the watcher's bound (+ one round's
    # two tensors in flight when it checks).
    assert max(got["rss_mib"]) - min(got["rss_mib"]) < got["bound_mib"] + 96 + 16, got


@glibc_only
@pytest.mark.parametrize("value", [None, "default"])
def test_without_the_opt_in_glibc_is_left_alone(value):
    got = _child(value)
    assert got["kept"] is False
    assert got["mmapped"] >= 64 * 2**20, got  # glibc maps the 64 MiB tensor afresh
    assert got["trims"] == 0  # nothing is kept: the heap never holds that much free memory


def test_the_command_sets_the_heap_before_running(monkeypatch):
    calls = []
    monkeypatch.setattr(heap, "keep_freed_memory", lambda: calls.append("heap") or True)
    monkeypatch.setattr(cli, "main", lambda argv=None: calls.append("main") or 0)
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")  # entry() sets it where unset: restored after the test
    for name in ("set_verbosity_error", "disable_progress_bar"):  # entry()'s logging settings stay off this process
        monkeypatch.setattr(f"transformers.utils.logging.{name}", lambda: None)
    with pytest.raises(SystemExit) as e:
        cli.entry()
    assert e.value.code == 0 and calls == ["heap", "main"]


def test_process_workers_set_the_heap_too(monkeypatch):
    # A spawned worker starts with glibc's defaults: its initializer sets the heap as the command does.
    calls = []
    monkeypatch.setattr(executors.heap, "keep_freed_memory", lambda: calls.append("heap") or True)
    monkeypatch.setattr(executors, "_load_worker_models", lambda: None)
    monkeypatch.setattr(executors.threading, "Thread", lambda **kw: type("T", (), {"start": lambda self: None})())
    monkeypatch.setattr(executors.torch, "set_num_threads", lambda n: None)
    monkeypatch.setattr(executors.signal, "signal", lambda *a: None)
    monkeypatch.setattr(executors, "_WORKER", {})
    monkeypatch.setattr("transformers.utils.logging.disable_progress_bar", lambda: None)
    monkeypatch.setattr(executors.ctypes, "CDLL", lambda *a, **kw: type("L", (), {"prctl": lambda self, *a: 0})())
    executors._process_worker_init(os.getppid(), 1, None, None, None, "cpu")
    assert calls == ["heap"]


@glibc_only
def test_the_watcher_trims_only_past_its_bound(monkeypatch):
    info = heap.MallInfo2(uordblks=4 << 30, fordblks=3 << 30)  # 4 GiB in use, 3 GiB free: under what is in use
    monkeypatch.setattr(heap, "heap_info", lambda: info)
    trims = []
    monkeypatch.setattr(heap, "_libc", lambda: type("L", (), {"malloc_trim": lambda self, pad: trims.append(pad)})())
    assert heap.trim_if_hoarding() is False and trims == []
    info.fordblks = (4 << 30) + 1  # past what is in use (and past MAX_FREE_BYTES)
    assert heap.trim_if_hoarding() is True and trims == [0]
    info.uordblks, info.fordblks = 1 << 20, (2 << 30) - 1  # little in use: MAX_FREE_BYTES is the bound
    assert heap.trim_if_hoarding() is False
