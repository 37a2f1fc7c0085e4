"""LoRA runs killed and resumed: `warprl align --lora-r` (RLOO, and WARP I=2 × M=2) through the real CLI, SIGKILLed
at drawn write events of `warprl.io`'s fault hook (``WARPRL_FAULT=N:SIGKILL``) — checkpoints of the factors,
half a metrics line, the adapter folder, done.json, the streamed SLERP of the runs' ΔW, LITI, final/ — and
resumed after every kill; at the end every weights file, adapter and step row equals an uninterrupted run's.

Only the killed processes run apart, as children of the fork server of ``tests.reliability._helpers`` (a
process each, without the ≈ 8 s of imports of an interpreter start); the uninterrupted reference and the last
resume run the same command in-process (``warprl.cli.main``) with one torch thread, as the children do, so the
bytes compare."""

from __future__ import annotations

import json
import random
import signal
from pathlib import Path

import pytest
import torch

from tests.reliability._helpers import make_tiny_llama, run_forked, temp_leftovers, weights_equal
from tests.reliability.test_faults import _fault_line
from warprl.cli import main

pytestmark = [pytest.mark.fault,
              pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="needs Linux /proc and signals")]

SEED = 20250301
LORA = ["--lora-r", "4", "--lora-alpha", "8", "--lr", "0.05"]
STEP_KEYS = ("charts/reward_mean", "charts/kl_anchor", "charts/entropy", "losses/policy", "losses/grad_norm")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from tests.conftest import PROMPT_LINES

    root = tmp_path_factory.mktemp("lora_faults")
    policy = make_tiny_llama(root / "policy")
    prompts = root / "prompts.txt"
    prompts.write_text("\n".join(PROMPT_LINES) + "\n")
    common = ["align", "--policy", str(policy), "--prompts", str(prompts), "--reward", "vader", "--batch-size", "2",
              "--k", "2", "--max-new-tokens", "4", "--no-bf16", "--checkpoint-every", "1", "--no-progress",
              "--device", "cpu", "--kl-sft-every", "2", *LORA]
    return {"root": root,
            "rloo": [*common, "--method", "rloo", "--anchor", "ema", "--mu", "0.2", "--steps", "4"],
            "warp": [*common, "--method", "warp", "--iterations", "2", "--runs", "2", "--steps", "2", "--mu", "0.2"]}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the subprocesses run with OMP_NUM_THREADS=1: the same reduction order
    yield
    torch.set_num_threads(threads)


def _reference(setup, kind: str) -> Path:
    out = setup["root"] / f"{kind}_reference"
    assert main([*setup[kind], "--out", str(out)]) == 0
    return out


def _kill_chain(argv: list[str], out: Path, rng: random.Random, lo: int, hi: int) -> list[str]:
    """Kill at the Nth write event of each (resumed) process, N drawn in lo…hi, until a process would finish;
    then finish in-process."""
    events = []
    for _ in range(30):
        resume = ["--resume"] if (out / "config.yaml").is_file() else []
        n = rng.randint(lo, hi)
        proc = run_forked([*argv, *resume, "--out", str(out)], cwd=out.parent, timeout=300,
                          extra_env={"WARPRL_FAULT": f"{n}:SIGKILL"})
        if proc.returncode == 0:
            return events
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
        events.append(_fault_line(proc.stderr).replace(str(out) + "/", ""))
        if len(events) == 3:
            break
    assert main([*argv, "--resume", "--out", str(out)]) == 0
    return events


def _rows(metrics: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k in STEP_KEYS or k == "step"}
            for line in metrics.read_text().splitlines()]


def _assert_same_adapters(out: Path, ref: Path, runs: list[str]) -> None:
    for run in runs:
        for name in ("adapter/adapter_model.safetensors", "adapter/adapter_config.json"):  # (a relative base)
            assert (out / run / name).read_bytes() == (ref / run / name).read_bytes(), f"{run}/{name}"
        assert _rows(out / run / "metrics.jsonl") == _rows(ref / run / "metrics.jsonl"), run


def _assert_clean(out: Path) -> None:
    assert not temp_leftovers(out), temp_leftovers(out)
    assert not list(out.rglob("checkpoints"))


def _table(reliability_table, suite: str, events: list[str]) -> None:
    for k, event in enumerate(events, 1):
        reliability_table.add("fault", suite=suite, order=k, signal="SIGKILL", where=f"write event: {event}",
                              evidence="the io fault hook (WARPRL_FAULT)", exit="killed (-9)",
                              outcome="resumed, finished", identical="yes", clean="yes")


def test_lora_rloo_killed_at_drawn_write_events_resumes_bit_identical(setup, reliability_table):
    ref = _reference(setup, "rloo")
    out = setup["root"] / "rloo_killed"
    events = _kill_chain(setup["rloo"], out, random.Random(SEED), lo=3, hi=8)
    print("\n".join(events))
    assert len(events) >= 2, events
    assert weights_equal(out / "final" / "model.safetensors", ref / "final" / "model.safetensors") == []
    _assert_same_adapters(out, ref, ["."])
    _assert_clean(out)
    _table(reliability_table, "LoRA RLOO (--lora-r 4, EMA anchor), drawn write events: SIGKILL + --resume", events)


def test_lora_warp_killed_at_drawn_write_events_resumes_bit_identical(setup, reliability_table):
    ref = _reference(setup, "warp")
    out = setup["root"] / "warp_killed"
    events = _kill_chain(setup["warp"], out, random.Random(SEED + 1), lo=8, hi=20)
    print("\n".join(events))
    assert len(events) == 3, events
    for name in ["final/model.safetensors", "final_slerp/model.safetensors"] + [
            f"iter_{i}/{w}.safetensors" for i in (1, 2) for w in ("slerp", "init")]:
        assert weights_equal(out / name, ref / name) == [], name
    _assert_same_adapters(out, ref, [f"iter_{i}/run_{m}" for i in (1, 2) for m in (1, 2)])
    _assert_clean(out)
    _table(reliability_table, "LoRA WARP (--lora-r 4, I=2 × M=2 × T=2), drawn write events: SIGKILL + --resume",
           events)
