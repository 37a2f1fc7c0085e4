"""benchmarks/bench_warp_ablation.py: its plan (which WARP configs share iteration 1's runs), that a folder started
from another config's runs (hard links) ends bit-identical to one trained from scratch, and what its --out folder
keeps so that a stopped benchmark goes on where it stopped (settings, cached sweeps, pruning)."""

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import _ablation_files as files  # noqa: E402
from _ablation_plan import I1, Plan, lent_files, needed_files, plan_for, shared_steps  # noqa: E402

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


def test_a_borrowed_start_ends_as_a_run_from_scratch(tiny_policy_dir, tmp_path):
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
    files.borrow_runs(lender, borrower, cfg, 2)
    assert (borrower / "iter_1/run_1/weights.safetensors").stat().st_ino == \
        (lender / "iter_1/run_1/weights.safetensors").stat().st_ino  # a link, not a copy
    files.borrow_runs(lender, borrower, cfg, 2)  # again (a killed benchmark's rerun): nothing changes
    cfg.resume = True
    run_align(cfg, reward_fn=reward)
    for name in ("iter_1/run_3/weights.safetensors", "iter_2/init.safetensors", "final/model.safetensors"):
        a, b = load_file(str(borrower / name)), load_file(str(scratch / name))
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_an_out_folder_keeps_its_settings_and_refuses_others(tmp_path):
    """What it started with (the commit) is recorded and named, not compared."""
    from warprl.errors import UserError

    settings = {"policy": "p", "sizes": {"etas": (0.0, 1.0), "steps": 15}, "bf16": False}
    files.check_settings(tmp_path, settings, started={"commit": "abc"})
    files.check_settings(tmp_path, settings, started={"commit": "def"})  # the same (tuples as lists): accepted
    before = (tmp_path / files.SETTINGS_FILE).read_text()
    with pytest.raises(UserError, match=r"bf16: False there, True now; sizes.steps: 15 there, 100 now; it was "
                                        r"started with {'commit': 'abc'}\)"):
        files.check_settings(tmp_path, {**settings, "bf16": True, "sizes": {"etas": (0.0, 1.0), "steps": 100}})
    assert (tmp_path / files.SETTINGS_FILE).read_text() == before


def test_the_benchmark_refuses_to_go_on_with_other_settings(bench, tmp_path, monkeypatch, capsys):
    (tmp_path / files.SETTINGS_FILE).write_text('{"bf16": true}')
    monkeypatch.setattr(sys, "argv", ["bench_warp_ablation.py", "--out", str(tmp_path), "--fp32"])
    assert bench.main() == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: {tmp_path} was started with other settings (bf16: True there, False now; code: "
                          f"None there, {files.code_digest(Path(bench.__file__).parents[1])} now;")


def test_one_benchmark_at_a_time_writes_to_a_folder(bench, tmp_path, monkeypatch, capsys):
    import subprocess

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from warprl.commands import outdir; "
                               f"outdir.claim({str(tmp_path)!r}); print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        monkeypatch.setattr(sys, "argv", ["bench_warp_ablation.py", "--out", str(tmp_path)])
        assert bench.main() == 2
        assert capsys.readouterr().err.strip().splitlines()[-1] == \
            f"error: --out {tmp_path} is in use by another warprl command (PID {holder.pid}); wait for it to end or " \
            "choose another --out"
        assert not (tmp_path / files.SETTINGS_FILE).exists()  # refused before it wrote anything
    finally:
        holder.kill()
        holder.wait()


class FakeEvaluator:
    """Records which weights it was asked to sweep; each point's reward is the number of sweeps so far."""

    def __init__(self):
        self.swept: list[str] = []

    def sweep(self, folder: Path, etas, name):
        assert (folder / "model.safetensors").is_file(), folder
        self.swept.append(name)
        return [{"eta": e, "reward_mean": float(len(self.swept))} for e in etas]


def _run_folder(seed_dir: Path, name: str, weights: list[str]) -> Path:
    run = seed_dir / name
    for w in weights:
        (run / w).parent.mkdir(parents=True, exist_ok=True)
        (run / w).write_bytes(b"w" * 10)
    (run / "summary.json").write_text("{}")
    return run


