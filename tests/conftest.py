"""Shared test fixtures: small, generic, fast."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from napari_hybridseg.core.data.collection import Box, Collection, Point, Sample

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def shared_data() -> Path:
    """The real datasets (../shared/data); the test is skipped where they are absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not available")
    return SHARED_DATA


def make_tiny_collection(size: int = 48, seed: int = 0) -> Collection:
    """Six small grey images with a bright disk each: 2 strong, 3 weak (boxes, points, a tag), 1 unlabeled.

    One weak box is deliberately wrong (``corrupted=True``), as the sample data has.
    """
    rng = np.random.default_rng(seed)
    coll = Collection()
    coll.ensure_tag("normal", "absent", 1)
    rr, cc = np.mgrid[0:size, 0:size]
    for i in range(6):
        cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
        disk = (rr - cy) ** 2 + (cc - cx) ** 2 <= (size // 6) ** 2
        image = (rng.normal(60, 10, (size, size)) + 120 * disk).clip(0, 255).astype(np.uint8)
        s = Sample(id=f"img{i}", image=image, meta={"shape": [size, size]})
        r = size // 6
        if i < 2:
            s.mask = disk.astype(np.uint8)
        elif i == 2:
            s.boxes = [Box(cx - r, cy - r, cx + r + 1, cy + r + 1)]
        elif i == 3:
            s.boxes = [Box(0, 0, 6, 6)]  # on background: a wrong weak label
            s.corrupted, s.corruption = True, "background"
        elif i == 4:
            s.points = [Point(cx + 0.5, cy + 0.5), Point(2.5, 2.5, positive=False)]
        coll.add(s)
    return coll


@pytest.fixture
def tiny_collection() -> Collection:
    return make_tiny_collection()


@pytest.fixture
def one_thread():
    """Torch on one thread: the test machine's cores are shared."""
    torch = pytest.importorskip("torch")
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Record each phase's report on the test item (napari's viewer fixture reads ``rep_call``)."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
