"""The training loop as a generator of small typed reports.

::

    gen = train(collection, config, run_dir)
    report = next(gen)                      # StartReport
    while not isinstance(report, DoneReport):
        report = gen.send(command_or_None)  # Stop(), Pause(), Resume(), UpdateSamples(...), RequestPreview(...)

One step = one batch mixing strong and weak (and unlabeled, with DCR)
samples: strong CE + Dice, each weak sample's terms times its gamma_k
(:mod:`.losses`), and with DCR a second network and cross pseudo supervision
on CutMix pairs (:mod:`.dcr`). Every tau steps the Dynamic Instance Indicator
re-scores every weak sample (:mod:`.dii`) and yields a
:class:`~.reports.WeightsReport`; the weights are written back into
``collection.sample_weights`` with their history.

No Qt, no threads: the widget runs this generator in a worker thread; tests
and the CLI drive it directly (see :func:`run`).

The parts, each in its own module of this folder:

* :mod:`.state` -- the setup (:func:`~.state.build_state`) and the state a run shares;
* :mod:`.schedule` -- the learning-rate schedule;
* :mod:`.step` -- one step: the supervised terms (:class:`~.step.SupervisedLoss`)
  composed with the method terms by :class:`~.step.TrainStep`;
* :mod:`.pixel_term`, :mod:`.dcr_term`, :mod:`.dii_term` -- the method terms;
* :mod:`.previews` -- previews and the pixel-weight pictures;
* :mod:`.checkpointer` -- when and what a checkpoint writes.

This module holds the loop and its commands (:class:`Session`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Generator, Iterable
from pathlib import Path

import torch

from napari_hybridseg.core.data.collection import Collection, Role
from napari_hybridseg.core.errors import ConfigError, NoStrongMaskError, RunError
from napari_hybridseg.core.network.device import release
from napari_hybridseg.core.training.anchor_term import AnchorTerm
from napari_hybridseg.core.training.checkpointer import Checkpointer
from napari_hybridseg.core.training.config import TrainConfig
from napari_hybridseg.core.training.dcr_term import DCRTerm
from napari_hybridseg.core.training.dii_term import DIITerm
from napari_hybridseg.core.training.distributed import Distributed, lost_rank
from napari_hybridseg.core.training.distributed import check_config as check_distributed
from napari_hybridseg.core.training.pixel_term import PixelWeightTerm
from napari_hybridseg.core.training.previews import Previewer
from napari_hybridseg.core.training.reports import (
    DoneReport,
    Pause,
    Report,
    RequestPreview,
    Resume,
    StartReport,
    StepReport,
    Stop,
    UpdateSamples,
)
from napari_hybridseg.core.training.schedule import LRSchedule
from napari_hybridseg.core.training.state import RunState, build_state
from napari_hybridseg.core.training.step import TrainStep

__all__ = ["Session", "run", "train"]

Trainer = Generator[Report, object, None]


def _validate(collection: Collection, config: TrainConfig) -> None:
    """What the config cannot check alone: a strong mask in the data, fixed weights only with DII off.

    Each setting's range was checked when the config was built (:mod:`.config`).
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, not {type(config).__name__}")
    if not any(s.role is Role.STRONG for s in collection):
        raise NoStrongMaskError(
            "no image has a strong mask: training needs at least one. Draw a mask on at least one image "
            "(Labels layer) or import some masks, then train again."
        )
    if config.dii.fixed_weights is not None and config.dii.enabled:
        raise ConfigError("dii.fixed_weights", "fixed weights hold the weak weights fixed: turn dii off "
                          "(dii.enabled=false) to use them")


