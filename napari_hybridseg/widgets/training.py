"""Background training: the core trainer generator in a napari thread worker.

The trainer (:func:`napari_hybridseg.core.training.trainer.train`) runs in a worker
thread; every report it yields is delivered to the main thread through a Qt
signal. Commands (Stop, UpdateSamples, RequestPreview) go the other way
through a thread-safe queue that :func:`drive` drains between steps, so
several commands sent during one step are all delivered (napari's own
``worker.send`` keeps only the last value).

No Qt object enters the core: the worker hands the core plain data and
receives reports.
"""

from __future__ import annotations

import logging
import queue
import time
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

from qtpy.QtCore import QObject, Signal

from napari_hybridseg.core.training.reports import (
    DoneReport,
    PreviewReport,
    RequestPreview,
    StartReport,
    StepReport,
    Stop,
    UpdateSamples,
    WeightsReport,
)

from ._workers import make_worker

__all__ = ["TrainingFailed", "TrainingRunner", "avoid_triton_in_gui", "default_train_fn", "describe_error", "drive",
           "merge_commands"]

log = logging.getLogger(__name__)

TrainFn = Callable[..., Generator[Any, Any, Any]]


class TrainingFailed(Exception):
    """Any exception raised by the trainer, carried out of the worker thread (``.original``)."""

    def __init__(self, original: BaseException):
        super().__init__(str(original))
        self.original = original


def avoid_triton_in_gui() -> None:
    """Keep torch from importing Triton inside napari (set ``HYBRIDSEG_ALLOW_TRITON=1`` to allow it).

    Triton bundles its own LLVM; loading it into a process where Mesa's
    OpenGL (also LLVM-based, llvmpipe) is already loaded crashes the process
    with a segmentation fault. torch imports Triton only to probe for it (when
    ``torch._dynamo`` loads, e.g. through ``torch.func``); our trainer never
    compiles, so marking it absent costs nothing and keeps napari alive.
    """
    import os
    import sys

    if os.environ.get("HYBRIDSEG_ALLOW_TRITON") != "1" and "triton" not in sys.modules:
        sys.modules["triton"] = None  # type: ignore[assignment]  # "import triton" now raises ImportError


def default_train_fn() -> TrainFn:
    """The real trainer, imported when training starts (it imports torch)."""
    from napari_hybridseg.core.training.trainer import train

    return train


def merge_commands(pending: list[Any]) -> tuple[Any | None, list[Any]]:
    """Pick the command to send now and keep the rest for the next step.

    Stop wins over everything (its step writes the checkpoint). Several
    UpdateSamples merge into one (the newest copy of each sample wins), and
    several RequestPreview merge their ids. Updates go before previews so a
    preview shows the edited labels' effect one step sooner.
    """
    if not pending:
        return None, []
    if any(isinstance(c, Stop) for c in pending):
        return Stop(), []
    updates = [c for c in pending if isinstance(c, UpdateSamples)]
    previews = [c for c in pending if isinstance(c, RequestPreview)]
    others = [c for c in pending if not isinstance(c, UpdateSamples | RequestPreview)]
    rest: list[Any] = []
    merged_preview = None
    if previews:
        ids = tuple(dict.fromkeys(i for c in previews for i in c.sample_ids))
        merged_preview = RequestPreview(ids)
    if updates:
        samples: dict[str, Any] = {}
        removed: dict[str, None] = {}
        for c in updates:
            for s in c.samples:
                samples[s.id] = s
                removed.pop(s.id, None)
            for r in c.removed:
                samples.pop(r, None)
                removed[r] = None
        now: Any = UpdateSamples(tuple(samples.values()), tuple(removed))
        rest = [*others, *([merged_preview] if merged_preview else [])]
        return now, rest
    if others:
        return others[0], [*others[1:], *([merged_preview] if merged_preview else [])]
    return merged_preview, []


def drive(gen: Generator[Any, Any, Any], commands: queue.Queue,
          prepare: Callable[[Any], Any] | None = None) -> Iterator[Any]:
    """Run a trainer generator, feeding it queued commands; yield its reports.

    Parameters
    ----------
    gen : generator
        A started-or-not trainer generator (reports out, commands in).
    commands : queue.Queue
        Commands put by the main thread at any time.
    prepare : callable, optional
        Heavy per-report work done here, in the worker thread (e.g. turning a
        PreviewReport into display arrays), so the main thread stays cheap.
    """
    pending: list[Any] = []
    report = next(gen)
    while True:
        yield prepare(report) if prepare is not None else report
        if isinstance(report, DoneReport):
            gen.close()
            return
        while True:
            try:
                pending.append(commands.get_nowait())
            except queue.Empty:
                break
        cmd, pending = merge_commands(pending)
        try:
            report = gen.send(cmd)
        except StopIteration:
            return


def _is_out_of_memory(exc: BaseException) -> bool:
    """MemoryError, or torch's out-of-memory type (torch is only looked at when it is already imported)."""
    import sys

    if isinstance(exc, MemoryError):
        return True
    torch = sys.modules.get("torch")
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(getattr(torch, "cuda", None), "OutOfMemoryError", None)
    return isinstance(oom, type) and isinstance(exc, oom)


