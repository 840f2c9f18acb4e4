"""When and what a run writes to its folder: the model(s), ``run.json`` and ``gamma.json``.

:class:`Checkpointer` decides when a checkpoint is due (every
``checkpoint_every`` steps and after ``checkpoint_minutes`` of wall time) and
writes one (:func:`.run_record.write_run_record`), guarded so that a full disk
gives one clear error and keeps the last checkpoint.
"""

from __future__ import annotations

import time

import numpy as np

from napari_hybridseg.core.network.models import save_model, weights_record
from napari_hybridseg.core.training.reports import CheckpointReport

__all__ = ["Checkpointer"]


class Checkpointer:
    """Writes the run's checkpoints.

    Parameters
    ----------
    state : RunState
        Reads ``nets``, ``model_config``, ``config``, ``collection``,
        ``loss_history``, ``run_dir``, ``init_from``, ``prepared``, ``tau``.
    pixel_summary : callable, optional
        Returns the pixel-weight summary for the record (empty: none).
    train_scale : float, optional
        The record's ``train_scale`` as the caller knows it (the benchmark
        trains on pre-resized copies: the scale of the original images);
        None: measured from the prepared samples.
    pixel_truth : callable, optional
        Returns the training pixel weights against the truth
        (:meth:`~.pixel_term.TruthMass.result`), or None.
    """

    def __init__(self, state, pixel_summary=None, train_scale: float | None = None, pixel_truth=None):
        self.state = state
        self.pixel_summary = pixel_summary or dict
        self.pixel_truth = pixel_truth or (lambda: None)
        self.given_train_scale = train_scale
        self.last_t = time.perf_counter()

    def due(self, step: int) -> bool:
        """Every ``checkpoint_every`` steps, and after ``checkpoint_minutes`` of wall time since the last one."""
        cfg = self.state.config
        if self.state.run_dir is None:
            return False
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
            return True
        return bool(cfg.checkpoint_minutes) and time.perf_counter() - self.last_t >= 60.0 * cfg.checkpoint_minutes

    def write(self, step: int) -> CheckpointReport | None:
        """Save the networks and the run record at ``step``; None without a run folder."""
        st = self.state
        if st.run_dir is None:
            return None
        from napari_hybridseg.core.training.checkpoint import guarded_write, sync_tree
        from napari_hybridseg.core.training.run_record import RunRecord, write_run_record

        self.last_t = time.perf_counter()
        with guarded_write(st.run_dir, step):  # a full disk: one clear error, the last checkpoint kept
            st.run_dir.mkdir(parents=True, exist_ok=True)
            for index, net in enumerate(st.nets):
                sync_tree(save_model(net, st.run_dir / ("model" if index == 0 else "model_b"), st.model_config))
            record = RunRecord.of_run(
                st.collection, settings=st.config.to_dict(), step=step, total_steps=st.total_steps,
                loss_history=st.loss_history, model=st.model_config.to_dict(),
                encoder_weights=self.weights_origin(), device=st.dev.label, dii_tau=st.tau, input_size=st.size,
                train_scale=self.train_scale(), pixel_weight_summary=self.pixel_summary() or None,
                pixel_weight_truth=self.pixel_truth(),
                distributed=None if st.dist is None else st.dist.record(st.config.batch_size),
                anchor=list(st.anchor_log) or None, dii_updates=list(st.dii_log) or None)
            write_run_record(st.run_dir, record, st.collection)
        return CheckpointReport(step=step, path=str(st.run_dir))

    def weights_origin(self) -> dict:
        """What the networks started from (``run.json``'s ``encoder_weights``); a resumed run says so."""
        st = self.state
        if st.init_from is None:
            return weights_record(st.model_config)
        return {**(st.prev_weights or weights_record(st.model_config)), "continued_from": str(st.init_from)}

    def train_scale(self) -> float:
        """Median factor original -> training pixels (the predictor tiles huge images at this scale)."""
        if self.given_train_scale is not None:
            return float(self.given_train_scale)
        st = self.state
        sides = [max(p.original_shape) for p in st.prepared.values() if max(p.original_shape) > 0]
        return float(st.size / np.median(sides)) if sides else 1.0
