"""Fault injection: a WARP run killed at seeded random moments in every phase, resumed each time, bit-identical.

Two sources of kill moments: the watch below (no hook: it reads the run's folder), and the write events of
``warprl.io``'s fault hook (``WARPRL_FAULT=N:SIGKILL``, N drawn) for the moments no watch can catch — half a
metrics line, between the two renames of a folder. Ray faults (a wrong address, a worker or the driver
killed) are at the end.

The run is the real ``warprl align`` command in a process of its own (I=2 iterations × M=2 runs × T=3 steps, a
tiny random Llama, ``--reward vader``): the uninterrupted reference and the SIGTERM/SIGINT runs start the console
script; the killed processes and their resumes are children of a fork server that imported torch and
transformers once (``tests.reliability._helpers.Forked``: the same ``main`` and environment, ≈ 8 s less each),
so the chains can afford their many kills. The reference run, from the console script, is what they are
compared with byte for byte. The moment of each kill is found by watching the run's own output
folder — no test hook in the library: a checkpoint write, a merge or a final folder shows up as its
temporary name, a step as "checkpoint n saved, step n+1 not yet logged". When the watch sees its moment it
stops the process (SIGSTOP), checks that the moment is still there, and only then kills it (SIGKILL), so
every kill lands in the phase it names. After each kill the same command runs again with ``--resume``;
at the end every weight file and every step's metrics equal an uninterrupted run's, and no temporary file
or checkpoint is left behind. SIGINT and SIGTERM must stop the run cleanly with a checkpoint and a hint.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.reliability._helpers import Forked, popen, run_cli, run_forked, temp_leftovers, weights_equal
from warprl.rl.executors import usable_cores

# SIGSTOP/SIGKILL and /proc/<pid>/stat: Linux (CI) only.
pytestmark = [pytest.mark.fault,
              pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs Linux /proc and signals")]

SEED = 20240607  # every random choice of the kill moments (which step, how far into it) flows from this
ITERATIONS, RUNS, STEPS = 2, 2, 3
COMPARED_WEIGHTS = ["final/model.safetensors", "final_slerp/model.safetensors"] + [
    f"iter_{i}/{name}.safetensors" for i in range(1, ITERATIONS + 1) for name in ("slerp", "init")]
STEP_KEYS = ("charts/reward_mean", "charts/kl_mean", "charts/entropy", "losses/policy", "losses/grad_norm")


def test_subprocesses_run_the_checkout_under_test():
    """The console script with the helpers' environment imports this checkout's ``src/warprl``, not an editable
    install of another one."""
    import subprocess

    from tests.reliability._helpers import REPO, cli_env

    proc = subprocess.run([sys.executable, "-c", "import warprl; print(warprl.__file__)"], env=cli_env(),
                          capture_output=True, text=True, timeout=60, cwd=REPO.parent)
    print("subprocess imports", proc.stdout.strip())
    assert Path(proc.stdout.strip()) == REPO / "src" / "warprl" / "__init__.py"


def test_a_child_of_the_fork_server_answers_as_the_console_script(tmp_path):
    """The kill chains' processes: the same exit codes and the same stderr line as the console script, for a
    clean end, a bad input and a SIGKILL at a write event (the child checks that it imports this checkout)."""
    from tests.reliability._helpers import PROMPTS, align_flags, make_tiny_llama

    policy = make_tiny_llama(tmp_path / "policy")
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    bad = ["align", "--policy", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]
    for argv, code in ((bad, 2), (["models"], 0)):
        a, b = run_cli(argv, cwd=tmp_path), run_forked(argv, cwd=tmp_path)
        assert a.returncode == code and (a.stdout + a.stderr).strip(), (argv, a)
        assert (a.returncode, a.stdout, a.stderr) == (b.returncode, b.stdout, b.stderr), (argv, a, b)
    kill = [*align_flags(policy, tmp_path / "prompts.txt"), "--out", str(tmp_path / "killed")]
    proc = run_forked(kill, cwd=tmp_path, extra_env={"WARPRL_FAULT": "1:SIGKILL"})
    assert proc.returncode == -signal.SIGKILL, proc
    assert _fault_line(proc.stderr) == f"write {tmp_path / 'killed' / 'config.yaml'}", proc.stderr


# ------------------------------------------------------------------------------------------- the watch


@dataclass
class Moment:
    """Where to interrupt: a file being written (``folder``/``prefix``) or a step (``run``, after checkpoint ``n``)."""

    phase: str
    where: str
    folder: str = ""  # relative to the output folder
    prefix: str = ""
    min_step: int = 0  # with prefix ".step_": a checkpoint of this step or a later one
    run: tuple[int, int] | None = None  # (iteration, run) for a step
    n: int = 0  # the step after checkpoint n
    fraction: float = 0.0  # how far into the step, as a share of the measured step time

    def evidence(self) -> str:
        if self.run is None:
            return f"`{self.folder + '/' if self.folder else ''}{self.prefix}…` being written"
        return "a step: its run's checkpoint saved, the next step not yet logged, no file being written"


def _stopped(pid: int, timeout: float = 5.0) -> bool:
    """Wait until SIGSTOP has taken effect (state T in /proc), so what we read next cannot change."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False  # gone
        if state in "tT":
            return True
        time.sleep(0.0002)
    return False


