"""Fault injection: a WARP run killed at seeded random moments in every phase, resumed each time, bit-identical.

The run is the real ``warprl align`` command in a subprocess (I=2 iterations × M=2 runs × T=3 steps, a
tiny random Llama, ``--reward vader``). The moment of each kill is found by watching the run's own output
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
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.reliability._helpers import PROMPTS, make_tiny_llama, popen, run_cli, temp_leftovers, weights_equal

# SIGSTOP/SIGKILL and /proc/<pid>/stat: Linux (CI) only.
pytestmark = [pytest.mark.fault,
              pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs Linux /proc and signals")]

SEED = 20240607  # every random choice of the kill moments (which step, how far into it) flows from this
ITERATIONS, RUNS, STEPS = 2, 2, 3
COMPARED_WEIGHTS = ["final/model.safetensors", "final_slerp/model.safetensors"] + [
    f"iter_{i}/{name}.safetensors" for i in range(1, ITERATIONS + 1) for name in ("slerp", "init")]
STEP_KEYS = ("charts/reward_mean", "charts/kl_mean", "charts/entropy", "losses/policy", "losses/grad_norm")


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("faults")
    # Wider than the shared fixture (3 MB of weights): writes take milliseconds, steps stay fast.
    policy = make_tiny_llama(root / "policy", hidden=64, intermediate=2048)
    prompts = root / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    argv = ["align", "--method", "warp", "--policy", str(policy), "--prompts", str(prompts), "--reward", "vader",
            "--iterations", str(ITERATIONS), "--runs", str(RUNS), "--steps", str(STEPS), "--batch-size", "2",
            "--k", "2", "--max-new-tokens", "6", "--no-bf16", "--lr", "0.03", "--beta", "0.1", "--mu", "0.1",
            "--checkpoint-every", "1", "--no-progress", "--device", "cpu", "--seed", "0"]
    return {"root": root, "argv": argv}


@pytest.fixture(scope="module")
def reference(setup) -> dict:
    out = setup["root"] / "reference"
    proc = run_cli([*setup["argv"], "--out", str(out)], cwd=setup["root"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    steps = [json.loads(line)["charts/step_time_s"] for line in (out / "iter_1" / "run_1" / "metrics.jsonl").open()]
    return {"out": out, "step_time": statistics.median(steps)}


def test_subprocesses_run_the_checkout_under_test():
    """The console script with the helpers' environment imports this checkout's ``src/warprl``, not an editable
    install of another one."""
    import subprocess

    from tests.reliability._helpers import REPO, cli_env

    proc = subprocess.run([sys.executable, "-c", "import warprl; print(warprl.__file__)"], env=cli_env(),
                          capture_output=True, text=True, timeout=60, cwd=REPO.parent)
    print("subprocess imports", proc.stdout.strip())
    assert Path(proc.stdout.strip()) == REPO / "src" / "warprl" / "__init__.py"


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
        if folder != m.folder or not name.startswith(m.prefix):
            return False
        if m.prefix == ".step_":  # .step_000002.tmp
            return int(name[len(".step_"):].split(".")[0]) >= m.min_step
        return True


def interrupt(argv: list[str], out: Path, moment: Moment, step_time: float, sig: int = signal.SIGKILL,
              timeout: float = 180) -> tuple[int, str]:
    """Start the command, wait for ``moment``, send ``sig`` there; returns (exit code, stderr)."""
    proc = popen(argv, cwd=out.parent)
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
    for i in range(1, ITERATIONS + 1):
        for m in range(1, RUNS + 1):
            rows = [[json.loads(line)[k] for k in STEP_KEYS] for path in (out, ref)
                    for line in (path / f"iter_{i}" / f"run_{m}" / "metrics.jsonl").read_text().splitlines()]
            assert rows[:STEPS] == rows[STEPS:] and len(rows) == 2 * STEPS, (i, m)


def assert_clean(out: Path) -> None:
    assert not temp_leftovers(out), temp_leftovers(out)
    assert not list(out.rglob("checkpoints")), "checkpoints left beside finished runs"


def resume_to_the_end(argv: list[str], out: Path) -> None:
    proc = run_cli([*argv, "--resume", "--out", str(out)], cwd=out.parent, timeout=180)
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
    code, err = interrupt([*setup["argv"], "--out", str(out)], out, moment, reference["step_time"], sig=sig)
    last = err.strip().splitlines()[-1] if err.strip() else ""
    assert code == 2 and "Traceback" not in err, err[-2000:]
    assert last.startswith(f"error: stopped by {name}") and "--resume" in last, last
    if sig == signal.SIGTERM:  # every finished step of the interrupted run is in its checkpoint
        run = out / "iter_1" / "run_2"
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
