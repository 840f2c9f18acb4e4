"""The dock widget's training controls: start and stop, reports from the trainer, edits sent to it.

A part of :class:`~napari_hybridseg.widgets.dock.HybridSegWidget` (a mixin: it
uses the widget's attributes).
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from napari_hybridseg.core.training.reports import DoneReport, PreviewReport, RequestPreview, StepReport, UpdateSamples

from . import _messages
from .session import copy_sample, snapshot_collection

log = logging.getLogger("napari_hybridseg.widgets.dock")


class TrainingControl:
    """Start, stop and follow a training run; keep its pixel weights; send edits made while it runs."""

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
            _messages.notify("warning", problem)
            self.train_panel.on_end(problem)
            return False
        try:
            self.session.save()
        except (OSError, ValueError, RuntimeError) as exc:
            _messages.notify("error", f"Cannot save the project before training: {exc}. Check the folder is writable.")
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

    def _on_done(self, report: DoneReport) -> None:
        if report.checkpoint:
            self.session.run_dir = self._run_dir
            # previews came from earlier steps: the final model predicts the image on screen anew
            self._stale_predictions = set(self.session.predictions)
            self.predict_current()
        try:
            self.session.save_weights()
        except (OSError, ValueError, RuntimeError) as exc:
            _messages.notify("warning", f"Could not save the learned weights into the project: {exc}")
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
        _messages.notify("info", f"HybridSeg: training {what} at step {report.step}.")

    def _on_failed(self, message: str, exc: BaseException) -> None:
        _messages.notify("error", message)
        self.train_panel.on_end(message)

    def _on_finished(self) -> None:
        self.train_panel.set_running(False)

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
