"""What decides a benchmark run's numbers: :class:`BenchSettings` and each preset's training overrides."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from napari_hybridseg.core.data.hybridize import POINT_PLACEMENTS
from napari_hybridseg.core.training.config import PRESETS, TrainConfig
from napari_hybridseg.core.training.config import preset as make_preset

from .arms import ARMS
from .presets import BENCH_PRESETS as _PRESETS
from .presets import canonical, config_preset_name

#: TrainConfig overrides of each benchmark preset (on top of core.config.PRESETS); see :mod:`.presets`.
BENCH_PRESETS: dict[str, dict[str, Any]] = {k: v["train"] for k, v in _PRESETS.items()}

#: Wall-clock budget (minutes) of each preset's run; None = no calibration (see :mod:`.presets`).
BENCH_BUDGET_MIN: dict[str, float | None] = {k: v["budget_min"] for k, v in _PRESETS.items()}


@dataclass
class BenchSettings:
    """Everything that decides a benchmark's numbers (and where it writes).

    Parameters
    ----------
    dataset : str
        Dataset folder in a layout the project imports.
    layout : str
        ``"kvasir"``, ``"folder"`` or ``"busi"`` (any layout ``import_dataset`` knows).
    out : str
        Output folder; rerunning with the same folder resumes.
    preset : str
        ``"quick"`` (default; the old name ``"cpu-quick"`` works too), ``"standard"`` or ``"gpu"``
        (:mod:`.presets`).
    strong_fraction : float
        Fraction of training images that keep their mask. Default 0.1.
    weak : str
        Weak label kind of the rest: ``"box"`` (default), ``"point"``, ``"tag"``.
    noise : float
        Fraction of weak labels made wrong on purpose. Default 0.3.
    point_placement : str
        ``weak="point"``: where a simulated click lands in its object,
        ``"anywhere"`` (default) or ``"deep"`` (:func:`~napari_hybridseg.core.data.hybridize.points_from_mask`).
    background_clicks : int
        ``weak="point"``: background clicks added to each point image. Default 0.
    seed : int
        Seed of the split, the label budget, the corruption and training. Default 0.
    arms : tuple of str
        Arms to run, a subset of :data:`ARMS`. Default all eight.
    groups_csv : str or None
        CSV of ``image_id,group`` rows; a group never straddles a split.
    dedup : bool
        Also group near-duplicate images (thumbnail correlation). Default True.
    dedup_threshold : float
        Correlation above which two images are one picture. Default 0.985.
    device : str
        ``"auto"`` (default), ``"cpu"``, ``"cuda"``, ...
    steps : int or None
        Step budget per arm; ``None`` takes the preset's.
    limit : int or None
        Use a seeded subset of this many images (smoke tests). Default all.
    grid_images : int
        Test images shown in the prediction grid. Default 6.
    n_boot : int
        Bootstrap resamples of the Dice interval. Default 2000.
    overrides : dict
        Extra TrainConfig settings applied to every arm (e.g. ``{"batch_size": 4}``).
    pre_resize : bool
        Resize the training images (and their masks, boxes, points) to the
        square training size once, before the arms run, instead of letting
        the trainer resize full-size images again for every arm. The trainer
        resizes to the same square size, so the arms see the same pixels (up
        to 8-bit rounding). Default True.
    stratify : bool
        Split each image-tag class (e.g. BUSI's normal / benign / malignant)
        70/10/20 on its own. No effect on datasets without tags. Default True.
    budget_min : float or None
        Wall-clock budget of the whole run in minutes. Unless ``steps`` is
        given, a short calibration times this machine's training step and
        the step budget (the same for every arm) is chosen to fit, capped at
        the preset's steps. ``None``: the preset's budget (``quick``: 18
        minutes, leaving 2 of the 20 as margin; ``standard``, ``gpu``: none).
    curve_points : int
        Validation-Dice points of the convergence curve of ``strong-only`` and
        ``all-strong`` (a checkpoint every ``steps / curve_points`` steps); 0: none.
        Default 10. Not part of the fingerprint (it changes no trained number).
    note : str
        Free text shown at the top of the report (e.g. "measured under load");
        it does not decide any number.
    """

    dataset: str
    layout: str
    out: str
    preset: str = "quick"
    strong_fraction: float = 0.1
    weak: str = "box"
    noise: float = 0.3
    point_placement: str = "anywhere"
    background_clicks: int = 0
    seed: int = 0
    arms: tuple[str, ...] = ARMS
    groups_csv: str | None = None
    dedup: bool = True
    dedup_threshold: float = 0.985
    device: str = "auto"
    steps: int | None = None
    limit: int | None = None
    grid_images: int = 6
    n_boot: int = 2000
    overrides: dict[str, Any] = field(default_factory=dict)
    pre_resize: bool = True
    stratify: bool = True
    budget_min: float | None = None
    note: str = ""
    curve_points: int = 10

    def __post_init__(self) -> None:
        self.arms = tuple(self.arms)
        try:
            self.preset = canonical(self.preset)
        except ValueError as exc:
            raise ValueError(str(exc)) from None
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown:
            raise ValueError(f"unknown arm(s) {unknown}; choose from {', '.join(ARMS)}")
        if not 0.0 < self.strong_fraction <= 1.0:
            raise ValueError(f"strong_fraction must be in (0, 1], got {self.strong_fraction}")
        if not 0.0 <= self.noise < 1.0:
            raise ValueError(f"noise must be in [0, 1), got {self.noise}")
        if self.point_placement not in POINT_PLACEMENTS:
            raise ValueError(f"point_placement must be one of {', '.join(POINT_PLACEMENTS)}, "
                             f"got {self.point_placement!r}")
        if self.background_clicks < 0:
            raise ValueError(f"background_clicks must be >= 0, got {self.background_clicks}")
        if self.weak not in ("box", "point", "tag"):
            raise ValueError(f"weak must be 'box', 'point' or 'tag', got {self.weak!r}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["arms"] = list(self.arms)
        return d

    def fingerprint(self) -> str:
        """Hash of the settings that decide the numbers (not ``out`` nor which arms run)."""
        d = self.to_dict()
        for key in ("out", "arms", "grid_images", "note", "curve_points"):
            d.pop(key)
        if d["weak"] != "point":  # the click settings decide nothing else: box and tag runs still resume
            d.pop("point_placement")
            d.pop("background_clicks")
        if d["preset"] == "quick":  # its name until 2026-12-01: runs started then still resume
            d["preset"] = "cpu-quick"
        d["dataset"] = str(Path(self.dataset).resolve())
        blob = json.dumps(d, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def base_config(self) -> TrainConfig:
        """The TrainConfig every arm starts from: the preset, the step budget, the seed, the device."""
        name = config_preset_name(self.preset, PRESETS)
        cfg = make_preset(name) if name is not None else TrainConfig()
        cfg = cfg.replace(**BENCH_PRESETS[self.preset], seed=self.seed, device=self.device)
        if self.steps is not None:
            cfg = cfg.replace(steps=int(self.steps))
        if self.overrides:
            model_over = self.overrides.get("model")
            rest = {k: v for k, v in self.overrides.items() if k != "model"}
            if model_over:
                cfg = cfg.replace(model=cfg.model.replace(**model_over))
            cfg = cfg.replace(**rest)
        return cfg
