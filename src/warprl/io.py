"""Atomic file and folder writes: a crash never leaves a half-written result behind.

Every write of warprl goes through this module: :func:`atomic_write` (a file: temp, fsync, rename),
:func:`atomic_dir` (a folder: temp folder, fsync, two renames), :func:`append_line` (the metrics logs) and
:func:`save_weights` (a model's weights, one safetensors file under HF's names, with its sha256).
A failed write (disk full, I/O error) raises :class:`WriteError`, a one-line :class:`UserError` naming the
path and the system's reason; the file or folder it was replacing is left as it was.

Fault injection for the reliability suite: with ``WARPRL_FAULT=N:ACTION`` in the environment (or
:func:`inject_fault` in-process) the Nth write event of the process fails. The events are ``write`` (a file's
temp copy is written, not yet renamed), ``dir`` (a folder's temp copy is filled), ``swap`` (between the two
renames of a folder that replaces an older one) and ``append`` (half of a log line is written). ``ACTION`` is
``ENOSPC`` or ``EIO`` (an OSError there; ``swap`` events are not counted, a rename does not fill a disk) or
``SIGKILL`` (the process kills itself there). The event is named on stderr first. Without the variable the
only cost is one ``is None`` test per write.
"""

from __future__ import annotations

import errno as errno_codes
import hashlib
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

from warprl.errors import UserError


class WriteError(UserError):
    """A write failed (disk full, I/O error, …); what was on disk before it is intact."""


def _reason(err: BaseException) -> tuple[int | None, str]:
    if isinstance(err, OSError) and err.errno is not None:
        return err.errno, err.strerror or os.strerror(err.errno)
    m = re.search(r"os error (\d+)", str(err))  # safetensors: "Error while serializing: I/O error: … (os error 28)"
    if m:
        code = int(m.group(1))
        return code, os.strerror(code)
    return None, str(err).splitlines()[0] if str(err).strip() else type(err).__name__


def _is_write_failure(err: BaseException) -> bool:
    return isinstance(err, OSError) or (type(err).__name__ == "SafetensorError" and "I/O error" in str(err))


def write_error(path: str | os.PathLike, err: BaseException) -> WriteError:
    code, text = _reason(err)
    name = f" ({errno_codes.errorcode[code]})" if code in errno_codes.errorcode else ""
    return WriteError(f"cannot write {path}: {text}{name}; what was written before is intact")


# ---------------------------------------------------------------------------------------- fault hook


class _Fault:
    def __init__(self, n: int, action: str):
        if action not in ("ENOSPC", "EIO", "SIGKILL"):
            raise ValueError(f"WARPRL_FAULT action must be ENOSPC, EIO or SIGKILL, not {action!r}")
        self.n, self.action, self.count = n, action, 0

    def event(self, kind: str, path: Path) -> None:
        if kind == "swap" and self.action != "SIGKILL":
            return
        self.count += 1
        if self.count != self.n:
            return
        print(f"warprl fault: {self.action} at write event {self.n}: {kind} {path}", file=sys.stderr, flush=True)
        if self.action == "SIGKILL":
            os.kill(os.getpid(), signal.SIGKILL)
        code = getattr(errno_codes, self.action)
        raise OSError(code, os.strerror(code), str(path))


def _fault_from_env() -> _Fault | None:
    spec = os.environ.get("WARPRL_FAULT", "")
    if not spec:
        return None
    n, _, action = spec.partition(":")
    return _Fault(int(n), action or "ENOSPC")


_FAULT: _Fault | None = _fault_from_env()


def inject_fault(n: int | None, action: str = "ENOSPC") -> None:
    """Make the ``n``-th write event from now on fail with ``action`` (None: no more faults). For tests."""
    global _FAULT
    _FAULT = None if n is None else _Fault(n, action)


