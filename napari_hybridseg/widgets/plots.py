"""Small QPainter plots: the live loss curve, a weight history, a colour bar.

Drawn with QPainter rather than matplotlib: appending a point costs a list
append, and repaints are coalesced by Qt, so a plot fed every training step
never stalls the event loop.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QLinearGradient, QPainter, QPainterPath, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

from ._convert import WEIGHT_COLORMAP

__all__ = ["LinePlot", "WeightColorBar"]

_PALETTE = ("#4fc3f7", "#ffb74d", "#81c784", "#e57373", "#ba68c8", "#a1887f", "#f06292", "#dce775")


class LinePlot(QWidget):
    """Several named series of ``(x, y)`` points with axes and a legend.

    Parameters
    ----------
    title : str
        Drawn in the top-left corner.
    log_y : bool
        Plot ``log10(y)`` (losses span decades).
    y_range : (float, float), optional
        Fixed y limits (e.g. ``(0, 1)`` for weights); default: from the data.
    max_series : int
        Only the first ``max_series`` series get drawn (legend stays readable).
    """

    def __init__(self, title: str = "", *, log_y: bool = False, y_range: tuple[float, float] | None = None,
                 max_series: int = 6, parent: QWidget | None = None):
        super().__init__(parent)
        self.title = title
        self.log_y = log_y
        self.y_range = y_range
        self.max_series = max_series
        self.series: dict[str, list[tuple[float, float]]] = {}
        self.setMinimumHeight(140)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)

    def clear(self) -> None:
        self.series.clear()
        self.update()

    def add_point(self, name: str, x: float, y: float) -> None:
        """Append one point to series ``name`` (created on first use); repaint later."""
        if not math.isfinite(y) or (self.log_y and y <= 0):
            return
        self.series.setdefault(name, []).append((float(x), float(y)))
        self.update()  # coalesced by Qt into at most one paint per frame

    def set_series(self, name: str, points: Sequence[tuple[float, float]]) -> None:
        self.series[name] = [(float(x), float(y)) for x, y in points]
        self.update()

    def _ty(self, y: float) -> float:
        return math.log10(y) if self.log_y else y

    def paintEvent(self, event) -> None:  # noqa: N802 (Qt API)
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        w, h = self.width(), self.height()
        p.fillRect(0, 0, w, h, QColor("#262930"))
        left, right, top, bottom = 44, 8, 20, 18
        plot = QRectF(left, top, max(10, w - left - right), max(10, h - top - bottom))
        p.setPen(QPen(QColor("#cccccc")))
        p.drawText(QPointF(6, 14), self.title)
        shown = [(n, pts) for n, pts in list(self.series.items())[: self.max_series] if pts]
        if not shown:
            p.setPen(QPen(QColor("#888888")))
            p.drawText(plot, Qt.AlignmentFlag.AlignCenter, "no data yet")
            p.end()
            return
        xs = [x for _, pts in shown for x, _ in pts]
        ys = [self._ty(y) for _, pts in shown for _, y in pts]
        x0, x1 = min(xs), max(xs)
        if self.y_range is not None:
            y0, y1 = (self._ty(v) for v in self.y_range)
        else:
            y0, y1 = min(ys), max(ys)
        if x1 <= x0:
            x1 = x0 + 1
        if y1 <= y0:
            y0, y1 = y0 - 0.5, y1 + 0.5

        def to_px(x: float, y: float) -> QPointF:
            return QPointF(plot.left() + (x - x0) / (x1 - x0) * plot.width(),
                           plot.bottom() - (self._ty(y) - y0) / (y1 - y0) * plot.height())

        p.setPen(QPen(QColor("#555555")))
        p.drawRect(plot)
        p.setPen(QPen(QColor("#aaaaaa")))
        fmt = (lambda v: f"{10 ** v:.2g}") if self.log_y else (lambda v: f"{v:.2g}")
        p.drawText(QRectF(0, plot.top() - 6, left - 4, 14), Qt.AlignmentFlag.AlignRight, fmt(y1))
        p.drawText(QRectF(0, plot.bottom() - 8, left - 4, 14), Qt.AlignmentFlag.AlignRight, fmt(y0))
        p.drawText(QRectF(plot.left(), plot.bottom() + 2, 60, 14), Qt.AlignmentFlag.AlignLeft, f"{x0:g}")
        p.drawText(QRectF(plot.right() - 60, plot.bottom() + 2, 60, 14), Qt.AlignmentFlag.AlignRight, f"{x1:g}")
        legend_x = plot.left() + 6
        for i, (name, pts) in enumerate(shown):
            color = QColor(_PALETTE[i % len(_PALETTE)])
            p.setPen(QPen(color, 1.6))
            if len(pts) == 1:
                p.drawEllipse(to_px(*pts[0]), 2.5, 2.5)
            else:
                path = QPainterPath(to_px(*pts[0]))
                # at most ~2 points per pixel: long runs stay cheap to draw
                stride = max(1, len(pts) // max(1, int(plot.width() * 2)))
                for x, y in pts[1::stride]:
                    path.lineTo(to_px(x, y))
                path.lineTo(to_px(*pts[-1]))
                p.drawPath(path)
            p.drawText(QPointF(legend_x, plot.top() + 12), name)
            legend_x += 8 + p.fontMetrics().horizontalAdvance(name)
        p.end()


class WeightColorBar(QWidget):
    """A horizontal bar showing how learned weights map to box and point colours."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setFixedHeight(34)
        self.setToolTip("Box and point outline colour = learned weight: red = down-weighted, green = trusted; "
                        "cyan = not weighted yet")

    def paintEvent(self, event) -> None:  # noqa: N802 (Qt API)
        p = QPainter(self)
        w = self.width()
        bar = QRectF(24, 4, max(10, w - 48), 12)
        grad = QLinearGradient(bar.left(), 0, bar.right(), 0)
        for stop, (r, g, b) in WEIGHT_COLORMAP:
            grad.setColorAt(stop, QColor.fromRgbF(r, g, b))
        p.fillRect(bar, grad)
        p.setPen(QPen(QColor("#cccccc")))
        p.drawText(QRectF(0, 2, 20, 16), Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter, "0")
        p.drawText(QRectF(bar.right() + 4, 2, 20, 16), Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter,
                   "1")
        p.drawText(QRectF(0, 18, w, 14), Qt.AlignmentFlag.AlignCenter,
                   "learned weight: red = down-weighted, green = trusted")
        p.end()
