"""The run record: what ``run.json`` (and ``gamma.json``) of a run folder hold, typed, and the one writer.

:class:`RunRecord` is the content of ``run.json``; :func:`write_run_record`
is the only function that writes it (with ``gamma.json``), through
:func:`napari_hybridseg.core.fsio.atomic_write_json`. A learned weight is
``"weight"`` in both files (``run.json`` of format 1 called it ``"value"``:
:func:`weight_of` reads either).

Format history: 1 (flat settings, ``"value"``), 2 (nested settings with
``config_version``, ``"weight"``).
"""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from napari_hybridseg.core.data.collection import Collection, WeightState
from napari_hybridseg.core.fsio import atomic_write_json

__all__ = ["RUN_FORMAT", "RunRecord", "gamma_record", "versions", "weight_of", "weights_of", "write_run_record"]

RUN_FORMAT = 2


def versions() -> dict[str, str]:
    """The versions that decide what a run computes."""
    import segmentation_models_pytorch as smp
    import torch

    from napari_hybridseg import __version__

    return {"napari_hybridseg": __version__, "torch": torch.__version__,
            "segmentation_models_pytorch": smp.__version__, "python": platform.python_version()}


def weight_of(entry: Any) -> float:
    """A learned weight from a ``run.json``/``gamma.json`` entry.

    ``{"weight": w}``, ``{"value": w}`` (``run.json`` of format 1) or a bare ``w``.
    """
    if isinstance(entry, dict):
        return float(entry["weight"] if "weight" in entry else entry["value"])
    return float(entry)


def weights_of(record: dict) -> dict[str, float]:
    """``{sample id: weight}`` of a read ``run.json`` of any format."""
    return {k: weight_of(v) for k, v in (record.get("sample_weights") or {}).items()}


def _weights(states: dict[str, WeightState]) -> dict[str, dict]:
    return {k: {"weight": s.value, "history": [list(h) for h in s.history]} for k, s in states.items()}


def gamma_record(collection: Collection) -> dict[str, dict]:
    """``gamma.json`` content: per weak sample, its weight, history and corruption flag, lowest weight first."""
    out = {}
    for sid, state in sorted(collection.sample_weights.items(), key=lambda kv: kv[1].value):
        sample = collection.samples.get(sid)
        out[sid] = {
            "weight": state.value,
            "history": [list(h) for h in state.history],
            "corrupted": bool(sample.corrupted) if sample is not None else False,
            "corruption": sample.corruption if sample is not None else None,
        }
    return out


@dataclass
class RunRecord:
    """The content of ``run.json``.

    Attributes
    ----------
    step, total_steps : int
        The step of this checkpoint and the run's last step.
    settings : dict
        ``TrainConfig.to_dict()``.
    seed : int or None
        The run's seed (also in ``settings``).
    versions : dict
        :func:`versions`.
    classes, tags : list of dict
        The collection's classes (name, value, color) and tag vocabulary.
    loss_history : list
        ``[step, {term: value}]`` entries (every ``log_every`` steps).
    sample_weights : dict
        Learned weights: id -> ``{"weight": w, "history": [[step, w], ...]}``.
    model : dict
        The network's ModelConfig (classes as trained).
    encoder_weights : dict
        What the networks started from (``models.weights_record``; ``continued_from`` when resumed).
    device : str
        Where it trained.
    dii_tau : int
        Steps between DII updates.
    input_size : int
        Square training size.
    train_scale : float
        Median factor original -> training pixels (the predictor tiles huge
        images at this scale); given by the caller when the training images
        are pre-resized copies (the benchmark), measured otherwise.
    pixel_weight_summary : dict or None
        Per non-strong sample, how the pixel weights treated it (pixel weights on).
    pixel_weight_truth : dict or None
        The pixel weights the loss used, against the true masks of the weak
        images that carry one (the benchmark's), over the whole run: mean
        weight per wrong target pixel over that per right one
        (:class:`~.pixel_term.TruthMass`); absent otherwise.
    distributed : dict or None
        A distributed run's processes, batch slices and the largest difference
        of a gamma between ranks (:meth:`~.distributed.Distributed.record`);
        absent for one process.
    anchor : list of str or None
        One line per time the anchor labelled the background of open weak
        images (``core/supervision/anchor.py``); absent when it never did.
    dii_updates : list of str or None
        One line per DII update: whether it counted (the gate's strong-set
        Dice, ``core/training/dii_term.py``); absent without DII updates.
    format : int
        :data:`RUN_FORMAT`.
    """

    step: int
    total_steps: int
    settings: dict
    seed: int | None
    versions: dict
    classes: list[dict]
    tags: list[dict]
    loss_history: list
    sample_weights: dict[str, dict]
    model: dict
    encoder_weights: dict
    device: str
    dii_tau: int
    input_size: int
    train_scale: float
    pixel_weight_summary: dict | None = None
    pixel_weight_truth: dict | None = None
    distributed: dict | None = None
    anchor: list[str] | None = None
    dii_updates: list[str] | None = None
    format: int = field(default=RUN_FORMAT)

    @classmethod
    def of_run(cls, collection: Collection, *, settings: dict, step: int, total_steps: int, loss_history: list,
               **rest: Any) -> RunRecord:
        """A record of ``collection``'s classes, tags and learned weights, with the run's own fields in ``rest``."""
        return cls(
            step=int(step), total_steps=int(total_steps), settings=settings, seed=settings.get("seed"),
            versions=versions(),
            classes=[{"name": c.name, "value": c.value, "color": c.color}
                     for c in sorted(collection.classes, key=lambda c: c.value)],
            tags=[{"name": t.name, "implies": t.implies.value, "class_value": t.class_value}
                  for t in collection.tag_defs],
            loss_history=loss_history,
            sample_weights=_weights(collection.sample_weights),
            **rest,
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON object (``format`` first, as format 1 files had it; no summary key without pixel weights)."""
        d = asdict(self)
        out = {"format": d.pop("format"), **d}
        for optional in ("pixel_weight_summary", "pixel_weight_truth", "distributed", "anchor", "dii_updates"):
            if out[optional] is None:
                del out[optional]
        return out


def write_run_record(run_dir: str | Path, record: RunRecord, collection: Collection) -> None:
    """Write ``run.json`` (``record``) and ``gamma.json`` (``collection``'s weights): the one writer of both."""
    run_dir = Path(run_dir)
    atomic_write_json(run_dir / "run.json", record.to_dict())
    atomic_write_json(run_dir / "gamma.json", gamma_record(collection))
