"""benchmarks/_results.py: a rerun replaces its own section of RESULTS.md and keeps the one it replaced, once."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from _results import HEADER, PREVIOUS, write_section  # noqa: E402


def _titles(path: Path) -> list[str]:
    return [line[3:] for line in path.read_text().splitlines() if line.startswith("## ")]


def _body(path: Path, title: str) -> str:
    text = path.read_text()
    start = text.index(f"## {title}\n") + len(f"## {title}\n")
    end = text.find("\n## ", start)
    return text[start:end if end >= 0 else None].strip()


def test_a_rerun_keeps_the_replaced_section_once_below_the_new_one(tmp_path):
    path = tmp_path / "RESULTS.md"
    write_section("A", "run 1 of A", path)
    write_section("B", "run 1 of B", path)
    assert path.read_text().startswith(HEADER.split("\n")[0])
    assert _titles(path) == ["A", "B"]

    write_section("A", "run 2 of A", path)
    assert _titles(path) == ["A", "A" + PREVIOUS, "B"]
    assert (_body(path, "A"), _body(path, "A" + PREVIOUS), _body(path, "B")) == ("run 2 of A", "run 1 of A",
                                                                                 "run 1 of B")

    write_section("A", "run 3 of A", path)  # run 1 is dropped: one previous run per section
    assert _titles(path) == ["A", "A" + PREVIOUS, "B"]
    assert (_body(path, "A"), _body(path, "A" + PREVIOUS)) == ("run 3 of A", "run 2 of A")


def test_an_identical_rerun_or_keep_previous_false_keeps_nothing_extra(tmp_path):
    path = tmp_path / "RESULTS.md"
    write_section("A", "same", path)
    write_section("A", "same\n", path)
    assert _titles(path) == ["A"]
    write_section("A", "other", path, keep_previous=False)
    assert _titles(path) == ["A"] and _body(path, "A") == "other"
    write_section("A", "third", path)
    write_section("A", "fourth", path, keep_previous=False)  # drops the replaced run, leaves the older one alone
    assert _titles(path) == ["A", "A" + PREVIOUS]
    assert (_body(path, "A"), _body(path, "A" + PREVIOUS)) == ("fourth", "other")


def test_sections_whose_titles_only_start_alike_are_left_alone(tmp_path):
    path = tmp_path / "RESULTS.md"
    write_section("RL step", "a", path)
    write_section("RL step, fp32", "b", path)
    write_section("RL step", "c", path)
    assert _titles(path) == ["RL step", "RL step" + PREVIOUS, "RL step, fp32"]
    assert not list(tmp_path.glob(".RESULTS.*")), "a temporary file was left behind"
