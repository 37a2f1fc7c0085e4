"""Every YAML file in configs/ names its command on its first line and loads into that command's config."""

from pathlib import Path

import pytest

from warprl import config as C
from warprl.config import build_config, read_yaml

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"
COMMAND_CLASS = {"align": "AlignConfig", "reward train": "RewardTrainConfig", "evaluate": "EvalConfig",
                 "pareto": "ParetoConfig", "quickstart": "QuickstartConfig"}


def config_class(path: Path) -> type:
    first = path.read_text().splitlines()[0]
    assert first.startswith("# command: warprl "), f"{path.name}: first line must be '# command: warprl …'"
    command = first.removeprefix("# command: warprl ").split(" --")[0].strip()
    assert command in COMMAND_CLASS, f"{path.name}: unknown command {command!r}"
    return getattr(C, COMMAND_CLASS[command])


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_every_config_file_loads(path):
    cls = config_class(path)
    assert f"--config configs/{path.name}" in path.read_text().splitlines()[0]
    cfg = build_config(cls, read_yaml(path), source=str(path))
    assert isinstance(cfg, cls)


def test_configs_exist():
    assert len(list(CONFIG_DIR.glob("*.yaml"))) >= 8
