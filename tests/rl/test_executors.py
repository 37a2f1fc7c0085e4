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
