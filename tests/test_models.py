"""Model factory, forward shapes, auxiliary head, save/load round trip, offline weights."""

from __future__ import annotations

import json
import time

import pytest
import torch

from napari_hybridseg.core.network.models import (
    build_model,
    check_encoder_weights,
    forward,
    last_layer,
    load_model,
    save_model,
)
from napari_hybridseg.core.training.config import ARCHITECTURES, ModelConfig


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.mark.parametrize("encoder, weights", [("tu-efficientnet_lite0", "imagenet"), ("resnet18", None)])
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_architecture_builds_and_predicts_k_channels(arch, encoder, weights):
    cfg = ModelConfig(arch=arch, encoder=encoder, encoder_weights=weights, classes=3, input_size=32)
    model = build_model(cfg).eval()
    with torch.no_grad():
        logits, aux = forward(model, torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 3, 32, 32)
    assert aux is None
    assert last_layer(model).out_channels == 3


def test_aux_head_predicts_one_logit_per_foreground_class():
    model = build_model(ModelConfig(classes=3, aux_classes=2, input_size=32)).eval()
    with torch.no_grad():
        logits, aux = forward(model, torch.randn(1, 3, 32, 32))
    assert aux.shape == (1, 2)


def test_the_default_encoder_is_efficientnet_lite0_from_imagenet():
    cfg = ModelConfig()
    assert (cfg.encoder, cfg.encoder_weights) == ("tu-efficientnet_lite0", "imagenet")
    from napari_hybridseg.core.training.config import preset

    for name in ("cpu-quick", "gpu"):
        m = preset(name).model
        assert (m.encoder, m.encoder_weights) == ("tu-efficientnet_lite0", "imagenet")


def test_model_config_round_trips_through_json():
    cfg = ModelConfig(arch="UnetPlusPlus", encoder="resnet34", classes=4, aux_classes=3, input_size=96)
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize("weights", ["imagenet", None])
def test_seed_decides_the_initialisation(weights):
    cfg = ModelConfig(input_size=32, encoder_weights=weights)
    a, b, c = build_model(cfg, seed=1), build_model(cfg, seed=1), build_model(cfg, seed=2)
    wa, wb, wc = (last_layer(m).weight for m in (a, b, c))
    assert torch.equal(wa, wb)
    assert not torch.equal(wa, wc)
    # DCR's two networks: with ImageNet weights the encoders start equal, the decoders differ
    ea, ec = a.encoder.state_dict(), c.encoder.state_dict()
    same = all(torch.equal(ea[k], ec[k]) for k in ea)
    assert same == (weights == "imagenet")
    da, dc = a.decoder.state_dict(), c.decoder.state_dict()
    assert not all(torch.equal(da[k], dc[k]) for k in da if da[k].is_floating_point())


def test_save_and_load_give_identical_predictions(tmp_path):
    cfg = ModelConfig(classes=2, aux_classes=1, input_size=32)
    model = build_model(cfg).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = forward(model, x)[0]
    save_model(model, tmp_path / "model", cfg)
    assert (tmp_path / "model" / "config.json").exists()
    assert (tmp_path / "model" / "model.safetensors").exists()
    loaded, cfg2 = load_model(tmp_path / "model")
    assert cfg2 == cfg
    with torch.no_grad():
        after = forward(loaded, x)[0]
    assert torch.equal(before, after)
    # a second save replaces the first atomically
    save_model(model, tmp_path / "model", cfg)
    assert not (tmp_path / "model.tmp").exists()


def test_saved_model_opens_with_segmentation_models_pytorch(tmp_path):
    import segmentation_models_pytorch as smp

    cfg = ModelConfig(input_size=32)
    save_model(build_model(cfg), tmp_path / "m", cfg)
    assert isinstance(smp.from_pretrained(str(tmp_path / "m")), torch.nn.Module)


def test_missing_imagenet_weights_fail_at_once_with_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    monkeypatch.setenv("HUGGINGFACE_HUB_CACHE", str(tmp_path / "hub"))
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="not available offline"):
        check_encoder_weights("resnet18", "imagenet")
    assert time.perf_counter() - t0 < 10


def test_unknown_architecture_and_encoder_are_named():
    with pytest.raises(ValueError, match="unknown architecture"):
        build_model(ModelConfig(arch="Nope"))
    with pytest.raises(ValueError, match="unknown encoder"):
        build_model(ModelConfig(encoder="nope-net"))


def test_load_model_rejects_a_folder_that_is_not_a_model(tmp_path):
    with pytest.raises(ValueError, match="hybridseg_model.json"):
        load_model(tmp_path)
