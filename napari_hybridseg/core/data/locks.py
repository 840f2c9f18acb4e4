"""Lock files on a folder (a project, a run folder), so that a second writer is told, not silently overwritten.

::

    with FolderLock(run_dir, what="run folder"):
        ...  # train, write checkpoints

The lock is ``<folder>/<name>`` holding who holds it (pid, host, command,
start time). On POSIX it is an ``fcntl.flock`` on that file, which the kernel
drops when the process ends, however it ends (``kill -9`` included): the file of
a dead process is a stale lock and is taken over. Elsewhere the file is created
exclusively and a lock whose process no longer runs is taken over.

This module is Qt-free and napari-free.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from napari_hybridseg.core.errors import HybridsegError

__all__ = ["FolderLock", "LockedError"]

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


class LockedError(HybridsegError, RuntimeError):
    """The folder is locked by another live process; the message says which and what to do."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:  # pragma: no cover
        return False
    return True


class FolderLock:
    """An exclusive lock on ``folder`` (created if needed), held until :meth:`release`.

    Parameters
    ----------
    folder : path
    name : str
        The lock file's name inside ``folder``.
    what : str
        How the folder is called in the message to a second writer.
    """

    def __init__(self, folder: str | Path, name: str = ".hybridseg.lock", what: str = "folder"):
        self.folder = Path(folder)
        self.path = self.folder / name
        self.what = what
        self._fd: int | None = None

    def holder(self) -> dict:
        """What the lock file says about its holder (empty if unreadable)."""
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _message(self, info: dict) -> str:
        pid = info.get("pid", "?")
        since = info.get("started")
        when = time.strftime(" since %H:%M:%S", time.localtime(since)) if isinstance(since, (int, float)) else ""
        cmd = f" ({info['command']})" if info.get("command") else ""
        host = info.get("host")
        where = f" on {host}" if host and host != socket.gethostname() else ""
        return (f"{self.folder}: {self.what} in use by process {pid}{where}{cmd}{when}; wait for it to finish or "
                f"stop it, or choose another folder (lock file {self.path.name})")

    def acquire(self, timeout: float = 0.0) -> FolderLock:
        """Take the lock, waiting up to ``timeout`` seconds; :class:`LockedError` if another process holds it."""
        self.folder.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + timeout
        while True:
            if self._try():
                return self
            if time.monotonic() >= deadline:
                raise LockedError(self._message(self.holder()))
            time.sleep(0.05)

    def _info(self) -> str:
        return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                           "command": " ".join(Path(sys.argv[0]).name.split() + sys.argv[1:])[:200]})

    def _try(self) -> bool:
        if fcntl is not None:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                return False
            os.ftruncate(fd, 0)
            os.write(fd, self._info().encode())
            self._fd = fd
            return True
        # pragma: no cover - without flock: exclusive creation, stale files of dead processes taken over
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            pid = self.holder().get("pid")
            if isinstance(pid, int) and not _alive(pid):
                self.path.unlink(missing_ok=True)
                return self._try()
            return False
        os.write(fd, self._info().encode())
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            # remove the file while still holding the lock, so nobody who opened it meanwhile keeps a stale one
            if fcntl is None:
                os.close(fd)
                self.path.unlink(missing_ok=True)
                return
            os.ftruncate(fd, 0)
        finally:
            if fcntl is not None:
                os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> FolderLock:
        if not self.held:
            self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
