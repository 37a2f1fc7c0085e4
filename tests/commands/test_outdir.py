"""The output folder's one-writer lock (outdir.claim) and the io fault hook, without a model."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from warprl import io
from warprl.commands import outdir
from warprl.errors import UserError

REPO = Path(__file__).resolve().parents[2]
HOLDER = "from warprl.commands import outdir; import sys, time; outdir.claim(sys.argv[1]); print('held', flush=True); time.sleep(60)"


def _holder(out: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}"})
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_lock_is_reentrant_and_leaves_nothing_behind(tmp_path):
    out = tmp_path / "new" / "deeper" / "run"
    outdir.check(out, outdir.ALIGN)
    outdir.check(out, outdir.QUICKSTART)  # the same process again: a quickstart, then its WARP run
    assert outdir.lock_path(out).is_file() and not out.exists()
    outdir.release_all()
    assert not (tmp_path / "new").exists(), "the parents created for the lock file are removed again"


def test_a_second_process_is_refused_with_the_holders_pid_and_sigkill_leaves_no_stale_lock(tmp_path):
    out = tmp_path / "run"
    holder = _holder(out)
    try:
        with pytest.raises(UserError, match=rf"--out {out} is in use by another warprl command \(PID {holder.pid}\)"):
            outdir.check(out, outdir.ALIGN, overwrite=True)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert outdir.lock_path(out).exists()  # the file stays after a SIGKILL, the lock does not
    assert outdir.check(out, outdir.ALIGN).action == "new"
    outdir.release_all()


def test_the_nth_write_fails_with_one_line_and_earlier_files_stay(tmp_path):
    io.inject_fault(3, "ENOSPC")
    try:
        io.atomic_write_text(tmp_path / "a.txt", "first\n")
        io.append_line(tmp_path / "log.jsonl", '{"step": 1}')
        with pytest.raises(io.WriteError, match=r"cannot write .*b\.txt: No space left on device \(ENOSPC\)"):
            io.atomic_write_text(tmp_path / "b.txt", "second\n")
        io.inject_fault(1, "EIO")
        with pytest.raises(io.WriteError, match=r"log\.jsonl: Input/output error \(EIO\)"):
            io.append_line(tmp_path / "log.jsonl", '{"step": 2}')
    finally:
        io.inject_fault(None)
    assert (tmp_path / "a.txt").read_text() == "first\n" and not (tmp_path / "b.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "log.jsonl"]  # no temporaries
    text = (tmp_path / "log.jsonl").read_text()
    assert text.startswith('{"step": 1}\n') and not text.endswith("\n")  # half a line: what a full disk leaves


def test_recorded_digests_find_damage(tmp_path):
    f = tmp_path / "w.safetensors"
    f.write_bytes(b"0123456789")
    assert io.damage(f) == "no recorded sha256"
    io.write_digest(f)
    assert io.damage(f) is None and io.digest_file(f).read_text().endswith("  w.safetensors\n")
    f.write_bytes(b"0123456780")
    assert "sha256 mismatch" in io.damage(f)
