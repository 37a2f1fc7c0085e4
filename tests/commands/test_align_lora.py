"""`warprl align --lora-r`: WARP with adapters end to end on a tiny random Llama — run folders hold adapters only,
the merges are SLERP of the runs' ΔW and LITI, final/ is a plain HF folder — and the flags' bad values."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.commands.test_align_warp import TINY, count_o, one_thread, toy_reward  # noqa: F401  (one_thread: a fixture)
from tests.conftest import PROMPT_LINES
from warprl import lora, merge
from warprl.cli import main
from warprl.commands import outdir
from warprl.commands.align import run_align
from warprl.config import AlignConfig
from warprl.errors import UserError
from warprl.lora_merge import task_vector_gram_adapters

LORA = dict(TINY, lora_r=4, lora_alpha=8.0, lr=5e-2)
RUN_FILES = ["adapter/adapter_config.json", "adapter/adapter_model.safetensors", "done.json", "metrics.jsonl"]


@pytest.fixture(scope="module")
def setup(tiny_policy_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("lora")
    prompts = root / "prompts.txt"
    prompts.write_text("\n".join(PROMPT_LINES) + "\n")
    return {"policy": str(tiny_policy_dir), "prompts": str(prompts), "root": root}


def make_cfg(setup, out, **kw) -> AlignConfig:
    return AlignConfig(**{**LORA, "policy": setup["policy"], "prompts": setup["prompts"], "out": str(out), **kw})


@pytest.fixture(scope="module")
def reference(setup):
    out = setup["root"] / "reference"
    return out, run_align(make_cfg(setup, out), reward_fn=toy_reward)


def test_run_folders_hold_adapters_only_and_final_loads_with_transformers(reference):
    from transformers import AutoModelForCausalLM

    out, summary = reference
    for i in (1, 2):
        for m in (1, 2):
            run = out / f"iter_{i}" / f"run_{m}"
            assert sorted(p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()) == RUN_FILES
            config = json.loads((run / "adapter" / "adapter_config.json").read_text())
            # Each run's adapter applies to its iteration's θ_init (sft.safetensors, then the LITI result).
            base = "../../sft.safetensors" if i == 1 else "../../iter_1/init.safetensors"  # relative to the run
            assert config["base_model_name_or_path"] == base and config["r"] == 4
            assert len((run / "metrics.jsonl").read_text().splitlines()) == TINY["steps"]
    assert not list(out.rglob("weights.safetensors")) and not list(out.rglob("checkpoints"))
    for folder, weights in (("final", "iter_2/init.safetensors"), ("final_slerp", "iter_2/slerp.safetensors")):
        model = AutoModelForCausalLM.from_pretrained(out / folder)
        state = model.state_dict()
        assert all(torch.equal(state[k], v) for k, v in load_file(str(out / weights)).items())
    assert summary["final"] == str(out / "final")


def test_iterations_slerp_the_runs_delta_w_then_liti(reference):
    """θ_slerp = θ_init + SLERP(ΔW_1, ΔW_2) on the adapted matrices (every other tensor unchanged), equal to the
    dense SLERP of the merged runs; θ_init ← LITI; the row's angle is the angle between the ΔW."""
    out, _ = reference
    init = load_file(str(out / "sft.safetensors"))
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    for i in (1, 2):
        adapters = [out / f"iter_{i}" / f"run_{m}" / "adapter" for m in (1, 2)]
        runs = []
        for folder in adapters:
            scale, _, pairs = lora.read_adapter(folder)
            runs.append({k: v + lora.delta(*pairs[k.removesuffix(".weight")], scale)
                         if k.removesuffix(".weight") in pairs else v for k, v in init.items()})
        dense = merge.slerp(init, runs, lam=TINY["lam"])
        saved = load_file(str(out / f"iter_{i}" / "slerp.safetensors"))
        adapted = {f"{n}.weight" for n in pairs}
        for k, v in saved.items():
            if k in adapted:
                torch.testing.assert_close(v, dense[k], rtol=0, atol=1e-6)
                assert not torch.equal(v, init[k])
            else:
                assert torch.equal(v, init[k]), k  # embeddings, norms: a zero task vector
        assert all(not torch.equal(runs[0][k], runs[1][k]) for k in adapted)  # own seeds → different runs
        init = merge.liti(init, saved, eta=TINY["eta"])
        assert all(torch.equal(v, init[k]) for k, v in load_file(str(out / f"iter_{i}" / "init.safetensors")).items())
        gram = task_vector_gram_adapters(adapters)
        flat = [torch.cat([(r[k] - load_file(str(out / ("sft.safetensors" if i == 1 else "iter_1/init.safetensors")))[k])
                           .reshape(-1) for k in sorted(adapted)]) for r in runs]
        assert gram[0][1] == pytest.approx(float(flat[0] @ flat[1]), rel=1e-4)
        angle = merge.angle_degrees(gram[0][1], gram[0][0], gram[1][1])
        assert rows[i - 1]["charts/task_vector_angle_deg"] == pytest.approx(angle, abs=1e-9) and 0 < angle < 180


