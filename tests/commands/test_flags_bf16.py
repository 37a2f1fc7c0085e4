"""The bf16 default follows the machine: on where bf16 matmuls are native, off (with a note) where they are emulated;
a flag or a YAML value always wins."""

import pytest
import torch

from warprl import precision
from warprl.commands import flags as F
from warprl.config import AlignConfig, RewardScoreConfig


@pytest.fixture
def speedup(monkeypatch):
    def set_to(x: float):
        monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: frozenset())  # no flags: the probe decides
        monkeypatch.setattr(precision, "bf16_speedup", lambda device_type="cpu": x)
    return set_to


def test_default_is_off_where_bf16_is_emulated(speedup, capsys, monkeypatch):
    monkeypatch.setattr(F, "NOTES", [])
    speedup(0.02)  # an AVX2-only CPU: bf16 matmuls 50x slower than fp32
    assert F.build_config(AlignConfig, {}, {"device": "cpu"}).bf16 is False
    assert len(F.NOTES) == 1 and "50× slower than fp32" in F.NOTES[0]  # cli.py prints it once the command ran
    assert F.build_config(AlignConfig, {}, {"device": "cpu", "bf16": True}).bf16 is True  # the flag wins
    assert F.build_config(AlignConfig, {"bf16": True}, {"device": "cpu"}).bf16 is True  # so does the YAML
    assert capsys.readouterr().err == ""


def test_default_is_on_where_bf16_is_native(speedup, capsys):
    speedup(3.0)  # AMX or AVX512-BF16
    assert F.build_config(AlignConfig, {}, {"device": "cpu"}).bf16 is True
    assert F.build_config(AlignConfig, {}, {"device": "cpu", "bf16": False}).bf16 is False
    assert capsys.readouterr().err == ""


def test_a_false_default_stays_false(speedup):
    speedup(3.0)
    assert F.build_config(RewardScoreConfig, {}, {"text": ["a fine film"]}).bf16 is False  # fp32 unless asked


def test_the_probe_measures_this_machine(monkeypatch):
    x = precision.bf16_speedup("cpu")
    assert x > 0 and precision.bf16_speedup("cpu") == x  # measured once per process
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: None)  # no /proc/cpuinfo: the probe decides
    assert precision.bf16_is_native(torch.device("cpu")) == (x >= 0.8)


def test_declared_bf16_instructions_are_native_without_a_probe(monkeypatch):
    def no_probe(device_type="cpu"):
        raise AssertionError("probed")
    monkeypatch.setattr(precision, "bf16_speedup", no_probe)  # a busy machine's probe must not decide
    monkeypatch.setattr(precision, "cpu_bf16_flags", lambda: frozenset({"avx512_bf16"}))
    assert precision.bf16_is_native(torch.device("cpu")) is True


X86 = """processor\t: 0
vendor_id\t: AuthenticAMD
flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni
bugs\t\t: sysret_ss_attrs
"""
ARM = """processor\t: 0
Features\t: fp asimd sve bf16 i8mm
CPU implementer\t: 0x41
"""
AVX2 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma\nmodel name\t: bf16 lookalike in a name\n"


@pytest.mark.parametrize("text, flags", [(X86, {"avx512_bf16"}), (ARM, {"bf16"}), (AVX2, set())])
def test_cpu_bf16_flags_reads_the_flags_lines_only(tmp_path, text, flags):
    (tmp_path / "cpuinfo").write_text(text)
    assert precision.cpu_bf16_flags(str(tmp_path / "cpuinfo")) == flags
    assert precision.cpu_bf16_flags(str(tmp_path / "absent")) is None


def test_the_note_follows_a_run_and_never_a_bad_input(speedup, capsys, tmp_path):
    from warprl.cli import main

    speedup(0.02)
    assert main(["reward", "score", "--device", "cpu", "--bf16", "a fine film"]) == 0  # bf16 set: no note
    assert "note:" not in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    code = main(["align", "--device", "cpu", "--out", str(tmp_path / "file" / "x"), "--steps", "0"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error:")
