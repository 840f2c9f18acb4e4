"""The package's exception types: callers (CLI, widget) choose a message by type, never by text.

Every error the user can cause derives from :class:`HybridsegError`; its
message says what is wrong and what to do. Types that describe bad input also
derive from :class:`ValueError`, so ``except ValueError`` in older callers keeps working.
"""

from __future__ import annotations

__all__ = ["CheckpointError", "ConfigError", "DivergedError", "HybridsegError", "NoStrongMaskError", "RunError",
           "TrainingDataError"]


class HybridsegError(Exception):
    """Base of the errors a user can cause and fix; the message says how."""


class ConfigError(HybridsegError, ValueError):
    """A setting that is unknown or out of range.

    Attributes
    ----------
    field : str
        The setting's (dotted) name, e.g. ``"dii.lr"``.
    allowed : str
        What would be accepted, in words (``"'off' or 'exact'"``, ``"> 0"``).
    """

    def __init__(self, field: str, message: str, allowed: str = ""):
        self.field = field
        self.allowed = allowed
        super().__init__(f"{field}: {message}" + (f" (allowed: {allowed})" if allowed else ""))


class TrainingDataError(HybridsegError, ValueError):
    """The collection cannot be trained on: an image or a label that cannot be used (the message names the sample)."""


class NoStrongMaskError(TrainingDataError):
    """No image has a strong (full) mask: training needs at least one."""


class RunError(HybridsegError, ValueError):
    """A run folder that cannot be used (no run, a broken run.json, a broken model, a run that does not fit
    the collection it would continue on); says what to do."""


class CheckpointError(HybridsegError, OSError):
    """A checkpoint that could not be written (a full disk); the message names the folder and what to do."""


class DivergedError(HybridsegError, RuntimeError):
    """The loss became NaN or infinite; the message says which step and what to lower."""
