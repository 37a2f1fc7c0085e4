"""benchmarks/bench_warp_ablation.py's plan: which WARP configs share iteration 1's runs, and that a folder started
from another config's runs (hard links) ends bit-identical to one trained from scratch."""

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from _ablation_plan import I1, lent_files, needed_files, plan_for, shared_steps  # noqa: E402

from tests.conftest import PROMPT_LINES  # noqa: E402

FULL = plan_for(list("abcd"), 15)


def test_only_configs_with_the_same_step_settings_share_iteration_one():
    assert FULL.shares == {"warp_m4": ("warp_task_b0.1_eta0.5", 2), "warp_task_b0.1_eta0.3": ("warp_task_b0.1_eta0.5", 2)}
    assert shared_steps(FULL) == 2 * 15 + 2 * 15  # two borrowers, two runs of T steps each
    assert "warp_paper" not in FULL.shares and "warp_task_b0.01_eta0.5" not in FULL.shares  # REINFORCE; β 0.01
    # Part b alone has nothing to borrow from: its SLERP M = 2 is then a merge of its own first two runs.
    alone = plan_for(["b"], 15)
    assert alone.shares == {} and alone.candidates["SLERP M=2"] == ("warp_m4:merge:slerp:2", "b")


def test_one_policy_stands_for_part_b_slerp_m2_and_part_c_i1():
    spec = "warp_task_b0.1_eta0.5:slerp1"
    assert FULL.candidates["SLERP M=2"] == (spec, "b") and FULL.candidates[I1] == (spec, "c")
    assert len({s for s, _ in FULL.candidates.values()}) == 20  # distinct policies evaluated per seed
    assert "iter_1/slerp.safetensors" in needed_files(FULL, "warp_task_b0.1_eta0.5")
    assert lent_files(FULL, "warp_task_b0.1_eta0.5") >= {"sft.safetensors", "iter_1/run_2/weights.safetensors"}
    assert lent_files(FULL, "rloo_sft_b0.1") == set()


@pytest.fixture(scope="module")
def bench():
    import bench_warp_ablation

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: one thread is as fast, and does not spin against other processes
    yield bench_warp_ablation
    torch.set_num_threads(threads)


def _cfg(policy, prompts, out, **kw):
    from warprl.config import AlignConfig

    settings = dict(method="warp", iterations=1, runs=2, steps=2, batch_size=2, k=2, max_new_tokens=5, bf16=False,
                    lr=3e-2, beta=0.1, mu=0.1, lam=0.5, eta=0.5, checkpoint_every=0, progress=False)
    return AlignConfig(**{**settings, "policy": str(policy), "prompts": str(prompts), "out": str(out), **kw})


def test_a_borrowed_start_ends_as_a_run_from_scratch(bench, tiny_policy_dir, tmp_path):
    from warprl.commands.align import run_align

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPT_LINES) + "\n")

    def reward(p, completions):
        return torch.tensor([float(c.count("o")) for c in completions])

    lender, scratch, borrower = tmp_path / "lender", tmp_path / "scratch", tmp_path / "borrower"
    run_align(_cfg(tiny_policy_dir, prompts, lender), reward_fn=reward)
    other = dict(iterations=2, runs=3, eta=0.3)  # M, η and I differ: the first two runs of iteration 1 do not
    run_align(_cfg(tiny_policy_dir, prompts, scratch, **other), reward_fn=reward)
    cfg = _cfg(tiny_policy_dir, prompts, borrower, **other)
    bench.borrow_runs(lender, borrower, cfg, 2)
    assert (borrower / "iter_1/run_1/weights.safetensors").stat().st_ino == \
        (lender / "iter_1/run_1/weights.safetensors").stat().st_ino  # a link, not a copy
    bench.borrow_runs(lender, borrower, cfg, 2)  # again (a killed benchmark's rerun): nothing changes
    cfg.resume = True
    run_align(cfg, reward_fn=reward)
    for name in ("iter_1/run_3/weights.safetensors", "iter_2/init.safetensors", "final/model.safetensors"):
        a, b = load_file(str(borrower / name)), load_file(str(scratch / name))
        assert all(torch.equal(a[k], b[k]) for k in a), name
