"""`warprl quickstart` on a tiny random model: report.md, PNG, summary.json, and its output-folder rules."""

import json

import pytest

from tests.commands._helpers import PNG_MAGIC
from warprl.cli import main
from warprl.commands import outdir
from warprl.errors import UserError
from warprl.eval.evaluate import METRIC_KEYS


def test_quickstart_writes_report_png_and_summary(quickstart_run):
    out, summary = quickstart_run
    assert (out / "final" / "config.json").is_file() and (out / "final_slerp" / "config.json").is_file()
    assert (out / "pareto.png").read_bytes()[:8] == PNG_MAGIC
    report = (out / "report.md").read_text()
    assert "![reward vs KL](pareto.png)" in report and "## Before and after" in report
    assert "| η |" in report and "## Sample generations" in report
    assert "after (WARP final)" in (out / "results.md").read_text()
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["quickstart"]["steps"] == 4
    for part in ("before", "after", "last_slerp"):
        assert set(METRIC_KEYS) == set(on_disk[part])
    assert [p["eta"] for p in on_disk["sweep"]] == [0.0, 0.5, 1.0]
    assert on_disk["before"]["kl_mean"] == 0.0  # η = 0 is the SFT policy itself
    assert on_disk["sweep"][0] == {"eta": 0.0, **on_disk["before"]}
    assert on_disk["sweep"][-1] == {"eta": 1.0, **on_disk["after"]}
    assert summary["seconds"]["total_s"] > 0
    pareto = json.loads((out / "pareto.json").read_text())
    assert pareto["series"][0]["name"].startswith("WARP I=1 M=2 T=4")


def test_quickstart_replaces_its_own_folder_but_not_others(tiny_policy_dir, prompt_file, tmp_path, capsys):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    code = main(["quickstart", "--out", str(foreign), "--policy", str(tiny_policy_dir)])
    assert code == 2 and "not empty" in capsys.readouterr().err
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_quickstart_folder_rules(tmp_path):
    def decide(out, **kw):
        return outdir.check(out, outdir.QUICKSTART, what="quickstart", **kw).action

    done = tmp_path / "done"
    done.mkdir()
    (done / "summary.json").write_text(json.dumps({"quickstart": {}}))
    assert decide(done) == "replace" and done.exists()  # replaced only once the inputs have loaded
    outdir.prepare(outdir.check(done, outdir.QUICKSTART))
    assert done.is_dir() and not any(done.iterdir())
    interrupted = tmp_path / "interrupted"
    interrupted.mkdir()
    (interrupted / "config.yaml").write_text("method: warp\n")
    assert decide(interrupted) == "resume"  # the WARP run continues (and refuses other settings)
    assert decide(interrupted, overwrite=True) == "replace"
    aligned = tmp_path / "aligned"  # an `align` run's summary carries no quickstart key: never replaced silently
    aligned.mkdir()
    (aligned / "summary.json").write_text(json.dumps({"method": "warp"}))
    with pytest.raises(UserError, match="not empty"):
        decide(aligned)
