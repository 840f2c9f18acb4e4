"""The data panel: open images or a project, walk through them, edit classes, tags and masks."""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from napari_hybridseg.core.data.collection import TagImplies

from . import _messages
from ._convert import UNWEIGHTED_RGBA, WEIGHT_COLORMAP

if TYPE_CHECKING:
    from .session import Session

__all__ = ["TAG_MEANINGS", "ClassLegend", "DataPanel", "NumericItem", "default_project_dir"]

#: what a tag can say about the segmentation, as the annotator reads it (value: TagImplies)
TAG_MEANINGS = {
    "choose what it means…": None,
    "class present somewhere": TagImplies.PRESENT.value,
    "class absent (no pixel of it)": TagImplies.ABSENT.value,
    "says nothing about the mask": TagImplies.NOTHING.value,
}

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


def _notify_warning(message: str) -> None:
    _messages.notify("warning", message)


def _notify_info(message: str) -> None:
    _messages.notify("info", message)


def _swatch(color: str):
    from qtpy.QtGui import QColor, QIcon, QPixmap

    pix = QPixmap(12, 12)
    pix.fill(QColor(color))
    return QIcon(pix)


class ClassLegend(QLabel):
    """What each colour on the canvas means: class fills, the prediction outline, the weight scale."""

    def __init__(self, parent: QWidget | None = None):
        super().__init__(parent)
        self.setWordWrap(True)
        self.setTextFormat(Qt.TextFormat.RichText)
        self.setToolTip("Classes fill the mask and the points; the prediction is an outline in the class colour; "
                        "box and point outlines show the learned weight (Review tab)")
        self.set_classes([])

    def set_classes(self, classes: list[tuple[str, str]]) -> None:
        parts = [f'<span style="color:{c}">&#9632;</span> {html.escape(n)}' for n, c in classes]
        self.classes = list(classes)
        self.setText("Colours: " + " &nbsp; ".join(parts) + " &nbsp;·&nbsp; outline of the class colour = prediction"
                     " &nbsp;·&nbsp; box/point outline = learned weight: "
                     f'<span style="color:{_hex(WEIGHT_COLORMAP[0][1])}">low</span> – '
                     f'<span style="color:{_hex(WEIGHT_COLORMAP[-1][1])}">trusted</span>, '
                     f'<span style="color:{_hex(UNWEIGHTED_RGBA[:3])}">not weighted yet</span>')


def _hex(rgb) -> str:
    return "#" + "".join(f"{int(round(255 * float(v))):02x}" for v in rgb[:3])