def _latest_step(run: Path) -> int | None:
    try:
        return json.loads((run / "checkpoints" / "latest.json").read_text())["step"]
    except (OSError, ValueError, KeyError):
        return None


def _lines(path: Path) -> int:
    try:
        return len(path.read_text().splitlines())
    except OSError:
        return 0


class Watch:
    """Polls the output folder of a running command for a :class:`Moment`; temporaries left over from an
    earlier kill are ignored until the resumed command has cleaned them up."""

    def __init__(self, out: Path, step_time: float):
        self.out, self.step_time = out, step_time
        self.stale = set(temp_leftovers(out)) if out.exists() else set()
        self.armed: tuple[int, float] | None = None  # (checkpoint step, time to check) for a step moment

    def fresh_temps(self, folder: str | None = None) -> set[str]:
        """Temporaries that appeared since the start, in ``folder`` only (one listdir: fast enough to catch a
        write of a few milliseconds) or anywhere."""
        if folder is None:
            now = set(temp_leftovers(self.out)) if self.out.exists() else set()
        else:
            try:
                names = os.listdir(self.out / folder)
            except OSError:
                names = []
            now = {f"{folder}/{n}" if folder else n for n in names if n.startswith(".")}
        self.stale = {s for s in self.stale if s in now or (folder is not None and s.rpartition("/")[0] != folder)}
        return now - self.stale

    def candidate(self, m: Moment) -> bool:
        """Cheap test while the process runs; :meth:`confirm` repeats it once the process is stopped."""
        if m.run is None:
            return any(self._matches(m, t) for t in self.fresh_temps(m.folder))
        run = self.out / f"iter_{m.run[0]}" / f"run_{m.run[1]}"
        latest = _latest_step(run)
        if latest is None or not m.n <= latest < STEPS:
            return False
        if self.armed is None or self.armed[0] != latest:
            self.armed = (latest, time.monotonic() + m.fraction * self.step_time)
        return time.monotonic() >= self.armed[1]

    def confirm(self, m: Moment) -> bool:
        if m.run is None:
            return any(self._matches(m, t) for t in self.fresh_temps(m.folder))
        temps = self.fresh_temps()
        run = self.out / f"iter_{m.run[0]}" / f"run_{m.run[1]}"
        latest = _latest_step(run)
        ok = not temps and latest is not None and latest < STEPS and _lines(run / "metrics.jsonl") == latest
        if not ok:
            self.armed = (latest or 0, float("inf"))  # missed: wait for the next checkpoint of the run
        return ok

    @staticmethod
    def _matches(m: Moment, temp: str) -> bool:
        folder, _, name = temp.rpartition("/")
        if folder != m.folder or not name.startswith(m.prefix) or ".sha256." in name:
            return False  # (NAME.sha256, the record written after NAME, has a temporary of its own)
        if m.prefix == ".step_":  # .step_000002.tmp
            return int(name[len(".step_"):].split(".")[0]) >= m.min_step
        return True


