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


def test_the_sequential_executor_gives_each_runs_memory_back_before_the_next(monkeypatch):
    # With the heap kept (warprl.heap) a run's freed blocks would stay and the next run's would land beside
    # them: the executor trims after every run, and once more at close for the merges.
    events = []
    monkeypatch.setattr(executors, "train_run", lambda cfg, job, *a: events.append(f"run {job.run}"))
    monkeypatch.setattr(executors, "release_memory", lambda device: events.append("release"))
    monkeypatch.setattr(executors, "check_stop", lambda where: None)
    policy = type("P", (), {"device": "cpu"})()
    ex = executors.SequentialExecutor(None, policy, None, None, [])
    ex.run([executors.RunJob(iteration=1, run=m, run_dir="", init_path="", seed=0, desc="") for m in (1, 2)])
    ex.close()
    assert events == ["run 1", "release", "run 2", "release", "release"]
