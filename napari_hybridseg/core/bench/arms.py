"""The benchmark's arms, presets and layouts: the one list the CLI and the benchmark share.

Light on purpose (no numpy, no torch): ``hybridseg --help`` imports it for
its choices.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .presets import ALIASES, BENCH_PRESETS

if TYPE_CHECKING:
    from napari_hybridseg.core.training.config import TrainConfig

__all__ = ["ARMS", "ARM_SWITCHES", "CONTROL_ARMS", "CURVE_ARMS", "DII_ARMS", "LAYOUTS", "PRESET_NAMES", "SPEED_ARMS",
           "Arm", "arm_config"]

_OFF = {"dii": False, "dcr": False, "pixel_weights": "off", "ple": False, "teacher": False}

#: Each arm's TrainConfig method switches (every method term set, on or off), in the order the arms run
#: and appear in the report.
ARM_SWITCHES: dict[str, dict[str, Any]] = {
    "strong-only": _OFF,
    # naive trusts every weak label fully: weights fixed at 1 (the trainer uses 1 for every row when DII
    # is off; dii_init 1.0 keeps older trainers, which held gamma at dii_init, doing the same)
    "naive": {**_OFF, "dii_init": 1.0},
    "fixed": _OFF,
    "dii": {**_OFF, "dii": True},
    "oracle": _OFF,
    "dii+dcr": {**_OFF, "dii": True, "dcr": True},
    "full": {"dii": True, "dcr": True, "pixel_weights": "exact", "ple": True, "teacher": True},
    "all-strong": _OFF,
}

#: The arms, in the order they run and appear in the report.
ARMS = tuple(ARM_SWITCHES)

#: Arms that learn DII's per-image weights.
DII_ARMS = ("dii", "dii+dcr", "full")

#: Control arms whose weak weights are held fixed (``TrainConfig.fixed_weights``).
CONTROL_ARMS = ("fixed", "oracle")

#: Arms whose validation Dice is measured over training (the convergence curve).
CURVE_ARMS = ("strong-only", "all-strong")

#: Names ``--preset`` accepts: the bench presets and their old names (``cpu-quick``).
PRESET_NAMES = (*BENCH_PRESETS, *ALIASES)

#: Dataset layouts the benchmark imports: those of :data:`napari_hybridseg.core.data.importers.LAYOUTS`
#: that carry masks (``images`` has none, and every arm is scored against true masks). Not imported from
#: there, so that ``hybridseg --help`` stays light; a test checks it is a subset.
LAYOUTS = ("kvasir", "folder", "busi")


@dataclass(frozen=True)
class Arm:
    """One row of ``hybridseg speed``'s step-time table: a name and the TrainConfig fields it sets."""

    name: str
    settings: dict = field(default_factory=dict)


#: The step-time rows of ``hybridseg speed`` (``cli/speed_cmd.py``). Unlike :data:`ARM_SWITCHES` they set
#: only the fields named, on top of TrainConfig's defaults (PLE and the teacher stay as the defaults say),
#: because they time what each method term adds. To add a row, append (e.g. the pixel-weights row is
#: ``Arm("pixel weights", {"dii": True, "dcr": False, "pixel_weights": "exact"})``).
SPEED_ARMS: tuple[Arm, ...] = (
    Arm("one network", {"dii": False, "dcr": False}),
    Arm("one network + DII", {"dii": True, "dcr": False}),
    Arm("DCR (two networks)", {"dii": False, "dcr": True}),
    Arm("DCR + DII", {"dii": True, "dcr": True}),
    Arm("  same, CPS on the batch (no CutMix)", {"dii": True, "dcr": True, "dcr.pairs": "batch"}),
    Arm("DCR + DII + pixel weights", {"dii": True, "dcr": True, "pixel_weights": "exact"}),
    Arm("  same, PLE consistency", {"dii": True, "dcr": True, "pixel_weights": "exact", "ple_consistency": True}),
)


def arm_config(base: TrainConfig, arm: str, *, weak_ids: Iterable[str] | None = None,
               corrupted: Mapping[str, Any] | Iterable[str] | None = None) -> TrainConfig:
    """The TrainConfig of one arm: ``base`` with only the method switches changed.

    Architecture, input size, steps, batch, optimiser and seed stay those of
    ``base``, so the arms differ only in what the method does. The control
    arms need the weak ids (and ``oracle`` the corrupted ones): ``fixed``
    holds every weak weight at ``base.dii_init`` (DII's starting value),
    ``oracle`` at 0 for a corrupted weak label and 1 for a clean one.
    """
    if arm not in ARM_SWITCHES:
        raise ValueError(f"unknown arm {arm!r}; choose from {', '.join(ARMS)}")
    cfg = base.replace(**ARM_SWITCHES[arm])
    if arm in CONTROL_ARMS:
        if weak_ids is None:
            raise ValueError(f"the {arm!r} arm needs the weak ids (and which are corrupted) to fix their weights")
        bad = set(corrupted or ())
        weights = {k: float(base.dii_init) if arm == "fixed" else (0.0 if k in bad else 1.0) for k in weak_ids}
        cfg = cfg.replace(fixed_weights=weights)
    return cfg
