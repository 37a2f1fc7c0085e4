"""WARP end to end on a tiny random Llama: layout, the iteration maths, resume after kills, Ray, the CLI.

One uninterrupted run (module fixture) is the reference; every interrupted-then-resumed variant must end
with bit-identical weights (torch.equal on every tensor), which is what fixed seeds on a CPU promise.
"""

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import warprl.rl.loop as T
from tests.conftest import PROMPT_LINES
from warprl import merge
from warprl.cli import main
from warprl.commands.align import run_align as align_warp
from warprl.config import AlignConfig
from warprl.errors import UserError
from warprl.rl.loop import RunInterrupted

REPO = Path(__file__).resolve().parents[2]
PROMPTS = PROMPT_LINES  # written to a .txt file, which is split into training and held-out lines
# I=2, M=2, T=3; a large lr and μ so that three steps move the weights and the EMA visibly.
TINY = dict(method="warp", iterations=2, runs=2, steps=3, batch_size=2, k=2, max_new_tokens=6, bf16=False,
            lr=3e-2, beta=0.1, mu=0.1, lam=0.5, eta=0.5, checkpoint_every=2, kl_sft_every=3, progress=False)


def tensor_reward(fn):
    return lambda prompts, completions: torch.tensor(fn(prompts, completions), dtype=torch.float32)


# A closure, not a module-level function: cloudpickle ships it to Ray workers by value (they cannot import
# this test module). Dense on purpose: a count of one word ("good") is 0 for every sample of a 3-step run
# often enough that the run does not move (a zero task vector, no angle); the letter count varies with the text.
toy_reward = tensor_reward(lambda prompts, completions: [float(c.count("o")) for c in completions])


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Two torch threads on two shared cores spin against every other process (8× slower here under load);
    # one thread is as fast on this tiny model and gives the same results.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def setup(tiny_policy_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("warp")
    prompts = root / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    return {"policy": str(tiny_policy_dir), "prompts": str(prompts), "root": root}


def make_cfg(setup, out, **kw) -> AlignConfig:
    return AlignConfig(**{**TINY, "policy": setup["policy"], "prompts": setup["prompts"], "out": str(out), **kw})


def cli_flags(setup, out) -> list[str]:
    flags = ["align", "--policy", setup["policy"], "--prompts", setup["prompts"], "--out", str(out)]
    for key, value in TINY.items():
        name = "--" + key.replace("_", "-")
        flags += ([name if value else "--no-" + name[2:]] if isinstance(value, bool) else [name, str(value)])
    return flags


@pytest.fixture(scope="module")
def reference(setup):
    out = setup["root"] / "reference"
    summary = align_warp(make_cfg(setup, out), reward_fn=toy_reward)
    return out, summary


def assert_same_weights(a: Path, b: Path) -> None:
    sa, sb = load_file(str(a)), load_file(str(b))
    assert sa.keys() == sb.keys()
    different = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def assert_same_result(out: Path, ref: Path) -> None:
    for name in ("iter_1/init.safetensors", "iter_2/slerp.safetensors", "iter_2/init.safetensors"):
        assert_same_weights(out / name, ref / name)
    assert_same_weights(out / "final" / "model.safetensors", ref / "final" / "model.safetensors")
    def angles(folder):
        return [json.loads(x)["charts/task_vector_angle_deg"] for x in (folder / "metrics.jsonl").read_text().splitlines()]

    assert angles(out) == angles(ref)


# ----------------------------------------------------------------------------------------------- results


