"""Typed reports the trainer yields and commands it accepts through ``send()``.

The trainer (:func:`napari_hybridseg.core.training.trainer.train`) is a generator::

    gen = train(collection, config, run_dir)
    report = next(gen)
    while True:
        ...                      # show the report
        report = gen.send(cmd)   # cmd: None or one of the commands below

Every report is small and picklable; arrays appear only in
:class:`PreviewReport`, at each sample's original resolution. No Qt object
ever enters the core: the widget maps reports to layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from napari_hybridseg.core.data.collection import Sample

__all__ = [
    "CheckpointReport",
    "Command",
    "DoneReport",
    "Pause",
    "PreviewReport",
    "Report",
    "RequestPreview",
    "Resume",
    "StartReport",
    "StepReport",
    "Stop",
    "UpdateSamples",
    "WeightsReport",
]


# -- reports -------------------------------------------------------------
@dataclass(frozen=True)
class StartReport:
    """Yielded once before the first step: what will run, and where."""

    device: str  # e.g. "cpu (bf16 autocast)", "cuda:0 NVIDIA H100 (fp16 AMP)"
    total_steps: int
    start_step: int
    n_strong: int
    n_weak: int
    n_unlabeled: int
    run_dir: str | None
    notes: tuple[str, ...] = ()  # one-line notices (fallbacks, skipped samples...)


@dataclass(frozen=True)
class StepReport:
    """Yielded after every training step."""

    step: int  # 1-based, global (continues across resumed runs)
    total_steps: int
    losses: dict[str, float]  # by term, plus "total"
    lr: float
    sec_per_step: float  # smoothed
    eta_s: float
    device: str
    paused: bool = False


@dataclass(frozen=True)
class WeightsReport:
    """Yielded after every DII update: current weights of every weak sample."""

    step: int
    sample_weights: dict[str, float]
    #: whether this update counted and why ("counted (strong-set Dice 0.72)", "not counted: ...")
    gate: str = ""


@dataclass(frozen=True)
class PreviewReport:
    """Predictions (and pixel weights, if learned) of the requested samples.

    All arrays are at the sample's original (rows, cols).
    """

    step: int
    labels: dict[str, np.ndarray]  # sample id -> label mask (uint8, label values)
    probabilities: dict[str, np.ndarray]  # sample id -> foreground probability (float32, max over classes)
    pixel_weights: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # (w_init, w_own)
    sample_weights: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class CheckpointReport:
    """A checkpoint was written."""

    step: int
    path: str


@dataclass(frozen=True)
class DoneReport:
    """The last report: why training ended and where the model is."""

    step: int
    reason: str  # "finished" | "stopped"
    checkpoint: str | None
    wall_s: float


Report = StartReport | StepReport | WeightsReport | PreviewReport | CheckpointReport | DoneReport


# -- commands ------------------------------------------------------------
@dataclass(frozen=True)
class Stop:
    """Finish the current step, write a checkpoint, yield DoneReport."""


@dataclass(frozen=True)
class Pause:
    """Stop stepping; the generator keeps yielding paused StepReports until Resume or Stop."""


@dataclass(frozen=True)
class Resume:
    """Continue after Pause."""


@dataclass(frozen=True)
class UpdateSamples:
    """New or edited samples (replaced by id) and removed ids; applied at the next step."""

    samples: tuple[Sample, ...] = ()
    removed: tuple[str, ...] = ()


@dataclass(frozen=True)
class RequestPreview:
    """Ask for a PreviewReport of these samples after the current step."""

    sample_ids: tuple[str, ...]


Command = Stop | Pause | Resume | UpdateSamples | RequestPreview