def interrupt(argv: list[str], out: Path, moment: Moment, step_time: float, sig: int = signal.SIGKILL,
              timeout: float = 180, forked: bool = True) -> tuple[int, str]:
    """Start the command (a child of the fork server, or with ``forked=False`` the console script), wait for
    ``moment``, send ``sig`` there; returns (exit code, stderr)."""
    proc = Forked(argv, cwd=out.parent) if forked else popen(argv, cwd=out.parent)
    watch = Watch(out, step_time)
    deadline = time.monotonic() + timeout
    sent = False
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            if watch.candidate(moment):
                proc.send_signal(signal.SIGSTOP)
                if _stopped(proc.pid) and watch.confirm(moment):
                    proc.send_signal(sig)
                    sent = True
                proc.send_signal(signal.SIGCONT)  # a SIGINT/SIGTERM is handled once it runs again
                if sent:
                    break
            time.sleep(0.0003)
        _, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert sent, f"the run ended (exit {proc.returncode}) before {moment.where}: {err[-1500:]}"
    return proc.returncode, err


def assert_same_as_reference(out: Path, ref: Path) -> None:
    for name in COMPARED_WEIGHTS:
        different = weights_equal(out / name, ref / name)
        assert not different, f"{name}: {len(different)} tensors differ, e.g. {different[:3]}"
        assert (out / name).read_bytes() == (ref / name).read_bytes(), f"{name}: same tensors, other bytes"
    for i in range(1, ITERATIONS + 1):
        for m in range(1, RUNS + 1):
            rows = [[json.loads(line)[k] for k in STEP_KEYS] for path in (out, ref)
                    for line in (path / f"iter_{i}" / f"run_{m}" / "metrics.jsonl").read_text().splitlines()]
            assert rows[:STEPS] == rows[STEPS:] and len(rows) == 2 * STEPS, (i, m)


def assert_clean(out: Path) -> None:
    assert not temp_leftovers(out), temp_leftovers(out)
    assert not list(out.rglob("checkpoints")), "checkpoints left beside finished runs"


def resume_to_the_end(argv: list[str], out: Path) -> None:
    proc = run_forked([*argv, "--resume", "--out", str(out)], cwd=out.parent, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]


# --------------------------------------------------------------------------------------------- the tests


def kill_plan(rng: random.Random) -> list[Moment]:
    """Nine moments in the order the run reaches them; the seeded ``rng`` picks the steps and fractions."""
    # Step n < T and checkpoint k < T: a moment missed by a hair (see Watch.confirm) recurs one step later.
    n1, ckpt, n2 = rng.randint(1, STEPS - 1), rng.randint(1, STEPS - 1), rng.randint(1, STEPS - 1)
    f1, f2 = round(rng.uniform(0.2, 0.6), 2), round(rng.uniform(0.2, 0.6), 2)
    return [
        Moment("training step", f"iteration 1, run 1: step {n1 + 1}, {f1:.0%} of a step after checkpoint {n1}",
               run=(1, 1), n=n1, fraction=f1),
        Moment("checkpoint write", f"iteration 1, run 2: writing the checkpoint of step {ckpt}",
               folder="iter_1/run_2/checkpoints", prefix=".step_", min_step=ckpt),
        Moment("merge write", "iteration 1: writing the SLERP of the two runs", folder="iter_1",
               prefix=".slerp.safetensors."),
        Moment("merge write", "iteration 1: writing the LITI step (next θ_init)", folder="iter_1",
               prefix=".init.safetensors."),
        Moment("weights write", "iteration 2, run 1: writing the run's final weights", folder="iter_2/run_1",
               prefix=".weights.safetensors."),
        Moment("training step", f"iteration 2, run 2: step {n2 + 1}, {f2:.0%} of a step after checkpoint {n2}",
               run=(2, 2), n=n2, fraction=f2),
        Moment("merge write", "iteration 2: writing the SLERP of the two runs", folder="iter_2",
               prefix=".slerp.safetensors."),
        Moment("final write", "writing final_slerp/", prefix=".final_slerp."),
        Moment("final write", "writing final/", prefix=".final."),
    ]


