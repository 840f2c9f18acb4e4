"""The one way the widgets start a napari thread worker whose errors they report themselves."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = ["make_worker"]


def make_worker(work: Callable, *, connect: dict[str, Callable], progress: dict[str, Any] | None = None):
    """A napari worker running ``work`` (not started yet: call ``worker.start()``).

    Parameters
    ----------
    work : callable
        The function (or generator function) run in the worker thread.
    connect : dict
        Signal name -> slot, as napari's ``_connect`` (``"errored"``, ``"returned"``, ``"yielded"``...).
    progress : dict, optional
        napari's ``_progress`` (a progress bar: ``{"total": n, "desc": text}``).

    The worker's error goes only to ``connect["errored"]``: napari's own relay,
    which shows the raw traceback, is disconnected (a private attribute: absent
    in some napari versions, where there is nothing to disconnect), because the
    widgets show their own message that says what to do.
    """
    from napari.qt.threading import create_worker

    options: dict[str, Any] = {"_connect": connect, "_start_thread": False}
    if progress is not None:
        options["_progress"] = progress
    worker = create_worker(work, **options)
    try:
        worker.errored.disconnect(worker._relay_error)
    except (AttributeError, TypeError, RuntimeError):
        pass
    return worker
