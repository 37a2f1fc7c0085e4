"""Atomic file and folder writes: a crash never leaves a half-written result behind."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        # mkstemp (and safetensors' own temp-and-rename) make 0600 files; a result reads like any other file.
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    def write(tmp: str) -> None:
        Path(tmp).write_text(text, encoding="utf-8")

    atomic_write(path, write)


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_dir(path: str | os.PathLike, fill: Callable[[Path], None]) -> None:
    """Build a folder in a sibling temp dir with ``fill(tmp_dir)``, then swap it in place of ``path``.

    An existing ``path`` is moved aside first and deleted only after the new folder is in place, so at
    every moment either the old or the new complete folder exists under ``path`` or its ``.old`` twin.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        fill(tmp)
        mask = _umask()  # mkdtemp makes a 0700 folder and safetensors 0600 files: ordinary permissions instead
        os.chmod(tmp, 0o777 & ~mask)
        for f in tmp.rglob("*"):
            os.chmod(f, (0o777 if f.is_dir() else 0o666) & ~mask)
        old = path.with_name(f".{path.name}.old")
        if old.exists():
            shutil.rmtree(old)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        if old.exists():
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def recover_dir(path: str | os.PathLike) -> None:
    """If a crash happened between the two renames of :func:`atomic_dir`, put the old folder back."""
    path = Path(path)
    old = path.with_name(f".{path.name}.old")
    if old.exists() and not path.exists():
        os.replace(old, path)


def remove_stale_temp_files(folder: str | os.PathLike) -> None:
    """Delete what writes interrupted by a SIGKILL left behind in ``folder``.

    The writers here name their temporaries ``.NAME.*.tmp`` (and ``….tmp.tmp``), safetensors its own
    ``.tmpXXXXXX`` beside the target; finished files never start with a dot. For SmolLM2 one such leftover is
    a whole model (~540 MB), so a resume removes them.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return
    for p in [*folder.glob(".*.tmp*"), *folder.glob(".tmp*")]:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
