"""The hybrid-supervision benchmark (``hybridseg bench``; ``../shared/BENCHMARK.md``).

* :mod:`.split`: seeded, group-aware train / validation / test split, groups
  CSV, near-duplicate guard;
* :mod:`.protocol`: the six arms, data preparation, training through a
  backend, evaluation at original resolution, weight quality, cost, resume;
* :mod:`.report`: ``report.md`` and figures from a benchmark folder.
"""

from .protocol import ARMS, Backend, BenchSettings, run_benchmark
from .report import check_targets, write_report
from .split import Split, split_ids

__all__ = ["ARMS", "Backend", "BenchSettings", "Split", "check_targets", "run_benchmark", "split_ids", "write_report"]
