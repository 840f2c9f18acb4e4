"""How the session shows a sample in napari layers (updated in place) and its prediction / pixel-weight overlays.

Parts of :class:`~napari_hybridseg.widgets.session.Session` (mixins: they use its
attributes; see its docstring).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from napari_hybridseg.core.data.collection import Sample

from ._convert import UNWEIGHTED_RGBA, boxes_to_shapes, hex_to_rgba, points_to_layer, weights_to_rgba
from ._session_base import _BG_POINT_RGBA, LAYER_NAMES, connect_once, weight_colormap

if TYPE_CHECKING:
    from napari.layers import Layer


class LayerDisplay:
    """The session's layers: found, adopted, placed and filled with the current sample."""

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


class Overlays:
    """The review overlays (prediction, pixel weights) and the class colours of boxes and points."""

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
        """Edge colours of boxes and points from their sample's learned weight."""
        sample = self.current
        if sample is None or self.collection is None:
            return
        weight = self.collection.weight_of(sample.id)
        boxes = self.layer("boxes")
        if boxes is not None and len(boxes.data):
            boxes.edge_color = weights_to_rgba([weight] * len(boxes.data))
        points = self.layer("points")
        if points is not None and len(points.data):
            feats = points.features
            ids = list(feats["id"]) if "id" in feats else [""] * len(points.data)
            points.border_color = weights_to_rgba([weight] * len(ids))
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
