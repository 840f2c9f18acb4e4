"""How the protocol trains and predicts: :class:`Backend` (a fake in tests) and the project's own."""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from napari_hybridseg.core.data.collection import Collection
from napari_hybridseg.core.training.config import TrainConfig


@dataclass
class Backend:
    """How the protocol trains and predicts (swap it for a fake in tests).

    ``train(collection, config, run_dir)`` is the trainer generator
    (:func:`napari_hybridseg.core.training.trainer.train`); ``load_predictor(run_dir)``
    returns an object whose ``predict(image)`` gives ``(labels, probs)`` at the
    image's original size, and ideally ``predict_many(samples)`` the labels of many
    (:class:`napari_hybridseg.core.prediction.Predictor`, what ``hybridseg predict`` and the widget use).
    """

    train: Callable[..., Generator]
    load_predictor: Callable[[Path], Any]
    name: str = "custom"
    #: ``sample_losses(run_dir, collection, ids, config) -> {id: loss}``: each weak sample's loss under a
    #: finished arm's model (the ``naive_loss`` baseline); None: that baseline is not measured
    sample_losses: Callable[..., dict[str, float]] | None = None
    #: the scale (original -> training pixels) of the ORIGINAL training images when the arms train on
    #: pre-resized copies (set by :func:`~.protocol.run_benchmark`); the project's backend gives it to the
    #: trainer (``train(..., train_scale=)``), which records it in run.json instead of 1:1, so the predictor
    #: (and ``hybridseg predict`` on the run folder later) tiles by the true scale. None: the trainer's own
    train_scale: float | None = None


def default_backend(device: str = "auto", label_values: list[int] | None = None) -> Backend:
    """The project's trainer and predictor (imports torch).

    Every arm is scored by :class:`~napari_hybridseg.core.prediction.Predictor`, the
    predictor ``hybridseg predict`` and the widget use (fp32, label values and
    ``train_scale`` from the run's ``run.json``, tiling of much larger images), batched through
    :meth:`~napari_hybridseg.core.prediction.Predictor.predict_many`, with the
    resized test inputs shared by all arms. ``label_values`` is accepted for older
    callers and not used: ``run.json`` records the same values (the collection's
    classes, sorted).
    """
    import torch

    from napari_hybridseg.core.prediction import InputCache, Predictor
    from napari_hybridseg.core.training.trainer import train as trainer

    cache = InputCache()

    def train(collection: Collection, config: TrainConfig, run_dir: Path | None):
        return trainer(collection, config, run_dir, train_scale=backend.train_scale)

    def load_predictor(run_dir: Path):
        # threads: as they are (the arm's training set them); no tuning in the middle of a benchmark
        return Predictor.load(run_dir, device=device, threads=torch.get_num_threads(), cache=cache)

    def sample_losses(run_dir: Path, collection: Collection, ids, config: TrainConfig) -> dict[str, float]:
        from .baselines import weak_sample_losses

        return weak_sample_losses(run_dir, collection, ids, config, device=device)

    backend = Backend(train=train, load_predictor=load_predictor, name="napari_hybridseg (batched evaluation)",
                      sample_losses=sample_losses)
    return backend