def test_sigkill_at_random_moments_then_resume_is_bit_identical(setup, reference, reliability_table):
    out = setup["root"] / "killed"
    plan = kill_plan(random.Random(SEED))
    assert {m.phase for m in plan} >= {"training step", "checkpoint write", "merge write"}
    rows = []
    for k, moment in enumerate(plan, 1):
        argv = [*setup["argv"], "--out", str(out)] + (["--resume"] if k > 1 else [])
        code, err = interrupt(argv, out, moment, reference["step_time"])
        assert code == -signal.SIGKILL, err[-1500:]
        assert (out / "config.yaml").is_file() and not (out / "summary.json").exists()
        rows.append({"order": k, "signal": "SIGKILL", "where": f"{moment.phase}: {moment.where}",
                     "evidence": moment.evidence(), "exit": "killed (-9)"})
    resume_to_the_end(setup["argv"], out)
    assert_same_as_reference(out, reference["out"])
    assert_clean(out)
    for row in rows:
        reliability_table.add("fault", suite="SIGKILL + --resume", outcome="resumed, finished", identical="yes",
                              clean="yes", **row)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_sigterm_and_sigint_stop_cleanly_with_a_checkpoint(setup, reference, reliability_table, sig):
    """SIGTERM inside a step: the step finishes, a checkpoint is saved, exit 2 with a --resume hint.
    SIGINT inside the last merge: the merge finishes and is committed, exit 2. Both resume bit-identically."""
    name = signal.Signals(sig).name
    out = setup["root"] / name.lower()
    if sig == signal.SIGTERM:
        moment = Moment("training step", "iteration 1, run 2: step 2, 40% of a step after checkpoint 1", run=(1, 2),
                        n=1, fraction=0.4)
    else:
        moment = Moment("merge write", "iteration 2: writing the SLERP of the two runs", folder="iter_2",
                        prefix=".slerp.safetensors.")
    code, err = interrupt([*setup["argv"], "--out", str(out)], out, moment, reference["step_time"], sig=sig,
                          forked=False)  # the console script's own signal handling
    last = err.strip().splitlines()[-1] if err.strip() else ""
    assert code == 2 and "Traceback" not in err, err[-2000:]
    assert last.startswith(f"error: stopped by {name}") and "--resume" in last, last
    run = out / "iter_1" / "run_2"
    if sig == signal.SIGTERM and (run / "done.json").is_file():
        # The watch's moment slipped into the run's last step (seen once on a loaded machine): the step ends the
        # run, so the stop comes from WARP between runs, with the run kept.
        assert _lines(run / "metrics.jsonl") == STEPS and _latest_step(run) is None
        assert "finished runs and merges are kept" in last, last
    elif sig == signal.SIGTERM:  # every finished step of the interrupted run is in its checkpoint
        assert _latest_step(run) == _lines(run / "metrics.jsonl") >= 2
        assert "checkpoint saved" in last
    else:  # the merge that was running is committed; nothing after it started
        assert (out / "iter_2" / "iteration.json").is_file() and not (out / "final").exists()
    resume_to_the_end(setup["argv"], out)
    assert_same_as_reference(out, reference["out"])
    assert_clean(out)
    message = last.removeprefix("error: ").replace(str(out), "<out>")
    reliability_table.add("fault", suite=f"{name} + --resume", order=1, signal=name,
                          where=f"{moment.phase}: {moment.where}", evidence=moment.evidence(),
                          exit=f"{code}: {message}", outcome="stopped cleanly, resumed, finished", identical="yes",
                          clean="yes")


# ------------------------------------------------------------------- kills drawn over the write timeline

DRAWN_SEED = 20250116
MAX_GAP = 8  # each kill lands 1…MAX_GAP write events into the (resumed) process: the chain walks the timeline


