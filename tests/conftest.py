"""Shared test fixtures: small, generic, fast."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from napari_hybridseg.core.data.collection import Collection
from napari_hybridseg.core.data.synthetic import (
    Spec,
    box_around,
    box_on_background,
    disk_grey,
    point_at_centre,
    strong,
    synthetic_collection,
)

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
    paint, meta = disk_grey(size), {"shape": [size, size]}
    labels = [strong, strong, box_around, box_on_background, functools.partial(point_at_centre, background=True),
              None]
    specs = [Spec(f"img{i}", paint, label, reference=False, meta=meta) for i, label in enumerate(labels)]
    return synthetic_collection(specs, seed=seed, tags=[("normal", "absent", 1)])


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
