"""The executors' small parts that need no run (the runs themselves: tests/commands/test_align_warp.py and
tests/reliability/test_faults.py)."""

import os
import sys

import pytest

from warprl.errors import UserError
from warprl.rl import executors


def test_ray_missing_is_a_clear_user_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` raise ImportError
    with pytest.raises(UserError, match=r"pip install 'warprl\[ray\]'"):
        executors.import_ray()


def test_usable_cores_is_a_positive_count():
    assert 1 <= executors.usable_cores() <= (os.cpu_count() or 1)


@pytest.mark.parametrize("kept", [True, False])
def test_the_sequential_executor_trims_between_runs_only_with_the_heap_kept(monkeypatch, kept):
    # With the heap kept (warprl.heap) a run's freed blocks would stay and the next run's would land beside
    # them: the executor trims after every run. With glibc's defaults the next run reuses the heap's pages.
    events = []
    monkeypatch.setattr(executors, "train_run", lambda cfg, job, *a: events.append(f"run {job.run}"))
    monkeypatch.setattr(executors, "release_memory", lambda device: events.append("release"))
    monkeypatch.setattr(executors.gc, "collect", lambda: events.append("gc"))
    monkeypatch.setattr(executors, "check_stop", lambda where: None)
    monkeypatch.setattr(executors.heap, "kept", lambda: kept)
    policy = type("P", (), {"device": "cpu"})()
    ex = executors.SequentialExecutor(None, policy, None, None, [])
    ex.run([executors.RunJob(iteration=1, run=m, run_dir="", init_path="", seed=0, desc="") for m in (1, 2)])
    ex.close()
    between = "release" if kept else "gc"
    assert events == ["run 1", between, "run 2", between, "release"]
