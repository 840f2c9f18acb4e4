"""The run folder: model(s), ``run.json`` and ``gamma.json``.

Layout of ``RUN/``::

    model/            network 1 (inference), segmentation-models-pytorch format
    model_b/          network 2 when dynamic co-regularization is on
    run.json          settings, seed, versions, classes, tags, step, loss history,
                      learned weights and their histories (:class:`.run_record.RunRecord`)
    gamma.json        every weak sample id -> final weight, history, corrupted flag

Both JSON files are written by :func:`.run_record.write_run_record` only;
this module reads them back and guards the writes.

JSON files are written to a temporary file, fsynced and renamed into place,
so an interrupted write never leaves a truncated file; model folders are
written beside their old copy and swapped in (:func:`.models.save_model`),
then fsynced. A checkpoint that cannot be written (a full disk) raises
:class:`CheckpointError` with one line saying what to do, and the last
checkpoint stays as it was. :func:`recover_run` puts back a model folder a
kill took away in the middle of that swap.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

from napari_hybridseg.core.errors import CheckpointError, RunError
from napari_hybridseg.core.fsio import fsync_dir as _fsync

__all__ = ["CheckpointError", "RunError", "guarded_write", "read_run", "recover_run", "sync_tree"]


def sync_tree(folder: str | Path) -> Path:
    """fsync every file of ``folder``, the folder and its parent (so a renamed-in folder survives a power cut)."""
    folder = Path(folder)
    for p in folder.iterdir():
        if p.is_file():
            _fsync(p)
    _fsync(folder)
    _fsync(folder.parent)
    return folder



@contextlib.contextmanager
def guarded_write(run_dir: Path, step: int):
    """Turn a failed checkpoint write (no space left, a read-only folder, safetensors' own error) into a
    :class:`CheckpointError` naming the folder, after removing the half-written temporary copies."""
    try:
        yield
    except Exception as exc:
        if isinstance(exc, CheckpointError) or not _is_write_error(exc):
            raise
        for tmp in list(Path(run_dir).glob("*.tmp")) + list(Path(run_dir).glob(".*.tmp")):
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        last = _last_step(run_dir)
        kept = f"the last checkpoint (step {last}) is intact" if last is not None else "no checkpoint was written yet"
        why = getattr(exc, "strerror", None) or str(exc).splitlines()[0][:160]
        if _no_space(exc):
            why = "no space left on the device"
        raise CheckpointError(f"{run_dir}: cannot write the checkpoint of step {step} ({why}); {kept}. Free space "
                              f"under {run_dir} (or choose another --out) and continue with --resume") from exc


def _no_space(exc: BaseException) -> bool:
    import errno

    return getattr(exc, "errno", None) == errno.ENOSPC or "No space left" in str(exc) or "StorageFull" in str(exc)


def _is_write_error(exc: BaseException) -> bool:
    if isinstance(exc, OSError):
        return True
    name = type(exc).__name__
    return name == "SafetensorError" or _no_space(exc)


def _last_step(run_dir: Path) -> int | None:
    try:
        return int(json.loads((Path(run_dir) / "run.json").read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def recover_run(run_dir: str | Path) -> None:
    """Put back a model folder that a kill took away while it was being replaced by a newer one.

    :func:`.models.save_model` renames ``model/`` to ``model.old/`` and the new
    ``model.tmp/`` to ``model/``; a kill between the two leaves no ``model/``.
    """
    run_dir = Path(run_dir)
    for name in ("model", "model_b"):
        folder, old = run_dir / name, run_dir / f"{name}.old"
        if not folder.exists() and (old / "model.safetensors").is_file():
            try:
                os.replace(old, folder)
            except OSError:
                continue


def read_run(run_dir: str | Path) -> dict:
    """Read ``run.json`` of a run folder, with a clear error (:class:`RunError`) if it is not one or is broken."""
    path = Path(run_dir) / "run.json"
    recover_run(run_dir)
    if not path.exists():
        raise RunError(f"{run_dir}: no run.json; pass a folder written by `hybridseg train --out`")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise RunError(f"{path}: line {exc.lineno} column {exc.colno}: invalid JSON ({exc.msg}); restore the file "
                       "or train a new run (--force)") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise RunError(f"{path}: cannot read ({exc}); restore the file or train a new run (--force)") from exc
    if not isinstance(record, dict) or not isinstance(record.get("step", 0), int):
        raise RunError(f"{path}: not a run record (an object with \"step\", \"classes\"...); restore the file or "
                       "train a new run (--force)")
    return record


def load_run_model(folder: str | Path, *, what_to_do: str = "restore it or train again"):
    """:func:`.models.load_model` with one-line errors (:class:`RunError`) for a missing, empty, truncated or
    otherwise unreadable model, naming the file."""
    from napari_hybridseg.core.network.models import load_model

    folder = Path(folder)
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise RunError(f"{folder}: no model.safetensors; pass the --out folder of `hybridseg train`, or {what_to_do}")
    size = weights.stat().st_size
    if size == 0:
        raise RunError(f"{weights}: empty file (0 bytes), the checkpoint was cut off; {what_to_do}")
    config_file = folder / "hybridseg_model.json"
    if config_file.is_file():
        try:
            json.loads(config_file.read_text(encoding="utf-8"))
        except (ValueError, OSError) as exc:
            raise RunError(f"{config_file}: broken ({exc}); {what_to_do}") from exc
    try:
        return load_model(folder)
    except RunError:
        raise
    except Exception as exc:  # SafetensorError (truncated header or data), a state dict that does not fit...
        detail = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise RunError(f"{weights}: cannot be read ({type(exc).__name__}: {detail}; {size} bytes, truncated or "
                       f"damaged); {what_to_do}") from exc
