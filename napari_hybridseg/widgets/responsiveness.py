"""Measure how responsive napari stays while the plugin trains.

A :class:`StallProbe` is a QTimer that should fire every ``interval_ms``; any
extra delay between two ticks is time the event loop could not react to the
user (a *stall*). Used by ``hybridseg demo --measure-responsiveness``.
"""

from __future__ import annotations

import time

import numpy as np
from qtpy.QtCore import QObject, QTimer

__all__ = ["StallProbe", "summarize_stalls"]


def summarize_stalls(stalls_ms: list[float] | np.ndarray) -> dict[str, float]:
    """p50 / p95 / max of event-loop stalls in milliseconds (zeros when nothing was measured).

    Examples
    --------
    >>> summarize_stalls([0, 0, 10, 200])["max_ms"]
    200.0
    """
    a = np.asarray(stalls_ms, dtype=float)
    if not a.size:
        return {"ticks": 0, "p50_ms": 0.0, "p95_ms": 0.0, "max_ms": 0.0, "over_100ms": 0, "over_250ms": 0}
    return {
        "ticks": int(a.size),
        "p50_ms": round(float(np.percentile(a, 50)), 1),
        "p95_ms": round(float(np.percentile(a, 95)), 1),
        "max_ms": round(float(a.max()), 1),
        "over_100ms": int((a > 100).sum()),
        "over_250ms": int((a > 250).sum()),
    }


class StallProbe(QObject):
    """Record the delay of every timer tick beyond its interval.

    Parameters
    ----------
    interval_ms : int
        How often the timer should fire (default 10 ms).
    """

    def __init__(self, interval_ms: int = 10, parent: QObject | None = None):
        super().__init__(parent)
        self.interval_ms = interval_ms
        self.stalls_ms: list[float] = []
        self.times_s: list[float] = []  # when each stall ended, seconds after start()
        self._t0 = 0.0
        self._last: float | None = None
        self._timer = QTimer(self)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self._tick)

    def start(self) -> None:
        self.stalls_ms.clear()
        self.times_s.clear()
        self._last = self._t0 = time.perf_counter()
        self._timer.start()

    def stop(self) -> dict[str, float]:
        """Stop and return :func:`summarize_stalls` of what was recorded."""
        self._timer.stop()
        return self.summary()

    def summary(self) -> dict[str, float]:
        return summarize_stalls(self.stalls_ms)

    def worst(self, n: int = 5) -> list[tuple[float, float]]:
        """The ``n`` longest stalls as ``(seconds after start, stall ms)``, to find what caused them."""
        order = np.argsort(self.stalls_ms)[::-1][:n]
        return [(round(self.times_s[i], 2), round(self.stalls_ms[i], 1)) for i in order]

    def _tick(self) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self.stalls_ms.append(max(0.0, (now - self._last) * 1000.0 - self.interval_ms))
            self.times_s.append(now - self._t0)
        self._last = now
