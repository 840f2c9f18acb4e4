"""The hybrid-supervision benchmark (``hybridseg bench``; ``../shared/BENCHMARK.md``).

* :mod:`.split`: seeded, group-aware train / validation / test split, groups
  CSV, near-duplicate guard;
* :mod:`.presets`: the ``quick``, ``standard`` and ``gpu`` presets, the arms' rough costs;
* :mod:`.protocol`: the eight arms (incl. the ``fixed`` and ``oracle`` controls), data preparation,
  training through a backend, evaluation at original resolution, weight quality, convergence curve,
  cost, resume: one run (one seed, one strong fraction);
* :mod:`.baselines`: signals that need no DII (label size, agreement with ``strong-only``, ``naive`` loss);
* :mod:`.paired`: hierarchical paired bootstrap over seeds and test images (or weak samples);
* :mod:`.aggregate`: per-arm mean and spread, paired differences, weight quality over seeds;
* :mod:`.targets`: BENCHMARK.md's targets judged on the paired intervals;
* :mod:`.suite`: several seeds and strong fractions, one run each;
* :mod:`.report`: ``report.md`` and figures from a benchmark folder.
"""

from .protocol import ARMS, Backend, BenchSettings, run_benchmark
from .report import write_report
from .split import Split, split_ids
from .targets import check_targets

__all__ = ["ARMS", "Backend", "BenchSettings", "Split", "check_targets", "run_benchmark", "split_ids", "write_report"]