def test_a_swept_candidate_is_read_back_and_the_weights_only_it_read_are_pruned(tmp_path):
    from warprl.errors import UserError

    plan = Plan(runs={"w": {"method": "warp"}, "r": {"method": "rloo"}},
                candidates={"W final": ("w", "d"), "W I=2": ("w:iter2", "c"), "W SLERP": ("w:slerp", "d"),
                            "R": ("r", "d"), "W I=2 again": ("w:iter2", "x")})
    w = _run_folder(tmp_path, "w", ["final/model.safetensors", "final_slerp/model.safetensors",
                                    "iter_2/init.safetensors", "iter_1/run_1/weights.safetensors"])
    _run_folder(tmp_path, "r", ["final/model.safetensors"])
    key, ev = {"eval": {"n_prompts": 4}}, FakeEvaluator()
    records = bench_evaluate(plan, tmp_path, ev, key)
    assert ev.swept == ["W final", "W I=2", "W SLERP", "R"]  # a policy named twice is swept once
    assert set(records) == {"w", "w:iter2", "w:slerp", "r"}
    assert records["w:iter2"]["points"][0] == {"eta": 0.0, "reward_mean": -1.0}  # the SFT point, then the sweep
    assert [p["reward_mean"] for p in records["w:iter2"]["points"][1:]] == [2.0, 2.0]
    # What only the swept candidates read is gone; each run's final/ stays.
    assert not (w / "iter_2/init.safetensors").exists() and not (w / "iter_1/run_1/weights.safetensors").exists()
    assert not (w / "final_slerp").exists() and not (tmp_path / "candidates" / "w_iter2").exists()
    assert (w / "final/model.safetensors").is_file() and (tmp_path / "r/final/model.safetensors").is_file()
    # A rerun reads every sweep back and sweeps nothing.
    again = FakeEvaluator()
    assert bench_evaluate(plan, tmp_path, again, key) == records and again.swept == []
    with pytest.raises(UserError, match=r"evaluated/w.json was evaluated with other settings \(eval.n_prompts: 4 "
                                        r"there, 8 now\)"):
        bench_evaluate(plan, tmp_path, again, {"eval": {"n_prompts": 8}})


def bench_evaluate(plan, seed_dir, ev, key):
    """Both runs of ``plan`` evaluated as the benchmark does after training each (their folders exist)."""
    import bench_warp_ablation

    records = {}
    for run in plan.runs:
        bench_warp_ablation.evaluate_run(plan, seed_dir, run, ev, key, {"reward_mean": -1.0}, [0.5, 1.0], records)
        files.prune(plan, seed_dir, set(records))
    return records


def test_the_sft_point_is_evaluated_once_per_folder(tmp_path):
    import bench_warp_ablation

    class Ev:
        calls = 0

        def at_eta(self, folder, eta, desc):
            assert eta == 0.0
            Ev.calls += 1
            return {"reward_mean": 0.25}

    first = bench_warp_ablation.cached_sft_point(Ev(), tmp_path, {"k": 1})
    assert bench_warp_ablation.cached_sft_point(Ev(), tmp_path, {"k": 1}) == first and Ev.calls == 1
    assert first["point"] == {"reward_mean": 0.25}


def test_an_interim_report_shows_only_the_parts_every_seed_has_evaluated(bench, tmp_path, monkeypatch, capsys):
    plan = Plan(candidates={"x": ("r1", "a"), "y": ("r2", "a"), "z": ("r3", "d")})
    done = {"r1": {}, "r2": {}, "r3": {}}
    assert files.complete_parts(plan, {0: done, 1: {"r1": {}, "r2": {}}}) == {"a"}  # seed 1 lacks part d's r3
    assert files.complete_parts(plan, {0: done, 1: {"r1": {}}}) == set()
    monkeypatch.setattr(sys, "argv", ["bench_warp_ablation.py", "--out", str(tmp_path), "--so-far", "--seeds", "0"])
    assert bench.main() == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        f"error: {tmp_path}: nothing is evaluated yet for seeds [0]"


def test_the_code_digest_changes_with_any_file_of_the_package_or_the_plan(tmp_path):
    (tmp_path / "src/warprl/assets").mkdir(parents=True)
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "src/warprl/a.py").write_text("x = 1\n")
    (tmp_path / "src/warprl/assets/w.bin").write_bytes(b"\0\1")
    (tmp_path / "benchmarks/_ablation_plan.py").write_text("T = 15\n")
    first = files.code_digest(tmp_path)
    (tmp_path / "src/warprl/__pycache__").mkdir()
    (tmp_path / "src/warprl/__pycache__/a.pyc").write_bytes(b"compiled")
    assert files.code_digest(tmp_path) == first  # byte code is not code
    for path, text in (("src/warprl/a.py", "x = 1  # a comment\n"), ("src/warprl/assets/w.bin", "\0\2"),
                       ("benchmarks/_ablation_plan.py", "T = 16\n")):
        old = (tmp_path / path).read_text()
        (tmp_path / path).write_text(text)
        assert files.code_digest(tmp_path) != first, path
        (tmp_path / path).write_text(old)
    assert files.code_digest(tmp_path) == first


