"""The training loop as a generator of small typed reports.

::

    gen = train(collection, config, run_dir)
    report = next(gen)                      # StartReport
    while not isinstance(report, DoneReport):
        report = gen.send(command_or_None)  # Stop(), Pause(), Resume(), UpdateSamples(...), RequestPreview(...)

One step = one batch mixing strong and weak (and unlabeled, with DCR)
samples: strong CE + Dice, each weak sample's terms times its gamma_k
(:mod:`.losses`), and with DCR a second network and cross pseudo supervision
on CutMix pairs (:mod:`.dcr`). Every tau steps the Dynamic Instance Indicator
re-scores every weak sample (:mod:`.dii`) and yields a
:class:`~.reports.WeightsReport`; the weights are written back into
``collection.sample_weights`` with their history.

No Qt, no threads: the widget runs this generator in a worker thread; tests
and the CLI drive it directly (see :func:`run`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Generator, Iterable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from napari_hybridseg.core.data.collection import Collection, Role, Sample, WeightState
from napari_hybridseg.core.methods import dcr as dcr_mod
from napari_hybridseg.core.methods import dii as dii_mod
from napari_hybridseg.core.network.device import DeviceInfo, ThreadTuner, release, resolve_device
from napari_hybridseg.core.network.models import build_model, forward, save_model, weights_record
from napari_hybridseg.core.supervision.losses import (
    LossWeights,
    aux_tag_loss,
    box_pairwise,
    colour_affinity,
    strong_loss,
    weak_losses,
)
from napari_hybridseg.core.supervision.targets import IGNORE
from napari_hybridseg.core.training.batches import BatchSampler, Prepared, augment, collate, denormalise, prepare_sample
from napari_hybridseg.core.training.config import TrainConfig
from napari_hybridseg.core.training.reports import (
    CheckpointReport,
    DoneReport,
    Pause,
    PreviewReport,
    Report,
    RequestPreview,
    Resume,
    StartReport,
    StepReport,
    Stop,
    UpdateSamples,
    WeightsReport,
)

__all__ = ["run", "train"]

Trainer = Generator[Report, object, None]


class _MLBStep:
    """One step's pixel weights (from network 1) and the terms they give each network."""

    def __init__(self, other, y_init, y_own, w_init, w_own, extra, scale=1.0):
        self.other, self.y_init, self.y_own = other, y_init, y_own
        self.w_init, self.w_own = w_init, w_own
        self.extra = extra
        self.scale = scale  # ramp-up factor of every term (the logged values are unscaled, as CPS's)

    def loss_for(self, n: int, logits: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        from napari_hybridseg.core.methods.pixel_weights import pixel_costs

        # each network's costs on its own forward of the batch (the one its supervised terms use)
        c_init, c_own = pixel_costs(logits[self.other].float(), self.y_init, self.y_own)
        loss = (self.w_init * c_init + self.w_own * c_own).sum()
        terms = {"pixel": loss}
        total = loss
        if n == 0:
            for name, value in self.extra.items():
                terms[name] = value
                total = total + value
        return self.scale * total, terms


def _validate(collection: Collection, config: TrainConfig) -> None:
    if not any(s.role is Role.STRONG for s in collection):
        raise ValueError(
            "no image has a strong mask: training needs at least one. Draw a mask on at least one image "
            "(Labels layer) or import some masks, then train again."
        )
    if config.steps < 1:
        raise ValueError(f"steps must be at least 1 (got {config.steps})")
    if config.batch_size < 1:
        raise ValueError(f"batch_size must be at least 1 (got {config.batch_size})")
    if config.optimizer not in ("adamw", "sgd"):
        raise ValueError(f"optimizer {config.optimizer!r}: choose 'adamw' or 'sgd'")
    if config.dii_scorer not in ("last-layer", "jvp"):
        raise ValueError(f"dii_scorer {config.dii_scorer!r}: choose 'last-layer' or 'jvp'")
    if config.pixel_weights not in ("off", "exact"):
        raise ValueError(f"pixel_weights {config.pixel_weights!r}: choose 'off' or 'exact'")
    if config.fixed_weights is not None:
        if config.dii:
            raise ValueError("fixed_weights hold the weak weights fixed: turn dii off to use them")
        bad = {k: v for k, v in config.fixed_weights.items() if not 0.0 <= float(v) <= 1.0}
        if bad:
            raise ValueError(f"fixed_weights must lie in [0, 1]; got {dict(list(bad.items())[:3])}")


def train(collection: Collection, config: TrainConfig, run_dir: str | Path | None = None, *,
          init_from: str | Path | None = None, preview_ids: Iterable[str] = ()) -> Trainer:
    """Train on ``collection``; a generator of reports that takes commands through ``send()``.

    Cheap checks run at once (so a bad request fails before a worker thread
    starts); loading and resizing images happens after the first ``next()``.

    Parameters
    ----------
    collection : Collection
        The data. Read at start and after each :class:`UpdateSamples`; learned
        weights are written to ``collection.sample_weights``.
    config : TrainConfig
        All settings (see :mod:`.config`). ``config.model.classes`` and
        ``aux_classes`` are set from the collection.
    run_dir : path, optional
        Where checkpoints, ``run.json`` and ``gamma.json`` go; ``None`` keeps
        everything in memory (no :class:`CheckpointReport`).
    init_from : path, optional
        A previous run folder: its model(s) and learned weights are the
        starting point and steps continue from its last step.
    preview_ids : iterable of str
        Samples to preview every ``config.preview_every`` steps.

    Yields
    ------
    StartReport, then StepReport every step, WeightsReport after each DII
    update, PreviewReport, CheckpointReport, and finally DoneReport.

    Raises
    ------
    ValueError
        No strong mask at all, a setting out of range, or (at the first
        ``next()``) an image that cannot be used.
    """
    _validate(collection, config)
    session = _Session(collection, config, None if run_dir is None else Path(run_dir),
                       None if init_from is None else Path(init_from), tuple(preview_ids))
    return session.loop()


def run(collection: Collection, config: TrainConfig, run_dir: str | Path | None = None, *,
        callback: Callable[[Report], object] | None = None, **kwargs) -> DoneReport:
    """Consume :func:`train` to the end and return its :class:`DoneReport`.

    ``callback(report)`` sees every report; whatever it returns (a command or
    ``None``) is sent back to the trainer, so a callback can stop the run.
    Called from the main thread, Ctrl-C (SIGINT) and SIGTERM (``kill``, a
    scheduler's stop, a logout) stop cleanly: the current step is finished, a
    checkpoint written and the DoneReport returned; a second signal interrupts at once.
    """
    import signal
    import threading

    gen = train(collection, config, run_dir, **kwargs)
    interrupted: list[bool] = []
    previous: dict = {}
    if threading.current_thread() is threading.main_thread():
        def on_signal(signum, frame):  # noqa: ARG001
            if interrupted:  # a second Ctrl-C: the user does not want to wait for the step
                raise KeyboardInterrupt
            interrupted.append(True)

        for sig in (signal.SIGINT, getattr(signal, "SIGTERM", None)):
            if sig is not None:
                previous[sig] = signal.signal(sig, on_signal)
    try:
        report = next(gen)
        while True:
            command = callback(report) if callback is not None else None
            if isinstance(report, DoneReport):
                return report
            if interrupted and command is None:
                command = Stop()
            report = gen.send(command)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        gen.close()


class _Session:
    """State of one training run (kept out of module globals so runs never share state)."""

    def __init__(self, collection: Collection, config: TrainConfig, run_dir: Path | None,
                 init_from: Path | None, preview_ids: tuple[str, ...]):
        self.collection = collection
        self.config = config
        self.run_dir = run_dir
        self.init_from = init_from
        self.preview_ids = preview_ids
        self.stop_requested = False
        self.paused = False
        self.pending_previews: list[str] = []
        self.pending_updates: list[UpdateSamples] = []
        self.loss_history: list[list] = []
        self.pw_summary: dict[str, dict] = {}
        self.notes: list[str] = []

    # -- commands --------------------------------------------------------
    def accept(self, command: object) -> None:
        if command is None:
            return
        if isinstance(command, Stop):
            self.stop_requested = True
        elif isinstance(command, Pause):
            self.paused = True
        elif isinstance(command, Resume):
            self.paused = False
        elif isinstance(command, UpdateSamples):
            self.pending_updates.append(command)
        elif isinstance(command, RequestPreview):
            self.pending_previews.extend(command.sample_ids)
        else:
            raise TypeError(f"unknown trainer command {command!r}; send Stop, Pause, Resume, UpdateSamples "
                            "or RequestPreview (or None)")

    # -- setup -----------------------------------------------------------
    def setup(self) -> None:
        cfg = self.config
        torch.manual_seed(cfg.seed)
        self.rng = np.random.default_rng(cfg.seed)
        self.dev: DeviceInfo = resolve_device(cfg.device, cfg.precision)
        # a competing CPU job must not collapse the step time: the thread count follows measured throughput
        self.threads = ThreadTuner.for_device(self.dev.device, cfg.threads or None)
        n_classes = self.collection.num_classes
        # the tag head only when some tag says something about a class (a "sessile" tag implies nothing)
        telling = {t.name for t in self.collection.tag_defs if t.implies.value != "nothing"}
        has_tags = any(telling.intersection(s.tags) for s in self.collection)
        self.model_config = cfg.model.replace(classes=n_classes + 1, aux_classes=n_classes if has_tags else 0)
        self.size = int(self.model_config.input_size)
        self.loss_weights = LossWeights(cfg.box_tightness_weight, cfg.mil_weight, cfg.aux_weight,
                                        cfg.box_pairwise_weight)
        self.prepared: dict[str, Prepared] = {}
        for sample in list(self.collection):
            self._prepare(sample)

        self.start_step = 0
        initial_gamma: dict[str, float] = {}
        prev: dict = {}
        if self.init_from is not None:
            from napari_hybridseg.core.training.checkpoint import read_run

            prev = read_run(self.init_from)
            self._prev_weights = prev.get("encoder_weights")
            self.start_step = int(prev.get("step", 0))
            self.loss_history = list(prev.get("loss_history", []))
            initial_gamma = {k: v["value"] for k, v in prev.get("sample_weights", {}).items()}
        self.nets = [self._make_net(0, prev)]
        if cfg.dcr:
            self.nets.append(self._make_net(1, prev))
        for net in self.nets:
            net.to(self.dev.device).train()
        params = [p for net in self.nets for p in net.parameters()]
        # the fused kernels: the per-tensor loop of the default CPU path costs as much as the backward pass
        fused = {"fused": True} if self.dev.device.type in ("cpu", "cuda") else {"foreach": True}
        if cfg.optimizer == "sgd":
            self.optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay, **fused)
        else:
            self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)
        self.scaler = torch.amp.GradScaler("cuda") if self.dev.needs_scaler else None
        self.total_steps = self.start_step + cfg.steps
        pixel = cfg.pixel_weights == "exact"
        self.sampler = BatchSampler(cfg.batch_size, cfg.strong_per_batch, self.rng, use_unlabeled=cfg.dcr or pixel)
        self.teacher = None
        if pixel and cfg.teacher:
            from napari_hybridseg.core.methods.teacher import MeanTeacher

            self.teacher = MeanTeacher(self.nets[0], decay=cfg.teacher_decay)
        self.refresh_net: torch.nn.Module | None = None  # initial labels of unlabeled images (pixel weights)
        self.refreshed_at: int | None = None

        self.bank = dii_mod.GammaBank(lr=cfg.dii_lr, init=cfg.dii_init)
        weak = self._ids(Role.WEAK)
        # fixed per-sample weights (control arms) sit in the bank and are never updated (DII is off)
        self.bank.sync(weak, {**initial_gamma, **(cfg.fixed_weights or {})})
        self.tau = cfg.dii_tau or dii_mod.default_tau(len(weak), cfg.batch_size, cfg.steps)
        self.rampup = cfg.cps_rampup_steps if cfg.cps_rampup_steps is not None else max(1, cfg.steps // 5)
        if self.init_from is None:
            # a new run learns new weights; clear in place (the widget may hold this dict)
            self.collection.sample_weights.clear()
        self._sync_weight_states()

    def _make_net(self, index: int, prev: dict) -> torch.nn.Module:
        folder = None if self.init_from is None else self.init_from / ("model" if index == 0 else "model_b")
        if folder is not None and folder.exists():
            from napari_hybridseg.core.training.checkpoint import load_run_model

            net, saved = load_run_model(folder, what_to_do="start a new run (--force) or restore the file")
            if saved.classes != self.model_config.classes:
                raise ValueError(f"{self.init_from}: that run predicts {saved.classes - 1} class(es), this "
                                 f"collection has {self.model_config.classes - 1}; start a new run instead")
            # a continued run keeps the network it continues (an older run's encoder may not be today's default)
            self.model_config = self.model_config.replace(arch=saved.arch, encoder=saved.encoder,
                                                          encoder_weights=saved.encoder_weights,
                                                          in_channels=saved.in_channels)
            return net
        if folder is not None and index == 0:
            raise ValueError(f"{self.init_from}: no model/ folder to continue from")
        return build_model(self.model_config, seed=self.config.seed + 1000 * index)

    def _prepare(self, sample: Sample) -> None:
        self.prepared[sample.id] = prepare_sample(sample, self.collection, self.size,
                                                  point_radius=self.config.point_radius)

    def _ids(self, role: Role) -> list[str]:
        return [k for k, p in self.prepared.items() if p.role is role]

    def _sync_weight_states(self) -> None:
        states = self.collection.sample_weights
        for k in [k for k in states if k not in self.bank.states]:
            del states[k]
        for k, s in self.bank.states.items():
            if k not in states:
                states[k] = WeightState(s.value, [(self.start_step, s.value)])

    def apply_updates(self) -> None:
        """Take edited, added and removed samples into account before the next step."""
        while self.pending_updates:
            upd = self.pending_updates.pop(0)
            for sid in upd.removed:
                self.prepared.pop(sid, None)
                if sid in self.collection:
                    self.collection.remove(sid)
            for sample in upd.samples:
                if self.collection.samples.get(sample.id) is not sample:
                    self.collection.samples[sample.id] = sample
                self._prepare(sample)
        if not self._ids(Role.STRONG):
            raise ValueError("the update removed every strong mask; keep a mask on at least one image")
        self.bank.sync(self._ids(Role.WEAK))
        self._sync_weight_states()

    # -- one step --------------------------------------------------------
    def lr_at(self, step: int) -> float:
        cfg = self.config
        local = step - self.start_step  # the schedule restarts for a continued run
        if cfg.warmup_steps and local <= cfg.warmup_steps:
            return cfg.lr * local / cfg.warmup_steps
        if cfg.lr_schedule == "constant":
            return cfg.lr
        t = (local - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return cfg.lr * (1 - min(t, 1.0)) ** 0.9

    def gamma_of(self, ids: list[str], roles: list[Role]) -> torch.Tensor:
        """Per-row weight: gamma (learned, or ``fixed_weights``) for weak rows; 1 for other rows and without DII."""
        use = self.config.dii or self.config.fixed_weights is not None
        return torch.tensor([self.bank.value(i) if use and r is Role.WEAK else 1.0 for i, r in zip(ids, roles)],
                            dtype=torch.float32, device=self.dev.device)

    def affinity(self, batch) -> torch.Tensor | None:
        """Colour affinities of the weak rows (for the pairwise term in boxes), or None without boxes."""
        if not self.loss_weights.pairwise:
            return None
        if not any(r is Role.WEAK and len(bx) for r, bx in zip(batch.roles, batch.boxes)):
            return None
        weak = [i for i, r in enumerate(batch.roles) if r is Role.WEAK]
        with torch.no_grad():
            return colour_affinity(denormalise(batch.x[weak].float()))

    def supervised(self, logits, aux, batch, gamma, affinity=None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Strong terms at weight 1 plus every weak term times gamma, averaged over the batch.

        ``affinity`` (from :meth:`affinity`) adds BoxInst's pairwise term on the
        weak rows with boxes, also times gamma (every term of a weak image is).
        """
        b = logits.shape[0]
        strong = torch.tensor([r is Role.STRONG for r in batch.roles], device=logits.device)
        weak = torch.tensor([r is Role.WEAK for r in batch.roles], device=logits.device)
        terms: dict[str, torch.Tensor] = {}
        total = logits.new_zeros((), dtype=torch.float32)
        if strong.any():
            ls = strong_loss(logits[strong], batch.target[strong])
            la = self.loss_weights.aux * aux_tag_loss(None if aux is None else aux[strong], batch.tag_target[strong])
            terms["strong"] = ls.sum() / b
            terms["aux"] = la.sum() / b
            total = total + terms["strong"] + terms["aux"]
        if weak.any():
            idx = weak.nonzero().flatten().tolist()
            wl = weak_losses(logits[weak], None if aux is None else aux[weak], batch.target[weak],
                             [batch.boxes[i] for i in idx], batch.present[weak], batch.tag_target[weak],
                             self.loss_weights, absent=batch.absent[weak])
            g = gamma[weak]
            for name in ("pce", "box", "mil", "aux"):
                val = (g * wl[name]).sum() / b
                terms[name] = terms.get(name, 0.0) + val
            total = total + (g * wl["sum"]).sum() / b
            if affinity is not None:
                probs = logits[weak].float().softmax(1)
                pair = box_pairwise(probs, affinity, [batch.boxes[i] for i in idx])
                terms["pair"] = self.loss_weights.pairwise * (g * pair).sum() / b
                total = total + terms["pair"]
        return total, terms

    def step(self, step: int) -> dict[str, float]:
        cfg = self.config
        ids = self.sampler.sample(self._ids(Role.STRONG), self._ids(Role.WEAK), self._ids(Role.UNLABELED))
        items = [augment(self.prepared[i], self.rng) if cfg.augment else self.prepared[i] for i in ids]
        batch = collate(items).to(self.dev.device)
        gamma = self.gamma_of(batch.ids, batch.roles)
        lr = self.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.dev.device)
        logged: dict[str, float] = {}
        with self.dev.autocast():
            outs = [forward(net, batch.x) for net in self.nets]
        mlb = self.pixel_weight_terms(step, batch, outs[0][0], gamma, lr) if cfg.pixel_weights == "exact" else None
        affinity = self.affinity(batch)
        for n, (logits, aux) in enumerate(outs):
            sup, terms = self.supervised(logits, aux, batch, gamma, affinity)
            total = total + sup
            if mlb is not None:
                pw_loss, pw_terms = mlb.loss_for(n, logits)
                total = total + pw_loss
                terms.update(pw_terms)
            if n == 0:
                logged.update({k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in terms.items()})
        if cfg.dcr and len(self.nets) == 2:
            bsz, _, h, w = batch.x.shape
            perm = torch.as_tensor(self.rng.permutation(bsz), device=self.dev.device)
            mask = dcr_mod.cutmix_boxes(bsz, h, w, self.rng)
            xm = dcr_mod.cutmix(batch.x, perm, mask)
            with self.dev.autocast():
                la, _ = forward(self.nets[0], xm)
                lb, _ = forward(self.nets[1], xm)
            pair_gamma = 0.5 * (gamma + gamma[perm])
            lam = cfg.cps_lambda * dcr_mod.rampup(step - self.start_step, self.rampup)
            known = batch.target != IGNORE
            known_mixed = torch.where(mask[:, 0].to(known.device) > 0, known[perm], known)
            cps = dcr_mod.cps_loss(la, lb, pair_gamma, known=known_mixed)
            total = total + lam * cps
            logged["cps"] = float(cps.detach())
        if self.scaler is not None:
            self.scaler.scale(total).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            total.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_([p for net in self.nets for p in net.parameters()], cfg.grad_clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.teacher is not None:
            self.teacher.update(self.nets[0])
        logged["total"] = float(total.detach())
        if not math.isfinite(logged["total"]):
            raise RuntimeError(f"the loss became {logged['total']} at step {step}; lower the learning rate "
                               f"(now {cfg.lr}) or use --precision fp32")
        return logged

    def pixel_weight_terms(self, step: int, batch, logits, gamma, lr) -> _MLBStep | None:
        """MLB-Seg pixel weights (``core/pixel_weights.py``) on the non-strong rows of the batch.

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
        * Mean teacher (``teacher``): an EMA of network 1 on noisy inputs, MSE
          to network 1's probabilities on the non-strong rows, weight 1, in the
          real loss.
        """
        from napari_hybridseg.core.methods import pixel_weights as pwm
        from napari_hybridseg.core.methods import ple as ple_mod
        from napari_hybridseg.core.supervision.targets import UNKNOWN

        cfg = self.config
        strong = torch.tensor([r is Role.STRONG for r in batch.roles], device=logits.device)
        other = ~strong
        if not other.any() or not strong.any():
            return None
        net = self.nets[0]
        x_w = batch.x[other]
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
                with self.dev.autocast():
                    res = ple_mod.enhance(views_net, x_w)
                extra["ple"] = res.consistency.float()
            else:
                with torch.no_grad(), self.dev.autocast():
                    res = ple_mod.enhance(views_net, x_w, with_consistency=False)
            y_own = res.y_hat
        else:
            y_own = logits[other].detach().argmax(1)
        fixed = (batch.certainty[other] != UNKNOWN) if cfg.pixel_weights_fix_certain else None
        with self.dev.autocast():  # the meta forward/backward in the run's precision; the JVP is always fp32
            pw = pwm.exact_pixel_weights(
                net, x_w, y_init, y_own, None, None, batch.x[strong], batch.target[strong],
                lambda z, y: strong_loss(z.float(), y).mean(), cfg.meta_lr or lr,
                sample_gamma=gamma[other], fixed_init=fixed, return_details=True, keep_graph=False,
                equalise_strong=cfg.pixel_weights_equalise,
            )
        if self.teacher is not None:
            with self.dev.autocast():
                extra["teacher"] = self.teacher.mse(logits[other].float(), x_w).float()
        self.pw_stats(batch, other, pw.w_init, pw.w_own)
        # self-generated targets (own and PLE predictions, the teacher) come in as the network learns from
        # the strong masks: the same sigmoid ramp-up as CPS, as in the mean teacher (and MLB-Seg, whose
        # initial labels for unlabeled images come from a model first trained on the strong set)
        scale = dcr_mod.rampup(step - self.start_step, self.rampup) if cfg.pixel_weights_rampup else 1.0
        return _MLBStep(other, y_init, y_own, pw.w_init, pw.w_own, extra, scale)

    def _refreshed_logits(self, step: int, x: torch.Tensor) -> torch.Tensor:
        """Logits of the snapshot of network 1 that labels unlabeled images (re-taken every N steps)."""
        import copy

        every = max(1, int(self.config.unlabeled_refresh or 1))
        if self.refresh_net is None or self.refreshed_at is None or step - self.refreshed_at >= every:
            self.refresh_net = copy.deepcopy(self.nets[0]).eval()
            for p in self.refresh_net.parameters():
                p.requires_grad_(False)
            self.refreshed_at = step
        with torch.no_grad(), self.dev.autocast():
            return forward(self.refresh_net, x)[0].float()

    def pw_stats(self, batch, other, w_init: torch.Tensor, w_own: torch.Tensor) -> None:
        """Running per-sample summary of the pixel weights for the run record.

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
            rec = self.pw_summary.setdefault(sid, {"n": 0, "share_on_initial_label": 0.0,
                                                   "relative_weight": 0.0})
            rec["n"] += 1
            share = a / (a + b) if a + b > 0 else 0.5
            rel = (a + b) / per_image / uniform
            rec["share_on_initial_label"] += (share - rec["share_on_initial_label"]) / rec["n"]
            rec["relative_weight"] += (rel - rec["relative_weight"]) / rec["n"]

    # -- DII ---------------------------------------------------------------
    def dii_update(self, step: int) -> WeightsReport | None:
        weak = self._ids(Role.WEAK)
        strong = self._ids(Role.STRONG)
        if not weak or not self.config.dii:
            return None
        net = self.nets[0]
        # g_S over several batches' worth of strong images (a single batch made the scores noisy) for the
        # last-layer scorer, whose strong forward is feature-only; the jvp scorer backpropagates through the
        # whole network in one go, so it keeps to one batch unless told otherwise
        per = 4 if self.config.dii_scorer == "last-layer" else 1
        n_s = self.config.dii_strong_images or per * self.config.batch_size
        pick = self.rng.permutation(len(strong))[:n_s]
        xs = torch.stack([self.prepared[strong[i]].image for i in pick])
        ys = torch.stack([self.prepared[strong[i]].target for i in pick]).to(self.dev.device)
        ts = torch.stack([self.prepared[strong[i]].tag_target for i in pick]).to(self.dev.device)
        aux_w = self.loss_weights.aux
        items = [self.prepared[k] for k in weak]
        xw = torch.stack([p.image for p in items])
        yw = torch.stack([p.target for p in items]).to(self.dev.device)
        pw = torch.stack([p.present for p in items]).to(self.dev.device)
        tw = torch.stack([p.tag_target for p in items]).to(self.dev.device)
        aw = torch.stack([p.absent for p in items]).to(self.dev.device)

        equalise = self.config.dii_scorer == "last-layer" and self.config.dii_equalise

        def strong_fn(logits, aux):
            per_image = strong_loss(logits, ys) + aux_w * aux_tag_loss(aux, ts)
            return per_image if equalise else per_image.mean()

        def instance_fn(logits, aux, idx):
            return weak_losses(logits, aux, yw[idx], [items[i].boxes for i in idx], pw[idx], tw[idx],
                               self.loss_weights, absent=aw[idx])["sum"]

        chunk = max(2, self.config.batch_size)
        if self.config.dii_scorer == "jvp":
            dots = dii_mod.jvp_scores(net, xs, strong_fn, xw, instance_fn, chunk=chunk)
        else:
            # the decoder features (the bulk of the cost) in the run's precision: on a trained Kvasir-SEG model
            # bf16 features gave scores correlated 0.99994 with float32 ones, 1.6x faster
            dots = dii_mod.last_layer_scores(net, xs, strong_fn, xw, instance_fn, chunk=chunk,
                                             feature_autocast=self.dev.autocast, equalise=equalise)
        # dL_S/dgamma_k ~ -g_S . g_k (inverse Hessian ~ identity), at a scale that does not drift with the loss
        dots = dii_mod.normalise_scores(dots.double())
        values = self.bank.step({k: -float(d) for k, d in zip(weak, dots.cpu().tolist())})
        for k, v in values.items():
            self.collection.sample_weights.setdefault(k, WeightState(v)).record(step, v)
        return WeightsReport(step=step, sample_weights=dict(values))

    # -- previews and checkpoints -----------------------------------------
    @torch.no_grad()
    def preview(self, step: int, ids: list[str]) -> PreviewReport:
        net = self.nets[0]
        was = net.training
        net.eval()
        values = np.array([0] + [c.value for c in sorted(self.collection.classes, key=lambda c: c.value)])
        dtype = np.uint16 if values.max() > 255 else np.uint8
        labels, probs = {}, {}
        try:
            for sid in ids:
                p = self.prepared.get(sid)
                if p is None:
                    continue
                logits, _ = forward(net, p.image[None].to(self.dev.device))
                prob = F.interpolate(logits.float().softmax(1), size=p.original_shape, mode="bilinear",
                                     align_corners=False)[0]
                labels[sid] = values[prob.argmax(0).cpu().numpy()].astype(dtype)
                probs[sid] = prob[1:].amax(0).cpu().numpy().astype(np.float32)
        finally:
            net.train(was)
        weights = {k: v for k, v in self.bank.values().items() if k in labels}
        maps = {}
        if self.config.pixel_weights == "exact":
            others = [i for i in labels if self.prepared[i].role is not Role.STRONG]
            if others and self._ids(Role.STRONG):
                was = net.training
                net.eval()
                try:
                    with torch.enable_grad():
                        maps = self.preview_pixel_weights(others)
                finally:
                    net.train(was)
        return PreviewReport(step=step, labels=labels, probabilities=probs, pixel_weights=maps,
                             sample_weights=weights)

    def preview_pixel_weights(self, ids: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Pixel-weight maps ``(w_init, w_own)`` of non-strong samples at their original size.

        Computed as in training (exact weights, gamma inside) on the un-augmented
        images, with network 1 in eval mode and y^ the plain argmax (no PLE, to keep
        previews cheap); normalised over the previewed images together.
        """
        from napari_hybridseg.core.methods import pixel_weights as pwm
        from napari_hybridseg.core.supervision.targets import UNKNOWN

        net = self.nets[0]
        dev = self.dev.device
        items = [self.prepared[i] for i in ids]
        x = torch.stack([p.image for p in items]).to(dev)
        strong = self._ids(Role.STRONG)[: self.config.batch_size]
        xs = torch.stack([self.prepared[i].image for i in strong]).to(dev)
        ys = torch.stack([self.prepared[i].target for i in strong]).to(dev)
        with torch.no_grad():
            logits = forward(net, x)[0].float()
        y_init, _ = pwm.fill_ignored(torch.stack([p.init_label for p in items]).to(dev), logits)
        y_own = logits.argmax(1)
        fixed = None
        if self.config.pixel_weights_fix_certain:
            fixed = torch.stack([p.certainty for p in items]).to(dev) != UNKNOWN
        gamma = self.gamma_of([p.id for p in items], [p.role for p in items])
        pw = pwm.exact_pixel_weights(net, x, y_init, y_own, None, None, xs, ys,
                                     lambda z, y: strong_loss(z, y).mean(), self.config.meta_lr or self.config.lr,
                                     sample_gamma=gamma, fixed_init=fixed, return_details=True,
                                     equalise_strong=self.config.pixel_weights_equalise)
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
        if self.run_dir is None or self.config.pixel_weights != "exact" or not self._ids(Role.STRONG):
            return None
        weak = sorted(self._ids(Role.WEAK)) or sorted(self._ids(Role.UNLABELED))
        if not weak:
            return None
        flagged = [i for i in weak if getattr(self.collection[i], "corrupted", False)]
        clean = [i for i in weak if i not in flagged]
        chosen = flagged[: max_samples // 2]
        chosen += clean[: max_samples - len(chosen)]
        chosen += [i for i in flagged if i not in chosen][: max_samples - len(chosen)]
        net = self.nets[0]
        was = net.training
        net.eval()
        try:
            with torch.enable_grad():
                maps = self.preview_pixel_weights(chosen)
        finally:
            net.train(was)
        from napari_hybridseg.core.data.images import read_image
        from napari_hybridseg.core.methods.pixel_weight_maps import write_weight_overview
        from napari_hybridseg.core.training.checkpoint import write_json

        out = self.run_dir / "pixel_weights"
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
            sample = self.collection[sid]
            image = sample.image if sample.image is not None else read_image(sample.image_path)
            write_weight_overview(out / f"{sid}.png", image, w_init, w_own, vmax)
            summary["samples"][sid] = {"mass_init": float(w_init.sum()), "mass_own": float(w_own.sum()),
                                       "corrupted": bool(getattr(self.collection[sid], "corrupted", False)),
                                       "file": f"{sid}.png"}
        write_json(out / "summary.json", summary)
        return out

    def checkpoint(self, step: int) -> CheckpointReport | None:
        if self.run_dir is None:
            return None
        from napari_hybridseg.core.training.checkpoint import guarded_write, sync_tree, write_run

        self.last_checkpoint_t = time.perf_counter()
        with guarded_write(self.run_dir, step):  # a full disk: one clear error, the last checkpoint kept
            self.run_dir.mkdir(parents=True, exist_ok=True)
            for index, net in enumerate(self.nets):
                sync_tree(save_model(net, self.run_dir / ("model" if index == 0 else "model_b"), self.model_config))
            write_run(self.run_dir, collection=self.collection, config_dict=self.config.to_dict(), step=step,
                      total_steps=self.total_steps, loss_history=self.loss_history,
                      extra={"model": self.model_config.to_dict(), "encoder_weights": self.weights_origin(),
                             "device": self.dev.label, "dii_tau": self.tau,
                             "input_size": self.size, "train_scale": self.train_scale(),
                             **({"pixel_weight_summary": self.pw_summary} if self.pw_summary else {})})
        return CheckpointReport(step=step, path=str(self.run_dir))

    def checkpoint_due(self, step: int) -> bool:
        """Every ``checkpoint_every`` steps, and after ``checkpoint_minutes`` of wall time since the last one."""
        cfg = self.config
        if self.run_dir is None:
            return False
        if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
            return True
        return bool(cfg.checkpoint_minutes) and \
            time.perf_counter() - self.last_checkpoint_t >= 60.0 * cfg.checkpoint_minutes

    def weights_origin(self) -> dict:
        """What the networks started from (``run.json``'s ``encoder_weights``); a resumed run says so."""
        if self.init_from is None:
            return weights_record(self.model_config)
        return {**(getattr(self, "_prev_weights", None) or weights_record(self.model_config)),
                "continued_from": str(self.init_from)}

    def train_scale(self) -> float:
        """Median factor original -> training pixels (the predictor tiles huge images at this scale)."""
        sides = [max(p.original_shape) for p in self.prepared.values() if max(p.original_shape) > 0]
        return float(self.size / np.median(sides)) if sides else 1.0

    # -- the generator -------------------------------------------------------
    def loop(self) -> Trainer:
        t_start = time.perf_counter()
        self.setup()
        cfg = self.config
        counts = {r: len(self._ids(r)) for r in Role}
        if counts[Role.UNLABELED] and not cfg.dcr:
            self.notes.append(f"{counts[Role.UNLABELED]} unlabeled image(s) unused: they enter through DCR only")
        if cfg.dii and counts[Role.WEAK]:
            self.notes.append(f"DII updates every {self.tau} steps ({cfg.dii_scorer} scorer)")
        self.accept((yield StartReport(device=self.dev.label, total_steps=self.total_steps,
                                        start_step=self.start_step, n_strong=counts[Role.STRONG],
                                        n_weak=counts[Role.WEAK], n_unlabeled=counts[Role.UNLABELED],
                                        run_dir=None if self.run_dir is None else str(self.run_dir),
                                        notes=tuple(self.notes))))
        sps: float | None = None
        step = self.start_step
        last_ckpt = None
        reason = "finished"
        self.last_checkpoint_t = time.perf_counter()
        if self.run_dir is not None and (self.init_from is None or
                                         Path(self.init_from).resolve() != self.run_dir.resolve()):
            # a new run folder is a valid run from the start: killed (kill -9, power) before its first
            # periodic checkpoint, it still holds a model `predict` reads and `--resume` continues
            last_ckpt = self.checkpoint(step).path
        try:
            while step < self.total_steps:
                if self.stop_requested:
                    reason = "stopped"
                    break
                if self.paused:
                    time.sleep(0.05)  # the caller's loop spins on paused reports; do not burn a core
                    self.accept((yield StepReport(step=step, total_steps=self.total_steps, losses={}, lr=0.0,
                                                  sec_per_step=sps or 0.0, eta_s=0.0, device=self.dev.label,
                                                  paused=True)))
                    continue
                if self.pending_updates:
                    self.apply_updates()
                step += 1
                t0 = time.perf_counter()
                losses = self.step(step)
                dt = time.perf_counter() - t0
                if self.threads is not None:
                    self.threads.record(dt)
                sps = dt if sps is None else 0.9 * sps + 0.1 * dt
                if cfg.log_every and step % cfg.log_every == 0:
                    self.loss_history.append([step, losses])
                self.accept((yield StepReport(step=step, total_steps=self.total_steps, losses=losses,
                                              lr=self.lr_at(step), sec_per_step=sps,
                                              eta_s=sps * (self.total_steps - step), device=self.dev.label)))
                if cfg.dii and (step - self.start_step) % self.tau == 0:
                    report = self.dii_update(step)
                    if report is not None:
                        self.accept((yield report))
                want = list(self.pending_previews)
                self.pending_previews.clear()
                if self.preview_ids and cfg.preview_every and step % cfg.preview_every == 0:
                    want += [i for i in self.preview_ids if i not in want]
                if want:
                    self.accept((yield self.preview(step, want)))
                if self.checkpoint_due(step):
                    report = self.checkpoint(step)
                    last_ckpt = report.path if report else None
                    self.accept((yield report))
            if self.stop_requested:
                reason = "stopped"
            report = self.checkpoint(step) if step > self.start_step or self.run_dir else None
            if report is not None and step > self.start_step:
                self.export_pixel_weight_maps(step)
            if report is not None:
                last_ckpt = report.path
                self.accept((yield report))
            self.release()
            yield DoneReport(step=step, reason=reason, checkpoint=last_ckpt,
                             wall_s=time.perf_counter() - t_start)
        finally:
            self.release()

    def release(self) -> None:
        """Free accelerator memory: models back to the CPU, caches emptied; torch's thread count as it was."""
        if getattr(self, "threads", None) is not None:
            torch.set_num_threads(self.threads.max_threads)
        if self.dev.device.type != "cpu":
            for net in self.nets:
                net.cpu()
            release(self.dev.device)
