"""The annotation session: one collection, its project folder, the sample on screen and its layers.

A :class:`Session` is owned by the dock widget (no global state): tests make
as many as they like. It maps the current :class:`~napari_hybridseg.core.data.collection.Sample`
to napari layers and back, updating the layers *in place* so that a user's
layer settings (opacity, scale, visibility) survive navigation:

========================  ===========  ==============================================
layer                     type         holds
========================  ===========  ==============================================
``hybridseg image``       Image        the pixels
``hybridseg mask``        Labels       the strong mask (label values = classes)
``hybridseg boxes``       Shapes       rectangles; features ``label`` and ``id``
``hybridseg points``      Points       clicks; features ``label``, ``positive``, ``id``
``hybridseg prediction``  Labels       the model's prediction (review)
``hybridseg pixel weights``  Image     per-pixel trust in the label (heatmap)
========================  ===========  ==============================================

Annotation layers share the image layer's scale and translate; if a user
changes one of them, coordinates are translated through world space, so the
model always stores original-image pixels.

The session imports neither Qt nor torch; storage goes through
:mod:`napari_hybridseg.core.data.store` (imported when first needed).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from psygnal import Signal

from napari_hybridseg.core.data.collection import Box, Collection, Point, Role, Sample

from ._convert import (
    UNWEIGHTED_RGBA,
    boxes_to_shapes,
    hex_to_rgba,
    points_to_layer,
    rc_to_point,
    rectangle_to_box,
    weights_to_rgba,
)

if TYPE_CHECKING:
    import napari
    from napari.layers import Layer

__all__ = ["LAYER_NAMES", "Session", "copy_sample", "snapshot_collection"]

log = logging.getLogger(__name__)

LAYER_NAMES = {
    "image": "hybridseg image",
    "pixel_weights": "hybridseg pixel weights",
    "prediction": "hybridseg prediction",
    "mask": "hybridseg mask",
    "boxes": "hybridseg boxes",
    "points": "hybridseg points",
}
_BG_POINT_RGBA = (0.1, 0.1, 0.1, 1.0)


def weight_colormap():
    """The learned-weight scale (:data:`~._convert.WEIGHT_COLORMAP`) as a napari colormap, for the heatmap."""
    from napari.utils.colormaps import Colormap

    from ._convert import WEIGHT_COLORMAP

    return Colormap(colors=[(*c, 1.0) for _, c in WEIGHT_COLORMAP], controls=[s for s, _ in WEIGHT_COLORMAP],
                    name="hybridseg weights")


def copy_sample(sample: Sample) -> Sample:
    """A copy that shares the (read-only) pixels but not the annotations.

    The trainer runs in another thread: it must never see a list that the
    annotator is editing at the same moment.
    """
    return Sample(
        id=sample.id,
        image_path=sample.image_path,
        image=sample.image,
        mask=None if sample.mask is None else sample.mask.copy(),
        boxes=[Box(b.x0, b.y0, b.x1, b.y1, b.label, b.id) for b in sample.boxes],
        points=[Point(p.x, p.y, p.label, p.positive, p.id) for p in sample.points],
        tags=list(sample.tags),
        group=sample.group,
        corrupted=sample.corrupted,
        corruption=sample.corruption,
        reference_mask=sample.reference_mask,
        meta=dict(sample.meta),
    )


def snapshot_collection(collection: Collection) -> Collection:
    """An independent copy of the annotations (pixels shared) to hand to the trainer thread."""
    from copy import deepcopy

    return Collection(
        classes=deepcopy(collection.classes),
        tag_defs=deepcopy(collection.tag_defs),
        samples={k: copy_sample(s) for k, s in collection.samples.items()},
        sample_weights=deepcopy(collection.sample_weights),
        annotation_weights=deepcopy(collection.annotation_weights),
        meta=deepcopy(collection.meta),
    )


def _store():
    try:
        from napari_hybridseg.core.data import store
    except ImportError as exc:  # the storage module is part of the foundation
        raise RuntimeError(
            "napari_hybridseg.core.data.store is not available: reinstall napari-hybridseg "
            f"(pip install -e .) ({exc})"
        ) from exc
    return store


class Session:
    """State of one annotation session in one viewer.

    Parameters
    ----------
    viewer : napari.Viewer
        The viewer whose layers show the current sample.

    Attributes
    ----------
    collection : Collection or None
        What is being annotated.
    project_path : Path or None
        The project folder edits are saved to; ``None`` keeps them in memory.
    current_id : str or None
        The sample on screen.
    current_class : int
        Label value given to new boxes, points and mask strokes.
    predictions : dict[str, numpy.ndarray]
        Latest prediction per sample id (label values, original size).
    pixel_weights : dict[str, numpy.ndarray]
        Latest pixel-weight map per sample id, scaled to [0, 1] for display.
    run_dir : Path or None
        The last training run (its model is used for review predictions and
        as the starting point when training resumes).
    """

    #: emitted with the new sample id after navigation
    sample_changed = Signal(str)
    #: emitted when a new collection is opened
    collection_changed = Signal()
    #: emitted with the sample id when the annotator edits the sample on screen
    annotations_edited = Signal(str)
    #: emitted when learned weights change (after a WeightsReport or a load)
    weights_changed = Signal()
    #: emitted after classes or tag definitions changed (and were saved)
    vocabulary_changed = Signal()

    def __init__(self, viewer: napari.Viewer):
        self.viewer = viewer
        self.collection: Collection | None = None
        self.project_path: Path | None = None
        self.current_id: str | None = None
        self.current_class: int = 1
        self.background_points = False
        self.predictions: dict[str, np.ndarray] = {}
        self.pixel_weights: dict[str, np.ndarray] = {}
        self.run_dir: Path | None = None
        self._layers: dict[str, Layer] = {}
        # sample id -> {key: the user's own layer}: collections made from the viewer's layers are shown
        # and edited in those layers themselves (never copied into ours, never hidden)
        self._bound: dict[str, dict[str, Layer]] = {}
        self._dirty: set[str] = set()
        self._writing_layers = False  # True while we set layer data (not an edit)
        self._reframe = False
        #: the Review tab's "pixel weights" check box
        self.pixel_weights_visible = True

    # -- opening ----------------------------------------------------------
    def set_collection(self, collection: Collection, project_path: str | Path | None = None,
                       *, show: str | None = None, bound: dict[str, dict[str, Layer]] | None = None) -> None:
        """Make ``collection`` the session's collection and show a sample.

        Parameters
        ----------
        collection : Collection
            The annotations.
        project_path : str or Path, optional
            Where edits are saved; ``None`` keeps them in memory only.
        show : str, optional
            Sample id to show first; default: the first sample.
        bound : dict, optional
            Sample id -> ``{"image": layer, "mask": layer, ...}``: the user's own layers that
            hold that sample (see :meth:`from_layers`); they are used in place of ours.
        """
        if self.collection is not None:
            self.save_current()
        self.collection = collection
        self.project_path = None if project_path is None else Path(project_path)
        self.current_id = None
        self._bound = dict(bound or {})
        self.predictions.clear()
        self.pixel_weights.clear()
        self._dirty.clear()
        self.run_dir = self._last_run_dir()
        if collection.classes and self.current_class not in {c.value for c in collection.classes}:
            self.current_class = collection.classes[0].value
        self.collection_changed.emit()
        self.weights_changed.emit()
        if len(collection):
            self.show(show if show in collection else collection.ids[0])
            self.raise_layers()  # over whatever the viewer held before: the canvas shows what the panel names

    def open_project(self, path: str | Path) -> Collection:
        """Load a project folder written by :func:`napari_hybridseg.core.data.store.save_project`."""
        if self.collection is not None:
            self.save_current()  # before reading: reopening the same project must see the last edit
        collection = _store().load_project(Path(path))
        self.set_collection(collection, path)
        return collection

    def import_folder(self, src: str | Path, project: str | Path, layout: str = "images") -> Collection:
        """Import ``src`` in a known layout, save it as a project at ``project`` and open it.

        Parameters
        ----------
        src : str or Path
            A dataset folder (``layout="images"``: a folder of images, all unlabeled).
        project : str or Path
            The new project folder (must not hold another project).
        layout : str
            ``"images"``, ``"folder"`` (images/ + masks/), ``"kvasir"`` or ``"busi"``.
        """
        from napari_hybridseg.core.data.importers import import_dataset

        store = _store()
        project = Path(project)
        if store.is_project(project):
            raise ValueError(f"{project} already holds a project: open it instead, or choose another folder")
        collection = import_dataset(Path(src), layout)
        store.save_project(collection, project)
        return self.open_project(project)

    def _last_run_dir(self) -> Path | None:
        """The newest run folder under ``project/runs`` that holds a model."""
        if self.project_path is None:
            return None
        runs = self.project_path / "runs"
        if not runs.is_dir():
            return None
        done = [d for d in runs.iterdir() if (d / "model").is_dir()]
        return max(done, key=lambda d: d.stat().st_mtime) if done else None

    # -- navigation -------------------------------------------------------
    @property
    def current(self) -> Sample | None:
        if self.collection is None or self.current_id is None:
            return None
        return self.collection.samples.get(self.current_id)

    def step(self, delta: int) -> str | None:
        """Show the sample ``delta`` places after the current one (wraps around)."""
        if self.collection is None or not len(self.collection):
            return None
        ids = self.collection.ids
        i = ids.index(self.current_id) if self.current_id in ids else -delta
        target = ids[(i + delta) % len(ids)]
        self.show(target)
        return target

    def show(self, sample_id: str) -> None:
        """Save the sample on screen if edited, then show ``sample_id`` in the layers."""
        if self.collection is None:
            raise RuntimeError("no collection is open: open a folder, a project or the sample data first")
        if sample_id not in self.collection:
            raise KeyError(f"no sample {sample_id!r} in the collection")
        if self.current_id is not None and self.current_id != sample_id:
            self.save_current()
        sample = self.collection[sample_id]
        try:
            image = sample.load_image()
        except (OSError, ValueError) as exc:  # ImageError is a ValueError: unreadable or unusable file
            from napari.utils.notifications import show_warning

            show_warning(f"Cannot show {sample_id!r}: {exc}. Fix or replace the image file; the other images "
                         "are unaffected.")
            return
        previous = self.layer("image")
        self.current_id = sample_id
        bound = {k: v for k, v in self._bound.get(sample_id, {}).items() if v in self.viewer.layers}
        self._writing_layers = True
        try:
            if "image" in bound:
                if previous is None or tuple(previous.data.shape[:2]) != tuple(image.shape[:2]):
                    self._reframe = True
                ours = self._layers.get("image")
                if ours is not None and ours in self.viewer.layers:  # our copy would hide the user's layer
                    self.viewer.layers.remove(ours)
            else:
                self._show_image(image)
            for key in bound:
                self._connect_edits(key, bound[key])
            if "mask" not in bound:
                self._show_mask(sample)
            else:
                bound["mask"].colormap = self._label_colormap()
            if "boxes" not in bound:
                self._show_boxes(sample)
            if "points" not in bound:
                self._show_points(sample)
            self._show_prediction(sample_id)
            self._show_pixel_weights(sample_id)
        finally:
            self._writing_layers = False
        if self._reframe:
            self._reframe = False
            self.reframe()
        self.sample_changed.emit(sample_id)

    def reframe(self) -> None:
        """Fit the view to the layers (napari's reset view): called when the image size changes."""
        image = self.layer("image")
        if image is None:
            return
        try:
            self.viewer.reset_view()
        except (AttributeError, ValueError) as exc:  # no canvas (headless viewer)
            log.info("cannot re-frame the view: %s", exc)

    # -- layers -----------------------------------------------------------
    def layer(self, key: str) -> Layer | None:
        """The session's layer ``key`` (see :data:`LAYER_NAMES`) if it is still in the viewer.

        A layer of that name left in the viewer by an earlier dock of the plugin (closed and
        added again) is taken over rather than duplicated as ``hybridseg image [1]``.
        """
        user = self._bound.get(self.current_id or "", {}).get(key)
        if user is not None and user in self.viewer.layers:
            return user
        layer = self._layers.get(key)
        if layer is not None and layer in self.viewer.layers:
            return layer
        found = self._find_left_layer(key)
        if found is not None:
            self._layers[key] = found
            self._connect_edits(key, found)
        return found

    def _find_left_layer(self, key: str) -> Layer | None:
        from napari import layers as nl

        kind = {"image": nl.Image, "pixel_weights": nl.Image, "prediction": nl.Labels, "mask": nl.Labels,
                "boxes": nl.Shapes, "points": nl.Points}[key]
        mine = set(map(id, self._layers.values())) | {id(lyr) for d in self._bound.values() for lyr in d.values()}
        for lyr in self.viewer.layers:
            if lyr.name == LAYER_NAMES[key] and isinstance(lyr, kind) and id(lyr) not in mine:
                return lyr
        return None

    def _connect_edits(self, key: str, layer: Layer) -> None:
        """Edits of an annotation layer mark the sample on screen as edited (connected once)."""
        if key == "mask":
            connect_once(layer.events.paint, self._on_edit)
            connect_once(layer.events.data, self._on_edit)
        elif key in ("boxes", "points"):
            connect_once(layer.events.data, self._on_edit)

    def _place(self, layer: Layer) -> None:
        """Give an annotation layer the image layer's scale and translate."""
        image = self.layer("image")
        if image is not None:
            layer.scale = image.scale
            layer.translate = image.translate

    def _adopt(self, key: str, layer: Layer) -> Layer:
        self._place(layer)
        # adding a layer selects it; an overlay appearing mid-stroke must not take the annotator's tool away
        active = self.viewer.layers.selection.active
        # inserted straight where it belongs (overlays above the image, annotations on top): moving layers
        # afterwards costs a canvas update per move, and an overlay may appear while training streams previews
        keys = list(LAYER_NAMES)
        layers = self.viewer.layers
        present = [(k, lyr) for k in keys if k != key and (lyr := self.layer(k)) is not None]
        after = [layers.index(lyr) for k, lyr in present if keys.index(k) > keys.index(key)]
        before = [layers.index(lyr) for k, lyr in present if keys.index(k) < keys.index(key)]
        index = min(after) if after else (max(before) + 1 if before else len(layers))
        layers.insert(index, layer)
        if active is not None and active in self.viewer.layers and key in ("prediction", "pixel_weights"):
            self.viewer.layers.selection.active = active
        self._layers[key] = layer
        self._connect_edits(key, layer)
        return layer

    def raise_layers(self) -> None:
        """Put the session's layers on top of the stack, in :data:`LAYER_NAMES` order.

        Layers the user opened before (the same images with ``viewer.open``, their own
        annotations) stay in the viewer, visible, below ours: the canvas shows the image the
        panel names.
        """
        order = [lyr for k in LAYER_NAMES if (lyr := self.layer(k)) is not None]
        layers = self.viewer.layers
        if not order or list(layers)[-len(order):] == order:
            return
        for lyr in order:  # each to the top in turn: they end up on top, in order
            layers.move(layers.index(lyr), len(layers))

    def _show_image(self, image: np.ndarray) -> None:
        from napari.layers import Image

        rgb = image.ndim == 3
        layer = self.layer("image")
        if layer is not None and bool(layer.rgb) == rgb:
            old_shape = tuple(layer.data.shape[:2])
            layer.data = image
            layer.reset_contrast_limits()
            layer.name = LAYER_NAMES["image"]
            if old_shape != tuple(image.shape[:2]):
                self._reframe = True  # a 480 x 360 image must not be shown in a 320 x 240 frame
            return
        self._reframe = True
        if layer is not None:  # grey <-> colour cannot change in place
            scale, translate = layer.scale, layer.translate
            self.viewer.layers.remove(layer)
        else:
            scale, translate = None, None
        layer = Image(image, name=LAYER_NAMES["image"], rgb=rgb)
        if scale is not None:
            layer.scale, layer.translate = scale, translate
        self._adopt("image", layer)

    def _label_colormap(self):
        from napari.utils.colormaps import DirectLabelColormap

        colors: dict[Any, Any] = {None: (0, 0, 0, 0), 0: (0, 0, 0, 0)}
        if self.collection is not None:
            for c in self.collection.classes:
                colors[c.value] = hex_to_rgba(c.color)
        return DirectLabelColormap(color_dict=colors)

    def _show_mask(self, sample: Sample) -> None:
        from napari.layers import Labels

        h, w = sample.shape
        data = np.zeros((h, w), np.uint8) if sample.mask is None else np.array(sample.mask)
        layer = self.layer("mask")
        if layer is None:
            layer = Labels(data, name=LAYER_NAMES["mask"], opacity=0.5)
            self._adopt("mask", layer)
        else:
            layer.data = data
            self._place(layer)
        # Ctrl+Z must not replay the previous image's strokes onto this one: napari keeps the undo
        # history when the data is replaced, so it is cleared with every swap
        reset = getattr(layer, "_reset_history", None)
        if callable(reset):
            reset()
        layer.colormap = self._label_colormap()
        layer.selected_label = self.current_class

    def _class_rgba(self, value: int, alpha: float = 1.0) -> tuple[float, float, float, float]:
        try:
            return hex_to_rgba(self.collection.class_by_value(value).color, alpha)  # type: ignore[union-attr]
        except (KeyError, AttributeError, ValueError):
            return (1.0, 0.5, 0.0, alpha)

    def _show_boxes(self, sample: Sample) -> None:
        import pandas as pd
        from napari.layers import Shapes

        layer = self.layer("boxes")
        features = pd.DataFrame({
            "label": np.array([b.label for b in sample.boxes], dtype=int),
            "id": np.array([b.id for b in sample.boxes], dtype=object),
        })
        if layer is None:
            layer = Shapes(ndim=2, name=LAYER_NAMES["boxes"], shape_type="rectangle", edge_width=2,
                           face_color="transparent", features=features.iloc[:0])
            self._adopt("boxes", layer)
            layer.current_face_color = "transparent"
        else:
            self._place(layer)
        # a selection left from the previous image would index shapes that no longer exist, and the
        # "current" edge colour and features napari apply to selected shapes would reach the new ones
        layer.selected_data = set()
        layer.data = []
        if sample.boxes:
            layer.add_rectangles(boxes_to_shapes(sample.boxes))
        layer.features = features  # after data: napari keeps stale rows otherwise
        layer.feature_defaults = {"label": self.current_class, "id": ""}
        if sample.boxes:
            layer.face_color = np.zeros((len(sample.boxes), 4))
        layer.current_edge_color = UNWEIGHTED_RGBA
        self.color_annotations()

    def _show_points(self, sample: Sample) -> None:
        import pandas as pd
        from napari.layers import Points

        layer = self.layer("points")
        features = pd.DataFrame({
            "label": np.array([p.label for p in sample.points], dtype=int),
            "positive": np.array([p.positive for p in sample.points], dtype=bool),
            "id": np.array([p.id for p in sample.points], dtype=object),
        })
        size = max(6.0, 0.03 * max(sample.shape))  # big enough to see the weight colour of the outline
        if layer is None:
            layer = Points(ndim=2, name=LAYER_NAMES["points"], size=size, border_width=0.3,
                           features=features.iloc[:0])
            self._adopt("points", layer)
        else:
            self._place(layer)
        # napari selects a point the user just clicked; that selection must not outlive the image:
        # with it, setting current_size indexed the new (empty) data and raised IndexError, and the
        # feature defaults of the next click were left at label 0 / background
        layer.selected_data = set()
        layer.data = points_to_layer(sample.points)
        layer.features = features
        layer.feature_defaults = {"label": self.current_class, "positive": not self.background_points, "id": ""}
        layer.size = size
        layer.current_size = size
        self._set_point_defaults(layer)
        self.color_annotations()

    def _set_point_defaults(self, layer) -> None:
        layer.current_face_color = _BG_POINT_RGBA if self.background_points else self._class_rgba(self.current_class)
        layer.current_border_color = UNWEIGHTED_RGBA

    def _show_prediction(self, sample_id: str) -> None:
        pred = self.predictions.get(sample_id)
        # the layer exists from the first image on (empty until a model predicts): creating a layer costs
        # napari about half a second, which must not happen while training streams previews in
        layer = self._prediction_layer(pred if pred is not None else np.zeros(self.current.shape, np.uint8))
        layer.colormap = self._label_colormap()  # classes may have been added since

    def _show_pixel_weights(self, sample_id: str) -> None:
        pw = self.pixel_weights.get(sample_id)
        layer = self.layer("pixel_weights")
        if pw is None:
            if layer is not None:
                layer.visible = False
            return
        self.set_pixel_weights(sample_id, pw)

    def set_prediction(self, sample_id: str, labels: np.ndarray) -> None:
        """Remember a prediction and, if ``sample_id`` is on screen, show it in place."""
        self.predictions[sample_id] = labels
        if sample_id == self.current_id:
            self._prediction_layer(labels)

    def _prediction_layer(self, labels: np.ndarray):
        from napari.layers import Labels

        layer = self.layer("prediction")
        if layer is None:
            layer = Labels(labels, name=LAYER_NAMES["prediction"], opacity=0.6, blending="translucent")
            self._adopt("prediction", layer)
            layer.editable = False
            layer.colormap = self._label_colormap()
        else:
            layer.data = labels
            self._place(layer)
        # contours keep the image and the annotations visible under the prediction
        layer.contour = max(1, int(round(max(labels.shape) / 200)))
        return layer

    def set_pixel_weights(self, sample_id: str, weights: np.ndarray) -> None:
        """Remember a pixel-weight map (any non-negative scale) and show it if on screen."""
        from napari.layers import Image

        w = np.asarray(weights, dtype=np.float32)
        top = float(np.nanmax(w)) if w.size else 0.0
        w = w / top if top > 0 else w
        self.pixel_weights[sample_id] = w
        if sample_id != self.current_id:
            return
        layer = self.layer("pixel_weights")
        if layer is None:
            layer = Image(w, name=LAYER_NAMES["pixel_weights"], colormap=weight_colormap(), opacity=0.5,
                          blending="translucent", contrast_limits=(0.0, 1.0), visible=self.pixel_weights_visible)
            self._adopt("pixel_weights", layer)
        else:
            layer.data = w
            layer.contrast_limits = (0.0, 1.0)
            if bool(layer.visible) != self.pixel_weights_visible:  # as the Review tab's check box says
                layer.visible = self.pixel_weights_visible
            self._place(layer)

    def color_annotations(self) -> None:
        """Edge colours of boxes and points from their learned weights (sample weight as fallback)."""
        sample = self.current
        if sample is None or self.collection is None:
            return
        coll = self.collection
        fallback = coll.weight_of(sample.id)

        def weight(ann_id: str) -> float | None:
            state = coll.annotation_weights.get(ann_id)
            return fallback if state is None else state.value

        boxes = self.layer("boxes")
        if boxes is not None and len(boxes.data):
            ids = list(boxes.features["id"]) if "id" in boxes.features else [""] * len(boxes.data)
            boxes.edge_color = weights_to_rgba([weight(i) for i in ids])
        points = self.layer("points")
        if points is not None and len(points.data):
            feats = points.features
            ids = list(feats["id"]) if "id" in feats else [""] * len(points.data)
            points.border_color = weights_to_rgba([weight(i) for i in ids])
            face = [self._class_rgba(int(lbl)) if pos else _BG_POINT_RGBA
                    for lbl, pos in zip(feats.get("label", [self.current_class] * len(ids)),
                                        feats.get("positive", [True] * len(ids)))]
            points.face_color = np.array(face, dtype=float)

    def set_current_class(self, value: int) -> None:
        """Class of the next box, point and mask stroke."""
        self.current_class = int(value)
        mask = self.layer("mask")
        if mask is not None:
            mask.selected_label = self.current_class
        boxes = self.layer("boxes")
        if boxes is not None:
            boxes.feature_defaults = {"label": self.current_class, "id": ""}
        self._refresh_point_defaults()

    def set_background_points(self, on: bool) -> None:
        """Whether the next clicks are background (``True``) or foreground points."""
        self.background_points = bool(on)
        self._refresh_point_defaults()

    def _refresh_point_defaults(self) -> None:
        points = self.layer("points")
        if points is not None:
            points.feature_defaults = {"label": self.current_class, "positive": not self.background_points, "id": ""}
            self._set_point_defaults(points)

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
    def record_weights(self, step: int, sample_weights: dict[str, float],
                       annotation_weights: dict[str, float] | None = None) -> None:
        """Add a WeightsReport's values to the collection's weight history."""
        from napari_hybridseg.core.data.collection import WeightState

        if self.collection is None:
            return
        for target, values in ((self.collection.sample_weights, sample_weights),
                               (self.collection.annotation_weights, annotation_weights or {})):
            for key, value in values.items():
                target.setdefault(key, WeightState()).record(step, value)
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


def connect_once(signal, slot: Callable) -> None:
    """Connect ``slot`` to ``signal`` unless it is already connected."""
    try:
        signal.disconnect(slot)
    except (TypeError, ValueError, RuntimeError):
        pass
    signal.connect(slot)