def test_candidates_of_unfinished_parts_are_listed_with_their_own_points_only():
    import _ablation_report

    plan = Plan(candidates={"R": ("r", "a"), "E": ("e", "a"), "W": ("w", "d")})
    point = {"reward_mean": 1.5, "reward_ci": [1.0, 2.0], "gold_mean": 0.5, "gold_ci": [0.25, 0.75], "kl_mean": 3.0,
             "kl_ci": [2.5, 3.5]}
    records = {"r": {"points": [{"reward_mean": 0.0, "kl_mean": 0.0}, {"reward_mean": 1.0, "kl_mean": 1.5}, point]},
               "w": {"points": [point, point]}}
    lines = _ablation_report.pending_lines(plan, {0: records}, done={"d"})
    assert lines[-1] == "| 0 | R | a | 1.50 [1.00, 2.00] | 0.50 [0.25, 0.75] | 3.00 [2.50, 3.50] | 1.00 (KL 1.50) |"
    assert len(lines) == 5  # part d is complete (reported in full) and E is not evaluated
    assert _ablation_report.pending_lines(plan, {0: records}, done={"a", "d"}) == []


def test_an_interim_report_is_published_apart_and_the_final_one_replaces_it(bench, tmp_path):
    from _results import section_titles

    results, docs = tmp_path / "RESULTS.md", tmp_path / "docs" / "results"
    results.write_text("# Benchmark results\n\n## Other\n\nkept\n")
    so_far, final = tmp_path / "so_far", tmp_path / "out"
    for folder, colour in ((so_far, b"interim"), (final, b"final")):
        folder.mkdir()
        (folder / "ablation_d.png").write_bytes(colour)
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\nIn short: prose\n\n<!-- results:start -->\n<!-- results:end -->\n")
    report = "seed 0 so far\n\n### (a) anchor\n\nanchor table\n\n### (d) fronts\n\nd table ![d](ablation_d.png)"
    bench.publish(so_far, report, final=False, results=results, docs=docs, readme=readme)
    text = results.read_text()
    assert "## WARP ablation: interim\n\nseed 0 so far\n\n### (a) anchor" in text
    assert "d table ![d](docs/results/ablation_so_far_d.png)" in text  # RESULTS.md and docs/ side by side here
    block = readme.read_text().split("<!-- results:warp_ablation:start -->\n")[1].split("<!-- results:warp")[0]
    assert block.startswith("Written by `benchmarks/bench_warp_ablation.py`")
    assert "(with (a) anchor) is in `benchmarks/RESULTS.md`, section \"WARP ablation: interim\"." in block
    assert "seed 0 so far" in block and "anchor table" not in block
    assert block.endswith("### (d) fronts\n\nd table ![d](docs/results/ablation_so_far_d.png)\n")
    assert (docs / "ablation_so_far_d.png").read_bytes() == b"interim" and not (docs / "ablation_d.png").exists()
    bench.publish(final, "3 seeds ![d](ablation_d.png)", final=True, results=results, docs=docs, readme=readme)
    text = results.read_text()
    assert section_titles(results) == ["Other", "WARP ablation: interim", "WARP ablation"]
    assert "## WARP ablation\n\n3 seeds ![d](docs/results/ablation_d.png)" in text
    assert "3 seeds" in readme.read_text() and "seed 0 so far" not in readme.read_text()
    assert "Part (d) is not complete yet" in readme.read_text()
    assert "seed 0 so far" not in text  # no interim figure outlives the final report, not even as a previous run
    assert "Superseded by the finished ablation" in text and "kept" in text
    assert (docs / "ablation_d.png").read_bytes() == b"final"


def test_a_folder_with_every_part_of_every_seed_reports_final_from_so_far(bench, tmp_path):
    # --so-far reads --out alone, so the folder's final report can be published by other code than computed it.
    from types import SimpleNamespace

    plan = Plan(candidates={"A": ("rloo_sft_b0.1", "a"), "D": ("warp_paper", "d")})
    sizes = {**bench.SMOKE, "etas": (0.0, 1.0)}
    args = SimpleNamespace(seeds=[0], smoke=False, so_far=True, data="reviews.parquet", fp32=True)
    (tmp_path / "gold_rm").mkdir()
    (tmp_path / "gold_rm" / "metrics.json").write_text(json.dumps({"val": {"accuracy": 0.95}}))
    _, key = bench.candidate_eval(tmp_path, sizes, args)
    sample = {"prompt": "p", "kl": 0.0, "reward": 0.0, "gold": 0.0}
    point = {"eta": 0.0, "kl_mean": 0.0, "reward_mean": 0.0, "gold_mean": 0.0, "n_prompts": 1, "samples": [sample]}
    files.write_cached(tmp_path / "sft_point.json", key, {"point": point, "seconds": 1.0})
    record = {"points": [point, {**point, "eta": 1.0, "kl_mean": 1.0}], "angle": None, "seconds": 2.0}
    files.write_cached(files.points_path(tmp_path / "seed0", "rloo_sft_b0.1"), key, record)
    text, final = bench.interim_report(plan, tmp_path, sizes, args)
    assert not final and text.startswith("**INTERIM") and "| D |" not in text  # part d not evaluated yet
    files.write_cached(files.points_path(tmp_path / "seed0", "warp_paper"), key, record)
    text, final = bench.interim_report(plan, tmp_path, sizes, args)
    assert not final and text.startswith("**INTERIM")  # every part, but of one seed: fewer than the 3
    for seed in (1, 2):
        for spec in ("rloo_sft_b0.1", "warp_paper"):
            files.write_cached(files.points_path(tmp_path / f"seed{seed}", spec), key, record)
    args.seeds = bench.SEEDS
    text, final = bench.interim_report(plan, tmp_path, sizes, args)
    assert final and "INTERIM" not in text and "### (a)" in text and "### (d)" in text and "3 seeds" in text


