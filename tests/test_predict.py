"""Prediction at the original size: resize, tiling, TTA, label values, batch writers."""

from __future__ import annotations

import json

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from _hybrid_data import make_collection

from napari_hybridseg.core.network.models import build_model, save_model
from napari_hybridseg.core.prediction.predict import Predictor, predict_collection, predict_folder
from napari_hybridseg.core.training.config import ModelConfig


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture
def predictor() -> Predictor:
    return Predictor(build_model(ModelConfig(classes=3, input_size=32), seed=0), 32, [1, 7], device="cpu")


@pytest.mark.parametrize("shape", [(45, 70, 3), (33, 20), (300, 90)])
def test_labels_and_probabilities_come_back_at_the_original_size(predictor, shape):
    image = (np.random.default_rng(0).random(shape) * 255).astype(np.uint8)
    labels, probs = predictor.predict(image)
    assert labels.shape == shape[:2] and labels.dtype == np.uint8
    assert probs.shape == (3, *shape[:2]) and probs.dtype == np.float32
    assert np.allclose(probs.sum(0), 1, atol=1e-5)
    assert set(np.unique(labels)) <= {0, 1, 7}  # label values of the classes, not channel indices


def test_labels_are_the_argmax_of_the_probabilities(predictor):
    labels, probs = predictor.predict(np.random.default_rng(1).random((40, 40)))
    assert np.array_equal(labels, np.array([0, 1, 7])[probs.argmax(0)])


def test_flip_tta_averages_the_image_and_its_two_flips(predictor):
    image = np.random.default_rng(2).random((32, 32, 3)).astype(np.float32)  # training size: no resize
    _, tta = predictor.predict(image, tta=True)
    _, plain = predictor.predict(image)
    _, lr = predictor.predict(image[:, ::-1].copy())
    _, ud = predictor.predict(image[::-1].copy())
    assert np.allclose(tta, (plain + lr[:, :, ::-1] + ud[:, ::-1]) / 3, atol=1e-5)
    assert not np.allclose(tta, plain)


def test_huge_images_are_predicted_in_tiles_at_the_training_scale(predictor, monkeypatch):
    predictor.train_scale = 0.25
    calls = []
    original = predictor._probs

    def spy(x, tta):
        calls.append(tuple(x.shape))
        return original(x, tta)

    monkeypatch.setattr(predictor, "_probs", spy)
    labels, probs = predictor.predict(np.random.default_rng(3).random((400, 520)))
    assert labels.shape == (400, 520) and probs.shape == (3, 400, 520)
    # at scale 0.25 the image is 100 x 130 training pixels: tiles of at most 512 px fit in 96 x 128
    assert all(c[-2:] == (96, 128) for c in calls) and sum(c[0] for c in calls) == 4
    predictor.tile_size, calls[:] = 32, []  # tiles of the training size, in batches
    assert np.array_equal(predictor.predict(np.random.default_rng(3).random((400, 520)))[0].shape, (400, 520))
    assert sum(c[0] for c in calls) > 4 and all(c[-2:] == (32, 32) for c in calls)
    assert np.allclose(probs.sum(0), 1, atol=1e-4)


def test_load_reads_classes_from_the_run_and_predicts_like_the_model(tmp_path):
    cfg = ModelConfig(classes=2, input_size=32)
    model = build_model(cfg, seed=4).eval()
    save_model(model, tmp_path / "model", cfg)
    (tmp_path / "run.json").write_text(json.dumps({"classes": [{"name": "polyp", "value": 255, "color": "#f00"}]}))
    loaded = Predictor.load(tmp_path, device="cpu")
    also = Predictor.load(tmp_path / "model", device="cpu")
    direct = Predictor(model, 32, [255], device="cpu")
    image = np.random.default_rng(5).random((50, 60, 3))
    a, pa = loaded.predict(image)
    b, pb = direct.predict(image)
    assert np.array_equal(a, b) and np.array_equal(pa, pb)
    assert np.array_equal(also.predict(image)[0], a)
    assert loaded.class_names == ["polyp"]


def test_load_says_what_to_pass_when_the_folder_has_no_model(tmp_path):
    with pytest.raises(ValueError, match="hybridseg train"):
        Predictor.load(tmp_path)


def test_batch_prediction_writes_png_masks_at_original_size(predictor, tmp_path):
    coll = make_collection(n_strong=1, n_weak=2, size=40)
    written = predict_collection(predictor, coll, tmp_path / "out")
    assert set(written) == {"s0", "w0", "w1"}
    assert iio.imread(written["w0"]).shape == (40, 40)
    folder = tmp_path / "imgs"
    folder.mkdir()
    iio.imwrite(folder / "a.png", (np.random.default_rng(6).random((37, 52, 3)) * 255).astype(np.uint8))
    (folder / "notes.txt").write_text("not an image")
    out = predict_folder(predictor, folder, tmp_path / "out2")
    assert list(out) == ["a.png"] and iio.imread(out["a.png"]).shape == (37, 52)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no images"):
        predict_folder(predictor, tmp_path / "empty", tmp_path / "x")


def test_predict_many_gives_what_predict_gives_in_batches_and_tiles_the_huge_ones(predictor):
    from napari_hybridseg.core.data.collection import Sample
    from napari_hybridseg.core.prediction import InputCache

    rng = np.random.default_rng(5)
    shapes = [(45, 70, 3), (33, 20), (40, 40, 3), (300, 90)]
    samples = {f"s{i}": Sample(f"s{i}", image=(rng.random(sh) * 255).astype(np.uint8)) for i, sh in enumerate(shapes)}
    predictor.train_scale = 0.5  # (300, 90) at half scale is 150 > 2 x 32: tiled
    predictor.batch_size = 2
    cache = predictor.cache = InputCache()
    tiled = []
    predictor.tile_progress = lambda done, total: tiled.append(total)
    many = predictor.predict_many(samples)
    assert list(many) == list(samples) and tiled  # the huge one went through the tiles
    for sid, s in samples.items():
        one, _ = predictor.predict(s.image)
        assert many[sid].shape == s.image.shape[:2] and many[sid].dtype == one.dtype
        assert np.array_equal(many[sid], one), sid  # fp32 both ways: the same labels
    assert len(cache._items) == len(samples)  # inputs resized once, for every predictor sharing the cache


def test_labels_from_logits_is_softmax_bilinear_resize_argmax_to_label_values():
    from napari_hybridseg.core.prediction import labels_from_logits

    logits = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    labels, probs = labels_from_logits(logits, (20, 12), np.array([0, 3, 300]))
    assert labels.shape == (20, 12) and labels.dtype == np.uint16 and probs.shape == (3, 20, 12)
    want = torch.nn.functional.interpolate(logits.softmax(1), size=(20, 12), mode="bilinear", align_corners=False)[0]
    assert np.array_equal(labels, np.array([0, 3, 300])[want.argmax(0).numpy()])
