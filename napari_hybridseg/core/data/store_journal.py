"""How a project folder is written so that a save can never lose an annotation: staged files, a journal, recovery.

Every file of a save is written under a staged name and fsynced; one atomic
write of a journal listing the renames commits the save; then the files are
renamed into place (``project.json`` last) and files that go are moved to
``.hybridseg-trash/<save>/``, never deleted. :func:`recover` finishes a
committed save or moves the files of an uncommitted one to the trash. The
public names are re-exported by :mod:`napari_hybridseg.core.data.store`.

This module is Qt-free and napari-free.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from napari_hybridseg.core.errors import HybridsegError
from napari_hybridseg.core.fsio import UMASK, atomic_write, crash_point, fsync_dir, fsync_file

FORMAT = "napari-hybridseg-project"
VERSION = 1
WEIGHTS_FORMAT = "napari-hybridseg-weights"
PROJECT_FILE = "project.json"
WEIGHTS_FILE = "weights.json"


class StoreError(HybridsegError, ValueError):
    """A project file that cannot be read or written; the message names the file and what to do."""



# ----------------------------------------------------------------------------------------------
# durable, atomic writes
# ----------------------------------------------------------------------------------------------
JOURNAL_FILE = ".hybridseg-journal.json"
TRASH_DIR = ".hybridseg-trash"
SAVE_LOCK = ".hybridseg.lock"
_STAGED = ".staged"


def _stage(path: Path, write: Callable[[Path], None], txn: str) -> Path:
    """Write ``write(tmp)`` durably to a staged file beside ``path``; the journal later renames it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(f".{path.name}.{txn}{_STAGED}")
    try:
        write(staged)
        os.chmod(staged, 0o666 & ~UMASK)
        fsync_file(staged)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    crash_point()
    return staged


def _trash(root: Path, path: Path, txn: str) -> None:
    """Move ``path`` into ``.hybridseg-trash/<txn>/`` (same relative path): files are never deleted outright."""
    if not path.exists():
        return
    try:
        rel = path.relative_to(root)
    except ValueError:
        rel = Path(path.name)
    dst = root / TRASH_DIR / txn / rel
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path, dst)
    fsync_dir(dst.parent)
    fsync_dir(path.parent)
    crash_point()


def _apply_journal(root: Path, journal: dict) -> None:
    """Finish a committed save: rename every staged file into place (project.json last), then trash what goes.

    Idempotent: a staged file already renamed is skipped, so a save killed half-way
    through this is finished by the next open.
    """
    txn = str(journal.get("txn", "unknown"))
    dirs = set()
    for staged_rel, final_rel in journal.get("renames", []):
        staged, final = root / staged_rel, root / final_rel
        if staged.exists():
            os.replace(staged, final)
            dirs.add(final.parent)
            crash_point()
    for d in dirs:
        fsync_dir(d)
    for rel in journal.get("trash", []):
        _trash(root, root / rel, txn)


def recover(path: str | Path) -> list[str]:
    """Finish or undo an interrupted save of the project at ``path``; return what was done (one line each).

    A committed save (its journal exists) is finished. Files of a save that was
    killed before its commit (staged and temporary files) are moved into
    ``.hybridseg-trash/`` rather than deleted. Called by :func:`load_project` and
    before every save; a no-op on a folder that cannot be written or is being
    saved by another process right now.
    """
    from napari_hybridseg.core.data.locks import FolderLock, LockedError

    root = Path(path)
    if not root.is_dir():
        return []
    journal_path = root / JOURNAL_FILE
    stale = [p for d in (root, root / "masks", root / "reference_masks", root / "annotations", root / "images")
             if d.is_dir() for p in d.iterdir()
             if p.name.startswith(".") and (p.name.endswith(_STAGED) or p.name.endswith(".tmp"))]
    if not journal_path.exists() and not stale:
        return []
    lock = FolderLock(root, SAVE_LOCK, "project")
    try:
        lock.acquire(timeout=0.0)
    except (LockedError, OSError):
        return []  # another process is saving (its files are not stale), or the folder is read-only
    try:
        return _recover_locked(root)
    finally:
        lock.release()