def _fault_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("warprl fault: SIGKILL at write event")]
    assert lines, err[-2000:]
    return lines[-1].split(": ", 2)[2]  # "<kind> <path>"


def test_sigkill_at_drawn_write_events_then_resume_is_bit_identical(setup, reference, reliability_table):
    """The io fault hook kills the process at its Nth write event (N drawn, seeded): a temp file written but not
    renamed, a folder filled but not swapped in, between the two renames of a folder, half a metrics line. The
    chain of kill + ``--resume`` walks the whole timeline of the run: sft.safetensors, metrics.jsonl,
    checkpoints, run weights, done.json, merges, iteration.json, final folders, summary.json."""
    rng = random.Random(DRAWN_SEED)
    out = setup["root"] / "drawn"
    rows, kinds = [], set()
    for k in range(1, 100):
        # The first kill lands on θ_sft's write (write event 2, after config.yaml): the one write of the run
        # that no later resume redoes unless its digest says it is damaged. The rest are drawn.
        n = 2 if k == 1 else rng.randint(1, MAX_GAP)
        resume = ["--resume"] if (out / "config.yaml").is_file() else []
        proc = run_forked([*setup["argv"], *resume, "--out", str(out)], cwd=setup["root"], timeout=180,
                          extra_env={"WARPRL_FAULT": f"{n}:SIGKILL"})
        if proc.returncode == 0:  # the run ended before its Nth write event: the chain is through
            break
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
        event = _fault_line(proc.stderr).replace(str(out) + "/", "").replace(str(out), "<out>")
        kinds.add(event.split()[0])
        if k == 1:
            assert event == "write sft.safetensors", event
        print(f"kill {k}: write event {n} of the process: {event}")
        rows.append({"order": k, "signal": "SIGKILL", "where": f"write event {n} of the process: {event}",
                     "evidence": "the io fault hook (WARPRL_FAULT)", "exit": "killed (-9)"})
    else:
        pytest.fail("the chain never finished")
    # A finished folder resumed once more: final_slerp/ and final/ are replaced, so the swap between the two
    # renames of a folder happens; kill there, at the second write event (dir, then swap).
    (out / "summary.json").unlink()
    proc = run_forked([*setup["argv"], "--resume", "--out", str(out)], cwd=setup["root"], timeout=180,
                      extra_env={"WARPRL_FAULT": "2:SIGKILL"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    event = _fault_line(proc.stderr).replace(str(out) + "/", "")
    assert event == "swap final_slerp", event
    assert (out / ".final_slerp.old").is_dir() and not (out / "final_slerp").exists()
    rows.append({"order": len(rows) + 1, "signal": "SIGKILL", "where": f"write event 2 of the process: {event} "
                 "(between the two renames: the folder moved aside, the new one not yet in place)",
                 "evidence": "the io fault hook (WARPRL_FAULT)", "exit": "killed (-9)"})
    resume_to_the_end(setup["argv"], out)
    assert_same_as_reference(out, reference["out"])
    assert_clean(out)
    assert {"write", "dir", "append"} <= kinds, kinds
    assert len(rows) >= 20, len(rows)
    for row in rows:
        reliability_table.add("fault", suite="drawn write events: SIGKILL + --resume", outcome="resumed, finished",
                              identical="yes", clean="yes", **row)


# ------------------------------------------------------------------------------------------------- Ray


def _descendants(root: int) -> dict[int, str]:
    """pid → command line of every live process below ``root`` (Ray's raylet, its workers, …)."""
    parents, cmd = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmd[int(entry)] = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = {}, [root]
    while frontier:
        p = frontier.pop()
        for child, parent in parents.items():
            if parent == p and child not in found:
                found[child] = cmd.get(child, "")
                frontier.append(child)
    return found


def _ray_task_workers(driver: int) -> list[int]:
    return [pid for pid, cmd in _descendants(driver).items() if cmd.startswith("ray::_ray_run_task")]


def _ray_argv(setup) -> list[str]:
    pytest.importorskip("ray", reason="the Ray executor needs the ray extra: pip install 'warprl[ray]'")
    return [*setup["argv"], "--executor", "ray"]


def _wait_checkpoint_and_worker(proc, out: Path, timeout: float = 240) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        workers = _ray_task_workers(proc.pid)
        if workers and any(_latest_step(out / "iter_1" / f"run_{m}") for m in range(1, RUNS + 1)):
            return workers
        time.sleep(0.05)
    pytest.fail("no Ray task with a checkpoint appeared")


def test_wrong_ray_address_fails_fast_with_one_line(setup, reliability_table):
    """A closed port on loopback: nothing answers; the command ends in seconds with one line (Ray alone retries
    for minutes)."""
    import socket

    with socket.socket() as s:  # a port that was free a moment ago: closed now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = setup["root"] / "ray_wrong_address"
    t0 = time.monotonic()
    proc = run_cli([*_ray_argv(setup), "--ray-address", f"127.0.0.1:{port}", "--out", str(out)], cwd=setup["root"],
                   timeout=60)
    seconds = time.monotonic() - t0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "cannot join the Ray cluster" in lines[0], proc.stderr[-2000:]
    assert seconds < 30 and not out.exists()
    reliability_table.add("ray", fault="`--ray-address 127.0.0.1:<closed port>`", outcome=f"exit 2 after "
                          f"{seconds:.0f} s: " + lines[0].replace(str(port), "<port>"), identical="n/a (nothing written)")


def test_ray_worker_killed_mid_run_is_retried_and_bit_identical(setup, reference, reliability_table):
    out = setup["root"] / "ray_worker_killed"
    proc = popen([*_ray_argv(setup), "--out", str(out)], cwd=setup["root"])
    try:
        workers = _wait_checkpoint_and_worker(proc, out)
        os.kill(workers[0], signal.SIGKILL)
        _, err = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-2000:]
    assert_same_as_reference(out, reference["out"])
    assert_clean(out)
    reliability_table.add("ray", fault="a Ray worker SIGKILLed while its run trains (after a checkpoint)",
                          outcome="the task is retried (max_retries 2) and resumes from its checkpoint; exit 0",
                          identical="yes (bytes of final, final_slerp, merges = sequential executor)")


def test_driver_sigkill_with_ray_resumes_bit_identical(setup, reference, reliability_table):
    out = setup["root"] / "ray_driver_killed"
    argv = [*_ray_argv(setup), "--out", str(out)]
    proc = popen(argv, cwd=setup["root"])
    try:
        _wait_checkpoint_and_worker(proc, out)
        below = _descendants(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # Ray's processes share the driver's fate: none may go on writing into the folder once it is gone.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() and "_ray_run_task" in c
                                              for p, c in below.items()):
        time.sleep(0.2)
    survivors = [p for p, c in below.items() if Path(f"/proc/{p}").exists() and "_ray_run_task" in c]
    assert not survivors, f"Ray workers outlived their driver: {survivors}"
    resume = run_cli([*argv, "--resume"], cwd=setup["root"], timeout=400)
    assert resume.returncode == 0, resume.stderr[-2000:]
    assert_same_as_reference(out, reference["out"])
    assert_clean(out)
    reliability_table.add("ray", fault="the driver SIGKILLed (`--executor ray`) while the runs train",
                          outcome="its Ray workers end with it; `--resume --executor ray` finishes",
                          identical="yes (bytes = sequential executor)")


# -------------------------------------------------------------------------------------- local processes


def _process_workers(driver: int) -> list[int]:
    return [pid for pid, cmd in _descendants(driver).items() if "spawn_main" in cmd]


def _wait_checkpoint_and_process_worker(proc, out: Path, timeout: float = 240) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        workers = _process_workers(proc.pid)
        if len(workers) == min(RUNS, usable_cores()) and any(_latest_step(out / "iter_1" / f"run_{m}") for m in range(1, RUNS + 1)):
            return workers
        time.sleep(0.05)
    pytest.fail("no worker process with a checkpoint appeared")


def _processes_run_hit_mid_run(setup, out: Path, hit) -> tuple[int, str, list[int]]:
    """``align --executor processes`` into ``out``, ``hit(proc, workers)`` once both workers train and a run has
    a checkpoint; returns the exit code, stderr and the workers' pids."""
    proc = popen([*setup["argv"], "--executor", "processes", "--out", str(out)], cwd=setup["root"])
    try:
        workers = _wait_checkpoint_and_process_worker(proc, out)
        hit(proc, workers)
        _, err = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, err, workers


def _resume_processes_run(setup, out: Path, reference) -> None:
    resume = run_cli([*setup["argv"], "--executor", "processes", "--out", str(out), "--resume"], cwd=setup["root"],
                     timeout=400)
    assert resume.returncode == 0, resume.stderr[-2000:]
    assert_same_as_reference(out, reference["out"])
    assert_clean(out)


def test_processes_worker_killed_mid_run_is_replaced_and_bit_identical(setup, reference, reliability_table):
    out = setup["root"] / "processes_worker_killed"
    code, err, _ = _processes_run_hit_mid_run(setup, out, lambda proc, workers: os.kill(workers[0], signal.SIGKILL))
    assert code == 0 and "a worker process died" in err, err[-2000:]
    assert_same_as_reference(out, reference["out"])
    assert_clean(out)
    reliability_table.add("processes", fault="a worker process SIGKILLed while its run trains (after a checkpoint)",
                          outcome="a new pool takes the unfinished runs, which resume from their checkpoints; exit 0",
                          identical="yes (bytes of final, final_slerp, merges = sequential executor)")


def test_driver_sigkill_with_processes_ends_its_workers_and_resumes(setup, reference, reliability_table):
    out = setup["root"] / "processes_driver_killed"
    _, _, workers = _processes_run_hit_mid_run(setup, out, lambda proc, workers: proc.send_signal(signal.SIGKILL))
    # No worker may go on writing into the folder once its driver is gone (PR_SET_PDEATHSIG on Linux).
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in workers):
        time.sleep(0.05)
    survivors = [p for p in workers if Path(f"/proc/{p}").exists()]
    assert not survivors, f"worker processes outlived their driver: {survivors}"
    _resume_processes_run(setup, out, reference)
    reliability_table.add("processes", fault="the driver SIGKILLed (`--executor processes`) while the runs train",
                          outcome="its workers end with it; `--resume --executor processes` finishes",
                          identical="yes (bytes = sequential executor)")


