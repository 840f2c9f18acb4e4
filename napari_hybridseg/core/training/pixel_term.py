"""The pixel-weight term of a step: MLB-Seg's meta-learned pixel weights, the one path that trains with them.

:class:`PixelWeightTerm` computes, once per step with network 1, the exact
weights (:func:`~napari_hybridseg.core.methods.pixel_weights.exact_pixel_weights`)
of the non-strong rows of the batch and returns a :class:`PixelWeightStep`
that gives each network its weighted costs on its own forward. It also keeps
the per-sample summary that goes into the run record and owns the snapshot of
network 1 that labels unlabeled images, and the mean teacher's update.
"""

from __future__ import annotations

import copy

import torch

from napari_hybridseg.core.data.collection import Role
from napari_hybridseg.core.methods import dcr as dcr_mod
from napari_hybridseg.core.methods import pixel_weights as pwm
from napari_hybridseg.core.methods import ple as ple_mod
from napari_hybridseg.core.network.models import forward
from napari_hybridseg.core.supervision.losses import strong_loss
from napari_hybridseg.core.supervision.targets import IGNORE, UNKNOWN
from napari_hybridseg.core.training.anchor_term import strong_set_learnt

__all__ = ["PixelWeightStep", "PixelWeightTerm", "TruthMass"]


class TruthMass:
    """The training weights against the truth, over the whole run: mean weight per wrong vs per right pixel.

    Fed, at every step, the weights the loss used and the true classes of
    the rows that carry a reference mask (the benchmark's weak images). A
    target pixel is *wrong* where the target (y~ or y^) differs from the
    truth; only pixels that compete (not held fixed) count. Each step's
    weights are added as they are, so every step counts with the mass it
    put in the loss.
    """

    KEYS = ("init", "own")

    def __init__(self):
        self.sums = {k: {"wrong": 0.0, "right": 0.0, "n_wrong": 0, "n_right": 0} for k in self.KEYS}
        self.steps = 0

    def add(self, reference, y_init, y_own, w_init, w_own, free=None) -> None:
        ref = reference.long()
        known = ref != IGNORE
        if free is not None:
            known = known & free.to(known.device)
        if not known.any():
            return
        self.steps += 1
        for key, y, w in (("init", y_init, w_init), ("own", y_own, w_own)):
            wrong = known & (y.long() != ref)
            right = known & (y.long() == ref)
            w = w.detach().float()
            acc = self.sums[key]
            acc["wrong"] += float(w[wrong].sum())
            acc["right"] += float(w[right].sum())
            acc["n_wrong"] += int(wrong.sum())
            acc["n_right"] += int(right.sum())

    def result(self) -> dict | None:
        """``{"wrong_vs_right": ..., "init": {...}, "own": {...}, "steps": n}``; None when nothing was measured."""
        if not self.steps:
            return None
        out: dict = {"steps": self.steps}
        tot = {"wrong": 0.0, "right": 0.0, "n_wrong": 0, "n_right": 0}
        for key in self.KEYS:
            acc = self.sums[key]
            out[key] = {**acc, "wrong_vs_right": _ratio(acc)}
            for k in tot:
                tot[k] += acc[k]
        out["wrong_vs_right"] = _ratio(tot)
        return out


def _ratio(acc: dict) -> float | None:
    if not acc["n_wrong"] or not acc["n_right"] or acc["right"] <= 0:
        return None
    return (acc["wrong"] / acc["n_wrong"]) / (acc["right"] / acc["n_right"])


