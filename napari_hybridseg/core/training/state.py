"""What one training run holds between steps, and the setup that builds it.

:func:`build_state` seeds the run, resolves the device, prepares every
sample, restores a continued run, builds the network(s), the optimiser, the
batch sampler and the DII weight bank, in that order (the order decides the
random numbers every later part draws). :class:`RunState` is the shared,
mutable state the step and its method terms read: the prepared samples, the
networks, the weight bank, the numpy generator.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from napari_hybridseg.core.data.collection import Collection, Role, Sample, WeightState
from napari_hybridseg.core.errors import ConfigError, NoStrongMaskError, RunError
from napari_hybridseg.core.methods import dii as dii_mod
from napari_hybridseg.core.network.device import DeviceInfo, ThreadTuner, release, resolve_device
from napari_hybridseg.core.network.models import build_model
from napari_hybridseg.core.supervision.losses import LossWeights
from napari_hybridseg.core.supervision.size_prior import SizePrior
from napari_hybridseg.core.training.batches import BatchSampler, Prepared, prepare_sample
from napari_hybridseg.core.training.config import ModelConfig, TrainConfig, model_classes
from napari_hybridseg.core.training.reports import UpdateSamples

__all__ = ["RunState", "build_state", "model_classes", "model_config_for"]


def model_config_for(model: ModelConfig, collection: Collection) -> ModelConfig:
    """``model`` with ``classes``/``aux_classes`` from :func:`model_classes`.

    Raises
    ------
    ConfigError
        A value the caller gave (not None) that disagrees with the collection.
    """
    classes, aux_classes = model_classes(collection)
    for name, want in (("classes", classes), ("aux_classes", aux_classes)):
        given = getattr(model, name)
        if given is not None and given != want:
            raise ConfigError(f"model.{name}", f"{given} does not fit this collection, which needs {want} "
                              f"({collection.num_classes} class(es)"
                              f"{'' if name == 'classes' else ', tags that imply a class: ' + str(bool(want))}); "
                              "leave it unset (None) to derive it", str(want))
    return model.replace(classes=classes, aux_classes=aux_classes)


@dataclass
class RunState:
    """The state of one run shared by the step, the method terms, previews and checkpoints."""

    collection: Collection
    config: TrainConfig
    run_dir: Path | None
    init_from: Path | None
    rng: np.random.Generator
    dev: DeviceInfo
    threads: ThreadTuner | None
    model_config: ModelConfig
    loss_weights: LossWeights
    prepared: dict[str, Prepared] = field(default_factory=dict)
    start_step: int = 0
    loss_history: list[list] = field(default_factory=list)
    prev_weights: dict | None = None
    nets: list[torch.nn.Module] = field(default_factory=list)
    optimizer: torch.optim.Optimizer | None = None
    scaler: torch.amp.GradScaler | None = None
    total_steps: int = 0
    sampler: BatchSampler | None = None
    teacher: object | None = None
    bank: dii_mod.GammaBank | dii_mod.EvidenceBank | None = None
    #: one line per DII update (counted or not, and why), for the run record
    dii_log: list[str] = field(default_factory=list)
    tau: int = 1
    rampup: int = 1
    size_prior: SizePrior | None = None
    #: one line per anchoring (:class:`~.anchor_term.AnchorTerm`), for the run record
    anchor_log: list[str] = field(default_factory=list)
    #: a distributed run's :class:`~.distributed.Distributed` (None: one process) and the DDP wrappers of ``nets``
    dist: object | None = None
    ddp_nets: list[torch.nn.Module] = field(default_factory=list)

    @property
    def train_nets(self) -> list[torch.nn.Module]:
        """What the training forward goes through: the DDP wrappers of a distributed run, else ``nets``."""
        return self.ddp_nets or self.nets

    @property
    def size(self) -> int:
        """Square training size in pixels."""
        return int(self.model_config.input_size)

    def ids(self, role: Role) -> list[str]:
        """Prepared sample ids of one role, in preparation order."""
        return [k for k, p in self.prepared.items() if p.role is role]

    def prepare(self, sample: Sample) -> None:
        """Resize and encode one sample for training (replaces an earlier preparation)."""
        self.prepared[sample.id] = prepare_sample(sample, self.collection, self.size,
                                                  point_radius=self.config.loss.point_radius,
                                                  with_reference=self.config.pixel.mode == "exact")

    def update_size_prior(self) -> None:
        """The size range of each class from the prepared strong masks (:class:`SizePrior`)."""
        masks = [self.prepared[i].target.numpy() for i in self.ids(Role.STRONG)]
        self.size_prior = SizePrior.from_masks(masks, self.model_config.classes, self.config.loss.size_margin)

    def gamma_of(self, ids: list[str], roles: list[Role]) -> torch.Tensor:
        """Per-row weight: gamma (learned, or ``fixed_weights``) for weak rows; 1 for other rows and without DII."""
        use = self.config.dii.enabled or self.config.dii.fixed_weights is not None
        return torch.tensor([self.bank.value(i) if use and r is Role.WEAK else 1.0 for i, r in zip(ids, roles)],
                            dtype=torch.float32, device=self.dev.device)

    def sync_weight_states(self) -> None:
        """``collection.sample_weights`` holds exactly the bank's weak samples (new ones start a history)."""
        states = self.collection.sample_weights
        for k in [k for k in states if k not in self.bank.states]:
            del states[k]
        for k, s in self.bank.states.items():
            if k not in states:
                states[k] = WeightState(s.value, [(self.start_step, s.value)])

    def apply_updates(self, updates: list[UpdateSamples]) -> None:
        """Take edited, added and removed samples into account before the next step (empties ``updates``)."""
        while updates:
            upd = updates.pop(0)
            for sid in upd.removed:
                self.prepared.pop(sid, None)
                if sid in self.collection:
                    self.collection.remove(sid)
            for sample in upd.samples:
                if self.collection.samples.get(sample.id) is not sample:
                    self.collection.samples[sample.id] = sample
                self.prepare(sample)
        if not self.ids(Role.STRONG):
            raise NoStrongMaskError("the update removed every strong mask; keep a mask on at least one image")
        self.update_size_prior()
        self.bank.sync(self.ids(Role.WEAK))
        self.sync_weight_states()


