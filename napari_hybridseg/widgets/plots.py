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
        Only the first ``max_series`` series get drawn (legend stays readable);
        the ``always`` series is drawn first whatever their number.
    always : str, optional
        A series that is always drawn, first, thicker and in white (the total loss).
    descriptions : dict, optional
        What each series means; shown in the tooltip.
    """

    def __init__(self, title: str = "", *, log_y: bool = False, y_range: tuple[float, float] | None = None,
                 max_series: int = 6, always: str | None = None, descriptions: dict[str, str] | None = None,
                 parent: QWidget | None = None):
        super().__init__(parent)
        self.title = title
        self.log_y = log_y
        self.y_range = y_range
        self.max_series = max_series
        self.always = always
        self.descriptions = dict(descriptions or {})
        self.series: dict[str, list[tuple[float, float]]] = {}
        self.setMinimumHeight(140)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
        self._update_tooltip()

    def _update_tooltip(self) -> None:
        names = self.drawn_names() or list(self.descriptions)
        lines = [f"{n}: {self.descriptions[n]}" for n in names if n in self.descriptions]
        self.setToolTip("\n".join(lines))

    def drawn_names(self) -> list[str]:
        """The series that get drawn, in drawing (and legend) order."""
        names = [n for n, pts in self.series.items() if pts]
        first = [self.always] if self.always in names else []
        rest = [n for n in names if n != self.always]
        return first + rest[: max(0, self.max_series - len(first))]

    def clear(self) -> None:
        self.series.clear()
        self.update()

    def add_point(self, name: str, x: float, y: float) -> None:
        """Append one point to series ``name`` (created on first use); repaint later."""
        if not math.isfinite(y) or (self.log_y and y <= 0):
            return
        new = name not in self.series
        self.series.setdefault(name, []).append((float(x), float(y)))
        if new:
            self._update_tooltip()
        self.update()  # coalesced by Qt into at most one paint per frame

    def set_series(self, name: str, points: Sequence[tuple[float, float]]) -> None:
        self.series[name] = [(float(x), float(y)) for x, y in points]
        self._update_tooltip()
        self.update()

    def _ty(self, y: float) -> float:
        return math.log10(y) if self.log_y else y

    def paintEvent(self, event) -> None:  # noqa: N802 (Qt API)
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        w, h = self.width(), self.height()
        p.fillRect(0, 0, w, h, QColor("#262930"))
        fm = p.fontMetrics()
        shown = [(n, self.series[n]) for n in self.drawn_names()]
        fmt = (lambda v: f"{10 ** v:.2g}") if self.log_y else (lambda v: f"{v:.2g}")
        # legend rows above the plot, wrapped to the width: every drawn series is named
        rows, x = 1, 6
        for name, _ in shown:
            adv = 18 + fm.horizontalAdvance(name) + 10
            if x + adv > w - 4 and x > 6:
                rows, x = rows + 1, 6
            x += adv
        line_h = fm.height()
        top = 6 + line_h * (1 + (rows if shown else 0)) + 4
        right, bottom = 10, line_h + 6
        plot_h = max(10, h - top - bottom)
        p.setPen(QPen(QColor("#cccccc")))
        p.drawText(QPointF(6, 4 + fm.ascent()), self.title)
        if not shown:
            left = 10
            plot = QRectF(left, top, max(10, w - left - right), plot_h)
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
        # the axis labels set the left margin: a long label is never clipped
        left = 8 + max(fm.horizontalAdvance(fmt(y0)), fm.horizontalAdvance(fmt(y1)))
        plot = QRectF(left, top, max(10, w - left - right), plot_h)
        self.plot_rect = plot

        def to_px(x: float, y: float) -> QPointF:
            return QPointF(plot.left() + (x - x0) / (x1 - x0) * plot.width(),
                           plot.bottom() - (self._ty(y) - y0) / (y1 - y0) * plot.height())

        p.setPen(QPen(QColor("#555555")))
        p.drawRect(plot)
        p.setPen(QPen(QColor("#aaaaaa")))
        p.drawText(QRectF(0, plot.top() - line_h / 2, left - 4, line_h), Qt.AlignmentFlag.AlignRight, fmt(y1))
        p.drawText(QRectF(0, plot.bottom() - line_h / 2, left - 4, line_h), Qt.AlignmentFlag.AlignRight, fmt(y0))
        p.drawText(QRectF(plot.left(), plot.bottom() + 2, 80, line_h), Qt.AlignmentFlag.AlignLeft, f"{x0:g}")
        p.drawText(QRectF(plot.right() - 80, plot.bottom() + 2, 80, line_h), Qt.AlignmentFlag.AlignRight, f"{x1:g}")
        p.drawText(QRectF(plot.left(), plot.bottom() + 2, plot.width(), line_h), Qt.AlignmentFlag.AlignHCenter,
                   "step")
        lx, ly = 6.0, 6 + line_h
        k = 0
        for name, pts in shown:
            if name == self.always:
                color, width = QColor("#ffffff"), 2.4
            else:
                color, width = QColor(_PALETTE[k % len(_PALETTE)]), 1.4
                k += 1
            p.setPen(QPen(color, width))
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
            adv = 18 + fm.horizontalAdvance(name) + 10
            if lx + adv > w - 4 and lx > 6:
                lx, ly = 6.0, ly + line_h
            p.drawLine(QPointF(lx, ly + line_h / 2), QPointF(lx + 14, ly + line_h / 2))
            p.drawText(QPointF(lx + 18, ly + fm.ascent()), name)
            lx += adv
        p.end()


class WeightColorBar(QWidget):
    """A horizontal bar showing how learned weights map to box and point colours."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setFixedHeight(34)
        self.setToolTip("Box and point outline colour = learned weight, and the pixel-weight heatmap: magenta = "
                        "down-weighted, grey = undecided, teal = trusted; yellow = not weighted yet")

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
                   "learned weight: magenta = down-weighted, teal = trusted")
        p.end()
