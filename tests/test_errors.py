"""Errors by type: the trainer raises the types of core.errors, the widget chooses its message by type."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _hybrid_data import make_collection

from napari_hybridseg.core import errors as E
from napari_hybridseg.core.training.config import ModelConfig, TrainConfig
from napari_hybridseg.core.training.trainer import train


def _tiny(**kw) -> TrainConfig:
    return TrainConfig(**{"model": ModelConfig(input_size=32, encoder_weights=None), "steps": 1, "batch_size": 2,
                          "dcr": False, "preview_every": 0, "checkpoint_every": 0, "device": "cpu",
                          "threads": 1, **kw})


def test_the_trainer_raises_typed_errors_that_old_except_value_error_still_catches():
    coll = make_collection(n_strong=0, n_weak=2)
    with pytest.raises(E.NoStrongMaskError):
        train(coll, _tiny())
    coll = make_collection(n_strong=2, n_weak=1)
    coll["s0"].mask = np.zeros((5, 5), dtype=np.uint8)  # not the image's shape
    with pytest.raises(E.TrainingDataError, match="s0"):
        next(train(coll, _tiny()))
    with pytest.raises(E.ConfigError, match="dii.fixed_weights"):
        train(make_collection(n_strong=1, n_weak=1), _tiny(fixed_weights={"w0": 0.5}))
    for t in (E.NoStrongMaskError, E.TrainingDataError, E.ConfigError, E.RunError):
        assert issubclass(t, ValueError) and issubclass(t, E.HybridsegError)
    assert issubclass(E.DivergedError, RuntimeError) and issubclass(E.CheckpointError, OSError)


@pytest.mark.parametrize("exc, words", [
    (torch.OutOfMemoryError("CUDA out of memory"), "input size"),
    (MemoryError(), "input size"),
    (E.NoStrongMaskError("x"), "full mask"),
    (E.TrainingDataError("sample 'a': image is unusable"), "cannot be used for training"),
    (E.ConfigError("dii.lr", "-1 is not allowed", ">= 0"), "setting is not valid"),
    (E.RunError("no model/ folder"), "continue"),
    (E.DivergedError("the loss became nan"), "diverged"),
    (ImportError("no module named smp"), "Reinstall"),
    (RuntimeError("a strong mask image cannot read shape"), "Training stopped with an error"),  # text ignored
])
def test_describe_error_chooses_the_message_by_type_not_by_text(exc, words):
    from napari_hybridseg.widgets.training import describe_error

    assert words in describe_error(exc)