def train(collection: Collection, config: TrainConfig, run_dir: str | Path | None = None, *,
          init_from: str | Path | None = None, preview_ids: Iterable[str] = (),
          train_scale: float | None = None, dist: Distributed | None = None) -> Trainer:
    """Train on ``collection``; a generator of reports that takes commands through ``send()``.

    Cheap checks run at once (so a bad request fails before a worker thread
    starts); loading and resizing images happens after the first ``next()``.

    Parameters
    ----------
    collection : Collection
        The data. Read at start and after each :class:`UpdateSamples`; learned
        weights are written to ``collection.sample_weights``.
    config : TrainConfig
        All settings (see :mod:`.config`). ``config.model.classes`` and
        ``aux_classes`` are derived from the collection where unset (None) and
        checked where given (:func:`~.state.model_config_for`).
    run_dir : path, optional
        Where checkpoints, ``run.json`` and ``gamma.json`` go; ``None`` keeps
        everything in memory (no :class:`CheckpointReport`).
    init_from : path, optional
        A previous run folder: its model(s) and learned weights are the
        starting point and steps continue from its last step.
    preview_ids : iterable of str
        Samples to preview every ``config.preview_every`` steps.
    train_scale : float, optional
        The run record's ``train_scale`` (original -> training pixels) when
        the caller knows it better than the trainer: the benchmark trains on
        pre-resized copies and passes the scale of the original images.
        None (default): the median over the prepared samples.
    dist : Distributed, optional
        This process's place in a distributed run (:func:`.distributed.from_env`);
        None (default): one process. Only rank 0 should be given ``run_dir``.

    Yields
    ------
    StartReport, then StepReport every step, WeightsReport after each DII
    update, PreviewReport, CheckpointReport, and finally DoneReport.

    Raises
    ------
    NoStrongMaskError
        No strong mask at all (a :class:`~napari_hybridseg.core.errors.TrainingDataError`,
        a ValueError).
    ConfigError
        Fixed weights with DII on, or (at the first ``next()``) a
        ``model.classes``/``aux_classes`` that disagrees with the collection.
    TrainingDataError
        (At the first ``next()``) an image or label that cannot be used.
    """
    _validate(collection, config)
    check_distributed(config, dist)
    session = Session(collection, config, None if run_dir is None else Path(run_dir),
                       None if init_from is None else Path(init_from), tuple(preview_ids), train_scale, dist)
    return session.loop()


def run(collection: Collection, config: TrainConfig, run_dir: str | Path | None = None, *,
        callback: Callable[[Report], object] | None = None, **kwargs) -> DoneReport:
    """Consume :func:`train` to the end and return its :class:`DoneReport`.

    ``callback(report)`` sees every report; whatever it returns (a command or
    ``None``) is sent back to the trainer, so a callback can stop the run.
    Called from the main thread, Ctrl-C (SIGINT) and SIGTERM (``kill``, a
    scheduler's stop, a logout) stop cleanly: the current step is finished, a
    checkpoint written and the DoneReport returned; a second signal interrupts at once
    (in a distributed run, only 5 s after the first: a terminal's Ctrl-C reaches each
    process twice, from the terminal and from torchrun).
    """
    import signal
    import threading

    gen = train(collection, config, run_dir, **kwargs)
    distributed = kwargs.get("dist") is not None
    interrupted: list[float] = []
    previous: dict = {}
    if threading.current_thread() is threading.main_thread():
        def on_signal(signum, frame):  # noqa: ARG001
            if interrupted and (not distributed or time.monotonic() - interrupted[0] > 5.0):
                raise KeyboardInterrupt  # a second Ctrl-C: the user does not want to wait for the step
            interrupted.append(time.monotonic())

        for sig in (signal.SIGINT, getattr(signal, "SIGTERM", None)):
            if sig is not None:
                previous[sig] = signal.signal(sig, on_signal)
    try:
        report = next(gen)
        while True:
            command = callback(report) if callback is not None else None
            if isinstance(report, DoneReport):
                return report
            if interrupted and command is None:
                command = Stop()
            report = gen.send(command)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        gen.close()


