"""The dock widget's review actions: predictions of the image on screen, guidance, exports.

Parts of :class:`~napari_hybridseg.widgets.dock.HybridSegWidget` (mixins: they
use the widget's attributes). Torch is imported only inside worker threads.
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from qtpy.QtWidgets import QFileDialog

from napari_hybridseg.core.data.collection import Role

from . import _messages
from ._workers import make_worker
from .training import avoid_triton_in_gui

log = logging.getLogger("napari_hybridseg.widgets.dock")

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


class ReviewActions:
    """Predict the image on screen and score the unlabeled ones (worker threads); suggest the next image."""

    # -- guidance ----------------------------------------------------------------
    #: at most this many unlabeled images are scored by the model's uncertainty after a run
    MAX_SCORED = 200

    def score_unlabeled(self):
        """Predict the unlabeled images with the last model (worker thread) and keep its uncertainty on each.

        Feeds :meth:`suggest`; returns the worker, or ``None`` when there is no model or nothing to score.
        """
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

        worker = make_worker(work, connect={"yielded": got, "errored": self._on_predict_error})
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

    # -- prediction (review) ---------------------------------------------------
    def predict_current(self, force: bool = False) -> bool:
        """Predict the image on screen with the last model, in a worker thread. Returns whether it started."""
        sid = self.session.current_id
        run_dir = self.session.run_dir
        if sid is None or run_dir is None or self.runner.running or sid in self._predicting:
            if force and run_dir is None:
                _messages.notify("info", "No trained model yet: press Train first.")
            return False
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

        worker = make_worker(work, connect={"returned": done, "errored": self._on_predict_error})
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
        _messages.notify("warning", f"Prediction failed ({exc.__class__.__name__}: {exc}). Train again, or check the "
                           "run folder is complete.")

    def wait_for_predictions(self, timeout_s: float = 30.0) -> bool:
        """Process events until no prediction (or uncertainty-scoring) worker runs (tests and the demo)."""
        from qtpy.QtWidgets import QApplication

        end = time.perf_counter() + timeout_s
        while (self._predicting or self._scoring is not None) and time.perf_counter() < end:
            QApplication.processEvents()
            time.sleep(0.005)
        return not self._predicting and self._scoring is None


class ExportActions:
    """Export the learned weights (CSV), the model and predicted masks."""

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

    def export_bioimageio(self, path: str | Path):
        """Write the last run as a bioimage.io package at ``path`` (in a worker thread; core does the work).

        Returns the worker (``worker.returned`` gives the package's path).
        """
        run_dir = self.session.run_dir
        if run_dir is None:
            raise RuntimeError("no trained model yet: press Train first")

        def work():
            from napari_hybridseg.core.prediction.bioimageio_export import export_bioimageio

            return export_bioimageio(run_dir, path).path

        worker = make_worker(work, connect={"errored": self._on_predict_error},
                             progress={"total": 0, "desc": "HybridSeg bioimage.io export"})
        worker.returned.connect(lambda out: _messages.notify("info", f"Wrote the bioimage.io package {out}"))
        worker.start()
        return worker

    def export_predictions(self, dest: str | Path, *, roles: tuple[Role, ...] | None = None):
        """Predict every image with the last model and write ``dest/<id>.png`` (in a worker thread).

        Returns the worker (``worker.returned`` gives the list of written files).
        """
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

        worker = make_worker(work, connect={"errored": self._on_predict_error},
                             progress={"total": len(samples), "desc": "HybridSeg export"})
        worker.returned.connect(lambda files: _messages.notify("info", f"Wrote {len(files)} predicted masks to {dest}"))
        worker.start()
        return worker

    def _ask_export_predictions(self) -> None:
        dest = QFileDialog.getExistingDirectory(self, "Folder for the predicted masks")
        if dest:
            self._guard(lambda: self.export_predictions(dest))

    def _ask_export_csv(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Weights as CSV", "weights.csv", "CSV (*.csv)")
        if path:
            self._guard(lambda: _messages.notify("info", f"Wrote {self.export_weights_csv(path)}"))

    def _ask_export_model(self) -> None:
        dest = QFileDialog.getExistingDirectory(self, "Folder to copy the model into")
        if dest:
            self._guard(lambda: _messages.notify("info", f"Model copied to {self.export_model(dest)}"))

    def _ask_export_bioimageio(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "bioimage.io model package", "model.bioimageio.zip",
                                              "bioimage.io package (*.zip)")
        if path:
            self._guard(lambda: self.export_bioimageio(path))

    @staticmethod
    def _guard(fn: Callable[[], Any]) -> None:
        try:
            fn()
        except (OSError, RuntimeError, ValueError) as exc:
            _messages.notify("warning", str(exc))
