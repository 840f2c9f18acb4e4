"""The data panel: open images or a project, walk through them, edit classes, tags and masks."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QFileDialog,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from . import _messages
from .data_vocab import TAG_MEANINGS, ClassLegend, VocabularyControls

if TYPE_CHECKING:
    from .session import Session

__all__ = ["TAG_MEANINGS", "ClassLegend", "DataPanel", "NumericItem", "default_project_dir"]

LAYOUTS = {
    "images only": "images",
    "images/ + masks/": "folder",
    "Kvasir-SEG": "kvasir",
    "BUSI folders": "busi",
}


class NumericItem(QTableWidgetItem):
    """A table cell that sorts by number (empty cells last), shows text."""

    def __init__(self, value: float | None, text: str | None = None):
        super().__init__(text if text is not None else ("" if value is None else f"{value:.3f}"))
        self.value = value
        self.setFlags(self.flags() & ~Qt.ItemFlag.ItemIsEditable)

    def __lt__(self, other: QTableWidgetItem) -> bool:
        a = self.value
        b = other.value if isinstance(other, NumericItem) else None
        if a is None:
            return False
        if b is None:
            return True
        return a < b


def _text_item(text: str) -> QTableWidgetItem:
    item = QTableWidgetItem(text)
    item.setFlags(item.flags() & ~Qt.ItemFlag.ItemIsEditable)
    return item


def describe_labels(sample) -> str:
    """``"mask"``, ``"2 boxes; 1 pt; normal"``: what an image is labelled with, in a few characters."""
    parts = ["mask"] if sample.mask is not None and np.asarray(sample.mask).any() else []
    if sample.boxes:
        parts.append(f"{len(sample.boxes)} box" + ("es" if len(sample.boxes) != 1 else ""))
    if sample.points:
        parts.append(f"{len(sample.points)} pt")
    if sample.tags:
        parts.append(", ".join(sample.tags))
    return "; ".join(parts)


def _fit_columns(table: QTableWidget) -> None:
    """Columns as wide as their content, the last one taking the rest (its text elided, the whole in its
    tooltip): every column stays in view in a narrow dock, without sideways scrolling."""
    header = table.horizontalHeader()
    header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
    header.setSectionResizeMode(table.columnCount() - 1, QHeaderView.ResizeMode.Stretch)
    header.setMinimumSectionSize(30)
    table.setTextElideMode(Qt.TextElideMode.ElideRight)
    table.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)


def default_project_dir(src: str | Path) -> Path:
    """Where the project of an image folder goes: ``<folder>_hybridseg`` beside it."""
    src = Path(src).absolute()
    return src.with_name(src.name + "_hybridseg")


class DataPanel(VocabularyControls, QWidget):
    """Open data, list the samples, navigate, and edit the vocabulary and the current image's tags."""

    COLUMNS = ("image", "role", "weight", "labels")
    WEIGHT_COL = 2

    def __init__(self, session: Session, parent: QWidget | None = None):
        super().__init__(parent)
        self.session = session
        self._filling = False
        layout = QVBoxLayout(self)

        # -- open ----------------------------------------------------------
        open_box = QGroupBox("Open")
        grid = QGridLayout(open_box)
        self.open_folder_btn = QPushButton("Images…")
        self.open_folder_btn.setToolTip("Start a new project from a folder of images (all unlabeled)")
        self.open_project_btn = QPushButton("Project…")
        self.open_project_btn.setToolTip("Open a napari-hybridseg project folder")
        self.sample_btn = QPushButton("Sample data")
        self.sample_btn.setToolTip("Open a copy of the bundled demo project")
        self.layout_combo = QComboBox()
        self.layout_combo.addItems(list(LAYOUTS))
        self.layout_combo.setToolTip("How the dataset folder is organised (README: Getting your data in)")
        self.import_btn = QPushButton("Import…")
        self.import_btn.setToolTip("Import a dataset folder in the chosen layout; its project is made beside it "
                                   "(<folder>_hybridseg)")
        self.use_layers_btn = QPushButton("Use the selected layers")
        self.use_layers_btn.setToolTip("Annotate the Image layers selected in napari's layer list, with the Labels "
                                       "(mask), Shapes (boxes) and Points layers selected with them; your layers are "
                                       "edited in place, never copied or hidden")
        self.open_folder_btn.setToolTip("Start (or reopen) the project of a folder of images: it is kept in "
                                        "<folder>_hybridseg beside it; the images are not touched")
        grid.addWidget(self.open_folder_btn, 0, 0)
        grid.addWidget(self.open_project_btn, 0, 1)
        grid.addWidget(self.sample_btn, 0, 2)
        grid.addWidget(self.layout_combo, 1, 0, 1, 2)
        grid.addWidget(self.import_btn, 1, 2)
        grid.addWidget(self.use_layers_btn, 2, 0, 1, 3)
        self.project_label = QLabel("No project open")
        self.project_label.setWordWrap(True)
        self.project_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        grid.addWidget(self.project_label, 3, 0, 1, 3)
        layout.addWidget(open_box)

        # -- samples -------------------------------------------------------
        self.table = QTableWidget(0, len(self.COLUMNS))
        self.table.setHorizontalHeaderLabels(list(self.COLUMNS))
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.verticalHeader().setVisible(False)
        _fit_columns(self.table)
        # no sort until the user clicks a header: the table starts in navigation (collection) order
        self.table.horizontalHeader().setSortIndicator(-1, Qt.SortOrder.AscendingOrder)
        self.table.setSortingEnabled(True)
        self.table.setMinimumHeight(180)
        self.table.setToolTip("Click a row to show the image; click a header to sort. role: strong = full mask, "
                              "weak = boxes/points/tags only; weight: learned trust in a weak image's labels")
        layout.addWidget(self.table, stretch=1)

        nav = QHBoxLayout()
        self.prev_btn = QPushButton("◀ Previous")
        self.prev_btn.setToolTip("Previous image (Page Up); edits are saved")
        self.next_btn = QPushButton("Next ▶")
        self.next_btn.setToolTip("Next image (Page Down); edits are saved")
        self.position_label = QLabel("")
        self.position_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.position_label.setWordWrap(True)
        nav.addWidget(self.prev_btn)
        nav.addWidget(self.position_label, stretch=1)
        nav.addWidget(self.next_btn)
        layout.addLayout(nav)

        self.suggest_btn = QPushButton("Suggest next image to annotate")
        self.suggest_btn.setToolTip("Go to the image whose labels would help most now (key S): the weak image the "
                                    "model trusts least, else the unlabeled image it is least sure about")
        self.suggest_label = QLabel("")
        self.suggest_label.setWordWrap(True)
        layout.addWidget(self.suggest_btn)
        layout.addWidget(self.suggest_label)
        self.keys_label = QLabel("Keys: Page Down / N next image, Page Up / P previous, S suggested image")
        self.keys_label.setWordWrap(True)
        self.keys_label.setStyleSheet("color: #aaaaaa")
        layout.addWidget(self.keys_label)

        self._build_annotate(layout)


        # -- wiring --------------------------------------------------------
        self.open_folder_btn.clicked.connect(self._ask_folder)
        self.open_project_btn.clicked.connect(self._ask_project)
        self.import_btn.clicked.connect(self._ask_import)
        self.table.cellClicked.connect(self._on_row_clicked)
        self.prev_btn.clicked.connect(lambda: self.session.step(-1))
        self.next_btn.clicked.connect(lambda: self.session.step(1))
        self.class_combo.currentIndexChanged.connect(self._on_class_chosen)
        self.add_class_btn.clicked.connect(self._add_class)
        self.rename_class_btn.clicked.connect(self._rename_class)
        self.color_class_btn.clicked.connect(self._recolor_class)
        self.delete_class_btn.clicked.connect(self._delete_class)
        self.new_tag_edit.textChanged.connect(self._update_tag_button)
        self.tag_implies.currentIndexChanged.connect(self._update_tag_button)
        self.apply_class_btn.clicked.connect(self.apply_class_to_selection)
        self.background_check.toggled.connect(self.session.set_background_points)
        self.remove_mask_btn.clicked.connect(self.session.remove_mask)
        self.save_btn.clicked.connect(self.session.save)
        self.tag_list.itemChanged.connect(self._on_tag_toggled)
        self.add_tag_btn.clicked.connect(self._add_tag)
        self.new_tag_edit.returnPressed.connect(self._add_tag)
        self.new_class_edit.returnPressed.connect(self._add_class)

        session.collection_changed.connect(self.refresh)
        session.sample_changed.connect(self._on_sample_changed)
        session.annotations_edited.connect(self._on_edited)
        session.weights_changed.connect(self._refresh_weights)
        session.vocabulary_changed.connect(self._on_vocabulary_changed)

    # -- dialogs (thin: the work is in the session) --------------------------
    def _ask_folder(self) -> None:
        src = QFileDialog.getExistingDirectory(self, "Folder of images")
        if src:
            self.open_images(src)

    def open_images(self, src: str | Path, layout: str = "images") -> Path:
        """Open a folder of images (one choice): its project is ``<folder>_hybridseg`` beside it.

        An earlier project there is opened again (the work in it is kept); otherwise it is
        created. Returns the project folder.
        """
        from napari_hybridseg.core.data.store import is_project

        project = default_project_dir(src)
        if is_project(project):
            self.session.open_project(project)
        else:
            self.session.import_folder(src, project, layout)
        _messages.notify("info", f"HybridSeg: project {project} (annotations are saved there; "
                                 "the images are not touched)")
        return project

    def _ask_project(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Project folder")
        if path:
            self.session.open_project(path)

    def _ask_import(self) -> None:
        layout = LAYOUTS[self.layout_combo.currentText()]
        src = QFileDialog.getExistingDirectory(self, f"Dataset folder ({self.layout_combo.currentText()})")
        if src:
            self.open_images(src, layout)

    # -- table ---------------------------------------------------------------
    def refresh(self) -> None:
        """Rebuild the sample table and the vocabularies from the collection."""
        coll = self.session.collection
        self._filling = True
        self.table.setSortingEnabled(False)
        try:
            self.table.setRowCount(0)
            if coll is None:
                return
            self.table.setRowCount(len(coll))
            for row, sample in enumerate(coll):
                self._fill_row(row, sample)
            self._update_summary()
            self._fill_classes()
        finally:
            self.table.setSortingEnabled(True)
            self._filling = False
        self._on_sample_changed(self.session.current_id)

    def show_suggestion(self, pick: tuple[str, str] | None) -> None:
        """Name the image to annotate next (or say that there is none)."""
        self.suggest_btn.setEnabled(pick is not None)
        self.suggest_label.setText("Nothing to suggest yet." if pick is None else f"Next: {pick[0]} — {pick[1]}")

    def _update_summary(self) -> None:
        coll = self.session.collection
        if coll is None:
            self.project_label.setText("No project open")
            return
        counts = coll.counts()
        self.project_label.setText(
            f"{self.session.project_path or 'in memory (not saved)'} — {counts['samples']} images, "
            f"{counts['strong']} strong, {counts['weak']} weak, {counts['unlabeled']} unlabeled"
        )

    def _fill_row(self, row: int, sample) -> None:
        coll = self.session.collection
        first = _text_item(sample.id)
        first.setData(Qt.ItemDataRole.UserRole, sample.id)
        self.table.setItem(row, 0, first)
        self.table.setItem(row, 1, _text_item(sample.role.value))
        self.table.setItem(row, self.WEIGHT_COL, NumericItem(coll.weight_of(sample.id) if coll else None))
        labels = _text_item(describe_labels(sample))
        labels.setToolTip(describe_labels(sample) or "no labels yet")
        self.table.setItem(row, 3, labels)

    def _row_of(self, sample_id: str | None) -> int:
        for row in range(self.table.rowCount()):
            item = self.table.item(row, 0)
            if item is not None and item.data(Qt.ItemDataRole.UserRole) == sample_id:
                return row
        return -1

    def _on_row_clicked(self, row: int, _col: int) -> None:
        item = self.table.item(row, 0)
        if item is not None and not self._filling:
            self.session.show(item.data(Qt.ItemDataRole.UserRole))

    def _on_sample_changed(self, sample_id: str | None) -> None:
        coll = self.session.collection
        row = self._row_of(sample_id)
        if row >= 0:
            self.table.blockSignals(True)
            self.table.selectRow(row)
            self.table.blockSignals(False)
            self.table.scrollToItem(self.table.item(row, 0))
        if coll is not None and sample_id in coll:
            self.position_label.setText(f"{coll.ids.index(sample_id) + 1} / {len(coll)}: {sample_id}")
        self._fill_tags()

    def _on_edited(self, sample_id: str) -> None:
        """Keep the row of the edited sample current (role and counts change as one draws)."""
        sample = self.session.sync_current() if sample_id == self.session.current_id else None
        row = self._row_of(sample_id)
        if sample is None or row < 0:
            return
        sorting = self.table.isSortingEnabled()
        self.table.setSortingEnabled(False)
        self._fill_row(row, sample)
        self.table.setSortingEnabled(sorting)
        self._update_summary()

    def _refresh_weights(self) -> None:
        coll = self.session.collection
        if coll is None:
            return
        sorting = self.table.isSortingEnabled()
        self.table.setSortingEnabled(False)
        for row in range(self.table.rowCount()):
            sid = self.table.item(row, 0).data(Qt.ItemDataRole.UserRole)
            self.table.setItem(row, self.WEIGHT_COL, NumericItem(coll.weight_of(sid)))
        self.table.setSortingEnabled(sorting)
