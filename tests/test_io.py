"""Atomic writes: the result appears whole or not at all, with ordinary permissions; a model's weights file."""

import os
import stat
from pathlib import Path

import pytest

from warprl.io import atomic_dir, atomic_write_json, atomic_write_text, recover_dir


def test_atomic_text_replaces_and_leaves_no_temp(tmp_path):
    p = tmp_path / "a.txt"
    atomic_write_text(p, "one")
    atomic_write_text(p, "two")
    assert p.read_text() == "two"
    assert [x.name for x in tmp_path.iterdir()] == ["a.txt"]
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~mask


def test_failed_write_keeps_the_old_file(tmp_path):
    p = tmp_path / "a.json"
    atomic_write_json(p, {"x": 1})

    def boom(tmp):
        raise RuntimeError("disk full")

    from warprl.io import atomic_write

    with pytest.raises(RuntimeError):
        atomic_write(p, boom)
    assert p.read_text().strip().startswith("{") and '"x": 1' in p.read_text()
    assert [x.name for x in tmp_path.iterdir()] == ["a.json"]


def test_atomic_dir_swaps_whole_folders(tmp_path):
    out = tmp_path / "model"
    atomic_dir(out, lambda d: (d / "w.txt").write_text("v1"))
    with pytest.raises(RuntimeError):
        atomic_dir(out, lambda d: ((d / "w.txt").write_text("half"), (_ for _ in ()).throw(RuntimeError("x"))))
    assert (out / "w.txt").read_text() == "v1"
    atomic_dir(out, lambda d: (d / "w.txt").write_text("v2"))
    assert (out / "w.txt").read_text() == "v2"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["model"]
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~mask


def test_recover_dir_restores_the_old_folder(tmp_path):
    old = tmp_path / ".model.old"
    old.mkdir()
    (old / "w.txt").write_text("v1")
    recover_dir(tmp_path / "model")
    assert (tmp_path / "model" / "w.txt").read_text() == "v1"


def test_safetensors_results_get_ordinary_permissions(tmp_path):
    import torch
    from safetensors.torch import save_file

    from warprl.io import atomic_write

    mask = os.umask(0)
    os.umask(mask)
    p = tmp_path / "w.safetensors"
    atomic_write(p, lambda tmp: save_file({"x": torch.zeros(2)}, tmp))
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~mask
    atomic_dir(tmp_path / "m", lambda d: save_file({"x": torch.zeros(2)}, str(d / "model.safetensors")))
    assert stat.S_IMODE((tmp_path / "m" / "model.safetensors").stat().st_mode) == 0o666 & ~mask


def test_atomic_write_digest_is_the_files_sha256_taken_beside_the_fsync(tmp_path, monkeypatch):
    import hashlib

    from warprl.io import WriteError, atomic_write

    p = tmp_path / "w.bin"
    data = os.urandom(3 << 20)  # several read blocks
    got = atomic_write(p, lambda tmp: Path(tmp).write_bytes(data), digest=True)
    assert got == hashlib.sha256(data).hexdigest() and p.read_bytes() == data
    assert atomic_write(p, lambda tmp: Path(tmp).write_bytes(b"x")) is None  # no digest unless asked

    def failing_fsync(fd):  # the fsync runs in a thread: its failure still fails the write, old file kept
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(WriteError, match="Input/output error"):
        atomic_write(p, lambda tmp: Path(tmp).write_bytes(b"new"), digest=True)
    assert p.read_bytes() == b"x" and [x.name for x in tmp_path.iterdir()] == ["w.bin"]


def test_save_weights_stores_hf_names_once_and_reloads_tied(tiny_policy_dir, tmp_path):
    """One safetensors file per model with save_pretrained's names (the tied lm_head under the embedding's),
    its sha256 returned, and a ``check`` that refuses the file before it replaces anything."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_model

    from warprl import models
    from warprl.errors import UserError
    from warprl.io import file_digest, save_weights

    model, _ = models.load_policy(str(tiny_policy_dir))
    path = tmp_path / "w.safetensors"
    assert save_weights(model, path) == file_digest(path)
    with safe_open(str(path), "pt") as f:
        assert "model.embed_tokens.weight" in f.keys() and "lm_head.weight" not in f.keys()
        assert f.metadata() == {"format": "pt"}
        assert len(list(f.keys())) == len(model.state_dict()) - 1  # the one tied duplicate
    other, _ = models.load_policy(str(tiny_policy_dir))
    with torch.no_grad():
        for p in other.parameters():
            p.zero_()
    load_model(other, str(path))
    assert other.lm_head.weight is other.model.embed_tokens.weight
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values(), strict=True))

    before = path.read_bytes()

    def refuse(tmp):
        raise UserError("not these weights")

    with pytest.raises(UserError, match="not these weights"):
        save_weights(other, path, check=refuse)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]
