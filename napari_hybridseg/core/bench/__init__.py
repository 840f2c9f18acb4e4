"""The hybrid-supervision benchmark (``hybridseg bench``; ``../shared/BENCHMARK.md``).

* :mod:`.arms`: the eight arms (incl. the ``fixed`` and ``oracle`` controls), the preset names and
  layouts the CLI offers, and each arm's TrainConfig switches (light: no numpy, no torch);
* :mod:`.presets`: the ``quick``, ``standard`` and ``gpu`` presets, the arms' rough costs;
* :mod:`.settings`: :class:`BenchSettings`, what decides a run's numbers;
* :mod:`.split`: seeded, group-aware train / validation / test split, groups
  CSV, near-duplicate guard;
* :mod:`.data`: data preparation (split, hybridisation, each arm's training set, pre-resizing);
* :mod:`.backend`: how the protocol trains and predicts (the project's trainer and
  :class:`~napari_hybridseg.core.prediction.Predictor`, or a fake in tests);
* :mod:`.arm`: one arm: training, its reports, scoring at original resolution;
* :mod:`.evaluate`: Dice / IoU and weight quality (per image and per pixel);
* :mod:`.calibrate`: the step budget that fits the wall-clock budget;
* :mod:`.memory`: peak memory of a block of work;
* :mod:`.results`: the files of a benchmark folder and ``results.json``;
* :mod:`.protocol`: the run loop and resume: one run (one seed, one strong fraction);
* :mod:`.baselines`: signals that need no DII (label size, agreement with ``strong-only``, ``naive`` loss);
* :mod:`.paired`: hierarchical paired bootstrap over seeds and test images (or weak samples);
* :mod:`.aggregate`: per-arm mean and spread, paired differences, weight quality over seeds;
* :mod:`.targets`: BENCHMARK.md's targets judged on the paired intervals;
* :mod:`.suite`: several seeds and strong fractions, one run each;
* :mod:`.report`: ``report.md`` from a benchmark folder, around :mod:`.figures`.

The names below are imported on first use, so that importing :mod:`.arms` (the CLI's choices) stays
light.
"""

from __future__ import annotations

import importlib
from typing import Any

from .arms import ARMS, LAYOUTS, PRESET_NAMES

#: name -> module of the lazily imported exports
_LAZY = {"Backend": "backend", "BenchSettings": "settings", "run_benchmark": "protocol", "write_report": "report",
         "Split": "split", "split_ids": "split", "check_targets": "targets"}

__all__ = ["ARMS", "LAYOUTS", "PRESET_NAMES", "Backend", "BenchSettings", "Split", "check_targets", "run_benchmark",
           "split_ids", "write_report"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