def describe_error(exc: BaseException) -> str:
    """A one-line message saying what went wrong in training and what to do, chosen by the exception's type.

    The core raises the types of :mod:`napari_hybridseg.core.errors` (their
    messages already say what to do); torch's out-of-memory error and
    :class:`MemoryError`, and :class:`ImportError`, get their own advice.
    """
    from napari_hybridseg.core import errors as E

    text = f"{exc.__class__.__name__}: {exc}"
    if _is_out_of_memory(exc):
        return (f"Training ran out of memory ({text}). Lower the input size or the batch size, "
                "choose a smaller encoder, or train on the CPU.")
    if isinstance(exc, E.NoStrongMaskError):
        return f"Training needs at least one image with a full mask: draw one and press Train again. ({exc})"
    if isinstance(exc, E.TrainingDataError):
        return f"An image cannot be used for training: {exc}. Fix or remove it and press Train again."
    if isinstance(exc, E.ConfigError):
        return f"A training setting is not valid: {exc}. Change it and press Train again."
    if isinstance(exc, E.RunError):
        return f"The run to continue cannot be used: {exc}. Untick 'continue from the last model' to start a new run."
    if isinstance(exc, E.CheckpointError):
        return f"Training stopped: {exc}. The last checkpoint was kept."
    if isinstance(exc, E.DivergedError):
        return f"Training diverged: {exc}."
    if isinstance(exc, ImportError):
        return f"Training is not available: {text}. Reinstall napari-hybridseg (pip install napari-hybridseg)."
    if isinstance(exc, E.HybridsegError):
        return f"Training stopped: {exc}."
    return f"Training stopped with an error: {text}. Your annotations are saved; check the settings and try again."


class TrainingRunner(QObject):
    """Owns one background training run at a time.

    Signals carry the core's report objects to the main thread.

    Parameters
    ----------
    train_fn : callable, optional
        The trainer generator function (default: the core trainer, imported
        lazily). Tests pass a fake with the same signature.
    """

    started = Signal(object)  # StartReport
    stepped = Signal(object)  # StepReport
    weights = Signal(object)  # WeightsReport
    preview = Signal(object)  # PreviewReport
    other = Signal(object)  # CheckpointReport and anything new
    done = Signal(object)  # DoneReport
    failed = Signal(str, object)  # message, exception
    finished = Signal()  # always last, after done or failed

    def __init__(self, train_fn: TrainFn | None = None, parent: QObject | None = None):
        super().__init__(parent)
        self._train_fn = train_fn
        self._commands: queue.Queue = queue.Queue()
        self.worker = None
        self.last_start: StartReport | None = None
        self.last_done: DoneReport | None = None
        self.started_at: float | None = None

    @property
    def running(self) -> bool:
        return self.worker is not None

    def start(self, collection, config, run_dir: str | Path, *, init_from: str | Path | None = None,
              preview_ids: tuple[str, ...] = (), total_steps: int | None = None) -> None:
        """Start training ``collection`` (a snapshot the main thread no longer edits) in a worker thread."""
        if self.worker is not None:
            raise RuntimeError("training is already running: stop it first")
        self._commands = queue.Queue()
        self.last_start = self.last_done = None
        self.started_at = time.perf_counter()
        train_fn = self._train_fn
        commands = self._commands
        avoid_triton_in_gui()

        def work():
            try:
                fn = train_fn if train_fn is not None else default_train_fn()
                gen = fn(collection, config, Path(run_dir), init_from=init_from, preview_ids=tuple(preview_ids))
                yield from drive(gen, commands)
            except Exception as exc:
                # napari's worker treats a RuntimeError as "worker deleted" and swallows it; torch reports
                # out-of-memory as RuntimeError, so every failure is wrapped to reach the errored signal
                raise TrainingFailed(exc) from exc

        # we show our own notification that says what to do, not napari's raw traceback
        worker = make_worker(work, connect={"errored": self._on_error},
                             progress={"total": int(total_steps or config.steps), "desc": "HybridSeg training"})
        # the bar counts training steps, not reports (previews and weights are reports too)
        pbar = getattr(worker, "pbar", None)
        if pbar is not None:
            try:
                worker.yielded.disconnect(pbar.increment_with_overflow)
            except (TypeError, RuntimeError):
                pass
        self._pbar_step = None
        worker.yielded.connect(self._on_report)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        worker.start()

    def send(self, command: Any) -> None:
        """Queue a command for the running trainer (ignored when nothing runs)."""
        if self.worker is not None:
            self._commands.put(command)

    def stop(self) -> None:
        """Ask the trainer to finish its current step, keep a checkpoint and end."""
        self.send(Stop())

    def _on_report(self, report: Any) -> None:
        if isinstance(report, StepReport):
            self._advance_bar(report)
            self.stepped.emit(report)
        elif isinstance(report, PreviewReport):
            self.preview.emit(report)
        elif isinstance(report, WeightsReport):
            self.weights.emit(report)
        elif isinstance(report, StartReport):
            self.last_start = report
            self.started.emit(report)
        elif isinstance(report, DoneReport):
            self.last_done = report
            self.done.emit(report)
        else:
            self.other.emit(report)

    def _advance_bar(self, report: StepReport) -> None:
        pbar = getattr(self.worker, "pbar", None)
        if pbar is None:
            return
        start = self.last_start.start_step if self.last_start is not None else 0
        total = max(1, report.total_steps - start)
        if pbar.total != total:
            pbar.total = total
        done = min(total, report.step - start)
        if done > pbar.n:
            pbar.update(done - pbar.n)

    def _on_error(self, exc: BaseException) -> None:
        exc = getattr(exc, "original", exc)
        log.error("training failed", exc_info=exc)
        self.failed.emit(describe_error(exc), exc)

    def _on_finished(self) -> None:
        self.worker = None
        self.finished.emit()

    def wait(self, timeout_s: float = 60.0) -> bool:
        """Process events until the run ends (for tests and the demo). Returns whether it ended."""
        from qtpy.QtWidgets import QApplication

        end = time.perf_counter() + timeout_s
        while self.worker is not None and time.perf_counter() < end:
            QApplication.processEvents()
            time.sleep(0.005)
        return self.worker is None