def _ctrl_c(proc, workers: list[int]) -> None:
    """What a terminal's Ctrl-C does: SIGINT to every process of the foreground group (the driver and its
    workers; os.killpg would reach this test's own group too)."""
    for pid in (proc.pid, *workers):
        os.kill(pid, signal.SIGINT)


@pytest.mark.parametrize("stop", ["SIGTERM to the driver", "Ctrl-C"])
def test_a_stop_with_processes_checkpoints_every_run(setup, reference, reliability_table, stop):
    out = setup["root"] / f"processes_{stop.split()[0].lower()}"
    hit = _ctrl_c if stop == "Ctrl-C" else (lambda proc, workers: proc.send_signal(signal.SIGTERM))
    code, err, _ = _processes_run_hit_mid_run(setup, out, hit)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and "Traceback" not in err, err[-2000:]
    name = "SIGINT" if stop == "Ctrl-C" else "SIGTERM"
    assert lines[-1].startswith(f"error: stopped by {name}") and "--resume" in lines[-1], lines[-1]
    for m in range(1, RUNS + 1):  # each run is either finished or has its finished steps in a checkpoint
        run = out / "iter_1" / f"run_{m}"
        assert (run / "done.json").is_file() or _latest_step(run) == _lines(run / "metrics.jsonl"), m
    _resume_processes_run(setup, out, reference)
    reliability_table.add("processes", fault=f"{stop} (`--executor processes`) while the runs train",
                          outcome="each worker's run checkpoints after its step; exit 2 with a --resume hint; "
                                  "the resume finishes", identical="yes (bytes = sequential executor)")