def test_a_wrong_readme_is_refused_before_any_work(bench, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["bench_warp_ablation.py", "--out", str(tmp_path / "out"), "--readme",
                                      str(tmp_path / "README.md")])
    assert bench.main() == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"error: --readme {tmp_path / 'README.md'}: file not found"
    assert not (tmp_path / "out" / "settings.json").exists()


def test_where_a_sweep_s_gold_reward_peaks():
    import _ablation_report

    pts = [{"eta": e, "kl_mean": k, "gold_mean": g} for e, k, g in ((0.0, 0.0, 0.1), (0.5, 1.0, 0.6), (1.0, 3.0, 0.2))]
    assert _ablation_report.gold_peak(pts) == "η=0.5, KL 1.0"
    assert _ablation_report.gold_peak(pts[:2]) == "η=0.5, KL 1.0 (still rising)"
    assert _ablation_report.gold_peak([{"eta": 1.0, "kl_mean": 2.0}]) == "–"


def test_the_report_of_part_d_compares_proxy_and_gold_fronts_per_pair(tmp_path):
    import json
    from types import SimpleNamespace

    import _ablation_report

    from warprl.eval.pareto import Series

    plan = plan_for(["d"], 15)
    (tmp_path / "gold_rm").mkdir()
    (tmp_path / "gold_rm" / "metrics.json").write_text(json.dumps({"val": {"accuracy": 0.95}}))

    def points(shift):
        out = []
        for eta in (0.0, 0.5, 1.0):
            kl, reward, gold = 2 * eta, shift * eta, 0.5 * eta - 0.5 * eta * eta * shift
            samples = [{"prompt": f"p{i}", "kl": kl, "reward": reward + 0.1 * (i % 3 - 1),
                        "gold": gold + 0.1 * (i % 2)} for i in range(8)]
            out.append({"eta": eta, "kl_mean": kl, "reward_mean": reward, "gold_mean": gold, "samples": samples})
        return out

    records = {spec: {"points": points(1.5 if "warp" in spec else 1.0), "angle": None}
               for spec, _ in plan.candidates.values()}
    sizes = dict(steps=15, batch_size=8, k=2, max_new_tokens=24, samples_per_prompt=2, etas=(0.0, 0.5, 1.0))
    args = SimpleNamespace(smoke=False, so_far=False)
    text = _ablation_report.report("smollm2-imdb", plan, files.report_input(plan, {0: records}, 8), [0], sizes,
                                   tmp_path, args, {"training": 1.0})
    rows = [line for line in text.splitlines() if line.startswith("| task β=0.1: WARP final (LITI) − task β=0.1: RLOO")]
    assert len(rows) == 2  # the proxy reward's comparison and the gold reward's
    assert rows[0].endswith("| above |")  # WARP's proxy front is higher at every matched KL
    assert "gold reward, never optimised" in text and "| η=0.5, KL 1.0 |" in text
    itself = "| paper: WARP last SLERP (its output) − paper: WARP final (LITI) | 2 | +0.000 |"
    assert sum(line.startswith(itself) for line in text.splitlines()) == 2  # equal sweeps: 0 for reward and gold
    summary = json.loads((tmp_path / "ablation.json").read_text())
    assert {c["metric"] for c in summary["comparisons"]} == {"reward", "gold"}
    assert (tmp_path / "ablation_d.png").is_file() and (tmp_path / "ablation_d_gold.png").is_file()
    series = {n: Series(n, "sweep") for n in plan.candidates}
    drawn = [s.name for s in _ablation_report.plotted(plan, [n for n, (_, p) in plan.candidates.items() if p == "d"],
                                                      series)]
    assert len(drawn) == 10 and "task β=0.1: RLOO = paper: RLOO" in drawn  # one curve per policy