class DataPanel(QWidget):
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

        # -- annotate ------------------------------------------------------
        ann_box = QGroupBox("Annotate")
        ann = QGridLayout(ann_box)
        ann.addWidget(QLabel("Class"), 0, 0)
        self.class_combo = QComboBox()
        self.class_combo.setToolTip("Class of new boxes, points and mask strokes")
        self.class_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.class_combo.setMinimumContentsLength(8)
        ann.addWidget(self.class_combo, 0, 1, 1, 2)
        self.rename_class_btn = QPushButton("Rename…")
        self.rename_class_btn.setToolTip("Rename the chosen class (masks keep their label values)")
        self.color_class_btn = QPushButton("Colour…")
        self.color_class_btn.setToolTip("Change the chosen class's colour in the mask, prediction and point layers")
        self.delete_class_btn = QPushButton("Delete")
        self.delete_class_btn.setToolTip("Delete the chosen class (only when no mask, box or point uses it)")
        ann.addWidget(self.rename_class_btn, 1, 0)
        ann.addWidget(self.color_class_btn, 1, 1)
        ann.addWidget(self.delete_class_btn, 1, 2)
        self.new_class_edit = QLineEdit()
        self.new_class_edit.setPlaceholderText("new class name")
        self.new_class_edit.setToolTip("Name of a new segmentation class; press Enter or Add class")
        self.add_class_btn = QPushButton("Add class")
        self.add_class_btn.setToolTip("Add the class (saved in the project at once)")
        ann.addWidget(self.new_class_edit, 2, 0, 1, 2)
        ann.addWidget(self.add_class_btn, 2, 2)
        self.apply_class_btn = QPushButton("Set class of selected boxes/points")
        self.apply_class_btn.setToolTip("Give the boxes and points selected in napari the chosen class")
        ann.addWidget(self.apply_class_btn, 3, 0, 1, 3)
        self.background_check = QCheckBox("New points are background clicks")
        self.background_check.setToolTip("Unticked: a click says 'this pixel is the class'; ticked: 'this pixel is "
                                         "background'")
        ann.addWidget(self.background_check, 4, 0, 1, 3)
        self.remove_mask_btn = QPushButton("Remove mask")
        self.remove_mask_btn.setToolTip("The image keeps its boxes, points and tags but is no longer strong")
        self.save_btn = QPushButton("Save all")
        self.save_btn.setToolTip("Write the whole project now; edits are also saved a second after they settle, "
                                 "on navigation, Train and close")
        ann.addWidget(self.remove_mask_btn, 5, 0, 1, 2)
        ann.addWidget(self.save_btn, 5, 2)
        self.legend = ClassLegend()
        ann.addWidget(self.legend, 6, 0, 1, 3)
        layout.addWidget(ann_box)

        tag_box = QGroupBox("Tags of this image")
        tags = QVBoxLayout(tag_box)
        self.tag_list = QListWidget()
        self.tag_list.setMaximumHeight(72)
        self.tag_list.setToolTip("Tick the tags that hold for the image on screen; in brackets what each says "
                                 "about the mask")
        tags.addWidget(self.tag_list)
        row = QHBoxLayout()
        self.new_tag_edit = QLineEdit()
        self.new_tag_edit.setPlaceholderText("new tag")
        self.new_tag_edit.setToolTip("Name of a new image tag, e.g. 'lesion present' or 'normal'")
        self.tag_implies = QComboBox()
        for text, value in TAG_MEANINGS.items():
            self.tag_implies.addItem(text, value)
        self.tag_implies.setToolTip("What the tag tells the network about the segmentation: the class is present "
                                    "somewhere in the image, absent from it, or nothing (a note for you)")
        self.add_tag_btn = QPushButton("Add tag")
        self.add_tag_btn.setToolTip("Add the tag (saved in the project at once) and tick it on this image")
        self.add_tag_btn.setEnabled(False)
        tags.addWidget(self.new_tag_edit)
        row.addWidget(self.tag_implies, stretch=1)
        row.addWidget(self.add_tag_btn)
        tags.addLayout(row)
        layout.addWidget(tag_box)

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
        _notify_info(f"HybridSeg: project {project} (annotations are saved there; the images are not touched)")
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

    # -- classes ---------------------------------------------------------------
    def _fill_classes(self) -> None:
        coll = self.session.collection
        self.class_combo.blockSignals(True)
        self.class_combo.clear()
        for c in coll.classes if coll else []:
            self.class_combo.addItem(_swatch(c.color), f"{c.name} ({c.value})", c.value)
            idx = self.class_combo.count() - 1
            self.class_combo.setItemData(idx, f"label value {c.value}, colour {c.color}", Qt.ItemDataRole.ToolTipRole)
        i = self.class_combo.findData(self.session.current_class)
        self.class_combo.setCurrentIndex(max(0, i))
        self.class_combo.blockSignals(False)
        self.legend.set_classes([(c.name, c.color) for c in coll.classes] if coll else [])
        self.delete_class_btn.setEnabled(bool(coll) and len(coll.classes) > 1)

    def _on_class_chosen(self, index: int) -> None:
        value = self.class_combo.itemData(index)
        if value is not None:
            self.session.set_current_class(int(value))

    def _add_class(self) -> None:
        name = self.new_class_edit.text().strip()
        if not name or self.session.collection is None:
            return
        try:
            self.session.add_class(name)
        except (ValueError, OSError) as exc:
            _notify_warning(f"{exc}: choose another name")
            return
        self.new_class_edit.clear()

    def chosen_class(self) -> int | None:
        value = self.class_combo.currentData()
        return None if value is None else int(value)

    def _rename_class(self) -> None:
        from qtpy.QtWidgets import QInputDialog

        value, coll = self.chosen_class(), self.session.collection
        if value is None or coll is None:
            return
        old = coll.class_by_value(value).name
        name, ok = QInputDialog.getText(self, "Rename class", f"New name of class {value} ({old}):", text=old)
        if ok and name.strip() and name.strip() != old:
            try:
                self.session.rename_class(value, name)
            except (ValueError, OSError) as exc:
                _notify_warning(str(exc))

    def _recolor_class(self) -> None:
        from qtpy.QtGui import QColor
        from qtpy.QtWidgets import QColorDialog

        value, coll = self.chosen_class(), self.session.collection
        if value is None or coll is None:
            return
        info = coll.class_by_value(value)
        color = QColorDialog.getColor(QColor(info.color), self, f"Colour of {info.name}")
        if color.isValid():
            try:
                self.session.recolor_class(value, color.name())
            except (ValueError, OSError) as exc:
                _notify_warning(str(exc))

    def _delete_class(self) -> None:
        value = self.chosen_class()
        if value is None:
            return
        try:
            self.session.delete_class(value)
        except (ValueError, OSError) as exc:
            _notify_warning(str(exc))

    def _on_vocabulary_changed(self) -> None:
        self._fill_classes()
        self._fill_tags()

    def apply_class_to_selection(self) -> None:
        """Give the selected boxes and points the class chosen in the panel."""
        changed = False
        for key in ("boxes", "points"):
            layer = self.session.layer(key)
            if layer is None or not layer.selected_data:
                continue
            feats = layer.features.copy()
            for i in layer.selected_data:
                feats.loc[feats.index[i], "label"] = self.session.current_class
            layer.features = feats
            changed = True
        if changed:
            self.session.color_annotations()
            self.session.mark_edited()

    # -- tags ------------------------------------------------------------------
    def _fill_tags(self) -> None:
        coll, sample = self.session.collection, self.session.current
        self.tag_list.blockSignals(True)
        self.tag_list.clear()
        for t in coll.tag_defs if coll else []:
            item = QListWidgetItem(t.name if t.implies is TagImplies.NOTHING else f"{t.name}  [{t.implies.value}]")
            item.setData(Qt.ItemDataRole.UserRole, t.name)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            on = sample is not None and t.name in sample.tags
            item.setCheckState(Qt.CheckState.Checked if on else Qt.CheckState.Unchecked)
            self.tag_list.addItem(item)
        self.tag_list.blockSignals(False)

    def checked_tags(self) -> list[str]:
        out = []
        for i in range(self.tag_list.count()):
            item = self.tag_list.item(i)
            if item.checkState() == Qt.CheckState.Checked:
                out.append(item.data(Qt.ItemDataRole.UserRole))
        return out

    def _on_tag_toggled(self, _item: QListWidgetItem) -> None:
        self.session.set_tags(self.checked_tags())

    def _update_tag_button(self, *_args) -> None:
        named = bool(self.new_tag_edit.text().strip())
        self.add_tag_btn.setEnabled(named and self.tag_implies.currentData() is not None)

    def _add_tag(self) -> None:
        name = self.new_tag_edit.text().strip()
        implies = self.tag_implies.currentData()
        if not name or self.session.collection is None:
            return
        if implies is None:
            _notify_warning(f"Choose what the tag {name!r} means for the segmentation (present, absent or nothing), "
                            "then add it.")
            return
        try:
            self.session.add_tag(name, implies)
        except (ValueError, OSError) as exc:
            _notify_warning(str(exc))
            return
        self.new_tag_edit.clear()
        self.tag_implies.setCurrentIndex(0)
        self._fill_tags()