def _event(kind: str, path: Path) -> None:
    if _FAULT is not None:
        _FAULT.event(kind, path)


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


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], digest: bool = False) -> str | None:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path``; a failure raises WriteError.

    With ``digest`` the file's sha256 is returned, read back from the page cache while the disk syncs
    (a model's file: the hash costs no time of its own beside the fsync).
    """
    path = Path(path)
    tmp = None
    sha = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        write(tmp)
        # mkstemp (and safetensors' own temp-and-rename) make 0600 files; a result reads like any other file.
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb+") as f:
            if digest:
                sync = _Background(os.fsync, f.fileno())  # fsync and hashlib both release the GIL
                try:
                    sha = file_digest(tmp)
                finally:
                    sync.join()
            else:
                os.fsync(f.fileno())
        _event("write", path)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except Exception as e:
        if _is_write_failure(e):
            raise write_error(path, e) from None
        raise
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return sha


class _Background(threading.Thread):
    """``fn(*args)`` in a thread; :meth:`join` re-raises what it raised."""

    def __init__(self, fn: Callable, *args):
        super().__init__(daemon=True)
        self.fn, self.args, self.error = fn, args, None
        self.start()

    def run(self) -> None:
        try:
            self.fn(*self.args)
        except BaseException as e:  # noqa: BLE001 - handed to the joining thread
            self.error = e

    def join(self, timeout: float | None = None) -> None:
        super().join(timeout)
        if self.error is not None:
            raise self.error


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one line (``line`` without its newline) to a log and fsync it; a failure raises WriteError.

    A crash can leave a partial last line: readers of such logs keep only whole lines they can vouch for.
    """
    path = Path(path)
    data = (line + "\n").encode("utf-8")
    try:
        with open(path, "ab") as f:
            if _FAULT is not None:
                f.write(data[: len(data) // 2])
                f.flush()
                _event("append", path)
                data = data[len(data) // 2:]
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise write_error(path, e) from None


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
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        fill(tmp)
        mask = _umask()  # mkdtemp makes a 0700 folder and safetensors 0600 files: ordinary permissions instead
        os.chmod(tmp, 0o777 & ~mask)
        for f in sorted(tmp.rglob("*")):
            os.chmod(f, (0o777 if f.is_dir() else 0o666) & ~mask)
            if f.is_file():
                with open(f, "rb+") as fh:
                    os.fsync(fh.fileno())
        _fsync_dir(tmp)
        _event("dir", path)
        old = path.with_name(f".{path.name}.old")
        if old.exists():
            shutil.rmtree(old)
        if path.exists():
            os.replace(path, old)
            _event("swap", path)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        if old.exists():
            shutil.rmtree(old)
    except Exception as e:
        if _is_write_failure(e):
            raise write_error(path, e) from None
        raise
    finally:
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def file_digest(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def digest_file(path: str | os.PathLike) -> Path:
    """``NAME.sha256`` beside ``NAME``, in the format of ``sha256sum`` (``sha256sum -c`` checks it)."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


def write_digest(path: str | os.PathLike, digest: str | None = None) -> str:
    """Record the sha256 of ``path`` (``digest`` when the writer computed it already) in its ``.sha256`` file
    (atomically); returns it."""
    path = Path(path)
    digest = digest or file_digest(path)
    atomic_write_text(digest_file(path), f"{digest}  {path.name}\n")
    return digest


def recorded_digest(path: str | os.PathLike) -> str | None:
    try:
        text = digest_file(path).read_text(encoding="ascii").split()
    except (OSError, UnicodeDecodeError):
        return None
    return text[0] if text and re.fullmatch(r"[0-9a-f]{64}", text[0]) else None


def damage(path: str | os.PathLike, expected: str | None = None) -> str | None:
    """Why ``path`` cannot be trusted (missing, unreadable, no recorded digest, digest mismatch), or None.

    ``expected`` is the digest to compare with; by default the one in ``path``'s ``.sha256`` file.
    """
    path = Path(path)
    if not path.is_file():
        return "missing"
    expected = expected if expected is not None else recorded_digest(path)
    if expected is None:
        return "no recorded sha256"
    try:
        actual = file_digest(path)
    except OSError as e:
        return f"unreadable ({e.strerror})"
    return None if actual == expected else "sha256 mismatch: damaged after it was written"


def recover_dirs(folder: str | os.PathLike) -> None:
    """:func:`recover_dir` for every ``.NAME.old`` in ``folder``; an old copy whose NAME exists is deleted."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for old in folder.glob(".*.old"):
        path = old.with_name(old.name[1:-len(".old")])
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, path)


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


def link_or_copy(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """``dst`` as a hard link to ``src`` (no second copy on disk; safe because warprl never writes a file in
    place), or a copy where the file system refuses links (another device, some network mounts)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


# ------------------------------------------------------------------------------------------- model weights


def weight_tensors(model) -> dict:
    """The model's tensors by name, each storage once under the first name that holds it: the tied lm_head
    is stored as ``model.embed_tokens.weight``, as ``save_pretrained`` stores it (safetensors' ``save_model``
    would keep ``lm_head.weight``, which loaders such as vLLM skip for tied models)."""
    seen: set[tuple] = set()
    tensors = {}
    for name, t in model.state_dict().items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride())
        if key not in seen:
            seen.add(key)
            tensors[name] = t.detach().contiguous()
    return tensors


def save_weights(model, path: str | Path, check: Callable[[str], None] | None = None) -> str:
    """The model's weights as one safetensors file (HF names, ``format: pt``), written atomically; returns its
    sha256. ``check(tmp_path)`` may refuse the new file before it replaces anything."""

    from safetensors.torch import save_file  # torch only where model weights are written

    def write(tmp: str) -> None:
        save_file(weight_tensors(model), tmp, metadata={"format": "pt"})
        if check is not None:
            check(tmp)

    return atomic_write(path, write, digest=True)
