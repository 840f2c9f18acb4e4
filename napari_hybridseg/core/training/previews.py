"""Previews during training (labels, probabilities, pixel-weight maps) and the pixel-weight pictures of a run.

:class:`Previewer` reads the run's state; it never changes the networks
(each forward runs in eval mode and the mode is restored).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from napari_hybridseg.core.data.collection import Role
from napari_hybridseg.core.network.models import forward
from napari_hybridseg.core.prediction import labels_from_logits
from napari_hybridseg.core.supervision.losses import strong_loss
from napari_hybridseg.core.training.reports import PreviewReport

__all__ = ["Previewer"]


class Previewer:
    """Previews of network 1 on the prepared (un-augmented) samples.

    Parameters
    ----------
    state : RunState
        Reads ``nets[0]``, ``prepared``, ``collection``, ``bank``, ``config``, ``dev``, ``run_dir``.
    """

    def __init__(self, state):
        self.state = state

    @torch.no_grad()
    def preview(self, step: int, ids: list[str]) -> PreviewReport:
        """Labels (the collection's class values) and max foreground probability of ``ids`` at original size."""
        st = self.state
        net = st.nets[0]
        was = net.training
        net.eval()
        values = np.array([0] + [c.value for c in sorted(st.collection.classes, key=lambda c: c.value)])
        labels, probs = {}, {}
        try:
            for sid in ids:
                p = st.prepared.get(sid)
                if p is None:
                    continue
                logits, _ = forward(net, p.image[None].to(st.dev.device))
                # the predictor's own last step (core.prediction): softmax, bilinear to the original size, argmax
                labels[sid], prob = labels_from_logits(logits, p.original_shape, values)
                probs[sid] = prob[1:].amax(0).cpu().numpy().astype(np.float32)
        finally:
            net.train(was)
        weights = {k: v for k, v in st.bank.values().items() if k in labels}
        maps = {}
        if st.config.pixel.mode == "exact":
            others = [i for i in labels if st.prepared[i].role is not Role.STRONG]
            if others and st.ids(Role.STRONG):
                maps = self._maps_in_eval(others)
        return PreviewReport(step=step, labels=labels, probabilities=probs, pixel_weights=maps,
                             sample_weights=weights)

    def _maps_in_eval(self, ids: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        net = self.state.nets[0]
        was = net.training
        net.eval()
        try:
            with torch.enable_grad():
                return self.pixel_weight_maps(ids)
        finally:
            net.train(was)

    def pixel_weight_maps(self, ids: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Pixel-weight maps ``(w_init, w_own)`` of non-strong samples at their original size.

        Computed as in training (exact weights, gamma inside) on the un-augmented
        images, with network 1 in eval mode and y^ the plain argmax (no PLE, to keep
        previews cheap); normalised over the previewed images together.
        """
        from napari_hybridseg.core.methods import pixel_weights as pwm
        from napari_hybridseg.core.supervision.targets import UNKNOWN

        st = self.state
        net = st.nets[0]
        dev = st.dev.device
        items = [st.prepared[i] for i in ids]
        x = torch.stack([p.image for p in items]).to(dev)
        strong = st.ids(Role.STRONG)[: st.config.batch_size]
        xs = torch.stack([st.prepared[i].image for i in strong]).to(dev)
        ys = torch.stack([st.prepared[i].target for i in strong]).to(dev)
        with torch.no_grad():
            logits = forward(net, x)[0].float()
        y_init, _ = pwm.fill_ignored(torch.stack([p.init_label for p in items]).to(dev), logits)
        y_own = logits.argmax(1)
        fixed = None
        if st.config.pixel.fix_certain:
            fixed = torch.stack([p.certainty for p in items]).to(dev) != UNKNOWN
        gamma = st.gamma_of([p.id for p in items], [p.role for p in items])
        alpha = st.config.pixel.meta_lr or st.config.optim.lr
        pw = pwm.exact_pixel_weights(net, x, y_init, y_own, None, None, xs, ys,
                                     lambda z, y: strong_loss(z, y).mean(), alpha,
                                     sample_gamma=gamma, fixed_init=fixed, return_details=True,
                                     equalise_strong=st.config.pixel.equalise)
        shapes = [p.original_shape for p in items]
        w_init = pwm.weight_maps_at(pw.w_init, shapes)
        w_own = pwm.weight_maps_at(pw.w_own, shapes)
        return {i: (a, b) for i, a, b in zip(ids, w_init, w_own)}

    def export_pixel_weight_maps(self, step: int, max_samples: int = 8) -> Path | None:
        """Write the pixel-weight maps of a few weak samples as pictures into ``RUN/pixel_weights``.

        For each chosen sample (deliberately wrong ones first, up to half, then
        clean ones, by id) ``<id>.png`` shows the image, w_init (weight on the
        initial weak label) and w_own (weight on the network's own label) side by
        side with one colour scale for all files; ``summary.json`` holds each
        map's total mass and the scale. Returns the folder, or None when pixel
        weights are off, there is no run folder, or no strong sample to weigh against.
        """
        st = self.state
        if st.run_dir is None or st.config.pixel.mode != "exact" or not st.ids(Role.STRONG):
            return None
        weak = sorted(st.ids(Role.WEAK)) or sorted(st.ids(Role.UNLABELED))
        if not weak:
            return None
        flagged = [i for i in weak if getattr(st.collection[i], "corrupted", False)]
        clean = [i for i in weak if i not in flagged]
        chosen = flagged[: max_samples // 2]
        chosen += clean[: max_samples - len(chosen)]
        chosen += [i for i in flagged if i not in chosen][: max_samples - len(chosen)]
        maps = self._maps_in_eval(chosen)
        from napari_hybridseg.core.data.images import read_image
        from napari_hybridseg.core.fsio import atomic_write_json
        from napari_hybridseg.core.methods.pixel_weight_maps import write_weight_overview

        out = st.run_dir / "pixel_weights"
        out.mkdir(parents=True, exist_ok=True)
        positive = np.concatenate([np.concatenate([a.ravel(), b.ravel()]) for a, b in maps.values()])
        positive = positive[positive > 0]
        vmax = float(np.percentile(positive, 99.5)) if positive.size else 1.0
        summary = {"step": step, "colour_scale_max": vmax, "note": (
            "w_init: weight on the initial weak label, w_own: weight on the network's own label; "
            "each map is at the image's original size; masses are shares of all pixel weight "
            "over the samples listed here"), "samples": {}}
        for sid in chosen:
            w_init, w_own = maps[sid]
            sample = st.collection[sid]
            image = sample.image if sample.image is not None else read_image(sample.image_path)
            write_weight_overview(out / f"{sid}.png", image, w_init, w_own, vmax)
            summary["samples"][sid] = {"mass_init": float(w_init.sum()), "mass_own": float(w_own.sum()),
                                       "corrupted": bool(getattr(st.collection[sid], "corrupted", False)),
                                       "file": f"{sid}.png"}
        atomic_write_json(out / "summary.json", summary)
        return out