def test_resume_with_other_lora_settings_is_refused(setup, reference):
    out, _ = reference
    with pytest.raises(UserError, match=r"other settings.*lora_r: 4 → 8"):
        run_align(make_cfg(setup, out, resume=True, lora_r=8), reward_fn=toy_reward)


def test_a_folder_from_before_the_lora_settings_resumes_at_their_defaults(setup, reference, tmp_path):
    """A config.yaml written before --lora-* existed lacks them: at their defaults (full fine-tuning) it matches."""
    cfg = AlignConfig(**{**TINY, "policy": setup["policy"], "prompts": setup["prompts"], "out": str(tmp_path / "old")})
    saved = {k: v for k, v in outdir.config_identity(cfg).items() if not k.startswith("lora_")}
    (tmp_path / "old").mkdir()
    text = outdir.config_text(cfg)
    yaml_part = "".join(line + "\n" for line in text.splitlines()[1:] if not line.startswith("lora_"))
    (tmp_path / "old" / "config.yaml").write_text(f"{outdir.DIGEST_LINE}{outdir._identity_digest(saved)}\n{yaml_part}")
    assert outdir._settings_diff(tmp_path / "old" / "config.yaml", cfg) == []
    lora_cfg = AlignConfig(**{**LORA, "policy": setup["policy"], "prompts": setup["prompts"]})
    assert outdir._settings_diff(tmp_path / "old" / "config.yaml", lora_cfg)[:2] == ["lora_alpha: None → 8.0",
                                                                                     "lora_r: None → 4"]


@pytest.mark.parametrize("flags,message", [
    (["--lora-r", "-1"], "--lora-r must be an integer >= 0"),
    (["--lora-r", "4", "--lora-dropout", "0.1"], "--lora-dropout must be 0 here"),
    (["--lora-r", "4", "--lora-alpha", "0"], "--lora-alpha must be > 0"),
    (["--lora-r", "4", "--lora-targets", "nosuchlayer"], "--lora-targets nosuchlayer: llama has no layer named"),
])
def test_bad_lora_flags_exit_2_with_one_line_before_the_folder_exists(setup, tmp_path, capsys, flags, message):
    out = tmp_path / "out"
    argv = ["align", "--policy", setup["policy"], "--prompts", setup["prompts"], "--reward", "vader",
            "--out", str(out), "--no-progress", "--device", "cpu", *flags]
    assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


@pytest.mark.parametrize("executor", ["ray", "processes"])
def test_parallel_executors_equal_sequential(setup, reference, executor):
    """Ray tasks or worker processes train LoRA runs and leave adapter folders; the merge is the sequential
    executor's, bit for bit."""
    if executor == "ray":
        pytest.importorskip("ray", reason="the Ray executor needs the ray extra: pip install 'warprl[ray]'")
    out = setup["root"] / executor
    # Worker processes get the reward by pickle: a module-level function (toy_reward is a closure).
    run_align(make_cfg(setup, out, executor=executor), reward_fn=toy_reward if executor == "ray" else count_o)
    ref = reference[0]
    for name in ("iter_1/slerp.safetensors", "iter_2/init.safetensors", "final/model.safetensors"):
        a, b = load_file(str(out / name)), load_file(str(ref / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    for i in (1, 2):
        for m in (1, 2):
            run = Path(f"iter_{i}/run_{m}/adapter/adapter_model.safetensors")
            assert (out / run).read_bytes() == (ref / run).read_bytes()
