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
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from psygnal import Signal

from napari_hybridseg.core.data.collection import Collection, Sample

from ._session_base import LAYER_NAMES, _store, connect_once, weight_colormap
from .session_edits import LayerEdits, Vocabulary
from .session_layers import LayerDisplay, Overlays

if TYPE_CHECKING:
    import napari
    from napari.layers import Layer

__all__ = ["LAYER_NAMES", "Session", "connect_once", "copy_sample", "snapshot_collection", "weight_colormap"]

log = logging.getLogger(__name__)



def copy_sample(sample: Sample) -> Sample:
    """A copy that shares the (read-only) pixels but not the annotations or the mask.

    The trainer runs in another thread: it must never see a list (or a mask) that
    the annotator is editing at the same moment.
    """
    return sample.copy(copy_mask=True)


def snapshot_collection(collection: Collection) -> Collection:
    """An independent copy of the annotations (pixels shared) to hand to the trainer thread."""
    return collection.copy(copy_masks=True)


class Session(LayerDisplay, Overlays, LayerEdits, Vocabulary):
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