def _recover_locked(root: Path) -> list[str]:
    done = []
    journal_path = root / JOURNAL_FILE
    if journal_path.exists():
        try:
            journal = json.loads(journal_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise StoreError(f"{journal_path}: an interrupted save left a journal that cannot be read ({exc}); "
                             f"move it away to open the project as it was before that save") from exc
        _apply_journal(root, journal)
        journal_path.unlink()
        fsync_dir(root)
        done.append(f"finished a save that was interrupted ({len(journal.get('renames', []))} file(s))")
    stale = [p for d in (root, root / "masks", root / "reference_masks", root / "annotations", root / "images")
             if d.is_dir() for p in d.iterdir()
             if p.name.startswith(".") and (p.name.endswith(_STAGED) or p.name.endswith(".tmp"))]
    if stale:
        txn = time.strftime("%Y%m%d-%H%M%S") + "-stale"
        for p in stale:
            _trash(root, p, txn)
        done.append(f"moved {len(stale)} file(s) of a save that never completed to {TRASH_DIR}/{txn}")
    return done


def _dumps(data: Any) -> str:
    """Indented JSON, except that each entry of a top-level "samples" list stays on one line.

    One line per sample keeps a 1000-sample project.json short, diff-friendly
    and greppable, and makes the line number in an error point at the sample.
    """
    if not (isinstance(data, dict) and isinstance(data.get("samples"), list) and data["samples"]):
        return json.dumps(data, indent=1, ensure_ascii=False, allow_nan=False) + "\n"
    head = json.dumps({k: v for k, v in data.items() if k != "samples"}, indent=1, ensure_ascii=False,
                      allow_nan=False)
    rows = ",\n".join("  " + json.dumps(e, ensure_ascii=False, allow_nan=False) for e in data["samples"])
    return head[:-2] + ',\n "samples": [\n' + rows + "\n ]\n}\n"


def _write_json(path: Path, data: Any) -> None:
    text = _dumps(data)
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _png_writer(arr: np.ndarray) -> Callable[[Path], None]:
    from PIL import Image

    def write(tmp: Path) -> None:
        Image.fromarray(arr).save(tmp, format="PNG")

    return write


def _image_writer(path: Path, arr: np.ndarray) -> Callable[[Path], None]:
    """uint8 images as PNG; everything else as TIFF so that pixels survive exactly."""
    if path.suffix == ".png":
        return _png_writer(arr)
    import tifffile

    photometric = "rgb" if arr.ndim == 3 else "minisblack"
    return lambda tmp: tifffile.imwrite(tmp, arr, photometric=photometric)


def _relpath(path: Path, start: Path) -> str:
    try:
        return Path(os.path.relpath(path, start)).as_posix()
    except ValueError:  # another drive on Windows: no relative path exists
        return Path(path).resolve().as_posix()


class _Plan:
    """Everything a save will write, built (and validated) before the first write."""

    def __init__(self) -> None:
        self.json: dict[Path, Any] = {}
        self.masks: dict[Path, np.ndarray] = {}
        self.images: dict[Path, np.ndarray] = {}
        self.copies: dict[Path, Path] = {}
        self.remove: list[Path] = []
        self.image_paths: dict[str, Path] = {}  # sample id -> where its image lives after the save

    def execute(self, root: Path) -> None:
        """Write every file, then commit them all at once.

        Each file is first written (and fsynced) under a staged name; then one
        journal listing every rename is written atomically: that is the commit.
        The renames follow (project.json last, so a reader unaware of the journal
        sees the old or the new index), then files that go are moved to the trash,
        then the journal is removed. A kill before the commit leaves the project
        as it was (the staged files go to the trash on the next open); after it,
        the next open finishes the save.
        """
        txn = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{os.urandom(3).hex()}"
        writes: list[tuple[Path, Callable[[Path], None]]] = []
        for dst, src in self.copies.items():
            writes.append((dst, lambda tmp, src=src: shutil.copyfile(src, tmp)))
        for path, arr in self.images.items():
            writes.append((path, _image_writer(path, arr)))
        for path, arr in self.masks.items():
            writes.append((path, _png_writer(arr)))
        for path, data in sorted(self.json.items(), key=lambda kv: kv[0].name == PROJECT_FILE):
            text = _dumps(data)
            writes.append((path, lambda tmp, text=text: tmp.write_text(text, encoding="utf-8")))
        staged: list[tuple[Path, Path]] = []
        try:
            for final, write in writes:
                staged.append((_stage(final, write, txn), final))
            for d in {f.parent for _, f in staged}:
                fsync_dir(d)
            journal = {"format": "napari-hybridseg-journal", "txn": txn,
                       "renames": [[_relpath(a, root), _relpath(b, root)] for a, b in staged],
                       "trash": [_relpath(p, root) for p in self.remove if p.exists()]}
            _write_json(root / JOURNAL_FILE, journal)  # the commit point
        except BaseException:
            for a, _ in staged:
                a.unlink(missing_ok=True)
            raise
        _apply_journal(root, journal)
        (root / JOURNAL_FILE).unlink()
        fsync_dir(root)
        crash_point()


class _save_lock:
    """Hold the project's save lock (waiting for another process's save, which takes moments) and finish or
    undo an interrupted earlier save first."""

    def __init__(self, root: Path):
        from napari_hybridseg.core.data.locks import FolderLock

        self.lock = FolderLock(root, SAVE_LOCK, "project")

    def __enter__(self):
        from napari_hybridseg.core.data.locks import LockedError

        try:
            self.lock.acquire(timeout=30.0)
        except LockedError as exc:
            raise StoreError(f"{exc} (another program is saving this project)") from exc
        except OSError as exc:
            raise StoreError(f"{self.lock.folder}: cannot write the project folder ({exc.strerror or exc}); "
                             "check its permissions and free space") from exc
        try:
            _recover_locked(self.lock.folder)
        except BaseException:
            self.lock.release()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.lock.release()
