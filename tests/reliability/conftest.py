"""Reliability suites: shared folders (a finished run, interrupted runs, broken inputs) and the generated table.

Every fault, bad input and safety check adds a row through the ``reliability_table`` fixture; when the
whole of tests/reliability ran and passed and ``--reliability-report PATH`` was given (``make
reliability-report``), the rows become that file at the end of the session (rows sorted, so a rerun changes
only the date line). A plain ``make test`` writes nothing.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import signal
import statistics
import types
from pathlib import Path

import pytest

from tests.reliability._helpers import PROMPTS, align_flags, make_tiny_llama, run_cli

HERE = Path(__file__).resolve().parent
MODULES = {"test_faults.py", "test_bad_inputs.py", "test_safety.py", "test_damage.py", "test_concurrency.py",
           "test_lora_faults.py"}
REGENERATE = "make reliability-report"

# ------------------------------------------------------------------------------------------- the table

_ROWS: list[dict] = []
_STATE: dict = {"modules": set(), "deselected": False, "failed": False, "basetemp": None}


class Table:
    """Rows for docs/reliability.md; ``kind`` is "fault", "bad input" or "safety"."""

    def add(self, kind: str, **fields) -> None:
        _ROWS.append({"kind": kind, **fields})

    def scrub(self, text: str) -> str:
        """The session's temporary folder as ``<tmp>``: messages then read the same on every run."""
        base = _STATE["basetemp"]
        return text.replace(base, "<tmp>") if base else text


@pytest.fixture(scope="session")
def reliability_table(tmp_path_factory) -> Table:
    _STATE["basetemp"] = str(tmp_path_factory.getbasetemp())
    return Table()


def _ours(path) -> bool:
    return Path(str(path)).resolve().parent == HERE


def pytest_deselected(items):
    if any(_ours(item.path) for item in items):
        _STATE["deselected"] = True


def pytest_collection_finish(session):
    _STATE["modules"] = {Path(str(item.path)).name for item in session.items if _ours(item.path)}


def pytest_runtest_logreport(report):
    if report.failed and "reliability/" in report.nodeid:
        _STATE["failed"] = True


def _cell(value) -> str:
    text = str(value).replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= 160 else text[:157] + "…"


def _table(rows: list[dict], columns: list[tuple[str, str]]) -> list[str]:
    lines = ["| " + " | ".join(title for _, title in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r.get(key, "")) for key, _ in columns) + " |" for r in rows]
    return lines


