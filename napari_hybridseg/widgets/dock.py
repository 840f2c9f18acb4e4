"""The HybridSeg dock widget: data, train and review panels around one session.

The widget owns the :class:`~napari_hybridseg.widgets.session.Session` and the
:class:`~napari_hybridseg.widgets.training.TrainingRunner`; the panels are thin
views. Torch is imported only inside worker threads (training, prediction).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QEvent, QObject, Qt, QTimer
from qtpy.QtWidgets import QFrame, QMessageBox, QScrollArea, QTabWidget, QVBoxLayout, QWidget

from napari_hybridseg.core.training.reports import RequestPreview, StepReport

from . import _messages
from .data_panel import DataPanel
from .dock_review import ExportActions, ReviewActions, uncertainty
from .dock_training import TrainingControl
from .review_panel import ReviewPanel
from .session import Session
from .train_panel import TrainPanel
from .training import TrainingRunner, avoid_triton_in_gui

if TYPE_CHECKING:
    import napari

__all__ = ["HybridSegWidget", "copy_sample_project", "uncertainty"]

log = logging.getLogger(__name__)

#: debounce between an edit during training and sending it to the trainer
UPDATE_DELAY_MS = 400
#: an edit of the image on screen is written to the project once no new edit came for this long
AUTOSAVE_DELAY_MS = 1000


def copy_sample_project(dest: str | Path | None = None) -> Path:
    """Copy the bundled sample project to ``dest`` (default: a new temporary folder) and return it.

    The shipped ``sample_data/`` folder is never modified: the plugin and the
    demo always work on a copy.
    """
    from napari_hybridseg.core.data import sample_data

    src = Path(sample_data.sample_project_path())
    if dest is None:
        dest = Path(tempfile.mkdtemp(prefix="hybridseg-sample-")) / "project"
    dest = Path(dest)
    if dest.exists() and any(dest.iterdir()):
        return dest  # an earlier copy: keep the user's work
    shutil.copytree(src, dest, dirs_exist_ok=True)
    return dest


class _CloseWatcher(QObject):
    """Saves (and stops training) when the napari window closes."""

    def __init__(self, widget: HybridSegWidget):
        super().__init__(widget)
        self.widget = widget

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 (Qt API)
        if event.type() == QEvent.Type.Close:
            return not self.widget.prepare_close(ask=event.spontaneous())
        return False


class HybridSegWidget(TrainingControl, ReviewActions, ExportActions, QWidget):
    """Annotate a collection, train with hybrid supervision, review the learned weights.

    Parameters
    ----------
    napari_viewer : napari.Viewer
        The viewer (napari passes it when the widget is docked from the menu).
    train_fn : callable, optional
        The trainer generator function; default: the core trainer. Tests
        pass a fake with the same signature.
    """

    def __init__(self, napari_viewer: napari.Viewer, *, train_fn: Callable | None = None):
        super().__init__()
        self.viewer = napari_viewer
        self.session = Session(napari_viewer)
        self.runner = TrainingRunner(train_fn, parent=self)
        self.data_panel = DataPanel(self.session)
        self.train_panel = TrainPanel()
        self.review_panel = ReviewPanel(self.session)
        self.tabs = QTabWidget()
        # each panel scrolls vertically rather than squeezing (or cutting off) its controls in a short window
        for panel, title in ((self.data_panel, "Data"), (self.train_panel, "Train"), (self.review_panel, "Review")):
            scroll = QScrollArea()
            scroll.setWidgetResizable(True)
            scroll.setFrameShape(QFrame.Shape.NoFrame)
            scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
            scroll.setWidget(panel)
            self.tabs.addTab(scroll, title)
        QVBoxLayout(self).addWidget(self.tabs)
        self.setMinimumWidth(400)

        self._run_dir: Path | None = None
        self.last_step: StepReport | None = None
        self._last_preview_request = 0
        self._preview_every = 25
        self._predictor: Any = None
        self._predictor_dir: Path | None = None
        self._predicting: set[str] = set()
        self._stale_predictions: set[str] = set()
        self._uncertainty: dict[str, float] = {}  # sample id -> how unsure the last model is (0..1)
        self._scoring = None
        # the predictor (torch) is used by one worker at a time: the review, the scoring, the export; two
        # threads loading torch at once can deadlock in its C extensions
        self._predictor_lock = threading.RLock()
        self._closing = False
        self.first_overlay_s: float | None = None  # Train pressed -> first prediction shown
        self._train_pressed_at: float | None = None
        self._update_timer = QTimer(self)
        self._update_timer.setSingleShot(True)
        self._update_timer.setInterval(UPDATE_DELAY_MS)
        self._update_timer.timeout.connect(self._send_update)
        self._pending_updates: set[str] = set()
        # durable edits: the image on screen is saved once its edits settle, not only on navigation
        self._autosave_timer = QTimer(self)
        self._autosave_timer.setSingleShot(True)
        self._autosave_timer.setInterval(AUTOSAVE_DELAY_MS)
        self._autosave_timer.timeout.connect(self.autosave)
        self.autosaves = 0  # how many autosaves wrote (tests, docs)

        self.data_panel.sample_btn.clicked.connect(self.open_sample_data)
        self.train_panel.train_btn.clicked.connect(self.toggle_training)
        self.review_panel.predict_btn.clicked.connect(lambda: self.predict_current(force=True))
        self.review_panel.export_pred_btn.clicked.connect(self._ask_export_predictions)
        self.review_panel.export_csv_btn.clicked.connect(self._ask_export_csv)
        self.review_panel.export_model_btn.clicked.connect(self._ask_export_model)
        self.review_panel.export_bioimageio_btn.clicked.connect(self._ask_export_bioimageio)
        self.session.annotations_edited.connect(self._on_edited)
        self.session.sample_changed.connect(self._on_sample_changed)
        self.session.collection_changed.connect(self._on_collection_changed)
        self.data_panel.suggest_btn.clicked.connect(self.go_to_suggestion)
        self.data_panel.use_layers_btn.clicked.connect(self.use_selected_layers)
        self._weights_this_run = 0
        r0 = self.runner
        r0.weights.connect(self._count_weights)
        r = self.runner
        r.started.connect(self.train_panel.on_start)
        r.stepped.connect(self._on_step)
        r.weights.connect(lambda rep: self.session.record_weights(rep.step, rep.sample_weights))
        r.preview.connect(self._on_preview)
        r.done.connect(self._on_done)
        r.failed.connect(self._on_failed)
        r.finished.connect(self._on_finished)

        self._bind_keys()
        self.warmed_up = threading.Event()
        if os.environ.get("HYBRIDSEG_NO_WARMUP") != "1":
            # load torch and the trainer while the annotator works: loading a C extension holds the GIL
            # for about a second, which would freeze napari if it happened when Train is pressed
            QTimer.singleShot(1000, self._warm_up)
        else:
            self.warmed_up.set()
        self._close_watcher = _CloseWatcher(self)
        # napari hands plugins a proxy that hides private attributes; the main window is needed to save on close
        real_viewer = getattr(napari_viewer, "__wrapped__", napari_viewer)
        qt_window = getattr(getattr(real_viewer, "window", None), "_qt_window", None)
        self.watches_close = qt_window is not None  # a bool, not the window: holding it would leak the viewer
        if qt_window is not None:
            qt_window.installEventFilter(self._close_watcher)

    def _warm_up(self) -> None:
        def load():
            try:
                if self.runner._train_fn is None:
                    avoid_triton_in_gui()
                    # the models' library first: the trainer imports it when it builds the first network,
                    # and that import (timm, huggingface_hub, safetensors) held the GIL for stalls of up to
                    # 170 ms each in the worker's first 2 s (docs/responsiveness.md)
                    import segmentation_models_pytorch  # noqa: F401

                    import napari_hybridseg.core.prediction.predict  # noqa: F401
                    import napari_hybridseg.core.training.trainer  # noqa: F401
            except Exception as exc:  # training will report it with what to do
                log.info("warm-up import failed: %s", exc)
            finally:
                self.warmed_up.set()

        threading.Thread(target=load, name="hybridseg-warm-up", daemon=True).start()

    # -- opening -------------------------------------------------------------
    def open_project(self, path: str | Path) -> None:
        """Open a project folder (saving the current one first)."""
        self.session.open_project(path)
        self.show_tab(self.data_panel)

    def open_sample_data(self, dest: str | Path | None = None) -> Path:
        """Open a copy of the bundled sample project (in ``dest``, default ``~/napari-hybridseg-sample``)."""
        if dest is None:
            dest = Path(os.environ.get("HYBRIDSEG_SAMPLE_COPY", Path.home() / "napari-hybridseg-sample"))
        path = copy_sample_project(dest)
        self.open_project(path)
        return path

    def open_collection(self, collection, project_path: str | Path | None = None) -> None:
        """Show an in-memory collection (e.g. built by a script), optionally saved to ``project_path``."""
        self.session.set_collection(collection, project_path)

    def show_tab(self, panel: QWidget) -> None:
        """Bring the tab of ``panel`` (data, train or review panel) to the front."""
        for i in range(self.tabs.count()):
            page = self.tabs.widget(i)
            if page is panel or (isinstance(page, QScrollArea) and page.widget() is panel):
                self.tabs.setCurrentIndex(i)
                return

    def use_selected_layers(self, project: str | Path | None = None) -> Path | None:
        """Make a project of the layers selected in napari (the Data tab's *Use the selected layers*).

        Every selected Image layer becomes an image; a selected Labels layer of the same size is
        its mask, selected Shapes its boxes (each shape's bounding box), selected Points its
        foreground clicks (annotation layers go with the image when one Image layer is selected,
        or when they are the same size as exactly one of them). The layers themselves are shown
        and edited: nothing is copied into a second layer or hidden. The project is written to
        ``project`` (default: ``<image file>_hybridseg`` beside the image's file, else
        ``~/napari-hybridseg-projects/<layer name>``; ``HYBRIDSEG_PROJECTS_DIR`` overrides that
        folder). Returns the project folder, or ``None`` if no Image layer is selected.
        """
        from .layers_collection import collection_from_layers, default_layers_project

        selected = list(self.viewer.layers.selection) or (
            [self.viewer.layers.selection.active] if self.viewer.layers.selection.active else [])
        try:
            coll, bound = collection_from_layers(selected, self.session.current_class)
        except ValueError as exc:
            _messages.notify("warning", str(exc))
            return None
        path = Path(project) if project is not None else default_layers_project(selected)
        from napari_hybridseg.core.data.store import is_project, save_project

        if is_project(path):
            n = 2
            while is_project(path.with_name(f"{path.name}-{n}")):
                n += 1
            path = path.with_name(f"{path.name}-{n}")
        self.session.save()  # the collection open until now
        save_project(coll, path)
        self.session.set_collection(coll, path, bound=bound)
        self.show_tab(self.data_panel)
        _messages.notify("info", f"HybridSeg: {len(coll)} image layer(s) as project {path}; "
                                 "your layers are edited in place")
        return path

    # -- keys ----------------------------------------------------------------
    def _bind_keys(self) -> None:
        def nxt(viewer=None):
            self.session.step(1)

        def prev(viewer=None):
            self.session.step(-1)

        def suggested(viewer=None):
            self.go_to_suggestion()

        # N / P / S are free in napari's default keymap for every layer type we create
        self._keys = {"PageDown": nxt, "PageUp": prev, "n": nxt, "p": prev, "s": suggested}
        for key, fn in self._keys.items():
            try:
                self.viewer.bind_key(key, fn, overwrite=True)
            except (TypeError, ValueError) as exc:  # another plugin holds the key: the buttons still work
                log.info("cannot bind %s: %s", key, exc)

    def autosave(self) -> bool:
        """Write the sample on screen if it was edited (the settled-edit timer calls this). Returns whether it wrote."""
        from qtpy.QtCore import Qt
        from qtpy.QtWidgets import QApplication

        if QApplication.mouseButtons() != Qt.MouseButton.NoButton:  # mid-stroke: wait until the drag ends
            self._autosave_timer.start()
            return False
        try:
            wrote = self.session.save_current()
        except (OSError, ValueError, RuntimeError) as exc:
            _messages.notify("error", f"Cannot save {self.session.current_id!r}: {exc}. Check that the project folder "
                             "is writable; your edits stay in napari and are saved on the next change.")
            return False
        self.autosaves += int(wrote)
        return wrote

    def _on_edited(self, sample_id: str) -> None:
        if self.session.project_path is not None:
            self._autosave_timer.start()
        if self.runner.running:
            self._pending_updates.add(sample_id)
            self._update_timer.start()

    def _on_sample_changed(self, sample_id: str) -> None:
        if self.runner.running:
            self._update_timer.stop()
            self._send_update()
            self.runner.send(RequestPreview((sample_id,)))
        elif sample_id not in self.session.predictions or sample_id in self._stale_predictions:
            self.predict_current()

    # -- closing ---------------------------------------------------------------
    def prepare_close(self, ask: bool = True) -> bool:
        """Stop training (keeping a checkpoint) and save; return ``False`` if the user cancels."""
        if self.runner.running:
            if ask:
                answer = QMessageBox.question(
                    self, "HybridSeg is training",
                    "Training is running. Stop it (the last checkpoint and all annotations are kept) and close?",
                )
                if answer != QMessageBox.StandardButton.Yes:
                    return False
            self.runner.stop()
            self.runner.wait(60)
        self._closing = True
        if self._scoring is not None:  # stops before its next image
            self.wait_for_predictions(60)
        try:
            self.session.save()
        except (OSError, ValueError, RuntimeError) as exc:
            log.error("could not save on close: %s", exc)
        return True

    def closeEvent(self, event) -> None:  # noqa: N802 (Qt API)
        self.prepare_close(ask=False)
        for key in getattr(self, "_keys", {}):  # the viewer outlives the dock: free Page Up / Page Down
            try:
                self.viewer.bind_key(key, None, overwrite=True)
            except (TypeError, ValueError, KeyError):
                pass
        super().closeEvent(event)