class PixelWeightStep:
    """One step's pixel weights (from network 1) and the terms they give each network.

    Attributes
    ----------
    other : Tensor
        (B,) bool, the non-strong rows the weights are for.
    y_init, y_own : Tensor
        The two targets of those rows.
    w_init, w_own : Tensor
        Their normalised weights (gamma inside).
    extra : dict
        Network 1's further terms (``"ple"`` consistency, ``"teacher"`` MSE).
    scale : float
        Ramp-up factor of every term (the logged values are unscaled, as CPS's).
    """

    def __init__(self, other, y_init, y_own, w_init, w_own, extra, scale=1.0):
        self.other, self.y_init, self.y_own = other, y_init, y_own
        self.w_init, self.w_own = w_init, w_own
        self.extra = extra
        self.scale = scale

    def loss_for(self, n: int, logits: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(scaled loss, unscaled terms)`` of network ``n`` (0 or 1) from its own forward ``logits``."""
        # each network's costs on its own forward of the batch (the one its supervised terms use)
        c_init, c_own = pwm.pixel_costs(logits[self.other].float(), self.y_init, self.y_own)
        loss = (self.w_init * c_init + self.w_own * c_own).sum()
        terms = {"pixel": loss}
        total = loss
        if n == 0:
            for name, value in self.extra.items():
                terms[name] = value
                total = total + value
        return self.scale * total, terms


class PixelWeightTerm:
    """MLB-Seg pixel weights on the non-strong rows of each batch.

    Computed once per step with network 1 and shared by both networks (the
    weights say which pixels of the data to trust; the second network is a
    co-regulariser and takes the same weights on its own costs), so DCR does
    not double their cost.

    * y~: the weak label's initial label with its unknown pixels filled by
      the current prediction; for an unlabeled image, the prediction of a
      snapshot of network 1 refreshed every ``unlabeled_refresh`` steps.
    * y^: the PLE 5-view prediction of network 1 (no gradient, under the
      run's autocast), or its plain argmax with ``ple`` off. The pairwise
      view consistency term (a 5x forward and backward of the non-strong
      rows) only with ``ple_consistency``.
    * The exact weights (one JVP, gamma inside) weigh both per-pixel costs.
      The JVP's dual forward runs without an autograd graph: only its
      tangent is needed, and each network's costs are taken on the forward
      of the whole batch that its supervised terms use anyway. Sharing the
      dual forward with the update instead would backpropagate through a
      float32 forward in place of a bf16 one, and save nothing, since the
      batch forward (BatchNorm over strong and weak rows together) runs in
      any case; measured in docs/pixel-weights.md.
    * Mean teacher (``state.teacher``): an EMA of network 1 on noisy inputs,
      MSE to network 1's probabilities on the non-strong rows, weight 1, in
      the real loss; updated after each optimiser step (:meth:`after_update`).

    Parameters
    ----------
    state : RunState
        Reads ``nets[0]``, ``config``, ``dev``, ``teacher``, ``rampup`` and ``start_step``.
    """

    def __init__(self, state):
        self.state = state
        self.summary: dict[str, dict] = {}
        self.truth = TruthMass()
        self.refresh_net: torch.nn.Module | None = None  # initial labels of unlabeled images
        self.refreshed_at: int | None = None
        #: pixel.initial="strong-model": the snapshot of network 1 that gives y~, taken after step ``starts_after``
        self.strong_model: torch.nn.Module | None = None
        self.from_strong_model = state.config.pixel.initial == "strong-model"
        self.starts_after = (strong_set_learnt(state, state.config.loss.anchor_after)[1] if self.from_strong_model
                             else state.start_step)

    def compute(self, step: int, batch, logits, gamma, lr) -> PixelWeightStep | None:
        """This step's weights from network 1's ``logits`` of ``batch``; None without strong or other rows."""
        st = self.state
        cfg = st.config.pixel
        strong = torch.tensor([r is Role.STRONG for r in batch.roles], device=logits.device)
        other = ~strong
        if not other.any() or not strong.any() or step <= self.starts_after:
            return None
        net = st.nets[0]
        x_w = batch.x[other]
        if self.from_strong_model:
            y_init = pwm.initial_from_model(batch.init_label[other], batch.certainty[other],
                                            self._strong_model_logits(x_w), IGNORE, UNKNOWN)
        else:
            fill = logits[other].detach()
            unl = torch.tensor([r is Role.UNLABELED for r in batch.roles], device=logits.device)[other]
            if unl.any():
                fill = fill.clone()
                fill[unl] = self._refreshed_logits(step, x_w[unl]).to(fill.dtype)
            y_init, _ = pwm.fill_ignored(batch.init_label[other], fill)
        extra: dict[str, torch.Tensor] = {}
        if cfg.ple:
            # the views are pseudo-label inputs, not data: batch statistics, but network 1's running statistics
            # (what it predicts with) stay as they are
            views_net = pwm.stats_kept_forward(net, dict(net.named_parameters()))
            if cfg.ple_consistency:
                with st.dev.autocast():
                    res = ple_mod.enhance(views_net, x_w)
                extra["ple"] = res.consistency.float()
            else:
                with torch.no_grad(), st.dev.autocast():
                    res = ple_mod.enhance(views_net, x_w, with_consistency=False)
            y_own = res.y_hat
        else:
            y_own = logits[other].detach().argmax(1)
        fixed = (batch.certainty[other] != UNKNOWN) if cfg.fix_certain else None
        per_image = cfg.normalise == "image"
        with st.dev.autocast():  # the meta forward/backward in the run's precision; the JVP is always fp32
            pw = pwm.exact_pixel_weights(
                net, x_w, y_init, y_own, None, None, batch.x[strong], batch.target[strong],
                lambda z, y: strong_loss(z.float(), y).mean(), cfg.meta_lr or lr,
                sample_gamma=None if per_image else gamma[other], fixed_init=fixed, return_details=True,
                keep_graph=False, equalise_strong=cfg.equalise,
            )
        w_init, w_own = pw.w_init, pw.w_own
        if per_image:  # raw_* are 0 where a pixel does not take part
            w_init, w_own = pwm.normalise_per_image(pw.raw_init, pw.raw_own, gamma[other])
        if st.teacher is not None:
            with st.dev.autocast():
                extra["teacher"] = st.teacher.mse(logits[other].float(), x_w).float()
        self.record(batch, other, w_init, w_own)
        reference = getattr(batch, "reference", None)  # a Batch, or a test's stand-in without one
        if reference is not None:
            free = None if fixed is None else ~fixed
            self.truth.add(reference[other], y_init, y_own, w_init, w_own, free)
        # self-generated targets (own and PLE predictions, the teacher) come in as the network learns from
        # the strong masks: the same sigmoid ramp-up as CPS, as in the mean teacher (and MLB-Seg, whose
        # initial labels for unlabeled images come from a model first trained on the strong set)
        scale = dcr_mod.rampup(step - self.starts_after, st.rampup) if cfg.rampup else 1.0
        return PixelWeightStep(other, y_init, y_own, w_init, w_own, extra, scale)

    def after_update(self) -> None:
        """After the optimiser step: the mean teacher follows network 1."""
        if self.state.teacher is not None:
            self.state.teacher.update(self.state.nets[0])

    def _strong_model_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of the snapshot of network 1 taken once it learnt the strong masks (at the first call)."""
        st = self.state
        if self.strong_model is None:
            self.strong_model = copy.deepcopy(st.nets[0]).eval()
            for p in self.strong_model.parameters():
                p.requires_grad_(False)
        with torch.no_grad(), st.dev.autocast():
            return forward(self.strong_model, x)[0].float()

    def _refreshed_logits(self, step: int, x: torch.Tensor) -> torch.Tensor:
        """Logits of the snapshot of network 1 that labels unlabeled images (re-taken every N steps)."""
        st = self.state
        every = max(1, int(st.config.pixel.unlabeled_refresh or 1))
        if self.refresh_net is None or self.refreshed_at is None or step - self.refreshed_at >= every:
            self.refresh_net = copy.deepcopy(st.nets[0]).eval()
            for p in self.refresh_net.parameters():
                p.requires_grad_(False)
            self.refreshed_at = step
        with torch.no_grad(), st.dev.autocast():
            return forward(self.refresh_net, x)[0].float()

    def record(self, batch, other, w_init: torch.Tensor, w_own: torch.Tensor) -> None:
        """Running per-sample summary of the pixel weights for the run record (:attr:`summary`).

        Per non-strong sample: how often it was weighed, the running mean of the
        share of its pixel weight on its initial (weak) label vs its own
        prediction, and of its mean weight per pixel relative to a uniform
        weighting of the batch (1 = average, < 1 = distrusted).
        """
        ids = [i for i, o in zip(batch.ids, other.tolist()) if o]
        uniform = 1.0 / (2 * w_init.numel())  # each of the two targets at every pixel of the batch
        masses_i = w_init.detach().float().sum((1, 2)).tolist()
        masses_o = w_own.detach().float().sum((1, 2)).tolist()
        per_image = 2 * w_init[0].numel()
        for sid, a, b in zip(ids, masses_i, masses_o):
            rec = self.summary.setdefault(sid, {"n": 0, "share_on_initial_label": 0.0,
                                                "relative_weight": 0.0})
            rec["n"] += 1
            share = a / (a + b) if a + b > 0 else 0.5
            rel = (a + b) / per_image / uniform
            rec["share_on_initial_label"] += (share - rec["share_on_initial_label"]) / rec["n"]
            rec["relative_weight"] += (rel - rec["relative_weight"]) / rec["n"]
