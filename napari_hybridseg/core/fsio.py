"""Durable, atomic file writes: the one place the package writes a file that must never be half there.

A write goes to a temporary file beside the target, is fsynced, renamed over
the target and the folder fsynced, so after a crash or power loss the file is
either the old one or the new one. Used by the project store, the run folder
and the benchmark.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["atomic_write", "atomic_write_json", "atomic_write_text", "crash_point", "fsync_dir", "fsync_file",
           "json_default"]


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _read_umask()
_crash_steps = 0


def crash_point() -> None:
    """Tests only: ``HYBRIDSEG_CRASH_AT=N`` kills this process (SIGKILL) at the N-th step of a save;
    ``HYBRIDSEG_CRASH_COUNT=FILE`` writes how many steps a save took."""
    at = os.environ.get("HYBRIDSEG_CRASH_AT")
    count = os.environ.get("HYBRIDSEG_CRASH_COUNT")
    if not at and not count:
        return
    global _crash_steps
    _crash_steps += 1
    if count:
        Path(count).write_text(str(_crash_steps))
    if at and int(at) == _crash_steps:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename or a new file in ``path`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # Windows
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, fsync it, rename it over ``path``, fsync the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp makes 0600; projects and runs are meant to be shared and read
        write(tmp)
        fsync_file(tmp)
        crash_point()
        os.replace(tmp, path)
        fsync_dir(path.parent)
        crash_point()
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def json_default(obj: Any) -> Any:
    """numpy scalars and arrays, and paths, as JSON."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def atomic_write_json(path: str | Path, data: Any, *, allow_nan: bool = True) -> None:
    """Indented JSON (numpy values and paths allowed), written atomically and durably."""
    atomic_write_text(path, json.dumps(data, indent=1, default=json_default, allow_nan=allow_nan) + "\n")
