"""The one output-folder policy of every command that writes a folder.

A folder is in one of five states, and each command declares what it does with each (:class:`Policy`):

    new        missing or empty                      → written from scratch
    unfinished holds the command's ``config.yaml``   → refused unless ``--resume`` (settings must match) or
                                                        ``--overwrite``; a quickstart continues it by itself
    finished   holds one of the command's end files  → refused unless ``--overwrite``; a quickstart or a
                                                        report command replaces its own finished output
                                                        (a report command: its own files only)
    not ours   anything else                         → refused unless ``--overwrite`` (or a report command
                                                        that writes its files beside other things)
    a file     not a folder                          → always refused

``check`` only reads (so a bad input found later never deletes or starts anything); ``prepare`` acts on
its decision once every input has loaded.

One writer per folder: ``check`` first takes an exclusive ``flock`` on a lock file beside the folder
(``<parent>/.<name>.warprl.lock``, so that ``--overwrite``'s delete cannot drop it), before it reads the
folder's state, and the process holds it until the command ends (:func:`release_all`, called by the CLI, or
the process's exit). The kernel releases a flock when its process dies, so a SIGKILL never leaves a stale
lock; a second command on the same folder is refused at once with the PID of the first. The lock is
re-entrant within a process (a quickstart checks its folder, then its WARP run checks it again).
"""

from __future__ import annotations

import atexit
import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from warprl.config import RUN_CONTROL_KEYS, to_dict, to_yaml
from warprl.errors import UserError
from warprl.io import atomic_write_text

CONFIG_FILE = "config.yaml"


@dataclass(frozen=True)
class Policy:
    """What a command does with each state of its output folder."""

    finished: tuple[str, ...]  # any of these paths present: a finished output of this command
    finished_key: str | None = None  # …and, when set, the first of them is a JSON object with this key
    started: str | None = CONFIG_FILE  # written first by a resumable command: an unfinished output
    replace_finished: bool = False  # replace a finished output without --overwrite
    continue_unfinished: bool = False  # continue an unfinished output without --resume
    beside_others: bool = False  # writes its own files into a folder that may hold other things


ALIGN = Policy(finished=("summary.json", "final/config.json"))
QUICKSTART = Policy(finished=("summary.json",), finished_key="quickstart", replace_finished=True, continue_unfinished=True)
REWARD = Policy(finished=("metrics.json",), started=None)
SFT = Policy(finished=("final/config.json",))
REPORT = Policy(finished=("pareto.json",), started=None, replace_finished=True, beside_others=True)


@dataclass(frozen=True)
class Decision:
    out: Path
    action: str  # "new", "resume", "replace" or "beside"

    @property
    def resume(self) -> bool:
        return self.action == "resume"


def config_identity(cfg) -> dict[str, Any]:
    """The settings that determine a result (run-control flags such as --resume excluded)."""
    return {k: v for k, v in to_dict(cfg).items() if k not in RUN_CONTROL_KEYS}


DIGEST_LINE = "# warprl: sha256 of the settings below (a hand edit is refused on --resume): "


