"""Fixtures of the command tests: a prompt file and one tiny quickstart run (shared by the session)."""

import pytest

from tests.commands._helpers import PROMPTS, tensor_reward
from warprl.commands.quickstart import run_quickstart
from warprl.config import QuickstartConfig


@pytest.fixture(scope="session")
def prompt_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return path


def tiny_quickstart(tiny_policy_dir, prompt_file, out, **kw) -> QuickstartConfig:
    base = dict(out=str(out), policy=str(tiny_policy_dir), prompts=str(prompt_file), iterations=1, runs=2, steps=4,
                batch_size=2, k=2, lr=3e-2, beta=0.0, max_new_tokens=6, n_prompts=6, samples_per_prompt=2,
                eta_steps=2, bf16=False, progress=False)
    base.update(kw)
    return QuickstartConfig(**base)


@pytest.fixture(scope="session")
def quickstart_run(tiny_policy_dir, prompt_file, tmp_path_factory):
    """A finished quickstart (also a WARP run folder); tests that write into it work on a copy."""
    out = tmp_path_factory.mktemp("qs") / "quickstart"
    cfg = tiny_quickstart(tiny_policy_dir, prompt_file, out)
    summary = run_quickstart(cfg, reward_fn=tensor_reward("good"), judge_fn=tensor_reward("great"))
    return out, summary