def render(rows: list[dict], today: str) -> str:
    faults = sorted((r for r in rows if r["kind"] == "fault"),
                    key=lambda r: (r["signal"] != "SIGKILL", r["suite"], r["order"]))
    bad = sorted((r for r in rows if r["kind"] == "bad input"), key=lambda r: (r["command"], r["input"]))
    safety = sorted((r for r in rows if r["kind"] == "safety"), key=lambda r: r["check"])
    concurrent = sorted((r for r in rows if r["kind"] == "concurrency"), key=lambda r: r["second"])
    writes = sorted((r for r in rows if r["kind"] == "write error"), key=lambda r: r["order"])
    damaged = sorted((r for r in rows if r["kind"] == "damaged"), key=lambda r: r["case"])
    ray = sorted((r for r in rows if r["kind"] in ("ray", "processes")), key=lambda r: (r["kind"], r["fault"]))
    kills = sum(r["signal"] == "SIGKILL" for r in faults)
    lost = ([r for r in bad if r["unchanged"] != "yes"] + [r for r in faults if r["identical"] != "yes"]
            + [r for r in writes + damaged + ray if not r["identical"].startswith(("yes", "n/a"))])
    out = [
        "# Reliability: faults survived, bad inputs answered",
        "",
        f"Written by the reliability suite itself; regenerate with `{REGENERATE}`.",
        f"Last generated: {today}.",
        "",
        "| what | count |",
        "|---|---:|",
        f"| kills survived (SIGKILL, then `--resume`: same bytes) | {kills} |",
        f"| SIGINT/SIGTERM stops survived | {len(faults) - kills} |",
        f"| concurrent starts refused | {len(concurrent)} |",
        f"| injected write errors survived (ENOSPC/EIO, then `--resume`: same bytes) | {len(writes)} |",
        f"| damaged-file cases (recovered or refused in one line) | {len(damaged)} |",
        f"| parallel-executor faults (Ray, local processes) | {len(ray)} |",
        f"| bad inputs answered (exit 2, one line) | {len(bad)} |",
        f"| safety checks | {len(safety)} |",
        "",
        "Nothing lost." if not lost else f"**{len(lost)} rows lost something.**",
        "",
        "## Faults",
        "",
        "A WARP run (tiny random Llama, `--reward vader`, I=2 iterations × M=2 runs × T=3 steps, batch 2, k 2, "
        "`--checkpoint-every 1`) in a process of its own, killed at the moment in *where* — found by watching "
        "the run's own output folder, with seeded random choices — and resumed with `--resume` after every kill. "
        "The killed processes are children of a fork server that imported torch and transformers once and run "
        "the command's `main` as the `warprl` script does; the uninterrupted reference they are compared with and "
        "the SIGTERM/SIGINT runs are the installed `warprl` command itself. The suite *drawn write events* kills instead at the Nth write event of each "
        "(resumed) process, N drawn (seeded) — through `warprl.io`'s fault hook (`WARPRL_FAULT=N:SIGKILL`), so "
        "that moments no watch can catch (half a metrics line, between a folder's two renames) are hit too. "
        "*Identical* compares the exact bytes and every tensor of `final/`, `final_slerp/` and each iteration's "
        "SLERP and LITI weights and each run's per-step rewards and KLs with an uninterrupted run; *clean* means "
        "no temporary file or checkpoint folder is left after the last resume.",
        "",
        *_table(faults, [("suite", "suite"), ("order", "#"), ("signal", "signal"), ("where", "where"),
                         ("evidence", "killed while"), ("exit", "exit"), ("outcome", "outcome"),
                         ("identical", "identical"), ("clean", "clean")]),
        "",
        "## Concurrent starts",
        "",
        "The fault suite's WARP run holds its folder (frozen with SIGSTOP once its `config.yaml` exists); each "
        "other command on the same `--out` must exit 2 at once with one line naming the folder and the first "
        "command's PID, changing no file. The first then finishes with the bytes of a run alone.",
        "",
        *_table(concurrent, [("second", "second command"), ("via", "via"), ("exit", "exit"),
                             ("seconds", "seconds"), ("message", "message (stderr)")]),
        "",
        "## Write errors",
        "",
        "The same kind of WARP run in-process (I=2 × M=2 × T=3, tiny Llama); the io fault hook makes the Nth "
        "write event fail (N drawn, seeded, over all write events of an uninterrupted run). Each must end with "
        "exit 2 and one line, leave every earlier result matching its recorded sha256, and `--resume` must end "
        "with the bytes of the uninterrupted run.",
        "",
        *_table(writes, [("order", "#"), ("event", "failing write"), ("error", "error"), ("message", "message"),
                         ("outcome", "outcome"), ("identical", "identical bytes")]),
        "",
        "## Damaged files on resume",
        "",
        "A copy of a run stopped in iteration 2 (iteration 1 done, run 1 of iteration 2 finished, run 2 with two "
        "checkpoints) is damaged in one place and resumed.",
        "",
        *_table(damaged, [("case", "damage"), ("exit", "exit"), ("outcome", "outcome"),
                          ("identical", "identical bytes")]),
        "",
        "## Parallel executors",
        "",
        "WARP's M runs as Ray tasks (`--executor ray`) or in local worker processes (`--executor processes`); "
        "*identical* compares with the sequential executor's reference run.",
        "",
        *_table(ray, [("kind", "executor"), ("fault", "fault"), ("outcome", "outcome"), ("identical", "identical")]),
        "",
        "## Bad inputs",
        "",
        "Each through `warprl.cli.main` (or the installed `warprl` command where the *via* column says "
        "`subprocess`): exit code 2, exactly one line on stderr naming the problem (a GGUF file may first get its "
        "one-line \"converting …\" note), no traceback, and the "
        "sha256 of every file in the finished and the interrupted output folders (and in the command's own "
        "`--out`, when it existed) the same before and after.",
        "",
        *_table(bad, [("command", "command"), ("input", "input"), ("expect", "message names"),
                      ("via", "via"), ("exit", "exit"), ("message", "message (stderr)"),
                      ("unchanged", "files unchanged")]),
        "",
        "## Safety",
        "",
        *_table(safety, [("check", "check"), ("outcome", "outcome")]),
        "",
    ]
    return "\n".join(out)