def _identity_digest(saved: dict) -> str:
    ident = {k: v for k, v in saved.items() if k not in RUN_CONTROL_KEYS}
    return hashlib.sha256(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()


def config_text(cfg) -> str:
    """``config.yaml``: the resolved settings, headed by the digest of those that determine the result."""
    text = to_yaml(cfg)
    return f"{DIGEST_LINE}{_identity_digest(yaml.safe_load(text) or {})}\n{text}"


def _settings_diff(saved_file: Path, cfg) -> list[str]:
    try:
        text = saved_file.read_text()
        saved = yaml.safe_load(text) or {}
    except (yaml.YAMLError, OSError, UnicodeDecodeError):
        raise UserError(f"--resume: {saved_file} is damaged (not readable YAML); restore it or start a new "
                        f"--out") from None
    if not isinstance(saved, dict):
        raise UserError(f"--resume: {saved_file} is damaged (not a mapping); restore it or start a new --out")
    first = text.split("\n", 1)[0]
    if first.startswith(DIGEST_LINE) and first[len(DIGEST_LINE):].strip() != _identity_digest(saved):
        # The run so far was made with the settings the digest was taken of, not with the edited ones.
        raise UserError(f"--resume: {saved_file} was edited after the run started (its settings no longer match "
                        f"their recorded sha256); restore it or start a new --out")
    mine = config_identity(cfg)
    # A setting added to warprl after the folder was made is not in its config.yaml: at its default it matches
    # (the run was made with what that default does, e.g. --lora-r 0 = full fine-tuning).
    defaults = {f.name: f.default for f in dataclasses.fields(cfg) if f.default is not dataclasses.MISSING}
    diff = sorted(k for k in set(mine) | set(saved) if k not in RUN_CONTROL_KEYS and saved.get(k) != mine.get(k)
                  and not (k not in saved and k in defaults and mine.get(k) == defaults[k]))
    return [f"{k}: {saved.get(k)!r} → {mine.get(k)!r}" for k in diff]


def _is_finished(out: Path, policy: Policy) -> bool:
    if policy.finished_key is None:
        return any((out / name).exists() for name in policy.finished)
    try:
        return policy.finished_key in json.loads((out / policy.finished[0]).read_text())
    except (OSError, ValueError, TypeError):
        return False


# ------------------------------------------------------------------------------------------ one writer

LOCK_SUFFIX = ".warprl.lock"
_HELD: dict[Path, tuple[int, list[Path]]] = {}  # lock file → (its descriptor, parent folders we created)


def lock_path(out: str | Path) -> Path:
    """The lock file of ``out``: beside it, so that replacing the folder keeps the lock."""
    out = Path(out).expanduser().resolve()
    return out.parent / f".{out.name}{LOCK_SUFFIX}"


def _holder(fd: int) -> str:
    try:
        pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        pid = ""
    return f"PID {pid}" if pid.isdigit() else "PID unknown"


def claim(out: str | Path) -> None:
    """Take the one-writer lock of ``out`` (held until :func:`release_all`); refuse if another process has it."""
    path = lock_path(out)
    if path in _HELD:
        return
    created = [p for p in reversed(path.parents) if not p.exists()]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {out}: cannot create its parent folder ({e.strerror})") from None
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        except OSError as e:
            raise UserError(f"--out {out}: cannot create the lock file {path} ({e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = _holder(fd)
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise UserError(f"--out {out}: cannot lock {path} ({e.strerror})") from None
            raise UserError(f"--out {out} is in use by another warprl command ({holder}); wait for it to end or "
                            f"choose another --out") from None
        # The holder we waited on may have removed the file before unlocking (release_all): then this lock is
        # on a file nobody else will open. Only a lock on the file that is still at ``path`` counts.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _HELD[path] = (fd, created)


def release_all() -> None:
    """Drop every lock this process holds (removing its lock files and the parent folders it created, if empty)."""
    while _HELD:
        path, (fd, created) = _HELD.popitem()
        try:
            path.unlink()  # before unlocking: a waiter that opened this file sees it gone and retries
        except OSError:
            pass
        os.close(fd)
        for folder in reversed(created):
            try:
                folder.rmdir()
            except OSError:
                break


atexit.register(release_all)


# ------------------------------------------------------------------------------------------- the policy


def check(out: str | Path, policy: Policy, *, resume: bool = False, overwrite: bool = False, cfg=None,
          what: str = "run") -> Decision:
    """Decide what to do with ``out`` without touching it; refuse with a one-line UserError.

    First takes the folder's one-writer lock (:func:`claim`): no other command reads or changes it meanwhile.
    With ``resume`` the folder's ``config.yaml`` must match ``cfg`` (run-control settings excepted).
    """
    out = Path(out).expanduser()
    claim(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a folder")
    if resume and overwrite:
        raise UserError("--resume and --overwrite contradict each other")
    empty = not out.is_dir() or not any(out.iterdir())
    finished = not empty and _is_finished(out, policy)
    started = not empty and policy.started is not None and (out / policy.started).is_file()
    if resume:
        if not started:
            raise UserError(f"--resume: {out} holds no {what} to resume (no {policy.started or CONFIG_FILE})")
        if cfg is not None:
            diff = _settings_diff(out / policy.started, cfg)
            if diff:
                raise UserError(f"--resume: {out} was made with other settings ({', '.join(diff[:3])}); use the "
                                f"same settings or another --out")
        return Decision(out, "resume")
    if empty:
        return Decision(out, "new")
    if overwrite:
        return Decision(out, "replace")
    if finished and policy.replace_finished:
        # A command that writes beside other things (a report inside a WARP run folder, next to final/) replaces
        # its own finished output file by file; deleting the folder would take the rest with it.
        return Decision(out, "beside" if policy.beside_others else "replace")
    if finished:
        raise UserError(f"{out} holds a finished {what}; pass --overwrite to replace it or choose another --out")
    if started and policy.continue_unfinished:
        return Decision(out, "resume")
    if started:
        raise UserError(f"{out} holds an unfinished {what}; pass --resume to continue it or --overwrite to "
                        f"replace it")
    if policy.beside_others:
        return Decision(out, "beside")
    raise UserError(f"--out {out} is not empty and holds no warprl {what}; choose an empty or new folder, or "
                    f"pass --overwrite to replace it")


def prepare(decision: Decision, cfg=None) -> Path:
    """Act on a :func:`check` decision: replace, create, and write ``config.yaml`` for a new resumable output."""
    out = decision.out
    if decision.action == "replace":
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg is not None and decision.action in ("new", "replace"):
        atomic_write_text(out / CONFIG_FILE, config_text(cfg))
    return out