def test_layout_and_final_folders_load_with_transformers(reference):
    from transformers import AutoModelForCausalLM

    out, summary = reference
    for name in ("config.yaml", "sft.safetensors", "metrics.jsonl", "summary.json", "final/config.json",
                 "final_slerp/config.json"):
        assert (out / name).is_file(), name
    for i in (1, 2):
        for name in ("slerp.safetensors", "init.safetensors", "iteration.json"):
            assert (out / f"iter_{i}" / name).is_file()
        for m in (1, 2):
            run = out / f"iter_{i}" / f"run_{m}"
            assert (run / "done.json").is_file() and (run / "weights.safetensors").is_file()
            assert len((run / "metrics.jsonl").read_text().splitlines()) == 3
    assert not list(out.rglob("*.tmp")) and not list(out.rglob("checkpoints"))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2]
    for r in rows:
        assert 0.0 < r["charts/task_vector_angle_deg"] < 180.0 and r["charts/task_vector_norm_mean"] > 0.0
        for key in ("charts/reward_mean", "charts/kl_mean", "charts/kl_anchor", "time/merge_s"):
            assert key in r
        # kl_sft_every=3: the last step's, a k1 estimate on a few samples (it may be < 0)
        assert r["charts/kl_sft"] is not None and math.isfinite(r["charts/kl_sft"])
        # Where the runs' time went, summed over the iteration's runs from their done.json (bench_warp_overhead).
        runs = [json.loads((out / f"iter_{r['iteration']}" / f"run_{m}" / "done.json").read_text())["time"]
                for m in (1, 2)]
        for phase in ("load_init", "setup", "steps", "kl_sft", "metrics", "checkpoint", "finish"):
            assert r[f"time/run_{phase}_s"] == pytest.approx(sum(t[phase] for t in runs), abs=2e-3)
            assert r[f"time/run_{phase}_s"] >= 0.0
        steps = sum(json.loads(x)["charts/step_time_s"] for m in (1, 2) for x in
                    (out / f"iter_{r['iteration']}" / f"run_{m}" / "metrics.jsonl").read_text().splitlines())
        assert steps <= r["time/run_steps_s"] + 2e-3  # the steps' own clocks sit inside the run's
        assert sum(v for k, v in r.items() if k.startswith("time/run_")) <= r["time/runs_s"] + 2e-3
    assert summary["final"] == str(out / "final") and json.loads((out / "summary.json").read_text()) == summary

    for folder, weights in (("final", "iter_2/init.safetensors"), ("final_slerp", "iter_2/slerp.safetensors")):
        model = AutoModelForCausalLM.from_pretrained(out / folder)
        state = model.state_dict()
        expected = load_file(str(out / weights))
        assert all(torch.equal(state[k], v) for k, v in expected.items())
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # still tied
        # The last iteration's file itself (hard-linked: written once), under save_pretrained's names.
        assert os.path.samefile(out / folder / "model.safetensors", out / weights)
        assert "model.embed_tokens.weight" in expected and "lm_head.weight" not in expected


def test_iterations_follow_slerp_then_liti(reference, tiny_policy_dir):
    """θ_init ← liti(θ_init, slerp(θ_init, {θ_m}, λ), η) per iteration, recomputed by hand from the runs."""
    from transformers import AutoModelForCausalLM

    out, _ = reference
    sft_model = AutoModelForCausalLM.from_pretrained(tiny_policy_dir)
    init = load_file(str(out / "sft.safetensors"))
    assert all(torch.equal(v, sft_model.state_dict()[k]) for k, v in init.items())
    for i in (1, 2):
        runs = [load_file(str(out / f"iter_{i}" / f"run_{m}" / "weights.safetensors")) for m in (1, 2)]
        assert any(not torch.equal(runs[0][k], runs[1][k]) for k in init)  # own seeds → different runs
        slerped = merge.slerp(init, runs, lam=TINY["lam"])
        init = merge.liti(init, slerped, eta=TINY["eta"])
        for name, sd in (("slerp", slerped), ("init", init)):
            saved = load_file(str(out / f"iter_{i}" / f"{name}.safetensors"))
            assert all(torch.equal(saved[k], sd[k]) for k in sd), (i, name)


def test_each_run_starts_from_its_iterations_init(setup, reference, monkeypatch):
    """Iteration 1's runs start from θ_sft; iteration 2's from iter_1/init.safetensors (the LITI result), each
    with its own seed; the result is the reference's."""
    import warprl.rl.warp as W

    real_run_rl, starts = W.run_rl, []

    def recording_run_rl(cfg, run_dir, policy, *a, **k):
        starts.append((Path(run_dir).relative_to(out).as_posix(), k["seed"],
                       {n: t.clone() for n, t in policy.state_dict().items()}))
        return real_run_rl(cfg, run_dir, policy, *a, **k)

    monkeypatch.setattr(W, "run_rl", recording_run_rl)
    out = setup["root"] / "starts"
    align_warp(make_cfg(setup, out), reward_fn=toy_reward)
    assert [s[0] for s in starts] == ["iter_1/run_1", "iter_1/run_2", "iter_2/run_1", "iter_2/run_2"]
    assert len({s[1] for s in starts}) == 4
    for name, _, weights in starts:
        init = load_file(str(out / ("sft.safetensors" if name.startswith("iter_1") else "iter_1/init.safetensors")))
        assert all(torch.equal(weights[k], v) for k, v in init.items()), name
    sft = load_file(str(out / "sft.safetensors"))
    assert any(not torch.equal(starts[2][2][k], sft[k]) for k in sft)  # iteration 2 really starts elsewhere
    assert_same_result(out, reference[0])


