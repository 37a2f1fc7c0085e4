"""One writer per output folder: a second command on a folder in use is refused at once, the first finishes
bit-identical to a run alone.

The first command is the fault suites' WARP run through the real ``warprl`` in a subprocess. Once it holds its
folder (its ``config.yaml`` is written) it is frozen with SIGSTOP — so that it provably holds the lock while
the others try — and every other command that writes a folder is started on the same ``--out``: each must exit
2 with one line naming the folder and the PID of the first, without touching a file. Then the first continues
and must end with the exact bytes of the uninterrupted reference run.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.reliability._helpers import popen, run_cli, stderr_lines, tree_digest

pytestmark = [pytest.mark.fault,
              pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs Linux signals")]

COMPARED = ["final/model.safetensors", "final_slerp/model.safetensors", "iter_2/init.safetensors"]


def _stopped(pid: int, timeout: float = 10.0) -> bool:
    """Wait until SIGSTOP has taken effect (state T in /proc)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in "tT":
                return True
        except (OSError, IndexError):
            return False
        time.sleep(0.001)
    return False


def _wait_for(path: Path, proc, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not path.is_file():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_a_second_command_on_a_folder_in_use_is_refused(setup, reference, capsys, monkeypatch,
                                                         reliability_table):
    from warprl.cli import main

    out = setup["root"] / "concurrent"
    first = popen([*setup["argv"], "--out", str(out)], cwd=setup["root"])
    attempts = [
        ("align, same settings", "subprocess", [*setup["argv"], "--out", str(out)]),
        ("align --overwrite", "subprocess", [*setup["argv"], "--overwrite", "--out", str(out)]),
        ("align --resume", "main", [*setup["argv"], "--resume", "--out", str(out)]),
        ("reward train", "main", ["reward", "train", "--data", str(setup["root"] / "prompts.txt"), "--out", str(out)]),
        ("pareto", "main", ["pareto", "--final", str(reference["out"]), "--out", str(out)]),
        ("quickstart", "main", ["quickstart", "--out", str(out)]),
    ]
    try:
        _wait_for(out / "config.yaml", first)
        first.send_signal(signal.SIGSTOP)
        assert _stopped(first.pid), "the first command did not stop"  # no write of it may be in flight now
        for what, via, argv in attempts:
            before = tree_digest(out)
            t0 = time.monotonic()
            if via == "subprocess":
                proc = run_cli(argv, cwd=setup["root"], timeout=120)
                code, err = proc.returncode, proc.stderr
            else:
                monkeypatch.chdir(setup["root"])
                code = main(argv)
                err = capsys.readouterr().err
            seconds = time.monotonic() - t0
            lines = stderr_lines(err)
            assert code == 2 and len(lines) == 1, (what, err[-2000:])
            assert str(out) in lines[0] and f"PID {first.pid}" in lines[0], lines[0]
            assert tree_digest(out) == before, f"{what} changed files of the folder in use"
            assert first.poll() is None
            reliability_table.add("concurrency", second=f"`warprl {what}`", via=via, exit=code,
                                  seconds=f"{seconds:.1f}",
                                  message=lines[0].replace(str(out), "<out>").replace(str(first.pid), "<pid>"))
    finally:
        first.send_signal(signal.SIGCONT)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-2000:]
    different = [n for n in COMPARED if (out / n).read_bytes() != (reference["out"] / n).read_bytes()]
    assert different == []
    assert not list(setup["root"].glob(".concurrent.warprl.lock")), "the lock file outlived its command"