def pytest_sessionfinish(session, exitstatus):
    target = session.config.getoption("--reliability-report")
    complete = _STATE["modules"] == MODULES and not _STATE["deselected"] and not _STATE["failed"]
    if not target or not complete or not _ROWS:
        return  # only when asked; a partial or failing run must not overwrite the table of a full one
    table = Path(target)
    text = render(_ROWS, datetime.date.today().isoformat())
    table.parent.mkdir(parents=True, exist_ok=True)
    tmp = table.with_name(f".{table.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, table)


# ------------------------------------------------------------------------------------- environment


@pytest.fixture(scope="module", autouse=True)
def like_the_console_script():
    """What ``warprl.cli.entry`` sets up, for the in-process ``main`` calls: no HF progress bars, one torch thread
    (restored after each module, so that the rest of the test session is unaffected)."""
    import torch
    from transformers.utils import logging as hf_logging

    bars, verbosity, threads = hf_logging.is_progress_bar_enabled(), hf_logging.get_verbosity(), torch.get_num_threads()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    torch.set_num_threads(1)  # two threads on two shared cores spin against the subprocesses
    yield
    torch.set_num_threads(threads)
    hf_logging.set_verbosity(verbosity)
    if bars:
        hf_logging.enable_progress_bar()


# ------------------------------------------------------------------- the fault suites' WARP run (CLI)

FAULT_ITERATIONS, FAULT_RUNS, FAULT_STEPS = 2, 2, 3


@pytest.fixture(scope="session")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("faults")
    # Wider than the shared fixture (3 MB of weights): writes take milliseconds, steps stay fast.
    policy = make_tiny_llama(root / "policy", hidden=64, intermediate=2048)
    prompts = root / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    argv = ["align", "--method", "warp", "--policy", str(policy), "--prompts", str(prompts), "--reward", "vader",
            "--iterations", str(FAULT_ITERATIONS), "--runs", str(FAULT_RUNS), "--steps", str(FAULT_STEPS), "--batch-size", "2",
            "--k", "2", "--max-new-tokens", "6", "--no-bf16", "--lr", "0.03", "--beta", "0.1", "--mu", "0.1",
            "--checkpoint-every", "1", "--no-progress", "--device", "cpu", "--seed", "0"]
    return {"root": root, "argv": argv}


@pytest.fixture(scope="session")
def reference(setup) -> dict:
    out = setup["root"] / "reference"
    proc = run_cli([*setup["argv"], "--out", str(out)], cwd=setup["root"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    steps = [json.loads(line)["charts/step_time_s"] for line in (out / "iter_1" / "run_1" / "metrics.jsonl").open()]
    return {"out": out, "step_time": statistics.median(steps)}



# ---------------------------------------------------------------------------- shared output folders


@pytest.fixture(scope="session")
def rel_root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("reliability")


@pytest.fixture(scope="session")
def rel_prompts(rel_root) -> Path:
    path = rel_root / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n")
    return path


@pytest.fixture(scope="session")
def finished_run(rel_root, tiny_policy_dir, rel_prompts) -> Path:
    from warprl.cli import main

    out = rel_root / "finished"
    assert main([*align_flags(tiny_policy_dir, rel_prompts), "--out", str(out)]) == 0
    assert (out / "final" / "model.safetensors").is_file()
    return out


def interrupted_run(out: Path, argv: list[str]) -> Path:
    """Run ``argv`` in-process and SIGTERM it during its first step: it saves a checkpoint and exits 2."""
    import warprl.rl.loop as T
    from warprl.cli import main

    real_step = T.rl_step

    def step_then_sigterm(*a, **k):
        metrics = real_step(*a, **k)
        os.kill(os.getpid(), signal.SIGTERM)
        return metrics

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(T, "rl_step", step_then_sigterm)
        assert main([*argv, "--out", str(out)]) == 2
    assert (out / "iter_1" / "run_1" / "checkpoints" / "latest.json").is_file()
    assert not (out / "final").exists()
    return out


@pytest.fixture(scope="session")
def half_run(rel_root, tiny_policy_dir, rel_prompts) -> Path:
    return interrupted_run(rel_root / "half", align_flags(tiny_policy_dir, rel_prompts))


@pytest.fixture(scope="session")
def reward_models(rel_root) -> types.SimpleNamespace:
    """Tiny BERT reward models: ``ok``, ``nan`` (its head returns NaN), ``encoder`` (no head: not an RM)."""
    import torch
    from transformers import AutoTokenizer, BertForSequenceClassification

    from tests.reward._toy import make_tiny_bert

    encoder = make_tiny_bert(rel_root / "rm_encoder")
    tok = AutoTokenizer.from_pretrained(encoder)
    torch.manual_seed(1)
    model = BertForSequenceClassification.from_pretrained(encoder, num_labels=1)
    ok, nan = rel_root / "rm_ok", rel_root / "rm_nan"
    for folder in (ok, nan):
        if folder == nan:
            with torch.no_grad():
                model.classifier.weight.fill_(float("nan"))
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
    return types.SimpleNamespace(ok=ok, nan=nan, encoder=encoder)


@pytest.fixture(scope="session")
def half_nan_run(rel_root, tiny_policy_dir, rel_prompts, reward_models) -> types.SimpleNamespace:
    """An interrupted run whose reward model (same path) returns NaN from now on."""
    rm = rel_root / "rm_swapped"
    shutil.copytree(reward_models.ok, rm)
    out = interrupted_run(rel_root / "half_nan", align_flags(tiny_policy_dir, rel_prompts, reward=str(rm)))
    shutil.copy(reward_models.nan / "model.safetensors", rm / "model.safetensors")
    return types.SimpleNamespace(out=out, reward=rm)


@pytest.fixture(scope="session")
def broken(rel_root, tiny_policy_dir) -> types.SimpleNamespace:
    """Broken models and files; each a path (see the names)."""
    import pandas as pd
    import torch
    from safetensors.torch import load_file

    root = rel_root / "broken"
    root.mkdir()
    p = types.SimpleNamespace(root=root)

    p.not_a_model = root / "not_a_model"
    p.not_a_model.mkdir()
    (p.not_a_model / "notes.txt").write_text("no config.json here\n")

    p.truncated_st = root / "truncated_safetensors"
    shutil.copytree(tiny_policy_dir, p.truncated_st)
    weights = p.truncated_st / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])

    p.truncated_gguf = root / "truncated.gguf"
    p.truncated_gguf.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\x00" * 20)

    # A pickled checkpoint (what torch.save writes): the weights are fine, the format is not accepted.
    p.bin_only = root / "bin_only"
    p.bin_only.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tiny_policy_dir / name, p.bin_only / name)
    torch.save(load_file(str(tiny_policy_dir / "model.safetensors")), p.bin_only / "pytorch_model.bin")

    p.yaml_list = root / "list.yaml"
    p.yaml_list.write_text("- steps: 3\n- eta: 0.5\n")
    p.yaml_unknown = root / "unknown.yaml"
    p.yaml_unknown.write_text("steps: 3\nlearning_rate: 0.1\n")
    p.yaml_syntax = root / "syntax.yaml"
    p.yaml_syntax.write_text("steps: [3\neta: 0.5\n")
    p.yaml_type = root / "type.yaml"
    p.yaml_type.write_text("steps: three\n")

    p.empty_txt = root / "empty.txt"
    p.empty_txt.write_text("\n  \n")
    p.empty_jsonl = root / "empty.jsonl"
    p.empty_jsonl.write_bytes(b"")
    p.wrong_columns = root / "wrong_columns.csv"
    pd.DataFrame({"review": ["good film", "bad film"], "sentiment": [1, 0]}).to_csv(p.wrong_columns, index=False)
    p.no_label = root / "no_label.parquet"
    pd.DataFrame({"text": ["good film indeed", "bad film indeed"]}).to_parquet(p.no_label)
    p.one_class = root / "one_class.parquet"
    pd.DataFrame({"text": ["good film", "great film", "fun film"], "label": [1, 1, 1]}).to_parquet(p.one_class)
    p.bad_labels = root / "bad_labels.jsonl"
    pd.DataFrame({"text": ["good film", "bad film"], "label": [5, 0]}).to_json(p.bad_labels, orient="records",
                                                                                lines=True)
    p.corrupt_parquet = root / "corrupt.parquet"
    p.corrupt_parquet.write_bytes(b"PAR1 this is not a parquet file")
    p.no_tables = root / "no_tables"
    p.no_tables.mkdir()
    (p.no_tables / "reviews.xlsx").write_bytes(b"PK\x03\x04")

    p.a_file = root / "a_file"
    p.a_file.write_text("a file, not a folder\n")
    p.not_a_run = root / "not_a_run"
    p.not_a_run.mkdir()
    (p.not_a_run / "thesis.tex").write_text("\\documentclass{article}\n")
    return p