def test_a_run_of_iteration_1_depends_on_neither_m_nor_eta_nor_i(setup, reference):
    # benchmarks/bench_warp_ablation.py trains iteration 1's runs once for several WARP configs that differ only
    # in M, η or I (hard links into the others' folders): that is sound only because a run is a function of
    # (seed, iteration, run index, θ_init and the step settings) alone.
    out = setup["root"] / "other_m_eta_i"
    align_warp(make_cfg(setup, out, iterations=1, runs=3, eta=0.3), reward_fn=toy_reward)
    for m in (1, 2):
        run = f"iter_1/run_{m}/weights.safetensors"
        assert_same_weights(out / run, reference[0] / run)
    first, third = (load_file(str(out / f"iter_1/run_{m}/weights.safetensors")) for m in (1, 3))
    assert any(not torch.equal(v, first[k]) for k, v in third.items())  # its own seed: the comparison above can fail


# ------------------------------------------------------------------------------------------------ resume


def test_resume_after_a_crash_inside_run_2_of_iteration_1(setup, reference, monkeypatch):
    out = setup["root"] / "crash_run"
    real_step, calls = T.rl_step, {"n": 0}

    def dying_step(*a, **k):
        calls["n"] += 1
        if calls["n"] == 6:  # run 2, step 3 of iteration 1 (its checkpoint is from step 2)
            raise KeyboardInterrupt
        return real_step(*a, **k)

    monkeypatch.setattr(T, "rl_step", dying_step)
    with pytest.raises(KeyboardInterrupt):
        align_warp(make_cfg(setup, out), reward_fn=toy_reward)
    monkeypatch.setattr(T, "rl_step", real_step)
    assert (out / "iter_1" / "run_1" / "done.json").is_file()
    assert json.loads((out / "iter_1" / "run_2" / "checkpoints" / "latest.json").read_text())["step"] == 2
    align_warp(make_cfg(setup, out, resume=True), reward_fn=toy_reward)
    assert_same_result(out, reference[0])


@pytest.mark.parametrize("failing_write", [1, 4], ids=["iter1-slerp", "iter2-liti"])
def test_resume_after_a_crash_during_a_merge(setup, reference, monkeypatch, failing_write):
    out = setup["root"] / f"crash_merge_{failing_write}"
    real_save, calls = merge.files.save_file, {"n": 0}

    def dying_save(tensors, path, metadata=None):
        calls["n"] += 1
        if calls["n"] == failing_write:
            Path(path).write_bytes(b"half a file")
            raise KeyboardInterrupt
        return real_save(tensors, path, metadata=metadata)

    monkeypatch.setattr(merge.files, "save_file", dying_save)
    with pytest.raises(KeyboardInterrupt):
        align_warp(make_cfg(setup, out), reward_fn=toy_reward)
    monkeypatch.setattr(merge.files, "save_file", real_save)
    target = out / ("iter_1/slerp.safetensors" if failing_write == 1 else "iter_2/init.safetensors")
    assert not target.exists() and not list(out.rglob("*.tmp*"))
    align_warp(make_cfg(setup, out, resume=True), reward_fn=toy_reward)
    assert_same_result(out, reference[0])


KILLER = """
import os, signal, sys
import torch
sys.path[:0] = [{src!r}, {repo!r}]
import warprl.rl.loop as T
from warprl import merge
from warprl.config import AlignConfig
from tests.commands.test_align_warp import toy_reward

where = {where!r}
if where == "step":
    real_step, calls = T.rl_step, [0]
    def step(*a, **k):
        calls[0] += 1
        if calls[0] == 8:  # iteration 2, run 1, step 2 (before its first checkpoint)
            os.kill(os.getpid(), signal.SIGKILL)
        return real_step(*a, **k)
    T.rl_step = step
else:
    def save(tensors, path, metadata=None):  # iteration 1's slerp: half written when the kill comes
        open(path, "wb").write(b"half a file")
        os.kill(os.getpid(), signal.SIGKILL)
    merge.files.save_file = save
from warprl.commands.align import run_align as align_warp
align_warp(AlignConfig(**{cfg!r}), reward_fn=toy_reward)
"""


