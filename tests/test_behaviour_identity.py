"""A refactoring must not change the numbers: seeded runs against their record.

``tests/golden/*.json`` were recorded (``python tests/_golden.py record``)
before the core was reorganised. On a machine like the one that recorded
them (same torch, same CPU capability) the rerun must give the same bits;
elsewhere oneDNN may pick other kernels, so floats are compared to a relative
1e-3 there and the discrete parts (ids, step counts, flags) exactly.
"""

from __future__ import annotations

import json
import math

import pytest
from _golden import GOLDEN, fingerprint, small_bench, small_train

pytestmark = pytest.mark.slow


def _compare(got, want, exact: bool, where: str = "") -> list[str]:
    if isinstance(want, dict):
        if not isinstance(got, dict) or set(got) != set(want):
            return [f"{where}: keys {sorted(got) if isinstance(got, dict) else got!r} != {sorted(want)}"]
        return [e for k in want for e in _compare(got[k], want[k], exact, f"{where}.{k}")]
    if isinstance(want, list):
        if not isinstance(got, list) or len(got) != len(want):
            return [f"{where}: {got!r} != {want!r}"]
        return [e for i, (g, w) in enumerate(zip(got, want)) for e in _compare(g, w, exact, f"{where}[{i}]")]
    if isinstance(want, float) and isinstance(got, (int, float)) and not exact:
        if math.isnan(want) and math.isnan(got):
            return []
        return [] if math.isclose(got, want, rel_tol=1e-3, abs_tol=1e-6) else [f"{where}: {got!r} != {want!r}"]
    if isinstance(want, float) and isinstance(got, float) and math.isnan(want) and math.isnan(got):
        return []
    return [] if got == want else [f"{where}: {got!r} != {want!r}"]


@pytest.mark.parametrize("name, make", [("train", small_train), ("bench", small_bench)])
def test_seeded_run_gives_the_recorded_numbers(name, make, tmp_path):
    golden = json.loads((GOLDEN / f"{name}.json").read_text())
    exact = golden["fingerprint"] == fingerprint()
    got = json.loads(json.dumps(make(tmp_path)))  # tuples -> lists, as recorded
    errors = _compare(got, golden["record"], exact)
    assert not errors, f"{len(errors)} differences ({'bit-exact' if exact else 'rel 1e-3'}), first: {errors[:5]}"