def build_state(collection: Collection, config: TrainConfig, run_dir: Path | None,
                init_from: Path | None) -> RunState:
    """Everything a run needs before its first step (see the module docstring for the order)."""
    cfg = config
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    dev = resolve_device(cfg.device, cfg.precision)
    # a competing CPU job must not collapse the step time: the thread count follows measured throughput
    threads = ThreadTuner.for_device(dev.device, cfg.threads or None)
    model_config = model_config_for(cfg.model, collection)
    loss_weights = LossWeights(cfg.loss.box_tightness, cfg.loss.mil, cfg.loss.aux, cfg.loss.box_pairwise,
                               cfg.loss.size_prior, cfg.loss.anchor)
    st = RunState(collection, cfg, run_dir, init_from, rng, dev, threads, model_config, loss_weights)
    try:
        _build(st)
    except BaseException:
        # a failed setup leaves torch's thread count and the accelerator as they were
        if threads is not None:
            torch.set_num_threads(threads.max_threads)
        if dev.device.type != "cpu":
            for net in st.nets:
                net.cpu()
            release(dev.device)
        raise
    return st


def _build(st: RunState) -> None:
    cfg, collection, init_from, dev, rng = st.config, st.collection, st.init_from, st.dev, st.rng
    for sample in list(collection):
        st.prepare(sample)
    st.update_size_prior()

    initial_gamma: dict[str, float] = {}
    if init_from is not None:
        from napari_hybridseg.core.training.checkpoint import read_run
        from napari_hybridseg.core.training.run_record import weights_of

        prev = read_run(init_from)
        st.prev_weights = prev.get("encoder_weights")
        st.start_step = int(prev.get("step", 0))
        st.loss_history = list(prev.get("loss_history", []))
        initial_gamma = weights_of(prev)  # "weight", or "value" in a format-1 run.json
    st.nets = [_make_net(st, 0)]
    if cfg.dcr.enabled:
        st.nets.append(_make_net(st, 1))
    for net in st.nets:
        net.to(dev.device).train()
    params = [p for net in st.nets for p in net.parameters()]
    # the fused kernels: the per-tensor loop of the default CPU path costs as much as the backward pass
    fused = {"fused": True} if dev.device.type in ("cpu", "cuda") else {"foreach": True}
    opt = cfg.optim
    if opt.optimizer == "sgd":
        st.optimizer = torch.optim.SGD(params, lr=opt.lr, momentum=0.9, weight_decay=opt.weight_decay, **fused)
    else:
        st.optimizer = torch.optim.AdamW(params, lr=opt.lr, weight_decay=opt.weight_decay, **fused)
    st.scaler = torch.amp.GradScaler("cuda") if dev.needs_scaler else None
    st.total_steps = st.start_step + cfg.steps
    pixel = cfg.pixel.mode == "exact"
    st.sampler = BatchSampler(cfg.batch_size, cfg.strong_per_batch, rng, use_unlabeled=cfg.dcr.enabled or pixel)
    if pixel and cfg.pixel.teacher:
        from napari_hybridseg.core.methods.teacher import MeanTeacher

        st.teacher = MeanTeacher(st.nets[0], decay=cfg.pixel.teacher_decay)

    if cfg.dii.update == "adam":
        st.bank = dii_mod.GammaBank(lr=cfg.dii.lr, init=cfg.dii.init)
    else:
        st.bank = dii_mod.EvidenceBank(init=cfg.dii.init, decay=cfg.dii.decay, outlier_z=cfg.dii.outlier_z)
    weak = st.ids(Role.WEAK)
    # fixed per-sample weights (control arms) sit in the bank and are never updated (DII is off)
    st.bank.sync(weak, {**initial_gamma, **(cfg.dii.fixed_weights or {})})
    st.tau = cfg.dii.tau or dii_mod.default_tau(len(weak), cfg.batch_size, cfg.steps)
    st.rampup = cfg.dcr.rampup_steps if cfg.dcr.rampup_steps is not None else max(1, cfg.steps // 5)
    if init_from is None:
        # a new run learns new weights; clear in place (the widget may hold this dict)
        collection.sample_weights.clear()
    st.sync_weight_states()


def _make_net(st: RunState, index: int) -> torch.nn.Module:
    folder = None if st.init_from is None else st.init_from / ("model" if index == 0 else "model_b")
    if folder is not None and folder.exists():
        from napari_hybridseg.core.training.checkpoint import load_run_model

        net, saved = load_run_model(folder, what_to_do="start a new run (--force) or restore the file")
        if saved.classes != st.model_config.classes:
            raise RunError(f"{st.init_from}: that run predicts {saved.classes - 1} class(es), this "
                             f"collection has {st.model_config.classes - 1}; start a new run instead")
        # a continued run keeps the network it continues (an older run's encoder may not be today's default)
        st.model_config = st.model_config.replace(arch=saved.arch, encoder=saved.encoder,
                                                  encoder_weights=saved.encoder_weights,
                                                  in_channels=saved.in_channels)
        return net
    if folder is not None and index == 0:
        raise RunError(f"{st.init_from}: no model/ folder to continue from")
    return build_model(st.model_config, seed=st.config.seed + 1000 * index)