@pytest.mark.parametrize("where", ["step", "merge"])
def test_resume_after_sigkill(setup, reference, where):
    """A real SIGKILL (no cleanup runs) in a training step or in the middle of writing a merge."""
    out = setup["root"] / f"sigkill_{where}"
    cfg = {**TINY, "policy": setup["policy"], "prompts": setup["prompts"], "out": str(out)}
    script = KILLER.format(src=str(REPO / "src"), repo=str(REPO), where=where, cfg=cfg)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=REPO, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}",
                                                     "OMP_NUM_THREADS": "1"})
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    if where == "merge":
        assert list(out.glob("iter_1/.slerp.safetensors.*.tmp*"))  # what a kill leaves behind…
        assert not (out / "iter_1" / "slerp.safetensors").exists()
    align_warp(make_cfg(setup, out, resume=True), reward_fn=toy_reward)
    assert not list(out.rglob(".*.tmp*"))  # …is cleaned up by the resume
    assert_same_result(out, reference[0])


def test_resume_with_other_settings_is_refused(setup, reference):
    out, _ = reference
    with pytest.raises(UserError, match="other settings.*eta"):
        align_warp(make_cfg(setup, out, resume=True, eta=0.3), reward_fn=toy_reward)


# ------------------------------------------------------------------------------------------ CLI, signals


def test_cli_sigterm_then_resume(setup, reference, monkeypatch, capsys):
    """SIGTERM at the end of run 1 → exit 2 with a resume hint; `--resume` finishes identically; changed
    settings on resume → exit 2."""
    import warprl.commands.align

    monkeypatch.setattr(warprl.commands.align, "load_reward", lambda spec, device=None, bf16=True: toy_reward)
    out = setup["root"] / "cli"
    real_step, calls = T.rl_step, {"n": 0}

    def step_then_sigterm(*a, **k):
        metrics = real_step(*a, **k)
        calls["n"] += 1
        if calls["n"] == 3:  # the last step of run 1: the run finishes, WARP stops before run 2
            os.kill(os.getpid(), signal.SIGTERM)
        return metrics

    monkeypatch.setattr(T, "rl_step", step_then_sigterm)
    assert main(cli_flags(setup, out)) == 2
    last_line = capsys.readouterr().err.strip().splitlines()[-1]  # (above it: transformers' load bars)
    assert last_line.startswith("error: stopped by SIGTERM") and "--resume" in last_line
    assert isinstance(RunInterrupted("x"), UserError)
    assert (out / "iter_1" / "run_1" / "done.json").is_file() and not (out / "iter_1" / "run_2").exists()
    monkeypatch.setattr(T, "rl_step", real_step)

    assert main(cli_flags(setup, out) + ["--resume", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["final"] == str(out / "final")
    assert_same_result(out, reference[0])

    assert main(cli_flags(setup, out) + ["--resume", "--eta", "0.3"]) == 2
    assert "other settings" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------- Ray


def test_ray_executor_equals_sequential(setup, reference):
    pytest.importorskip("ray", reason="the Ray executor needs the ray extra: pip install 'warprl[ray]'")
    out = setup["root"] / "ray"
    align_warp(make_cfg(setup, out, executor="ray"), reward_fn=toy_reward)
    # Bit-identical: the workers use the driver's torch thread count, so every kernel reduces in the same order.
    assert_same_result(out, reference[0])
    for i in (1, 2):
        for m in (1, 2):
            run = f"iter_{i}/run_{m}/weights.safetensors"
            assert_same_weights(out / run, reference[0] / run)


# ------------------------------------------------------------------------------------------- processes


def count_o(prompts, completions):
    """toy_reward as a module-level function: pickle sends it to spawned workers by reference."""
    return torch.tensor([float(c.count("o")) for c in completions], dtype=torch.float32)


def test_processes_executor_equals_sequential(setup, reference):
    out = setup["root"] / "processes"
    summary = align_warp(make_cfg(setup, out, executor="processes"), reward_fn=count_o)
    # Bit-identical: a 1-thread driver gives its workers 1 thread each (the threads are split between the runs).
    assert summary["executor"] == "processes"
    assert_same_result(out, reference[0])
    for i in (1, 2):
        for m in (1, 2):
            run = f"iter_{i}/run_{m}/weights.safetensors"
            assert_same_weights(out / run, reference[0] / run)


def test_processes_executor_refuses_a_reward_pickle_cannot_send(setup):
    out = setup["root"] / "processes_lambda"
    with pytest.raises(ValueError, match="module-level function"):
        align_warp(make_cfg(setup, out, executor="processes"), reward_fn=toy_reward)
    assert not out.exists()  # refused before the folder is made
