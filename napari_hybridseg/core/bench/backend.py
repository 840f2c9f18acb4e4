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
    image's original size (:class:`napari_hybridseg.core.prediction.predict.Predictor`).
    """

    train: Callable[..., Generator]
    load_predictor: Callable[[Path], Any]
    name: str = "custom"
    #: ``sample_losses(run_dir, collection, ids, config) -> {id: loss}``: each weak sample's loss under a
    #: finished arm's model (the ``naive_loss`` baseline); None: that baseline is not measured
    sample_losses: Callable[..., dict[str, float]] | None = None


def default_backend(device: str = "auto", label_values: list[int] | None = None) -> Backend:
    """The project's trainer, and a batched predictor whose resized test inputs all arms share (imports torch)."""
    from napari_hybridseg.core.training.trainer import train

    from .inference import BatchedPredictor, InputCache

    cache = InputCache()

    def load_predictor(run_dir: Path):
        return BatchedPredictor.load(run_dir, label_values=label_values, device=device, cache=cache)

    def sample_losses(run_dir: Path, collection: Collection, ids, config: TrainConfig) -> dict[str, float]:
        from .baselines import weak_sample_losses

        return weak_sample_losses(run_dir, collection, ids, config, device=device)

    return Backend(train=train, load_predictor=load_predictor, name="napari_hybridseg (batched evaluation)",
                   sample_losses=sample_losses)
