"""The README's module table describes the package exactly: every module is listed, and nothing else."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "warprl"


def test_every_module_is_in_the_readme_table():
    text = (ROOT / "README.md").read_text()
    design = text[text.index("## Design"):text.index("## Results")]
    listed = set(re.findall(r"^\| `([\w/]+\.py)` \|", design, flags=re.MULTILINE))
    modules = {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}
    assert not sorted(modules - listed), "modules missing from the README's module table"
    assert not sorted(listed - modules), "the README's module table lists modules that do not exist"


def test_readme_opens_with_the_two_setup_commands():
    head = (ROOT / "README.md").read_text().splitlines()[:8]
    assert any("make demo" in line for line in head) and any("make test" in line for line in head)
