"""The HybridSeg dock widget: data, train and review panels around one session.

The widget owns the :class:`~napari_hybridseg.widgets.session.Session` and the
:class:`~napari_hybridseg.widgets.training.TrainingRunner`; the panels are thin
views. Torch is imported only inside worker threads (training, prediction).
"""

from __future__ import annotations

import csv
import datetime as _dt
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QEvent, QObject, Qt, QTimer
from qtpy.QtWidgets import QFileDialog, QFrame, QMessageBox, QScrollArea, QTabWidget, QVBoxLayout, QWidget

from napari_hybridseg.core.data.collection import Role
from napari_hybridseg.core.training.reports import DoneReport, PreviewReport, RequestPreview, StepReport, UpdateSamples

from .data_panel import DataPanel
from .review_panel import ReviewPanel
from .session import Session, copy_sample, snapshot_collection
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


def _notify(kind: str, message: str) -> None:
    from napari.utils import notifications

    getattr(notifications, f"show_{kind}")(message)


def uncertainty(probs) -> float | None:
    """How unsure a prediction is, 0 (certain) .. 1: the mean over pixels of 1 - the top class probability,
    scaled by the most it can be (1 - 1/classes). ``None`` if ``probs`` is not a probability map."""
    p = np.asarray(probs, dtype=np.float32)
    if p.ndim == 2:  # foreground probability of a binary model
        p = np.stack([1.0 - p, p])
    if p.ndim != 3 or p.shape[0] < 2 or not np.isfinite(p).all():
        return None
    if p.shape[0] > p.shape[-1] and p.shape[-1] <= 16:  # (H, W, C)
        p = np.moveaxis(p, -1, 0)
    top = p.max(axis=0)
    k = p.shape[0]
    return float(np.clip((1.0 - top).mean() / (1.0 - 1.0 / k), 0.0, 1.0))


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


