"""Nested, validated settings: sub-configs, dotted overrides, the old flat names, old files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from napari_hybridseg.core.errors import ConfigError
from napari_hybridseg.core.training.config import (
    CONFIG_VERSION,
    ModelConfig,
    TrainConfig,
    apply_overrides,
    parse_overrides,
    preset,
)

REPO = Path(__file__).resolve().parents[1]


def test_flat_names_dotted_keys_and_sub_configs_reach_the_same_place():
    a = TrainConfig(dii_tau=5, pixel_weights="exact", dcr=False, cps_lambda=2.0, lr=0.01)
    b = TrainConfig().replace(**{"dii.tau": 5, "pixel.mode": "exact", "dcr.enabled": False,
                                 "dcr.cps_lambda": 2.0, "optim.lr": 0.01})
    assert a == b
    assert a.dii.tau == a.dii_tau == 5 and a.pixel_weights == "exact" and not a.dcr and bool(a.dii)
    assert a.optim.lr == a.lr == 0.01


@pytest.mark.parametrize("item, field, allowed", [
    ("lr_schedule=cosine", "optim.lr_schedule", "'poly' or 'constant'"),
    ("precision=bf16", "precision", "'auto' or 'fp32'"),
    ("optimizer=adam", "optim.optimizer", "'adamw' or 'sgd'"),
    ("pixel_weights=on", "pixel.mode", "'off' or 'exact'"),
    ("dii.scorer=full", "dii.scorer", "'last-layer' or 'jvp'"),
    ("device=gpu0", "device", "'cuda:N'"),
    ("steps=0", "steps", ">= 1"),
    ("dii.init=1.5", "dii.init", "<= 1"),
    ("pixel.teacher_decay=1", "pixel.teacher_decay", "< 1"),
])
def test_a_bad_value_names_the_field_and_the_allowed_values(item, field, allowed):
    with pytest.raises(ConfigError) as info:
        apply_overrides(TrainConfig(), [item])
    assert info.value.field == field and allowed in str(info.value)
    assert isinstance(info.value, ValueError)


def test_overrides_parse_json_else_text_and_refuse_unknown_keys():
    assert parse_overrides(["cps_lambda=2.5", "pixel.teacher=false", "model.encoder=resnet18", "dii.tau=null"]) == {
        "cps_lambda": 2.5, "pixel.teacher": False, "model.encoder": "resnet18", "dii.tau": None}
    cfg = apply_overrides(preset("cpu-quick"), ["model.input_size=64", "dii.lr=0.2", "steps=7"])
    assert cfg.model.input_size == 64 and cfg.dii.lr == 0.2 and cfg.steps == 7
    for bad in ("learning_speed=9", "dii.speed=1", "steps"):
        with pytest.raises(ConfigError):
            parse_overrides([bad])


def test_to_dict_round_trips_and_old_flat_files_still_load():
    cfg = TrainConfig(steps=9, dii=False, fixed_weights={"a": 0.3}, model=ModelConfig(input_size=64))
    data = json.loads(json.dumps(cfg.to_dict()))
    assert data["config_version"] == CONFIG_VERSION and TrainConfig.from_dict(data) == cfg
    flat = {"model": {"arch": "Unet", "encoder": "tu-efficientnet_lite0", "encoder_weights": "imagenet",
                      "in_channels": 3, "classes": 2, "aux_classes": 0, "input_size": 128},
            "steps": 20, "num_workers": 0, "dii_per_annotation": False, "dii_tau": 4, "pixel_weights": "exact",
            "box_pairwise_weight": 0.5}
    old = TrainConfig.from_dict(flat)
    assert old.dii.tau == 4 and old.pixel.mode == "exact" and old.loss.box_pairwise == 0.5
    for path in sorted((REPO / "docs" / "benchmarks").glob("*/settings.json")):
        TrainConfig.from_dict(json.loads(path.read_text())["base_config"])
    with pytest.raises(ConfigError, match="version 9"):
        TrainConfig.from_dict({"config_version": 9})


def test_model_classes_come_from_the_collection_and_a_disagreeing_value_is_refused():
    from _hybrid_data import make_collection

    from napari_hybridseg.core.training.state import model_config_for

    coll = make_collection(n_strong=1, n_weak=1)
    derived = model_config_for(ModelConfig(), coll)
    assert (derived.classes, derived.aux_classes) == (coll.num_classes + 1, 0)
    assert model_config_for(derived, coll) == derived
    with pytest.raises(ConfigError, match="model.classes"):
        model_config_for(ModelConfig(classes=derived.classes + 1), coll)
