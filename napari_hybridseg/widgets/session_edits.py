"""How the session reads edits back from the layers, saves them, and keeps the vocabulary and learned state.

Parts of :class:`~napari_hybridseg.widgets.session.Session` (mixins: they use its
attributes; see its docstring).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

from napari_hybridseg.core.data.collection import Box, Point, Role, Sample

from ._convert import hex_to_rgba, rc_to_point, rectangle_to_box
from ._session_base import _store

if TYPE_CHECKING:
    from napari.layers import Layer


class LayerEdits:
    """Edits: from the layers back into the model, from the panels, saving, and the learned state."""

    # -- layers -> model --------------------------------------------------
    def _to_image_data(self, layer: Layer, coords: np.ndarray) -> np.ndarray:
        """Coordinates in ``layer``'s data space -> the image layer's data space."""
        image = self.layer("image")
        coords = np.asarray(coords, dtype=float)
        if image is None or (np.allclose(layer.scale, image.scale) and np.allclose(layer.translate, image.translate)):
            return coords
        world = np.array([layer.data_to_world(c) for c in coords])
        return np.array([image.world_to_data(c) for c in world])

    def _on_edit(self, event=None) -> None:
        if self._writing_layers or self.current_id is None:
            return
        self._dirty.add(self.current_id)
        self.annotations_edited.emit(self.current_id)

    def mark_edited(self) -> None:
        """Record an edit made outside the layers (tags, class of a box)."""
        self._on_edit()

    @property
    def dirty(self) -> set[str]:
        """Ids of samples edited since they were last saved."""
        return set(self._dirty)

    def sync_current(self) -> Sample | None:
        """Copy the layers' annotations into the current sample (and give new boxes/points ids)."""
        sample = self.current
        if sample is None:
            return None
        mask = self.layer("mask")
        if mask is not None and mask.data.shape == sample.shape:
            data = np.asarray(mask.data)
            if sample.mask is not None or data.any():
                sample.mask = data.copy()
        boxes = self.layer("boxes")
        if boxes is not None:
            sample.boxes = self._boxes_from_layer(boxes)
        points = self.layer("points")
        if points is not None:
            sample.points = self._points_from_layer(points)
        return sample

    @staticmethod
    def _fresh_ids(layer: Layer, ids: list[str]) -> list[str]:
        """Give new (or duplicated, e.g. copy-pasted) annotations a new id, and write it back."""
        from napari_hybridseg.core.data.collection import new_annotation_id

        seen: set[str] = set()
        out = []
        for i in ids:
            i = "" if i is None or (isinstance(i, float) and np.isnan(i)) else str(i)
            if not i or i in seen:
                i = new_annotation_id()
            seen.add(i)
            out.append(i)
        if out != ids:
            feats = layer.features.copy()
            feats["id"] = np.array(out, dtype=object)
            layer.features = feats
        return out

    def _boxes_from_layer(self, layer) -> list[Box]:
        n = len(layer.data)
        feats = layer.features
        labels = list(feats["label"]) if "label" in feats and len(feats) == n else [self.current_class] * n
        ids = self._fresh_ids(layer, list(feats["id"]) if "id" in feats and len(feats) == n else [""] * n)
        return [rectangle_to_box(self._to_image_data(layer, verts), int(lbl), i)
                for verts, lbl, i in zip(layer.data, labels, ids)]

    def _points_from_layer(self, layer) -> list[Point]:
        n = len(layer.data)
        feats = layer.features
        ok = len(feats) == n
        labels = list(feats["label"]) if ok and "label" in feats else [self.current_class] * n
        positive = list(feats["positive"]) if ok and "positive" in feats else [True] * n
        ids = self._fresh_ids(layer, list(feats["id"]) if ok and "id" in feats else [""] * n)
        coords = self._to_image_data(layer, np.asarray(layer.data)) if n else np.zeros((0, 2))
        return [rc_to_point(rc, int(lbl), bool(pos), i) for rc, lbl, pos, i in zip(coords, labels, positive, ids)]

    # -- edits from the panels --------------------------------------------
    def set_tags(self, tags: Iterable[str]) -> None:
        """Replace the current sample's tags (each added to the vocabulary if new)."""
        sample = self.current
        if sample is None or self.collection is None:
            return
        tags = list(dict.fromkeys(tags))
        new = [t for t in tags if t not in {d.name for d in self.collection.tag_defs}]
        for t in tags:
            self.collection.ensure_tag(t)
        if new:
            self.save_vocabulary()
        sample.tags = tags
        self.mark_edited()

    def remove_mask(self) -> None:
        """Drop the current sample's strong mask (it becomes weak or unlabeled)."""
        sample = self.current
        if sample is None:
            return
        sample.mask = None
        layer = self.layer("mask")
        if layer is not None:
            self._writing_layers = True
            try:
                layer.data = np.zeros(sample.shape, np.uint8)
            finally:
                self._writing_layers = False
        self.mark_edited()

    def accept_prediction(self) -> bool:
        """Copy the prediction into the mask layer as a starting point for a strong mask.

        The mask stays editable; it is saved with the sample on the next save
        (navigation, Train or close). Returns ``False`` if there is no prediction.
        """
        sample = self.current
        pred = None if sample is None else self.predictions.get(sample.id)
        mask = self.layer("mask")
        if sample is None or pred is None or mask is None:
            return False
        data = np.asarray(pred).astype(mask.data.dtype if np.asarray(pred).max(initial=0) < 256 else np.uint16)
        mask.data = data.copy()
        sample.mask = data.copy()
        self.mark_edited()
        return True

    # -- saving -----------------------------------------------------------
    def save_current(self) -> bool:
        """Sync the layers into the current sample and write it if it changed. Returns whether it wrote."""
        sample = self.sync_current()
        if sample is None or sample.id not in self._dirty:
            return False
        if self.project_path is not None:
            _store().save_sample(self.collection, self.project_path, sample.id)
        self._dirty.discard(sample.id)
        return True

    def save(self) -> None:
        """Sync the sample on screen and write the whole project (vocabulary, weights, every sample)."""
        self.sync_current()
        if self.collection is not None and self.project_path is not None:
            _store().save_project(self.collection, self.project_path)
        self._dirty.clear()

    def save_weights(self) -> None:
        """Write the learned weights (after training) without touching the annotations."""
        if self.collection is not None and self.project_path is not None:
            _store().save_weights(self.collection, self.project_path)

    # -- learned state ----------------------------------------------------
    def record_weights(self, step: int, sample_weights: dict[str, float]) -> None:
        """Add a WeightsReport's sample weights to the collection's weight history."""
        from napari_hybridseg.core.data.collection import WeightState

        if self.collection is None:
            return
        for key, value in sample_weights.items():
            self.collection.sample_weights.setdefault(key, WeightState()).record(step, value)
        self.color_annotations()
        self.weights_changed.emit()

    def suggest_next(self, uncertainty: dict[str, float] | None = None) -> tuple[str, str] | None:
        """The image whose labels would help most now, and why (MONAI Label-style strategies).

        Two kinds of candidates, each scored 0..1: a weak image scores ``1 - weight`` (the network
        distrusts its labels: fix them or give it a mask); an unlabeled image scores the last
        model's uncertainty on it (``uncertainty``: sample id -> 0..1). The highest score wins;
        without any learned weight or prediction, the first unlabeled image is suggested. The image
        on screen is never suggested. ``None`` when there is nothing to suggest.
        """
        coll = self.collection
        if coll is None:
            return None
        uncertainty = uncertainty or {}
        cands: list[tuple[float, int, str, str]] = []
        for s in coll:
            if s.id == self.current_id:
                continue
            role = s.role
            w = coll.weight_of(s.id)
            if role is Role.WEAK and w is not None:
                cands.append((1.0 - w, 1, s.id, f"weak image with the lowest learned weight ({w:.2f}): check its "
                                               "labels or give it a mask"))
            elif role is Role.UNLABELED and s.id in uncertainty:
                u = uncertainty[s.id]
                cands.append((u, 0, s.id, f"unlabeled image the model is least sure about (uncertainty {u:.2f}): "
                                          "label it"))
        if cands:
            score, _kind, sid, why = max(cands, key=lambda c: (c[0], c[1], [-ord(ch) for ch in c[2]]))
            return sid, why
        for s in coll:
            if s.role is Role.UNLABELED and s.id != self.current_id:
                return s.id, "an unlabeled image (train once to rank them by the model's uncertainty)"
        return None

    def weak_by_weight(self) -> list[tuple[str, float | None]]:
        """Weak samples with their learned weight, lowest first (unweighted last)."""
        if self.collection is None:
            return []
        rows = [(s.id, self.collection.weight_of(s.id)) for s in self.collection.by_role(Role.WEAK)]
        return sorted(rows, key=lambda r: (r[1] is None, r[1] if r[1] is not None else 0.0, r[0]))