class Session:
    """One training run: its commands, its parts (built by :meth:`setup`) and the loop.

    Kept out of module globals so runs never share state. After :meth:`setup`,
    :attr:`state` is the shared :class:`~.state.RunState` and :attr:`train_step`
    the composed step.
    """

    def __init__(self, collection: Collection, config: TrainConfig, run_dir: Path | None,
                 init_from: Path | None, preview_ids: tuple[str, ...], train_scale: float | None = None,
                 dist: Distributed | None = None):
        self.collection = collection
        self.dist = dist
        self.completed = 0  # the last step whose update finished (a distributed run's rescue checkpoint)
        self.train_scale = train_scale
        self.config = config
        self.run_dir = run_dir
        self.init_from = init_from
        self.preview_ids = preview_ids
        self.stop_requested = False
        self.paused = False
        self.pending_previews: list[str] = []
        self.pending_updates: list[UpdateSamples] = []
        self.notes: list[str] = []
        self.state: RunState | None = None

    # -- commands --------------------------------------------------------
    def accept(self, command: object) -> None:
        """Take one command sent to the generator (None: carry on)."""
        if command is None:
            return
        if isinstance(command, Stop):
            self.stop_requested = True
        elif isinstance(command, Pause):
            self.paused = True
        elif isinstance(command, Resume):
            self.paused = False
        elif isinstance(command, UpdateSamples):
            self.pending_updates.append(command)
        elif isinstance(command, RequestPreview):
            self.pending_previews.extend(command.sample_ids)
        else:
            raise TypeError(f"unknown trainer command {command!r}; send Stop, Pause, Resume, UpdateSamples "
                            "or RequestPreview (or None)")

    # -- the parts -------------------------------------------------------
    def setup(self) -> None:
        """Build the state and the parts that use it (the order of :func:`~.state.build_state` is kept)."""
        cfg = self.config
        st = self.state = build_state(self.collection, cfg, self.run_dir, self.init_from)
        if self.dist is not None:
            wrapped = [self.dist.wrap(net) for net in st.nets]  # DDP: rank 0's parameters on every rank
            st.nets, st.ddp_nets = [w[0] for w in wrapped], [w[1] for w in wrapped]
            st.dist = self.dist
            st.dev = dataclasses.replace(st.dev, label=f"{st.dev.label} {self.dist.label}")
        opt = cfg.optim
        self.schedule = LRSchedule(opt.lr, opt.warmup_steps, opt.lr_schedule, cfg.steps, st.start_step)
        self.pixel_term = PixelWeightTerm(st) if cfg.pixel.mode == "exact" else None
        self.anchor = AnchorTerm(st)
        self.dii = DIITerm(st)
        if self.dii.in_batch and self.dist is not None:
            raise ConfigError("dii.scoring", "in-batch scoring is single-process (its weights change inside each "
                              "rank's own batch)", "'full' with torchrun")
        self.train_step = TrainStep(st, self.schedule, self.pixel_term, DCRTerm(st) if cfg.dcr.enabled else None,
                                    self.anchor, dii_term=self.dii)
        self.previewer = Previewer(st)
        pixel = self.pixel_term
        self.checkpointer = Checkpointer(st, (lambda: pixel.summary) if pixel is not None else None,
                                         train_scale=self.train_scale,
                                         pixel_truth=(lambda: pixel.truth.result()) if pixel is not None else None)

    # -- the generator -------------------------------------------------------
    def loop(self) -> Trainer:
        """The generator :func:`train` returns."""
        t_start = time.perf_counter()
        self.setup()
        st = self.state
        self.accept((yield self._start_report()))
        self.sps: float | None = None
        step = self.completed = st.start_step
        last_ckpt = None
        reason = "finished"
        self.checkpointer.last_t = time.perf_counter()
        if self.run_dir is not None and (self.init_from is None or
                                         Path(self.init_from).resolve() != self.run_dir.resolve()):
            # a new run folder is a valid run from the start: killed (kill -9, power) before its first
            # periodic checkpoint, it still holds a model `predict` reads and `--resume` continues
            last_ckpt = self.checkpointer.write(step).path
        if self.anchor.due(step):  # a continued run: its network has trained, anchor before the first step
            self._anchor(step)
        try:
            while step < st.total_steps:
                if self.dist is not None and self.dist.any(self.stop_requested):  # all ranks stop at one step
                    self.stop_requested = True
                if self.stop_requested:
                    reason = "stopped"
                    break
                if self.paused:
                    time.sleep(0.05)  # the caller's loop spins on paused reports; do not burn a core
                    self.accept((yield StepReport(step=step, total_steps=st.total_steps, losses={}, lr=0.0,
                                                  sec_per_step=self.sps or 0.0, eta_s=0.0, device=st.dev.label,
                                                  paused=True)))
                    continue
                if self.pending_updates:
                    st.apply_updates(self.pending_updates)
                step += 1
                last_ckpt = (yield from self._one_step(step)) or last_ckpt
            if self.stop_requested:
                reason = "stopped"
            last_ckpt = (yield from self._final_checkpoint(step)) or last_ckpt
            self.release()
            yield DoneReport(step=step, reason=reason, checkpoint=last_ckpt,
                             wall_s=time.perf_counter() - t_start)
        except RuntimeError as exc:
            if self.dist is None or not lost_rank(exc):
                raise
            raise self._rank_lost(exc) from exc
        finally:
            self.release()

    def _rank_lost(self, exc: BaseException) -> RunError:
        """A collective failed (another rank died or hung): rank 0 checkpoints the last completed step."""
        where = ""
        if self.run_dir is not None:
            try:
                report = self.checkpointer.write(self.completed)
                where = f"; checkpoint of step {self.completed} in {report.path}"
            except Exception as write_exc:  # noqa: BLE001 - the message says what happened to the checkpoint
                where = f"; the checkpoint of step {self.completed} could not be written ({write_exc})"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return RunError(f"process {self.dist.rank} of {self.dist.world_size}: another process of the run "
                        f"stopped answering at step {self.completed + 1} ({first}){where}; see the first "
                        "process's error for the cause")

    def _start_report(self) -> StartReport:
        st, cfg = self.state, self.config
        counts = {r: len(st.ids(r)) for r in Role}
        if counts[Role.UNLABELED] and not cfg.dcr.enabled:
            self.notes.append(f"{counts[Role.UNLABELED]} unlabeled image(s) unused: they enter through DCR only "
                              "(switch on co-regularization, `--dcr`, to use them)")
        if cfg.dii.enabled and counts[Role.WEAK]:
            how = ", weak images scored in-batch" if cfg.dii.scoring == "batch" else ""
            self.notes.append(f"DII updates every {st.tau} steps ({cfg.dii.scorer} scorer{how})")
        pixel = self.pixel_term
        if pixel is not None and pixel.from_strong_model and pixel.starts_after > st.start_step:
            when = (f"after step {pixel.starts_after}" if pixel.starts_after < st.total_steps else
                    f"never in this run (it ends at step {st.total_steps}; lengthen it or set loss.anchor_after)")
            self.notes.append(f"pixel weights start {when}, once network 1 has learnt the strong masks: their "
                              "initial labels come from a snapshot of it (pixel.initial=strong-model)")
        # the step applies the prior to weak images without boxes only (a box is its own negative evidence)
        n_boxless = sum(1 for k in st.ids(Role.WEAK) if not len(st.prepared[k].boxes))
        if cfg.loss.size_prior and n_boxless and st.size_prior is not None and st.size_prior.active:
            names = [c.name for c in sorted(st.collection.classes, key=lambda c: c.value)]
            self.notes.append(f"size prior on the {n_boxless} weak image(s) without boxes: "
                              + "; ".join(st.size_prior.describe(names)))
        n_open = len(self.anchor.open_ids()) if self.anchor.enabled else 0
        if n_open:
            when = ("before the first step (a continued run)" if self.anchor.continued else
                    f"after {self.anchor.every} steps in which they wait while the network learns the strong masks")
            self.notes.append(f"{n_open} weak image(s) say where objects are but not where they are not "
                              f"(clicks): their background comes from the network's prediction {when} "
                              "(loss.anchor; docs/training.md)")
        return StartReport(device=st.dev.label, total_steps=st.total_steps, start_step=st.start_step,
                           n_strong=counts[Role.STRONG], n_weak=counts[Role.WEAK],
                           n_unlabeled=counts[Role.UNLABELED],
                           run_dir=None if self.run_dir is None else str(self.run_dir), notes=tuple(self.notes))

    def _one_step(self, step: int) -> Generator[Report, object, str | None]:
        """Train ``step`` and yield its reports (step, DII, preview, checkpoint); returns a checkpoint's path."""
        st, cfg = self.state, self.config
        t0 = time.perf_counter()
        losses = self.train_step(step)
        self.completed = step
        if self.dist is not None:
            losses = self.dist.mean_losses(losses)  # the logged terms of the global batch
        dt = time.perf_counter() - t0
        if st.threads is not None:
            st.threads.record(dt)
        self.sps = dt if self.sps is None else 0.9 * self.sps + 0.1 * dt
        if cfg.log_every and step % cfg.log_every == 0:
            st.loss_history.append([step, losses])
        self.accept((yield StepReport(step=step, total_steps=st.total_steps, losses=losses,
                                      lr=self.schedule.at(step), sec_per_step=self.sps,
                                      eta_s=self.sps * (st.total_steps - step), device=st.dev.label)))
        if self.dii.due(step):
            report = self.dii.update(step)
            if report is not None:
                self.accept((yield report))
        if self.anchor.due(step):
            self._anchor(step)
        want = list(self.pending_previews)
        self.pending_previews.clear()
        if self.preview_ids and cfg.preview_every and step % cfg.preview_every == 0:
            want += [i for i in self.preview_ids if i not in want]
        if want:
            self.accept((yield self.previewer.preview(step, want)))
        if self.checkpointer.due(step):
            report = self.checkpointer.write(step)
            self.accept((yield report))
            return report.path
        return None

    def _anchor(self, step: int) -> None:
        """Label the open weak images' background (:class:`~.anchor_term.AnchorTerm`), noted in the run record."""
        line = self.anchor.compute(step)
        if line:
            self.state.anchor_log.append(line)

    def _final_checkpoint(self, step: int) -> Generator[Report, object, str | None]:
        """The last checkpoint (and the pixel-weight pictures of a run that trained); returns its path."""
        trained = step > self.state.start_step
        report = self.checkpointer.write(step) if trained or self.run_dir else None
        if report is None:
            return None
        if trained:
            self.previewer.export_pixel_weight_maps(step)
        self.accept((yield report))
        return report.path

    def release(self) -> None:
        """Free accelerator memory: models back to the CPU, caches emptied; torch's thread count as it was."""
        st = self.state
        if st is None:
            return
        if st.threads is not None:
            torch.set_num_threads(st.threads.max_threads)
        if st.dev.device.type != "cpu":
            for net in st.nets:
                net.cpu()
            release(st.dev.device)
