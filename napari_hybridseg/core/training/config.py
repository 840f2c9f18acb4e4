"""Model and training settings: nested, validated when built, with presets. Pure dataclasses (no torch import).

:class:`TrainConfig` holds the run-wide settings and one sub-config per
concern: ``model`` (:class:`ModelConfig`), ``optim`` (:class:`OptimConfig`:
optimiser and LR schedule), ``loss`` (:class:`LossConfig`: weak-label loss
weights), ``dii`` (:class:`DIIConfig`), ``dcr`` (:class:`DCRConfig`) and
``pixel`` (:class:`PixelWeightConfig`). Every config checks its values when it
is built and raises :class:`~napari_hybridseg.core.errors.ConfigError` naming
the (dotted) field and what is allowed.

Overrides are ``KEY=VALUE`` strings (:func:`apply_overrides`, used by
``hybridseg train --set``, ``hybridseg bench --set`` and the plugin's advanced
settings): ``KEY`` is dotted for sub-configs (``dii.lr``, ``model.encoder``)
or one of the old flat names (``dii_lr``, ``pixel_weights``, see
:data:`FLAT_NAMES`), which also work as keyword arguments of
:class:`TrainConfig` and :meth:`TrainConfig.replace` and as attributes, so
older callers and saved settings keep working.

The sub-configs and their checks live in :mod:`.config_sections` (re-exported here).

Both round-trip to JSON through ``to_dict`` / ``from_dict``; ``from_dict``
also reads the flat settings older versions wrote into ``run.json``.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from napari_hybridseg.core.errors import ConfigError
from napari_hybridseg.core.training.config_sections import (
    ARCHITECTURES,
    SECTIONS,
    DCRConfig,
    DIIConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    PixelWeightConfig,
    _check,
    _choice,
    _flag,
    _number,
    _Section,
)

__all__ = ["ARCHITECTURES", "CONFIG_VERSION", "FLAT_NAMES", "PRESETS", "DCRConfig", "DIIConfig", "LossConfig",
           "ModelConfig", "OptimConfig", "PixelWeightConfig", "TrainConfig", "apply_overrides",
           "model_classes", "parse_overrides", "preset"]

#: the layout of :meth:`TrainConfig.to_dict` (1: flat, before issue 11; 2: nested)
CONFIG_VERSION = 2
#: settings that older versions had and never read: dropped when an old file is loaded
REMOVED = ("num_workers", "dii_per_annotation")


#: the flat names of version 1 -> their place now (section, field); they stay accepted everywhere
FLAT_NAMES: dict[str, tuple[str, str]] = {
    "optimizer": ("optim", "optimizer"), "lr": ("optim", "lr"), "weight_decay": ("optim", "weight_decay"),
    "lr_schedule": ("optim", "lr_schedule"), "warmup_steps": ("optim", "warmup_steps"),
    "grad_clip": ("optim", "grad_clip"),
    "box_tightness_weight": ("loss", "box_tightness"), "box_pairwise_weight": ("loss", "box_pairwise"),
    "mil_weight": ("loss", "mil"), "aux_weight": ("loss", "aux"), "point_radius": ("loss", "point_radius"),
    "dii_scorer": ("dii", "scorer"), "dii_tau": ("dii", "tau"), "dii_lr": ("dii", "lr"),
    "dii_init": ("dii", "init"), "dii_equalise": ("dii", "equalise"),
    "dii_strong_images": ("dii", "strong_images"), "fixed_weights": ("dii", "fixed_weights"),
    "cps_lambda": ("dcr", "cps_lambda"), "cps_rampup_steps": ("dcr", "rampup_steps"),
    "pixel_weights": ("pixel", "mode"), "pixel_weights_fix_certain": ("pixel", "fix_certain"),
    "pixel_weights_equalise": ("pixel", "equalise"), "pixel_weights_rampup": ("pixel", "rampup"),
    "ple": ("pixel", "ple"), "ple_consistency": ("pixel", "ple_consistency"), "teacher": ("pixel", "teacher"),
    "teacher_decay": ("pixel", "teacher_decay"), "meta_lr": ("pixel", "meta_lr"),
    "unlabeled_refresh": ("pixel", "unlabeled_refresh"),
    # sections that used to be one switch: a bool sets `enabled`
    "dii": ("dii", "enabled"), "dcr": ("dcr", "enabled"),
}

_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


@dataclass(init=False)
class TrainConfig:
    """Everything a training run needs besides the data.

    Defaults are the ``cpu-quick`` preset. Build it with sub-configs, dotted
    keys or the old flat names::

        TrainConfig(steps=60, dii=DIIConfig(tau=5))
        TrainConfig(steps=60, dii_tau=5, pixel_weights="exact", dcr=False)
        cfg.replace(**{"dii.tau": 5, "model.input_size": 64})

    Parameters
    ----------
    steps : int
        Training steps (>= 1). Default 300.
    batch_size : int
        Images per step (>= 1). Default 8.
    strong_per_batch : int or None
        Strong images per batch; None: half the batch (at least one).
    augment : bool
        Flips, rotations, intensity jitter. Default True.
    device : str
        "auto" (cuda > mps > cpu), "cpu", "cuda", "cuda:N" or "mps".
    precision : {"auto", "fp32"}
        "auto": bf16 autocast on CPUs that have it, fp16 AMP on CUDA; "fp32".
    seed : int
        Default 0.
    threads : int
        CPU threads for torch; 0 (default): chosen from measured throughput and adapted.
    preview_every, checkpoint_every, log_every : int
        Steps between previews, checkpoints (0: only by time and at the end) and loss-history entries.
    checkpoint_minutes : float
        At most this much wall time between checkpoints (0: off). Default 5.
    model, optim, loss, dii, dcr, pixel
        The sub-configs (see their classes).
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    steps: int = 300
    batch_size: int = 8
    strong_per_batch: int | None = None
    augment: bool = True
    device: str = "auto"
    precision: str = "auto"
    seed: int = 0
    threads: int = 0
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    dii: DIIConfig = field(default_factory=DIIConfig)
    dcr: DCRConfig = field(default_factory=DCRConfig)
    pixel: PixelWeightConfig = field(default_factory=PixelWeightConfig)
    preview_every: int = 25
    checkpoint_every: int = 100
    checkpoint_minutes: float = 5.0
    log_every: int = 1

    def __init__(self, **settings: Any):
        for f in dataclasses.fields(self):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            object.__setattr__(self, f.name, default)
        self._assign(settings)

    # -- building -------------------------------------------------------------
    def _assign(self, settings: Mapping[str, Any]) -> None:
        nested: dict[str, dict[str, Any]] = {}
        for key, value in settings.items():
            if key in SECTIONS and isinstance(value, SECTIONS[key]):
                object.__setattr__(self, key, value)
            elif key in SECTIONS and isinstance(value, Mapping):
                nested.setdefault(key, {}).update(value)
            else:
                section, name = _locate(key)
                if section:
                    nested.setdefault(section, {})[name] = value
                else:
                    object.__setattr__(self, name, value)
        for section, changes in nested.items():
            cls = SECTIONS[section]
            names = {f.name for f in dataclasses.fields(cls)}
            unknown = sorted(set(changes) - names)
            if unknown:
                raise ConfigError(f"{section}.{unknown[0]}", "unknown setting", ", ".join(sorted(names)))
            object.__setattr__(self, section, dataclasses.replace(getattr(self, section), **changes))
        self._validate()

    def _validate(self) -> None:
        for section, cls in SECTIONS.items():
            _check(isinstance(getattr(self, section), cls), section, getattr(self, section), cls.__name__)
        _number("steps", self.steps, low=1, integer=True)
        _number("batch_size", self.batch_size, low=1, integer=True)
        _number("strong_per_batch", self.strong_per_batch, low=1, integer=True, optional=True)
        _flag("augment", self.augment)
        _check(isinstance(self.device, str) and bool(_DEVICE.match(self.device.lower())), "device", self.device,
               "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'")
        _choice("precision", self.precision, ("auto", "fp32"))
        _number("seed", self.seed, integer=True)
        _number("threads", self.threads, low=0, integer=True)
        _number("preview_every", self.preview_every, low=0, integer=True)
        _number("checkpoint_every", self.checkpoint_every, low=0, integer=True)
        _number("checkpoint_minutes", self.checkpoint_minutes, low=0)
        _number("log_every", self.log_every, low=0, integer=True)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes`` (field names, sub-configs, dotted keys or old flat names), validated."""
        new = object.__new__(TrainConfig)
        for f in dataclasses.fields(self):
            object.__setattr__(new, f.name, getattr(self, f.name))
        new._assign(changes)
        return new

    # -- the old flat names, read -----------------------------------------------
    def __getattr__(self, name: str) -> Any:
        # only reached when normal lookup fails: an old flat name (``cfg.dii_tau``) reads its new place
        if name in FLAT_NAMES and name not in ("dii", "dcr"):
            section, key = FLAT_NAMES[name]
            return getattr(object.__getattribute__(self, section), key)
        raise AttributeError(f"{type(self).__name__!s} has no setting {name!r}")

    # -- JSON -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Nested JSON-able settings, with ``config_version``."""
        out: dict[str, Any] = {"config_version": CONFIG_VERSION}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = value.to_dict() if isinstance(value, _Section) else value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Settings from :meth:`to_dict`, or the flat ones of version 1 (``run.json`` before issue 11).

        Raises
        ------
        ConfigError
            An unknown setting, a value out of range, or a version this code does not know.
        """
        data = dict(data)
        version = data.pop("config_version", 1)
        if version not in (1, CONFIG_VERSION):
            raise ConfigError("config_version", f"these settings were written by a newer napari-hybridseg "
                              f"(settings version {version}); update the package to read them",
                              f"1 or {CONFIG_VERSION}")
        for name in REMOVED:
            data.pop(name, None)
        if isinstance(data.get("model"), Mapping):
            data["model"] = ModelConfig.from_dict(data["model"])
        return cls(**data)


def model_classes(collection) -> tuple[int, int]:
    """``(classes, aux_classes)`` of the network a collection trains: its classes + background, and the
    tag head's classes (0 unless some tag says something about a class; a "sessile" tag implies nothing).

    The one place these are derived (the trainer checks a given ``model.classes``
    / ``aux_classes`` against it); callers that build a ModelConfig for a
    collection (bench, widget) use it or leave the fields None.
    """
    n_classes = collection.num_classes
    telling = {t.name for t in collection.tag_defs if t.implies.value != "nothing"}
    has_tags = any(telling.intersection(s.tags) for s in collection)
    return n_classes + 1, (n_classes if has_tags else 0)


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings -> a mapping of checked keys to values (JSON if it parses, else the text).

    Keys are kept as typed (dotted, top-level or old flat names). Raises
    :class:`ConfigError` for an item without ``=`` or with an unknown key.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(item, "give KEY=VALUE", "e.g. dii.lr=0.2, model.input_size=64, cps_lambda=2")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        _locate(key)
        out[key] = value
    return out


def _locate(key: str) -> tuple[str, str]:
    """Where a settings key lives: ``("", field)`` for a run-wide field, ``(section, field)`` for a sub-config
    field (a dotted key or an old flat name; ``dii`` / ``dcr`` alone mean their ``enabled``).

    The one resolver of keys, for :class:`TrainConfig` and for :func:`parse_overrides`; raises
    :class:`ConfigError` for an unknown key.
    """
    if key in _TOP_FIELDS:
        return "", key
    if key in FLAT_NAMES:
        return FLAT_NAMES[key]
    section, _, name = key.partition(".")
    if section in SECTIONS and name:
        fields = [f.name for f in dataclasses.fields(SECTIONS[section])]
        if name in fields:
            return section, name
        raise ConfigError(key, "unknown setting", ", ".join(f"{section}.{f}" for f in fields))
    raise ConfigError(key, "unknown setting", "a TrainConfig field (e.g. steps), a dotted key (dii.lr, "
                      "model.input_size, pixel.mode) or an old flat name (dii_lr, pixel_weights)")


#: the run-wide (non-section) fields of TrainConfig
_TOP_FIELDS = frozenset(f.name for f in dataclasses.fields(TrainConfig)) - set(SECTIONS)


def apply_overrides(cfg: TrainConfig, items: Sequence[str]) -> TrainConfig:
    """``cfg`` with ``KEY=VALUE`` overrides applied in order (see :func:`parse_overrides`), validated.

    ``model.*`` keys change the model sub-config, ``dii.lr``-style keys the
    others; the old flat names (``dii_lr``, ``pixel_weights``) are aliases.
    """
    out = cfg
    for key, value in parse_overrides(items).items():
        out = out.replace(**{key: value})
    return out


PRESETS: dict[str, dict[str, Any]] = {
    # minutes on a 2-core CPU: small input, a small ImageNet encoder that works offline, bf16 autocast
    "cpu-quick": {"model": {"arch": "Unet", "encoder": "tu-efficientnet_lite0", "encoder_weights": "imagenet",
                            "input_size": 128},
                  "steps": 300, "batch_size": 8},
    # paper-scale for a CUDA machine; the same offline ImageNet encoder (resnet50 needs the Hugging Face cache)
    "gpu": {"model": {"arch": "DeepLabV3Plus", "encoder": "tu-efficientnet_lite0", "encoder_weights": "imagenet",
                      "input_size": 352},
            "steps": 4000, "batch_size": 16},
}


def preset(name: str, **overrides: Any) -> TrainConfig:
    """A :class:`TrainConfig` from a named preset, with overrides."""
    if name not in PRESETS:
        raise ConfigError("preset", f"unknown preset {name!r}", ", ".join(sorted(PRESETS)))
    spec = dict(PRESETS[name])
    model = ModelConfig(**spec.pop("model"))
    cfg = TrainConfig(model=model, **spec)
    return cfg.replace(**overrides) if overrides else cfg