class HybridSegWidget(QWidget):
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
        r.weights.connect(lambda rep: self.session.record_weights(rep.step, rep.sample_weights,
                                                                   rep.annotation_weights))
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
            _notify("warning", str(exc))
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
        _notify("info", f"HybridSeg: {len(coll)} image layer(s) as project {path}; your layers are edited in place")
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

    # -- training ------------------------------------------------------------
    def toggle_training(self) -> None:
        """Train, or Stop when training runs."""
        if self.runner.running:
            self.stop_training()
        else:
            self.start_training()

    def _preflight(self) -> str | None:
        coll = self.session.collection
        if coll is None or not len(coll):
            return "Open a folder of images, a project or the sample data first."
        if not coll.strong:
            return "Training needs at least one image with a full mask: paint one with the mask layer first."
        return None

    def start_training(self) -> bool:
        """Save everything, then start the trainer in a worker thread. Returns whether it started."""
        problem = self._preflight()
        if problem:
            _notify("warning", problem)
            self.train_panel.on_end(problem)
            return False
        try:
            self.session.save()
        except (OSError, ValueError, RuntimeError) as exc:
            _notify("error", f"Cannot save the project before training: {exc}. Check the folder is writable.")
            return False
        coll = self.session.collection
        config = self.train_panel.config(coll)
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        base = (self.session.project_path / "runs") if self.session.project_path else \
            Path(tempfile.mkdtemp(prefix="hybridseg-runs-"))
        run_dir = base / stamp
        n = 1
        while run_dir.exists():
            n += 1
            run_dir = base / f"{stamp}-{n}"
        init_from = self.session.run_dir if (self.train_panel.resume.value and self.session.run_dir) else None
        self._run_dir = run_dir
        self._weights_this_run = 0
        self.last_step = None
        # the image on screen refreshes at least every 10 steps, whatever the preset's preview interval
        self._preview_every = max(1, min(int(config.preview_every or 10), 10))
        self._last_preview_request = 0
        self.first_overlay_s = None
        self._train_pressed_at = time.perf_counter()
        current = (self.session.current_id,) if self.session.current_id else ()
        self.runner.start(snapshot_collection(coll), config, run_dir, init_from=init_from, preview_ids=current)
        if current:
            # queued before the first step: the first prediction overlay follows step 1
            self.runner.send(RequestPreview(current))
            self._last_preview_request = -1
        self.train_panel.set_running(True)
        return True

    def stop_training(self) -> None:
        """Ask the trainer to stop after its current step (a checkpoint is kept)."""
        if self.runner.running:
            self.runner.stop()
            self.train_panel.set_stopping()

    def _on_step(self, report: StepReport) -> None:
        self.last_step = report
        self.train_panel.on_step(report)
        every = max(1, int(self._preview_every))
        if self._last_preview_request < 0:  # the request sent with Train covers the first steps
            self._last_preview_request = report.step
        elif self.session.current_id and report.step - self._last_preview_request >= every:
            self._last_preview_request = report.step
            self.runner.send(RequestPreview((self.session.current_id,)))

    def _on_preview(self, report: PreviewReport) -> None:
        for sid, labels in report.labels.items():
            self.session.set_prediction(sid, labels)
        for sid, (w_init, _w_own) in report.pixel_weights.items():
            self.session.set_pixel_weights(sid, w_init)
        if self.session.current_id in report.labels and self.first_overlay_s is None \
                and self._train_pressed_at is not None:
            self.first_overlay_s = time.perf_counter() - self._train_pressed_at

    def _count_weights(self, _report) -> None:
        self._weights_this_run += 1

    def _on_collection_changed(self) -> None:
        run_dir = self.session.run_dir
        step = None
        if run_dir is not None:
            try:
                import json

                step = int(json.loads((run_dir / "run.json").read_text()).get("step"))
            except (OSError, ValueError, TypeError):
                step = None
            self._restore_pixel_weights(run_dir)
        self.train_panel.show_last_model(run_dir, step)
        self._uncertainty.clear()
        self.data_panel.show_suggestion(self.suggest())

    # -- pixel weights kept with the run ---------------------------------------
    PIXEL_WEIGHTS_FILE = "review_pixel_weights.npz"

    def _save_pixel_weights(self, run_dir: Path) -> None:
        """Keep the last heatmaps with the run, so that reopening the project shows them again."""
        maps = self.session.pixel_weights
        if not maps or not run_dir.is_dir():
            return
        tmp = run_dir / f".{self.PIXEL_WEIGHTS_FILE}.tmp.npz"
        np.savez_compressed(tmp, **{k: np.asarray(v, np.float16) for k, v in maps.items()})
        os.replace(tmp, run_dir / self.PIXEL_WEIGHTS_FILE)

    def _restore_pixel_weights(self, run_dir: Path) -> None:
        path = run_dir / self.PIXEL_WEIGHTS_FILE
        if not path.is_file():
            return
        try:
            with np.load(path) as data:
                maps = {k: data[k].astype(np.float32) for k in data.files}
        except (OSError, ValueError) as exc:
            log.info("cannot read %s: %s", path, exc)
            return
        coll = self.session.collection
        for sid, w in maps.items():
            if coll is not None and sid in coll and tuple(w.shape) == tuple(coll[sid].shape):
                self.session.set_pixel_weights(sid, w)
        if self.session.current_id in maps:
            self.review_panel.apply_overlay_visibility()

    # -- guidance ----------------------------------------------------------------
    #: at most this many unlabeled images are scored by the model's uncertainty after a run
    MAX_SCORED = 200

    def score_unlabeled(self):
        """Predict the unlabeled images with the last model (worker thread) and keep its uncertainty on each.

        Feeds :meth:`suggest`; returns the worker, or ``None`` when there is no model or nothing to score.
        """
        from napari.qt.threading import create_worker

        coll, run_dir = self.session.collection, self.session.run_dir
        if coll is None or run_dir is None or self.runner.running:
            return None
        todo = [s for s in coll.unlabeled if s.id not in self._uncertainty][: self.MAX_SCORED]
        if not todo:
            return None

        def work():
            for s in todo:
                if self._closing:
                    return
                try:
                    with self._predictor_lock:  # one prediction at a time, the review's own first
                        predictor = self._load_predictor(run_dir)
                        _labels, probs = predictor.predict(s.load_image())
                except (OSError, ValueError) as exc:  # an unreadable image is skipped, not fatal
                    log.info("cannot score %s: %s", s.id, exc)
                    continue
                yield s.id, uncertainty(probs)

        def got(item):
            sid, unsure = item
            if unsure is not None:
                self._uncertainty[sid] = unsure

        worker = create_worker(work, _connect={"yielded": got, "errored": self._on_predict_error},
                               _start_thread=False)
        try:
            worker.errored.disconnect(worker._relay_error)
        except (AttributeError, TypeError, RuntimeError):
            pass
        def finished():
            self._scoring = None
            if not self._closing:
                self.data_panel.show_suggestion(self.suggest())

        worker.finished.connect(finished)
        self._scoring = worker
        worker.start()
        return worker

    def suggest(self) -> tuple[str, str] | None:
        """The image to annotate next and why (see :meth:`Session.suggest_next`)."""
        return self.session.suggest_next(self._uncertainty)

    def go_to_suggestion(self) -> str | None:
        """Show the suggested image (button and key S). Returns its id."""
        pick = self.suggest()
        self.data_panel.show_suggestion(pick)
        if self._scoring is None:
            # on demand, not after every run: the unlabeled images are predicted in the background and the
            # suggestion line updates when they are ranked
            self.score_unlabeled()
        if pick is None:
            return None
        self.session.show(pick[0])
        self.data_panel.show_suggestion(self.suggest())
        return pick[0]

    def _on_done(self, report: DoneReport) -> None:
        if report.checkpoint:
            self.session.run_dir = self._run_dir
            # previews came from earlier steps: the final model predicts the image on screen anew
            self._stale_predictions = set(self.session.predictions)
            self.predict_current()
        try:
            self.session.save_weights()
        except (OSError, ValueError, RuntimeError) as exc:
            _notify("warning", f"Could not save the learned weights into the project: {exc}")
        if self._run_dir is not None:
            try:
                self._save_pixel_weights(self._run_dir)
            except OSError as exc:
                log.info("could not keep the pixel weights: %s", exc)
        what = "finished" if report.reason == "finished" else "stopped"
        if self._weights_this_run and self.session.collection is not None and self.session.collection.weak:
            after = "Open the Review tab to see which weak labels were down-weighted."
        elif self.session.collection is not None and self.session.collection.weak:
            after = ("It stopped before the first weight update, so no weak image has a learned weight yet: "
                     "train longer to see which labels the network distrusts.")
        else:
            after = "There are no weak images to weigh: add boxes, points or tags to more images."
        self.train_panel.on_end(f"Training {what} at step {report.step} after {report.wall_s:.0f} s. "
                                f"Model: {self.session.run_dir or 'not saved'}. {after}")
        self._uncertainty.clear()  # a new model: its own uncertainty
        self.data_panel.show_suggestion(self.suggest())
        self.review_panel.refresh()
        _notify("info", f"HybridSeg: training {what} at step {report.step}.")

    def _on_failed(self, message: str, exc: BaseException) -> None:
        _notify("error", message)
        self.train_panel.on_end(message)

    def _on_finished(self) -> None:
        self.train_panel.set_running(False)

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
            _notify("error", f"Cannot save {self.session.current_id!r}: {exc}. Check that the project folder "
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

    def _send_update(self) -> None:
        """Send the edited samples to the running trainer (debounced: one message per burst of edits)."""
        coll = self.session.collection
        if not self.runner.running or coll is None:
            self._pending_updates.clear()
            return
        if self.session.current_id in self._pending_updates:
            self.session.sync_current()
        samples = tuple(copy_sample(coll[s]) for s in self._pending_updates if s in coll)
        self._pending_updates.clear()
        if samples:
            self.runner.send(UpdateSamples(samples))

    def _on_sample_changed(self, sample_id: str) -> None:
        if self.runner.running:
            self._update_timer.stop()
            self._send_update()
            self.runner.send(RequestPreview((sample_id,)))
        elif sample_id not in self.session.predictions or sample_id in self._stale_predictions:
            self.predict_current()

    # -- prediction (review) ---------------------------------------------------
    def predict_current(self, force: bool = False) -> bool:
        """Predict the image on screen with the last model, in a worker thread. Returns whether it started."""
        sid = self.session.current_id
        run_dir = self.session.run_dir
        if sid is None or run_dir is None or self.runner.running or sid in self._predicting:
            if force and run_dir is None:
                _notify("info", "No trained model yet: press Train first.")
            return False
        from napari.qt.threading import create_worker

        image = self.session.current.load_image()
        self._predicting.add(sid)

        def work():
            with self._predictor_lock:
                predictor = self._load_predictor(run_dir)
                labels, probs = predictor.predict(image)
            return sid, np.asarray(labels), uncertainty(probs)

        def done(result):
            if self._closing:
                return  # the viewer is going away: nothing to show
            sample_id, labels, unsure = result
            self._stale_predictions.discard(sample_id)
            if unsure is not None:
                self._uncertainty[sample_id] = unsure
            self.session.set_prediction(sample_id, labels)

        worker = create_worker(work, _connect={"returned": done, "errored": self._on_predict_error},
                               _start_thread=False)
        try:
            worker.errored.disconnect(worker._relay_error)
        except (AttributeError, TypeError, RuntimeError):
            pass
        worker.finished.connect(lambda: self._predicting.discard(sid))
        worker.start()
        return True

    def _load_predictor(self, run_dir: Path):
        # runs in a worker thread: torch is imported here, never on the main thread
        if self._predictor is None or self._predictor_dir != run_dir:
            avoid_triton_in_gui()
            from napari_hybridseg.core.prediction.predict import Predictor

            self._predictor = Predictor.load(run_dir)
            self._predictor_dir = run_dir
        return self._predictor

    def _on_predict_error(self, exc: BaseException) -> None:
        _notify("warning", f"Prediction failed ({exc.__class__.__name__}: {exc}). Train again, or check the "
                           "run folder is complete.")

    def wait_for_predictions(self, timeout_s: float = 30.0) -> bool:
        """Process events until no prediction (or uncertainty-scoring) worker runs (tests and the demo)."""
        from qtpy.QtWidgets import QApplication

        end = time.perf_counter() + timeout_s
        while (self._predicting or self._scoring is not None) and time.perf_counter() < end:
            QApplication.processEvents()
            time.sleep(0.005)
        return not self._predicting and self._scoring is None

    # -- export ----------------------------------------------------------------
    def export_weights_csv(self, path: str | Path) -> Path:
        """Write one row per sample: id, role, learned weight, label counts, tags, known-wrong flag."""
        coll = self.session.collection
        if coll is None:
            raise RuntimeError("no collection is open")
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["sample_id", "role", "weight", "boxes", "points", "tags", "known_wrong", "history"])
            for s in coll:
                state = coll.sample_weights.get(s.id)
                w.writerow([s.id, s.role.value, "" if state is None else f"{state.value:.6f}", len(s.boxes),
                            len(s.points), ";".join(s.tags), int(bool(s.corrupted)),
                            "" if state is None else " ".join(f"{st}:{v:.4f}" for st, v in state.history)])
        os.replace(tmp, path)
        return path

    def export_model(self, dest: str | Path) -> Path:
        """Copy the last run folder (model, run.json, gamma.json) into ``dest``."""
        run_dir = self.session.run_dir
        if run_dir is None:
            raise RuntimeError("no trained model yet: press Train first")
        target = Path(dest) / run_dir.name
        shutil.copytree(run_dir, target, dirs_exist_ok=True)
        return target

    def export_predictions(self, dest: str | Path, *, roles: tuple[Role, ...] | None = None):
        """Predict every image with the last model and write ``dest/<id>.png`` (in a worker thread).

        Returns the worker (``worker.returned`` gives the list of written files).
        """
        from napari.qt.threading import create_worker

        run_dir, coll = self.session.run_dir, self.session.collection
        if run_dir is None or coll is None:
            raise RuntimeError("no trained model yet: press Train first")
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        samples = [s for s in coll if roles is None or s.role in roles]

        def work():
            import imageio.v3 as iio

            written = []
            for i, s in enumerate(samples):
                with self._predictor_lock:
                    predictor = self._load_predictor(run_dir)
                    labels, _ = predictor.predict(s.load_image())
                out = dest / f"{s.id}.png"
                tmp = dest / f".{s.id}.png.tmp"
                labels = np.asarray(labels)
                iio.imwrite(tmp, labels.astype(np.uint8 if labels.max(initial=0) < 256 else np.uint16),
                            extension=".png")
                os.replace(tmp, out)
                written.append(out)
                yield i + 1
            return written

        worker = create_worker(work, _progress={"total": len(samples), "desc": "HybridSeg export"},
                               _connect={"errored": self._on_predict_error}, _start_thread=False)
        try:
            worker.errored.disconnect(worker._relay_error)
        except (AttributeError, TypeError, RuntimeError):
            pass
        worker.returned.connect(lambda files: _notify("info", f"Wrote {len(files)} predicted masks to {dest}"))
        worker.start()
        return worker

    def _ask_export_predictions(self) -> None:
        dest = QFileDialog.getExistingDirectory(self, "Folder for the predicted masks")
        if dest:
            self._guard(lambda: self.export_predictions(dest))

    def _ask_export_csv(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Weights as CSV", "weights.csv", "CSV (*.csv)")
        if path:
            self._guard(lambda: _notify("info", f"Wrote {self.export_weights_csv(path)}"))

    def _ask_export_model(self) -> None:
        dest = QFileDialog.getExistingDirectory(self, "Folder to copy the model into")
        if dest:
            self._guard(lambda: _notify("info", f"Model copied to {self.export_model(dest)}"))

    @staticmethod
    def _guard(fn: Callable[[], Any]) -> None:
        try:
            fn()
        except (OSError, RuntimeError, ValueError) as exc:
            _notify("warning", str(exc))

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
