"""The review panel: which weak images were down-weighted, their history, overlays, export."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QTableWidget,
    QVBoxLayout,
    QWidget,
)

from .data_panel import NumericItem, _fit_columns, _text_item
from .plots import LinePlot, WeightColorBar

if TYPE_CHECKING:
    from .session import Session

__all__ = ["ReviewPanel"]


class ReviewPanel(QWidget):
    """Weights table (lowest first, click to go), weight history, overlays and export buttons.

    The export and predict buttons are wired by the dock widget, which owns
    the background workers.
    """

    COLUMNS = ("image", "weight", "labels", "wrong")

    def __init__(self, session: Session, parent: QWidget | None = None):
        super().__init__(parent)
        self.session = session
        layout = QVBoxLayout(self)
        self.summary = QLabel("Train to learn a weight for every weak image; low weights are shown first.")
        self.summary.setWordWrap(True)
        layout.addWidget(self.summary)
        self.table = QTableWidget(0, len(self.COLUMNS))
        self.table.setHorizontalHeaderLabels(list(self.COLUMNS))
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.verticalHeader().setVisible(False)
        _fit_columns(self.table)
        self.table.setSortingEnabled(True)
        self.table.setMinimumHeight(150)
        self.table.setToolTip("Click a row to show the image; click a header to sort")
        layout.addWidget(self.table, stretch=1)
        layout.addWidget(WeightColorBar())

        self.history = LinePlot("weight of this image over training", y_range=(0.0, 1.0), max_series=1)
        self.history.setMinimumHeight(110)
        layout.addWidget(self.history)

        overlays = QHBoxLayout()
        self.show_prediction = QCheckBox("prediction")
        self.show_prediction.setChecked(True)
        self.show_prediction.setToolTip("The last model's prediction as an outline in the class colour")
        self.show_pixel_weights = QCheckBox("pixel weights")
        self.show_pixel_weights.setChecked(True)
        self.show_pixel_weights.setToolTip("Heatmap of how much each pixel's label is trusted, on the weight scale "
                                           "below (teal = trusted, magenta = distrusted)")
        overlays.addWidget(QLabel("Show:"))
        overlays.addWidget(self.show_prediction)
        overlays.addWidget(self.show_pixel_weights)
        overlays.addStretch(1)
        layout.addLayout(overlays)

        grid = QGridLayout()
        self.predict_btn = QPushButton("Predict this image")
        self.predict_btn.setToolTip("Run the last trained model on the image on screen")
        self.accept_btn = QPushButton("Prediction → mask")
        self.accept_btn.setToolTip("Copy the prediction into the mask layer; edit it, it is saved when you move on")
        self.export_pred_btn = QPushButton("Export predictions…")
        self.export_pred_btn.setToolTip("Write every image's predicted mask as PNG")
        self.export_csv_btn = QPushButton("Export weights CSV…")
        self.export_csv_btn.setToolTip("One row per image: role, learned weight and its history, label counts")
        self.export_model_btn = QPushButton("Export model…")
        self.export_model_btn.setToolTip("Copy the last run folder (model, settings, weights)")
        grid.addWidget(self.predict_btn, 0, 0)
        grid.addWidget(self.accept_btn, 0, 1)
        grid.addWidget(self.export_pred_btn, 1, 0)
        grid.addWidget(self.export_csv_btn, 1, 1)
        self.export_bioimageio_btn = QPushButton("Export for bioimage.io…")
        self.export_bioimageio_btn.setToolTip("Write the last model as a bioimage.io package (.zip) for other tools: "
                                              "TorchScript weights, test image, classes, citations, learned weights")
        grid.addWidget(self.export_model_btn, 2, 0)
        grid.addWidget(self.export_bioimageio_btn, 2, 1)
        layout.addLayout(grid)

        self.table.cellClicked.connect(self._on_row_clicked)
        self.accept_btn.clicked.connect(self.session.accept_prediction)
        self.show_prediction.toggled.connect(lambda on: self._set_visible("prediction", on))
        self.show_pixel_weights.toggled.connect(self._on_pixel_weights_toggled)
        session.collection_changed.connect(self.refresh)
        session.weights_changed.connect(self.refresh)
        session.sample_changed.connect(self._on_sample_changed)
        # an edit can change an image's role (Prediction -> mask makes it strong): the table follows, debounced
        from qtpy.QtCore import QTimer

        self._refresh_timer = QTimer(self)
        self._refresh_timer.setSingleShot(True)
        self._refresh_timer.setInterval(150)
        self._refresh_timer.timeout.connect(self.refresh)
        session.annotations_edited.connect(lambda _sid: self._refresh_timer.start())

    def _on_pixel_weights_toggled(self, on: bool) -> None:
        self.session.pixel_weights_visible = bool(on)
        self.apply_overlay_visibility()

    def apply_overlay_visibility(self) -> None:
        """Show the overlays as the check boxes say (the heatmap only where a map exists)."""
        self._set_visible("prediction", self.show_prediction.isChecked())
        sid = self.session.current_id
        has_map = sid is not None and sid in self.session.pixel_weights
        self.session.pixel_weights_visible = self.show_pixel_weights.isChecked()
        self._set_visible("pixel_weights", self.show_pixel_weights.isChecked() and has_map)
        self.show_pixel_weights.setText("pixel weights" if has_map else "pixel weights (none for this image yet)")

    def _set_visible(self, key: str, on: bool) -> None:
        layer = self.session.layer(key)
        if layer is not None and bool(layer.visible) != bool(on):  # setting it costs napari a refresh
            layer.visible = on

    def refresh(self) -> None:
        """Rebuild the table from the collection's weak samples, sorted by weight (lowest first)."""
        coll = self.session.collection
        self.table.setSortingEnabled(False)
        self.table.setRowCount(0)
        if coll is None:
            self.table.setSortingEnabled(True)
            return
        rows = self.session.weak_by_weight()
        any_corrupt = any(coll[sid].corrupted for sid, _ in rows)
        self.table.setColumnHidden(3, not any_corrupt)
        self.table.setRowCount(len(rows))
        for row, (sid, weight) in enumerate(rows):
            sample = coll[sid]
            first = _text_item(sid)
            first.setData(Qt.ItemDataRole.UserRole, sid)
            self.table.setItem(row, 0, first)
            self.table.setItem(row, 1, NumericItem(weight, "—" if weight is None else f"{weight:.3f}"))
            kinds = [f"{len(sample.boxes)} box" + ("es" if len(sample.boxes) != 1 else "")] if sample.boxes else []
            if sample.points:
                kinds.append(f"{len(sample.points)} pt")
            if sample.tags:
                kinds.append(", ".join(sample.tags))
            self.table.setItem(row, 2, _text_item("; ".join(kinds)))
            wrong = _text_item(sample.corruption or "yes" if sample.corrupted else "")
            wrong.setToolTip("Recorded by the sample data / importer noise option: the label was made wrong "
                             "on purpose. Training never reads this.")
            self.table.setItem(row, 3, wrong)
        self.table.setSortingEnabled(True)
        self.table.sortItems(1, Qt.SortOrder.AscendingOrder)
        weighted = [w for _, w in rows if w is not None]
        if weighted:
            low = sum(w < 0.25 for w in weighted)
            self.summary.setText(f"{len(rows)} weak images; {low} with weight below 0.25 (check their labels, "
                                 "or give them a mask). Lowest first. Outline colours on the canvas: the scale "
                                 "below; yellow = not weighted yet.")
        else:
            self.summary.setText(f"{len(rows)} weak images. Train to learn their weights.")
        self._on_sample_changed(self.session.current_id)

    def ids_in_order(self) -> list[str]:
        """Sample ids as the table shows them, top to bottom."""
        return [self.table.item(r, 0).data(Qt.ItemDataRole.UserRole) for r in range(self.table.rowCount())]

    def weights_in_order(self) -> list[float | None]:
        return [self.table.item(r, 1).value for r in range(self.table.rowCount())]  # type: ignore[attr-defined]

    def select(self, sample_id: str) -> None:
        """Go to ``sample_id`` (as a click on its row does)."""
        self.session.show(sample_id)

    def _on_row_clicked(self, row: int, _col: int) -> None:
        item = self.table.item(row, 0)
        if item is not None:
            self.session.show(item.data(Qt.ItemDataRole.UserRole))

    def _on_sample_changed(self, sample_id: str | None) -> None:
        self.apply_overlay_visibility()
        coll = self.session.collection
        state = coll.sample_weights.get(sample_id) if coll is not None and sample_id else None
        self.history.title = f"weight of {sample_id} over training" if sample_id else "weight over training"
        self.history.set_series("weight", state.history if state is not None else [])
        for r in range(self.table.rowCount()):
            if self.table.item(r, 0).data(Qt.ItemDataRole.UserRole) == sample_id:
                self.table.blockSignals(True)
                self.table.selectRow(r)
                self.table.blockSignals(False)
                self.table.scrollToItem(self.table.item(r, 0))
                break
        else:
            self.table.clearSelection()
