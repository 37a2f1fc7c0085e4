"""Disk full, I/O errors and damaged files, in-process through ``warprl.cli.main`` (fast: no interpreter start).

Write errors: the suite counts every write event of an uninterrupted WARP run (``warprl.io``'s fault hook),
draws seeded event numbers across that whole timeline and makes the Nth write fail with ENOSPC or EIO. Each
time the command must end with exit 2 and one line naming the path and the reason, leave every earlier
result intact (each weights file still matches its recorded sha256), and ``--resume`` — once the "disk" has
room again — must end with the exact bytes of the uninterrupted run's weights.

Damaged files: a run stopped during iteration 2 is copied, one piece is damaged (truncated or garbled
safetensors, a partial or garbled line of ``metrics.jsonl``, a hand-edited ``config.yaml``, a missing
``done.json``, a damaged ``iteration.json``) and the copy is resumed: either it recovers (redoes the damaged
piece) and ends with the same bytes, or it stops with exit 2 and one line and changes no file.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.reliability._helpers import PROMPTS, make_tiny_llama, stderr_lines, temp_leftovers, tree_digest

pytestmark = pytest.mark.fault

SEED = 20250115  # which write events fail, and with which error
N_WRITE_FAULTS = 10
ITERATIONS, RUNS, STEPS = 2, 2, 3
WEIGHTS = ["final/model.safetensors", "final_slerp/model.safetensors"] + [
    f"iter_{i}/{name}.safetensors" for i in range(1, ITERATIONS + 1) for name in ("slerp", "init")]


@pytest.fixture(scope="module")
def inproc(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("damage")
    policy = make_tiny_llama(root / "policy")
    prompts = root / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    argv = ["align", "--method", "warp", "--policy", str(policy), "--prompts", str(prompts), "--reward", "vader",
            "--iterations", str(ITERATIONS), "--runs", str(RUNS), "--steps", str(STEPS), "--batch-size", "2",
            "--k", "2", "--max-new-tokens", "4", "--no-bf16", "--lr", "0.03", "--mu", "0.1",
            "--checkpoint-every", "1", "--no-progress", "--device", "cpu", "--seed", "0"]
    return {"root": root, "argv": argv, "policy": policy}


@pytest.fixture(scope="module")
def reference(inproc) -> dict:
    """An uninterrupted run, and the list of its write events (what the fault hook counts, in order)."""
    from warprl import io
    from warprl.cli import main

    events: list[tuple[str, str]] = []
    real = io._event

    def record(kind, path):
        if kind != "swap":  # an ENOSPC/EIO fault does not count the rename between the two of a folder
            events.append((kind, str(Path(path).relative_to(inproc["root"] / "reference"))))
        real(kind, path)

    out = inproc["root"] / "reference"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(io, "_event", record)
        mp.setattr(io, "_FAULT", io._Fault(10**9, "ENOSPC"))  # a hook that never fires: events are reported
        assert main([*inproc["argv"], "--out", str(out)]) == 0
    return {"out": out, "events": events}


def run_main(argv: list[str], fault: tuple[int, str] | None = None) -> tuple[int, list[str]]:
    """``main(argv)`` with its stderr captured (and printed again, for a failing test's report)."""
    import contextlib
    import io as text_io
    import sys

    from warprl import io
    from warprl.cli import main

    err = text_io.StringIO()
    if fault:
        io.inject_fault(*fault)
    try:
        with contextlib.redirect_stderr(err):
            code = main(argv)
    finally:
        io.inject_fault(None)
    print(err.getvalue(), file=sys.stderr)
    return code, stderr_lines(err.getvalue())


def same_bytes(out: Path, ref: Path) -> list[str]:
    """The compared weights files whose bytes differ from the reference's."""
    return [name for name in WEIGHTS if (out / name).read_bytes() != (ref / name).read_bytes()]


def assert_consistent(out: Path) -> None:
    """Every result on disk is whole: recorded sha256 files match, finished runs match their done.json, every
    checkpoint folder matches its sha256.json."""
    from warprl.io import damage
    from warprl.rl.checkpoint import _checkpoint_damage, finished_run_damage

    for sidecar in out.rglob("*.sha256"):
        assert damage(sidecar.with_suffix("")) is None, sidecar
    for done in out.rglob("done.json"):
        assert finished_run_damage(done.parent) is None, done
    for ckpt in out.rglob("checkpoints/step_*"):
        assert _checkpoint_damage(ckpt, anchor=True) is None, ckpt


def finish(argv: list[str], out: Path) -> list[str]:
    """--resume (or a fresh start when the failure came before config.yaml) to the end; returns stderr."""
    resume = ["--resume"] if (out / "config.yaml").is_file() else []
    code, err = run_main([*argv, *resume, "--out", str(out)])
    assert code == 0, err
    return err


# ---------------------------------------------------------------------------------------- write errors


def drawn_write_faults(n_events: int) -> list[tuple[int, str]]:
    rng = random.Random(SEED)
    picks = sorted(rng.sample(range(1, n_events + 1), N_WRITE_FAULTS))
    return [(n, rng.choice(["ENOSPC", "EIO"])) for n in picks]


def test_write_errors_at_drawn_writes_end_with_one_line_and_resume_bit_identical(inproc, reference,
                                                                                  reliability_table):
    events = reference["events"]
    kinds = {kind for kind, _ in events}
    assert kinds == {"write", "dir", "append"}, kinds
    plan = drawn_write_faults(len(events))
    print(f"write faults (seed {SEED}, {len(events)} write events):",
          ", ".join(f"{n}:{action} {events[n - 1][1]}" for n, action in plan))
    for k, (n, action) in enumerate(plan, 1):
        out = inproc["root"] / f"wf_{k}"
        kind, target = events[n - 1]
        code, err = run_main([*inproc["argv"], "--out", str(out)], fault=(n, action))
        lines = [line for line in err if not line.startswith("warprl fault:")]
        assert code == 2 and len(lines) == 1, err
        assert lines[0].startswith("error: cannot write ") and target in lines[0] and f"({action})" in lines[0], lines
        assert "Traceback" not in "\n".join(err)
        assert_consistent(out)
        assert not temp_leftovers(out), temp_leftovers(out)  # the failed write cleaned up its temporary
        finish(inproc["argv"], out)
        assert same_bytes(out, reference["out"]) == []
        assert not temp_leftovers(out) and not list(out.rglob("checkpoints"))
        shutil.rmtree(out)  # (the suite's temporary space stays small)
        reliability_table.add("write error", order=k, event=f"write {n} of {len(events)}: {kind} `{target}`",
                              error=action, message=reliability_table.scrub(lines[0].replace(str(out), "<out>")),
                              outcome="exit 2; --resume finished", identical="yes")


# ---------------------------------------------------------------------------------------- damaged files


@pytest.fixture(scope="module")
def stopped(inproc, reference) -> Path:
    """A run stopped by a write error while saving iteration 2, run 2's weights after its last step (no checkpoint
    of that step is written: the weights supersede it): iteration 1 is done; iteration 2's run 1 is finished, run
    2 has the checkpoints of steps 1 and 2 and three metrics rows."""
    target = ("write", f"iter_2/run_{RUNS}/weights.safetensors")
    n = reference["events"].index(target) + 1
    out = inproc["root"] / "stopped"
    code, err = run_main([*inproc["argv"], "--out", str(out)], fault=(n, "EIO"))
    assert code == 2, err
    assert (out / "iter_1" / "iteration.json").is_file() and (out / "iter_2" / "run_1" / "done.json").is_file()
    assert sorted(p.name for p in (out / "iter_2" / "run_2" / "checkpoints").glob("step_*")) == [
        "step_000001", "step_000002"]
    return out


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garble(path: Path) -> None:
    """Flip bytes in the middle of the tensor data: same size, still a loadable safetensors file."""
    data = bytearray(path.read_bytes())
    mid = len(data) - (len(data) - 1000) // 2
    data[mid:mid + 16] = bytes(b ^ 0x5A for b in data[mid:mid + 16])
    path.write_bytes(bytes(data))


def _partial_last_line(path: Path) -> None:
    text = path.read_text()
    path.write_text(text[: len(text) - 20])


def _garble_line(path: Path, i: int) -> None:
    lines = path.read_text().splitlines(keepends=True)
    # A letter before the value breaks the row whatever the value is (a digit would not, before a positive one).
    lines[i] = lines[i].replace('"charts/reward_mean": ', '"charts/reward_mean": x')
    path.write_text("".join(lines))


def _edit_config(path: Path, comment_only: bool) -> None:
    text = path.read_text()
    if comment_only:
        path.write_text(text + "# looked at this run on Monday\n")
    else:
        path.write_text(text.replace("eta: 0.5", "eta: 0.3"))


def _replace_policy(weights: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(weights))
    first = sorted(tensors)[0]
    tensors[first] = tensors[first] + 1.0
    save_file(tensors, str(weights), metadata={"format": "pt"})


@dataclass(frozen=True)
class Damage:
    id: str
    what: str
    apply: object  # (out: Path) -> None
    expect: str  # "recovers" or the one-line message's key words


R2 = f"iter_2/run_{RUNS}"
DAMAGES = [
    Damage("sft-garbled", "garbled `sft.safetensors` (bytes flipped, same size)",
           lambda o: _garble(o / "sft.safetensors"), "recovers"),
    Damage("init-truncated", "truncated `iter_1/init.safetensors` (iteration 2's start)",
           lambda o: _truncate(o / "iter_1" / "init.safetensors"), "recovers"),
    Damage("slerp-garbled", "garbled `iter_1/slerp.safetensors`", lambda o: _garble(o / "iter_1" / "slerp.safetensors"),
           "recovers"),
    Damage("run-weights-garbled", "garbled `weights.safetensors` of a finished run (iteration 2, run 1)",
           lambda o: _garble(o / "iter_2" / "run_1" / "weights.safetensors"), "recovers"),
    Damage("run-weights-truncated", "truncated `weights.safetensors` of a finished run (iteration 2, run 1)",
           lambda o: _truncate(o / "iter_2" / "run_1" / "weights.safetensors"), "recovers"),
    Damage("done-missing", "`done.json` missing next to a finished run's weights (iteration 2, run 1)",
           lambda o: (o / "iter_2" / "run_1" / "done.json").unlink(), "recovers"),
    Damage("ckpt-truncated", "truncated `policy.safetensors` in the newest checkpoint",
           lambda o: _truncate(o / R2 / "checkpoints" / "step_000002" / "policy.safetensors"), "recovers"),
    Damage("ckpt-garbled", "garbled `optimizer.safetensors` in the newest checkpoint",
           lambda o: _garble(o / R2 / "checkpoints" / "step_000002" / "optimizer.safetensors"), "recovers"),
    Damage("ckpt-both", "both checkpoints of the run garbled",
           lambda o: [_garble(p) for p in (o / R2 / "checkpoints").glob("step_*/anchor.safetensors")], "recovers"),
    Damage("metrics-partial", "`metrics.jsonl`: partial last line (a write cut short)",
           lambda o: _partial_last_line(o / R2 / "metrics.jsonl"), "recovers"),
    Damage("metrics-garbled", "`metrics.jsonl`: a row of a checkpointed step garbled",
           lambda o: _garble_line(o / R2 / "metrics.jsonl", 0), "recovers"),
    Damage("iteration-json", "`iter_1/iteration.json` garbled", lambda o: (o / "iter_1" / "iteration.json").write_text(
        '{"iteration": 1, "charts/'), "recovers"),
    Damage("config-comment", "`config.yaml`: a comment added by hand", lambda o: _edit_config(o / "config.yaml", True),
           "recovers"),
    Damage("config-edited", "`config.yaml`: a setting edited by hand (eta 0.5 → 0.3)",
           lambda o: _edit_config(o / "config.yaml", False), "was edited after the run started"),
    Damage("config-garbage", "`config.yaml`: not YAML any more",
           lambda o: (o / "config.yaml").write_text("eta: [0.5\n"), "is damaged (not readable YAML)"),
    Damage("policy-changed", "`--policy` folder now holds other weights (sft.safetensors garbled too)",
           lambda o: _garble(o / "sft.safetensors"), "holds other weights than the ones this run started from"),
]


def test_there_are_at_least_12_damage_cases():
    assert len({d.id for d in DAMAGES}) == len(DAMAGES) >= 12


@pytest.mark.parametrize("case", DAMAGES, ids=[d.id for d in DAMAGES])
def test_damaged_file_on_resume_recovers_or_stops_with_one_line(case, inproc, reference, stopped,
                                                               reliability_table):
    out = inproc["root"] / f"damaged_{case.id}"
    shutil.copytree(stopped, out)
    case.apply(out)
    before = tree_digest(out)
    weights = inproc["policy"] / "model.safetensors"
    original = weights.read_bytes()
    try:
        if case.id == "policy-changed":  # same --policy path, other weights in it
            _replace_policy(weights)
        code, err = run_main([*inproc["argv"], "--resume", "--out", str(out)])
    finally:
        weights.write_bytes(original)
    if case.expect == "recovers":
        assert code == 0, err
        assert same_bytes(out, reference["out"]) == [], err
        assert not temp_leftovers(out) and not list(out.rglob("checkpoints"))
        notes = [line for line in err if line.startswith("note: ")]
        if case.id == "metrics-garbled":  # the damaged row is seen: its checkpoint is passed over, not trusted
            assert any("passing over the checkpoint" in n for n in notes), err
        outcome = "recovered: " + (reliability_table.scrub(notes[0].replace(str(out), "<out>"))
                                   if notes else "redone without a note")
    else:
        assert code == 2 and len(err) == 1 and case.expect in err[0], err
        assert tree_digest(out) == before, "a refused resume changed files"
        outcome = "stopped: " + reliability_table.scrub(err[0].replace(str(out), "<out>"))
    shutil.rmtree(out)
    reliability_table.add("damaged", case=case.what, outcome=outcome, exit=code,
                          identical="yes" if code == 0 else "n/a (refused, no file changed)")


def test_consistent_after_the_stop(stopped):
    assert_consistent(stopped)
    assert json.loads((stopped / "iter_1" / "iteration.json").read_text())["iteration"] == 1
