"""Bad inputs across every command: exit code 2, one line naming the problem, no traceback, nothing changed.

Each case runs through ``warprl.cli.main`` in-process (fast) or, where the *via* is ``subprocess``, through
the installed ``warprl`` command, so that "no traceback" is proven at the real entry point too. The only other stderr line allowed is the note that a GGUF file is being
converted (printed before the slow part, so that the wait is explained). Around each
case the sha256 of every file in the guarded folders — a finished run, two interrupted runs, a folder of
the user's own — is taken before and after; a fresh ``--out`` must not even be created.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from tests.reliability._helpers import align_flags, run_cli, stderr_lines, tree_digest

pytestmark = pytest.mark.bad_input

NOTES = ("converting ",)  # progress notes a command may print before it meets the bad input


@dataclass(frozen=True)
class Case:
    id: str
    command: str
    input: str  # what is wrong, for the table
    argv: Callable[[types.SimpleNamespace], list[str]]
    expect: str  # the message must contain this
    via: str = "main"  # or "subprocess"
    starts_run: bool = False  # the inputs load, the run starts in its fresh --out and then meets the bad input


def _align(c, *extra: str, out: str | None = None) -> list[str]:
    return [*c.align, *extra, "--out", str(out if out is not None else c.finished)]


A = "align"
CASES = [
    # --- align: invalid values (refused before anything is read or written)
    Case("iterations-0", A, "--iterations 0", lambda c: _align(c, "--iterations", "0"), "--iterations must be > 0",
         via="subprocess"),
    Case("eta-1.5", A, "--eta 1.5", lambda c: _align(c, "--eta", "1.5"), "--eta must be in [0, 1]"),
    Case("beta-neg", A, "--beta -1", lambda c: _align(c, "--beta", "-1"), "--beta must be >= 0"),
    Case("rloo-k1", A, "--method rloo --k 1", lambda c: _align(c, "--method", "rloo", "--k", "1"),
         "RLOO needs --k >= 2"),
    Case("warp-rloo-k1", A, "--method warp (inner rloo) --k 1", lambda c: _align(c, "--k", "1"),
         "RLOO needs --k >= 2"),
    Case("mu-2", A, "--mu 2", lambda c: _align(c, "--mu", "2"), "--mu must be in (0, 1]"),
    Case("steps-abc", A, "--steps abc", lambda c: _align(c, "--steps", "abc"), "invalid int value: 'abc'"),
    Case("method-ppo", A, "--method ppo", lambda c: _align(c, "--method", "ppo"), "invalid choice: 'ppo'"),
    Case("grad-accum", A, "--batch-size 2 --grad-accum 3", lambda c: _align(c, "--grad-accum", "3"),
         "not divisible by --grad-accum"),
    Case("prompt-tokens", A, "--prompt-tokens 5-2", lambda c: _align(c, "--prompt-tokens", "5-2"),
         "--prompt-tokens must be >= 1 with LO <= HI"),
    Case("top-p-0", A, "--top-p 0", lambda c: _align(c, "--top-p", "0"), "--top-p must be in (0, 1]"),
    Case("min-gt-max", A, "--min-new-tokens 9 --max-new-tokens 4", lambda c: _align(c, "--min-new-tokens", "9"),
         "--min-new-tokens is larger"),
    Case("misspelt-flag", A, "misspelt flag --etaa 0.3", lambda c: _align(c, "--etaa", "0.3"),
         "unrecognized arguments: --etaa"),
    Case("device", A, "--device potato", lambda c: _align(c, "--device", "potato", out=c.fresh), "unknown device"),
    # --- align: config files
    Case("yaml-unknown", A, "--config: unknown key learning_rate",
         lambda c: _align(c, "--config", c.b.yaml_unknown), "unknown setting 'learning_rate'"),
    Case("yaml-list", A, "--config: YAML that is a list, not a mapping",
         lambda c: _align(c, "--config", c.b.yaml_list), "must be a mapping", via="subprocess"),
    Case("yaml-syntax", A, "--config: YAML syntax error", lambda c: _align(c, "--config", c.b.yaml_syntax),
         "is not valid YAML"),
    Case("yaml-type", A, "--config: steps: three", lambda c: _align(c, "--config", c.b.yaml_type),
         "'steps' must be int"),
    Case("yaml-missing", A, "--config: file missing", lambda c: _align(c, "--config", c.b.root / "nope.yaml"),
         "config file not found"),
    # --- align: data, models and rewards (read before the output folder is touched)
    Case("prompts-missing", A, "--prompts: .txt file missing",
         lambda c: _align(c, "--prompts", c.b.root / "nope.txt", out=c.fresh), "prompt file not found"),
    Case("prompts-empty", A, "--prompts: empty .txt", lambda c: _align(c, "--prompts", c.b.empty_txt, out=c.fresh),
         "no prompts"),
    Case("prompts-columns", A, "--prompts: CSV without a text column",
         lambda c: _align(c, "--prompts", c.b.wrong_columns, out=c.fresh), "missing column 'text'"),
    Case("prompts-empty-jsonl", A, "--prompts: empty .jsonl file",
         lambda c: _align(c, "--prompts", c.b.empty_jsonl, out=c.fresh), "empty file"),
    Case("policy-not-model", A, "--policy: folder without config.json",
         lambda c: _align(c, "--policy", c.b.not_a_model, out=c.fresh), "not a model folder"),
    Case("policy-truncated", A, "--policy: truncated model.safetensors",
         lambda c: _align(c, "--policy", c.b.truncated_st, out=c.fresh), "cannot load model", via="subprocess"),
    Case("policy-gguf", A, "--policy: truncated .gguf", lambda c: _align(c, "--policy", c.b.truncated_gguf, out=c.fresh),
         "cannot read GGUF file"),
    Case("policy-pickle", A, "--policy: pickled weights only (pytorch_model.bin)",
         lambda c: _align(c, "--policy", c.b.bin_only, out=c.fresh), "model.safetensors"),
    Case("policy-missing", A, "--policy: path missing",
         lambda c: _align(c, "--policy", c.b.root / "nope", out=c.fresh), "model path not found"),
    Case("reward-encoder", A, "--reward: an encoder without a reward head",
         lambda c: _align(c, "--reward", c.rm.encoder, out=c.fresh), "not a reward model"),
    Case("reward-encoder-processes", A, "--reward: an encoder without a reward head, WARP's runs in worker processes",
         lambda c: _align(c, "--method", "warp", "--executor", "processes", "--reward", c.rm.encoder, out=c.fresh),
         "not a reward model"),
    Case("reward-nan", A, "--reward: a reward model that returns NaN",
         lambda c: _align(c, "--reward", c.rm.nan, out=c.fresh), "returned a non-finite value", via="subprocess",
         starts_run=True),
    Case("resume-reward-nan", A, "--resume an interrupted run whose reward model now returns NaN",
         lambda c: [*align_flags(c.policy, c.prompts, reward=str(c.half_nan.reward)), "--resume",
                    "--out", str(c.half_nan.out)], "returned a non-finite value"),
    # --- align: output folders
    Case("finished-no-overwrite", A, "--out: a finished run, without --overwrite", lambda c: _align(c),
         "holds a finished run; pass --overwrite", via="subprocess"),
    Case("half-no-resume", A, "--out: an interrupted run, without --resume", lambda c: _align(c, out=c.half),
         "holds an unfinished run; pass --resume"),
    Case("resume-finished-other", A, "--resume a finished run with other settings (--eta 0.3)",
         lambda c: _align(c, "--resume", "--eta", "0.3"), "made with other settings (eta: 0.5 → 0.3)"),
    Case("resume-half-other", A, "--resume an interrupted run with other settings (--steps 3)",
         lambda c: _align(c, "--resume", "--steps", "3", out=c.half), "made with other settings (steps: 2 → 3)"),
    Case("resume-half-other-policy", A, "--resume an interrupted run with another --policy",
         lambda c: _align(c, "--resume", "--policy", c.b.truncated_st, out=c.half), "made with other settings (policy:"),
    Case("resume-overwrite", A, "--resume --overwrite", lambda c: _align(c, "--resume", "--overwrite"),
         "--resume and --overwrite contradict each other"),
    Case("resume-nothing", A, "--resume into a folder with no run", lambda c: _align(c, "--resume", out=c.fresh),
         "holds no run to resume"),
    Case("out-file", A, "--out: an existing file", lambda c: _align(c, out=c.b.a_file), "exists and is not a folder"),
    Case("out-foreign", A, "--out: a non-empty folder that is not a run", lambda c: _align(c, out=c.b.not_a_run),
         "is not empty and holds no warprl run"),
    Case("overwrite-bad-policy", A, "--overwrite a finished run, --policy missing",
         lambda c: _align(c, "--overwrite", "--policy", c.b.root / "nope"), "model path not found"),
    Case("overwrite-bad-prompts", A, "--overwrite a finished run, --prompts empty",
         lambda c: _align(c, "--overwrite", "--prompts", c.b.empty_txt), "no prompts"),
    # --- generate
    Case("gen-empty-prompt", "generate", "--prompt ''", lambda c: ["generate", "--policy", c.policy, "--prompt", ""],
         "--prompt must not be empty"),
    Case("gen-no-prompt", "generate", "no --prompt", lambda c: ["generate", "--policy", c.policy],
         "needs at least one --prompt"),
    Case("gen-tokens-0", "generate", "--max-new-tokens 0",
         lambda c: ["generate", "--policy", c.policy, "--prompt", "the", "--max-new-tokens", "0"],
         "--max-new-tokens must be > 0"),
    Case("gen-temperature-0", "generate", "--temperature 0",
         lambda c: ["generate", "--policy", c.policy, "--prompt", "the", "--temperature", "0"],
         "--temperature must be > 0"),
    Case("gen-gguf", "generate", "--policy: truncated .gguf",
         lambda c: ["generate", "--policy", c.b.truncated_gguf, "--prompt", "the"], "cannot read GGUF file"),
    # --- data inspect
    Case("data-missing", "data inspect", "file missing", lambda c: ["data", "inspect", c.b.root / "nope.parquet"],
         "data file not found"),
    Case("data-empty", "data inspect", "empty .jsonl file", lambda c: ["data", "inspect", c.b.empty_jsonl],
         "empty file", via="subprocess"),
    Case("data-columns", "data inspect", "CSV without a text column", lambda c: ["data", "inspect", c.b.wrong_columns],
         "missing column 'text'"),
    Case("data-corrupt", "data inspect", "corrupt .parquet", lambda c: ["data", "inspect", c.b.corrupt_parquet],
         "cannot read"),
    Case("data-no-tables", "data inspect", "folder without data files", lambda c: ["data", "inspect", c.b.no_tables],
         "holds no"),
    Case("data-prompt-tokens", "data inspect", "--prompt-tokens 0",
         lambda c: ["data", "inspect", c.b.no_label, "--prompt-tokens", "0"], "--prompt-tokens must be >= 1"),
    # --- reward train / eval / score
    Case("rt-no-data", "reward train", "no --data", lambda c: ["reward", "train", "--out", c.fresh], "needs --data"),
    Case("rt-one-class", "reward train", "only positive reviews",
         lambda c: ["reward", "train", "--data", c.b.one_class, "--backbone", c.rm.encoder, "--out", c.fresh],
         "only positive"),
    Case("rt-bad-labels", "reward train", "labels other than 0/1",
         lambda c: ["reward", "train", "--data", c.b.bad_labels, "--backbone", c.rm.encoder, "--out", c.fresh],
         "must hold 0 (negative) and 1 (positive)"),
    Case("rt-no-label", "reward train", "data without a label column",
         lambda c: ["reward", "train", "--data", c.b.no_label, "--backbone", c.rm.encoder, "--out", c.fresh],
         "missing column 'label'"),
    Case("rt-out-finished", "reward train", "--out: a finished align run, without --overwrite",
         lambda c: ["reward", "train", "--data", c.b.one_class, "--backbone", c.rm.encoder, "--out", c.finished],
         "holds no warprl reward model; choose an empty or new folder, or pass --overwrite"),
    Case("rt-val-fraction", "reward train", "--val-fraction 1.5",
         lambda c: ["reward", "train", "--data", c.b.one_class, "--val-fraction", "1.5", "--out", c.fresh],
         "--val-fraction must be in (0, 1)"),
    Case("re-limit-0", "reward eval", "--limit 0", lambda c: ["reward", "eval", "--data", c.b.one_class, "--limit", "0"],
         "--limit and --batch-size must be >= 1"),
    Case("re-no-label", "reward eval", "data without a label column",
         lambda c: ["reward", "eval", "--model", "vader", "--data", c.b.no_label], "missing column 'label'"),
    Case("rs-nan", "reward score", "a reward model that returns NaN",
         lambda c: ["reward", "score", "--model", c.rm.nan, "--device", "cpu", "good film"],
         "returned a non-finite value"),
    Case("rs-not-model", "reward score", "--model: folder without config.json",
         lambda c: ["reward", "score", "--model", c.b.not_a_model, "good film"], "not a model folder"),
    Case("rs-batch-0", "reward score", "--batch-size 0",
         lambda c: ["reward", "score", "--model", "vader", "--batch-size", "0", "good film"], "--batch-size must be >= 1"),
    # --- evaluate, pareto, quickstart
    Case("eval-n-prompts", "evaluate", "--n-prompts 0", lambda c: ["evaluate", "--n-prompts", "0"],
         "--n-prompts must be > 0"),
    Case("eval-not-model", "evaluate", "--policy: folder without config.json",
         lambda c: ["evaluate", "--policy", c.b.not_a_model, "--sft", c.policy, "--reward", "vader",
                    "--prompts", c.prompts, "--device", "cpu"], "not a model folder"),
    Case("pareto-no-final", "pareto", "no --final", lambda c: ["pareto", "--out", c.fresh], "pareto needs --final"),
    Case("pareto-eta-steps", "pareto", "--eta-steps 0",
         lambda c: ["pareto", "--final", c.finished, "--eta-steps", "0", "--out", c.fresh], "--eta-steps must be > 0"),
    Case("quickstart-k1", "quickstart", "--k 1", lambda c: ["quickstart", "--k", "1", "--out", c.fresh],
         "--k must be >= 2"),
    Case("quickstart-mu", "quickstart", "--mu 2", lambda c: ["quickstart", "--mu", "2", "--out", c.fresh],
         "--mu must be in (0, 1]"),
    # --- no command at all
    Case("no-such-command", "warprl", "unknown command", lambda c: ["train-everything"], "invalid choice"),
]


@pytest.fixture(scope="module")
def ctx(rel_root, tiny_policy_dir, rel_prompts, finished_run, half_run, half_nan_run, reward_models, broken):
    cwd = rel_root / "cwd"  # commands run here, so that a default --out (runs/…) would show up
    cwd.mkdir()
    return types.SimpleNamespace(
        root=rel_root, cwd=cwd, policy=tiny_policy_dir, prompts=rel_prompts, align=align_flags(tiny_policy_dir, rel_prompts),
        finished=finished_run, half=half_run, half_nan=half_nan_run, rm=reward_models, b=broken,
        guarded=[finished_run, half_run, half_nan_run.out, half_nan_run.reward, broken.not_a_run, broken.a_file,
                 cwd])


def test_there_are_at_least_30_distinct_cases():
    assert len({c.id for c in CASES}) == len(CASES) >= 30
    assert len({(c.command, c.input) for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, ctx, capsys, monkeypatch, reliability_table):
    from warprl.cli import main

    fresh = ctx.root / "fresh" / case.id
    c = types.SimpleNamespace(**vars(ctx), fresh=fresh)
    argv = [str(a) for a in case.argv(c)]
    before = {str(g): tree_digest(g) for g in ctx.guarded}
    if case.via == "subprocess":
        proc = run_cli(argv, cwd=ctx.cwd)
        code, err = proc.returncode, proc.stderr
    else:
        monkeypatch.chdir(ctx.cwd)
        try:
            code = main(argv)
        except BaseException as e:  # the console script would print a traceback and exit 1
            code, err = 1, f"Traceback (most recent call last): {type(e).__name__}: {e}"
        else:
            err = capsys.readouterr().err
    after = {str(g): tree_digest(g) for g in ctx.guarded}
    changed = sorted(f"{g}/{name}" for g in before for name in set(before[g]) | set(after[g])
                     if before[g].get(name) != after[g].get(name))
    lines = [line for line in stderr_lines(err) if not line.startswith(NOTES)]
    unchanged = not changed and (case.starts_run or not fresh.exists())
    reliability_table.add("bad input", command=case.command, input=case.input, expect=case.expect, via=case.via,
                          exit=code, message=reliability_table.scrub(lines[0] if lines else ""),
                          unchanged="yes" if unchanged else "no")

    assert code == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ") and case.expect in lines[0], lines[0]
    assert not changed, f"files changed: {changed[:5]}"
    if case.starts_run:  # the run began (its inputs were fine) and stopped at the bad reward: no result
        assert not (fresh / "final").exists() and not (fresh / "summary.json").exists()
    else:
        assert not fresh.exists(), f"a refused command created {fresh}: {sorted(p.name for p in fresh.iterdir())}"