class Vocabulary:
    """Classes and tag definitions (saved at once: a crash must not lose a new class)."""

    # -- vocabulary (saved at once) ----------------------------------------
    #: colours offered to new classes: none of them is in the weight scale (magenta - grey - teal),
    #: the "not weighted yet" yellow or the prediction outline's white
    CLASS_COLORS = ("#ff7f0e", "#1f77b4", "#2ca02c", "#9467bd", "#8c564b", "#d62728", "#7f7f7f", "#bcbd22")

    def save_vocabulary(self) -> None:
        """Write classes and tag meanings to ``project.json`` now (a crash must not lose a new class)."""
        if self.collection is not None and self.project_path is not None:
            _store().save_vocabulary(self.collection, self.project_path)
        self.vocabulary_changed.emit()

    def add_class(self, name: str, color: str | None = None):
        """Add a class (a new label value), save the vocabulary, make it the current class."""
        if self.collection is None:
            raise RuntimeError("no collection is open")
        name = name.strip()
        if not name:
            raise ValueError("a class needs a name")
        used = {c.value for c in self.collection.classes}
        value = max(used, default=0) + 1
        info = self.collection.add_class(name, value, color or self.CLASS_COLORS[(value - 1) % len(self.CLASS_COLORS)])
        self.set_current_class(info.value)
        self.save_vocabulary()
        self._refresh_colors()
        return info

    def rename_class(self, value: int, name: str) -> None:
        """Give class ``value`` a new name (masks keep their label values)."""
        name = name.strip()
        coll = self.collection
        if coll is None or not name:
            raise ValueError("a class needs a name")
        if any(c.name == name and c.value != value for c in coll.classes):
            raise ValueError(f"class {name!r} already exists")
        coll.class_by_value(value).name = name
        self.save_vocabulary()

    def recolor_class(self, value: int, color: str) -> None:
        """Show class ``value`` in ``color`` (``#rrggbb``) in the mask, prediction and point layers."""
        hex_to_rgba(color)  # validates
        self.collection.class_by_value(value).color = color.lower()  # type: ignore[union-attr]
        self.save_vocabulary()
        self._refresh_colors()

    def class_usage(self, value: int) -> dict[str, int]:
        """How many masks, boxes and points use class ``value`` (images on disk and on screen)."""
        self.sync_current()
        out = {"masks": 0, "boxes": 0, "points": 0}
        for s in self.collection or []:
            out["masks"] += int(s.mask is not None and bool((np.asarray(s.mask) == value).any()))
            out["boxes"] += sum(b.label == value for b in s.boxes)
            out["points"] += sum(p.label == value for p in s.points)
        return out

    def delete_class(self, value: int) -> None:
        """Remove an unused class. A class still drawn somewhere is kept (``ValueError`` says where)."""
        coll = self.collection
        if coll is None:
            return
        if len(coll.classes) <= 1:
            raise ValueError("the last class cannot be deleted: a project needs one")
        used = {k: v for k, v in self.class_usage(value).items() if v}
        if used:
            what = ", ".join(f"{v} {k}" for k, v in used.items())
            raise ValueError(f"class {coll.class_by_value(value).name!r} is used by {what}: give those "
                             "another class first")
        coll.classes = [c for c in coll.classes if c.value != value]
        for t in coll.tag_defs:
            if t.class_value == value:
                t.class_value = None
        if self.current_class == value:
            self.set_current_class(coll.classes[0].value)
        self.save_vocabulary()
        self._refresh_colors()

    def add_tag(self, name: str, implies: str, *, tick: bool = True):
        """Add a tag to the vocabulary with its meaning (saved at once); tick it on the image on screen."""
        if self.collection is None:
            raise RuntimeError("no collection is open")
        name = name.strip()
        if not name:
            raise ValueError("a tag needs a name")
        tag = self.collection.ensure_tag(name, implies)
        self.save_vocabulary()
        if tick and self.current is not None and name not in self.current.tags:
            self.set_tags([*self.current.tags, name])
        return tag

    def _refresh_colors(self) -> None:
        for key in ("mask", "prediction"):
            layer = self.layer(key)
            if layer is not None:
                layer.colormap = self._label_colormap()
        self.color_annotations()
        self._refresh_point_defaults()
