"""The benchmark's presets (``quick``, ``standard``, ``gpu``) and the arms' rough costs.

A bench preset names a training preset of :mod:`napari_hybridseg.core.training.config`
(network, input size; helper-independent: the first of its candidates that
exists is used) and adds the benchmark's own settings on top: steps, batch,
wall-clock budget and how many seeds the expensive arms run.

``standard``'s step budget (400) is what fits BENCHMARK.md's 90 minutes per
dataset (all arms x 3 seeds, the expensive ones on the first) on the 2-core CPU,
not the plateau of ``all-strong``: measured on 2026-12-03, the plateau needs
1600 steps or more, several times what fits (docs/benchmark.md, "The standard
preset").
"""

from __future__ import annotations

from typing import Any

__all__ = ["ALIASES", "BENCH_PRESETS", "COST_FACTOR", "EXPENSIVE_ARMS", "canonical", "config_preset_name",
           "preset_spec"]

#: Old names that still work.
ALIASES = {"cpu-quick": "quick"}

#: Arms that run two networks (and pixel weights): the ones the standard preset may run on fewer seeds.
EXPENSIVE_ARMS = ("dii+dcr", "full")

#: Rough cost of one step of each arm in single-network steps, for the time projection (not a
#: measurement: the measured figures are in results.json). Median step time of each arm over the
#: calibration probe's single-network step (0.25 s), measured in the Kvasir-SEG cpu-quick run of
#: 2026-12-01 on the quiet 2-core dev CPU (128 px, batch 8, half strong): strong-only 0.253 s, naive
#: 0.289 s, dii 0.294 s, dii+dcr 1.032 s, full 1.858 s, all-strong 0.271 s. `fixed` and `oracle` are
#: `naive` steps with other weights (same cost).
COST_FACTOR = {"strong-only": 1.0, "naive": 1.15, "fixed": 1.15, "dii": 1.2, "oracle": 1.15, "dii+dcr": 4.1,
               "full": 7.4, "all-strong": 1.1}

#: Each bench preset. ``config``: candidate names of the training preset in core.config.PRESETS (the
#: first that exists); ``train``: TrainConfig overrides; ``budget_min``: wall-clock budget of ONE run
#: (one seed, one strong fraction) used to calibrate the steps when --steps is not given (None: the
#: preset's steps as they are); ``expensive_seeds``: how many of the seeds the EXPENSIVE_ARMS run
#: (None: all).
#:
#: standard (400 steps; docs/benchmark.md, "The standard preset"): the Kvasir-SEG suite at 200 steps
#: (2026-12-03, bf16 on a quiet 2-core Xeon with AMX) took 54 min of arm time, 34.5 of them training
#: (10.3 s per budget step for the six cheap arms x 3 seeds and the two expensive ones x 1), 19.5
#: evaluation and the validation curves; 90 minutes then allow ~410 steps (BUSI ~480). all-strong's test Dice
#: after 200 / 400 / 1600 steps (seed 0): Kvasir-SEG 0.789 / 0.810 / 0.853, BUSI 0.590 / 0.620 / 0.726.
BENCH_PRESETS: dict[str, dict[str, Any]] = {
    "quick": {"config": ("quick", "cpu-quick"), "budget_min": 18.0, "expensive_seeds": None,
              "train": {"steps": 300, "batch_size": 8, "checkpoint_every": 10**9, "preview_every": 10**9}},
    "standard": {"config": ("standard", "quick", "cpu-quick"), "budget_min": None, "expensive_seeds": 1,
                 "train": {"steps": 400, "batch_size": 8, "checkpoint_every": 10**9, "preview_every": 10**9}},
    "gpu": {"config": ("gpu",), "budget_min": None, "expensive_seeds": None,
            "train": {"steps": 4000, "batch_size": 16, "checkpoint_every": 1000, "preview_every": 10**9}},
}


def canonical(name: str) -> str:
    """The preset's current name (``cpu-quick`` -> ``quick``); ValueError for an unknown one."""
    name = ALIASES.get(name, name)
    if name not in BENCH_PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(BENCH_PRESETS)} "
                         f"(or the old name{'s' if len(ALIASES) > 1 else ''} {', '.join(ALIASES)})")
    return name


def preset_spec(name: str) -> dict[str, Any]:
    return BENCH_PRESETS[canonical(name)]


def config_preset_name(name: str, available) -> str | None:
    """The training preset a bench preset starts from: its first candidate in ``available`` (or None)."""
    for cand in preset_spec(name)["config"]:
        if cand in available:
            return cand
    return None
