"""The learning-rate schedule: linear warm-up, then poly decay (power 0.9) or constant."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["LRSchedule"]


@dataclass(frozen=True)
class LRSchedule:
    """``lr`` at a global step; the schedule restarts at ``start_step`` (a continued run warms up again).

    Parameters
    ----------
    lr : float
        Peak learning rate.
    warmup_steps : int
        Linear warm-up from 0 over this many steps (0: none).
    kind : {"poly", "constant"}
        After warm-up: ``lr * (1 - t) ** 0.9`` over the remaining steps, or ``lr``.
    steps : int
        Steps of this run (not counting the continued run's earlier ones).
    start_step : int
        The step this run starts from.
    """

    lr: float
    warmup_steps: int
    kind: str
    steps: int
    start_step: int = 0

    def at(self, step: int) -> float:
        """The learning rate of global step ``step`` (the first step of a run is ``start_step + 1``)."""
        local = step - self.start_step
        if self.warmup_steps and local <= self.warmup_steps:
            return self.lr * local / self.warmup_steps
        if self.kind == "constant":
            return self.lr
        t = (local - self.warmup_steps) / max(1, self.steps - self.warmup_steps)
        return self.lr * (1 - min(t, 1.0)) ** 0.9
