"""The data panel's vocabulary controls: classes (add, rename, recolour, delete, apply), tags, the legend.

A part of :class:`~napari_hybridseg.widgets.data_panel.DataPanel` (a mixin: it
uses the panel's attributes); the work is in the session.
"""

from __future__ import annotations

import html

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from napari_hybridseg.core.data.collection import TagImplies

from . import _messages
from ._convert import UNWEIGHTED_RGBA, WEIGHT_COLORMAP

__all__ = ["TAG_MEANINGS", "ClassLegend", "VocabularyControls"]

#: what a tag can say about the segmentation, as the annotator reads it (value: TagImplies)
TAG_MEANINGS = {
    "choose what it means…": None,
    "class present somewhere": TagImplies.PRESENT.value,
    "class absent (no pixel of it)": TagImplies.ABSENT.value,
    "says nothing about the mask": TagImplies.NOTHING.value,
}


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


class VocabularyControls:
    """The Annotate and Tags boxes of the data panel and what their buttons do."""

    def _build_annotate(self, layout: QVBoxLayout) -> None:
        """Add the Annotate box (classes, mask) and the Tags box to ``layout``."""
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
            _messages.notify("warning", f"{exc}: choose another name")
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
                _messages.notify("warning", str(exc))

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
                _messages.notify("warning", str(exc))

    def _delete_class(self) -> None:
        value = self.chosen_class()
        if value is None:
            return
        try:
            self.session.delete_class(value)
        except (ValueError, OSError) as exc:
            _messages.notify("warning", str(exc))

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
            _messages.notify("warning", f"Choose what the tag {name!r} means for the segmentation (present, "
                                        "absent or nothing), then add it.")
            return
        try:
            self.session.add_tag(name, implies)
        except (ValueError, OSError) as exc:
            _messages.notify("warning", str(exc))
            return
        self.new_tag_edit.clear()
        self.tag_implies.setCurrentIndex(0)
        self._fill_tags()
