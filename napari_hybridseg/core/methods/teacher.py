"""Mean teacher (MLB-Seg): an EMA copy of the network fed noisy inputs; an MSE term pulls the student to it.

Where the teacher enters in this trainer
(:class:`~napari_hybridseg.core.training.pixel_term.PixelWeightTerm`):

* the term ``MSE(softmax(student(x)), softmax(teacher(x + noise)))`` (weight 1)
  is in the **real loss only**. The original MLB-Seg code also puts it into
  the virtual step of the pixel weights (theta' pulled toward the teacher
  before the meta gradient is taken, which "stabilises the weight maps"); the
  trainer passes no ``virtual_loss_fn`` (U = 0, theta' = theta, the
  learning-to-reweight choice), because that costs another forward and
  backward of the non-strong rows every step. :func:`.pixel_weights.exact_pixel_weights`
  takes it (``virtual_loss_fn``) for experiments: on the synthetic set it
  sharpened the down-weighting at the same Dice (docs/pixel-weights.md);
* y^ (PLE) is the student's own enhanced prediction, as in the original
  code. :meth:`MeanTeacher.probabilities` may serve instead as the source of
  y^ or of the unlabeled images' initial labels (steadier, one step behind);
  the trainer chooses.

Decay with warm-up: ``d = min(decay, 1 - 1 / (step + 1))`` so the first
updates copy the student (a true running mean until the EMA is the better
estimate). BatchNorm running statistics are copied from the student.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["MeanTeacher", "probabilities"]


def probabilities(logits: Tensor) -> Tensor:
    """Sigmoid for one channel, softmax over channels otherwise."""
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, 1)


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


class MeanTeacher:
    """An exponential-moving-average copy of a student network.

    Parameters
    ----------
    student : nn.Module
        The network to follow; copied (parameters and buffers) at creation.
    decay : float
        EMA decay (paper 0.99). Default 0.99.
    noise_std : float
        Standard deviation of the Gaussian noise added to the teacher's
        inputs (paper 0.02). Default 0.02.

    Examples
    --------
    >>> teacher = MeanTeacher(net)  # doctest: +SKIP
    >>> loss = sup + teacher.mse(net(x), x)  # doctest: +SKIP
    >>> loss.backward(); opt.step(); teacher.update(net)  # doctest: +SKIP
    """

    def __init__(self, student: nn.Module, decay: float = 0.99, noise_std: float = 0.02):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"teacher decay must be in [0, 1), got {decay}")
        if noise_std < 0:
            raise ValueError(f"teacher noise_std must be >= 0, got {noise_std}")
        self.model = copy.deepcopy(student)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.decay = float(decay)
        self.noise_std = float(noise_std)
        self.step = 0

    def current_decay(self) -> float:
        """The decay the next :meth:`update` uses: ``min(decay, 1 - 1 / (step + 1))``."""
        return min(self.decay, 1.0 - 1.0 / (self.step + 1))

    @torch.no_grad()
    def update(self, student: nn.Module) -> float:
        """Move the teacher toward ``student`` after an optimiser step; returns the decay used."""
        d = self.current_decay()
        for t, s in zip(self.model.parameters(), student.parameters()):
            t.mul_(d).add_(s.detach(), alpha=1.0 - d)
        for t, s in zip(self.model.buffers(), student.buffers()):
            t.copy_(s)
        self.step += 1
        return d

    @torch.no_grad()
    def probabilities(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Teacher probabilities on ``x + N(0, noise_std^2)`` (no gradient, the model's train/eval mode kept)."""
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device) * self.noise_std
        return probabilities(_first(self.model(x + noise)))

    def mse(self, student_logits: Tensor, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Mean squared difference between student and (noisy-input) teacher probabilities; weight 1 in the loss."""
        target = self.probabilities(x, generator)
        return torch.mean((probabilities(student_logits) - target) ** 2)

    def train(self, mode: bool = True) -> MeanTeacher:
        """Set the teacher network's mode (train: batch statistics, like the original code)."""
        self.model.train(mode)
        return self

    def to(self, *args: Any, **kwargs: Any) -> MeanTeacher:
        self.model.to(*args, **kwargs)
        return self

    def state_dict(self) -> dict[str, Any]:
        """For checkpoints: the teacher's weights and its step (the warm-up continues on resume)."""
        return {"model": self.model.state_dict(), "step": self.step, "decay": self.decay, "noise_std": self.noise_std}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.step = int(state["step"])
        self.decay = float(state.get("decay", self.decay))
        self.noise_std = float(state.get("noise_std", self.noise_std))
