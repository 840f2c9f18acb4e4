"""Real inputs that used to go wrong quietly: duplicate stems, cut-off images, unreadable files in a batch,
large images (tiles batched, with progress), and the CPU thread count under a competing job."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from napari_hybridseg.core.data.images import truncation
from napari_hybridseg.core.data.importers import import_dataset
from napari_hybridseg.core.network.device import ThreadTuner


def _save(path: Path, arr: np.ndarray, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, **kw)
    return path


def _rgb(h: int = 16, w: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _cut(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


# ------------------------------------------------------------------------------------------------
# duplicate stems, truncated images
# ------------------------------------------------------------------------------------------------
def test_duplicate_stems_do_not_pair_arbitrarily(tmp_path):
    root = tmp_path / "ds"
    m = np.zeros((16, 16), np.uint8)
    m[4:9, 4:9] = 255
    _save(root / "images" / "a.png", _rgb(seed=1))
    _save(root / "images" / "a.jpg", _rgb(seed=2))
    _save(root / "images" / "b.png", _rgb(seed=3))
    _save(root / "masks" / "a_mask.png", m)
    _save(root / "masks" / "b_mask.png", m)
    c = import_dataset(root, "folder")
    assert sorted(c.ids) == ["a_jpg", "a_png", "b"]
    assert c["a_jpg"].mask is None and c["a_png"].mask is None and c["b"].mask is not None
    notes = "\n".join(c.meta["import"]["notes"])
    assert "share the name stem 'a'" in notes and "rename one" in notes and "skipped" not in notes


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".bmp"])
def test_truncation_is_found_from_the_file_end(tmp_path, suffix):
    whole = _save(tmp_path / f"x{suffix}", _rgb(64, 64))
    assert truncation(whole) is None
    assert "truncated" in truncation(_cut(whole))
    (tmp_path / "empty.png").write_bytes(b"")
    assert "empty" in truncation(tmp_path / "empty.png")


def test_a_truncated_image_is_found_at_import_with_a_note(tmp_path):
    root = tmp_path / "ds"
    for name in ("a", "b"):
        _save(root / "images" / f"{name}.jpg", _rgb(64, 64), quality=90)
    _cut(root / "images" / "b.jpg")
    c = import_dataset(root, "images")
    assert c.ids == ["a"]
    assert any("b.jpg: truncated JPEG" in n and "replace the file" in n for n in c.meta["import"]["notes"])


def test_a_truncated_image_is_found_when_a_project_opens(tmp_path, capsys):
    from napari_hybridseg.cli import main
    from napari_hybridseg.core.data.collection import Collection, Sample
    from napari_hybridseg.core.data.store import load_project, save_project

    img = _save(tmp_path / "data" / "x.png", _rgb(64, 64))
    c = Collection()
    c.add(Sample("x", image_path=img, mask=np.ones((64, 64), np.uint8)))
    save_project(c, tmp_path / "p")
    _cut(img)
    loaded = load_project(tmp_path / "p")
    assert "truncated PNG" in loaded.meta["image_problems"]["x"]
    assert main(["train", str(tmp_path / "p"), "--out", str(tmp_path / "run"), "--steps", "1", "--size", "32",
                 "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("hybridseg: error: ") and str(img) in err and "replace the file" in err
    save_project(loaded, tmp_path / "p")
    assert "image_problems" not in (tmp_path / "p" / "project.json").read_text()  # runtime only


# ------------------------------------------------------------------------------------------------
# prediction: unreadable files skipped, tiles batched with progress
# ------------------------------------------------------------------------------------------------
def _predictor(**kw):
    from napari_hybridseg.core.network.models import build_model
    from napari_hybridseg.core.prediction.predict import Predictor
    from napari_hybridseg.core.training.config import ModelConfig

    torch.set_num_threads(1)
    model = build_model(ModelConfig(input_size=32, encoder_weights=None), seed=0)
    return Predictor(model, 32, [1], device="cpu", **kw)


def test_an_unreadable_file_in_a_predict_folder_is_skipped_with_a_message(tmp_path):
    from napari_hybridseg.core.prediction.predict import predict_folder

    folder = tmp_path / "imgs"
    _save(folder / "good.png", _rgb(40, 40))
    _cut(_save(folder / "cut.png", _rgb(40, 40)))
    (folder / "fake.jpg").write_bytes(b"this is not a jpeg")
    skipped = []
    written = predict_folder(_predictor(), folder, tmp_path / "out", on_skip=lambda p, e: skipped.append((p, e)))
    assert list(written) == ["good.png"] and (tmp_path / "out" / "good.png").is_file()
    assert sorted(p.name for p, _ in skipped) == ["cut.png", "fake.jpg"]
    assert all(str(p) in str(e) for p, e in skipped)  # each message names its file


def test_predict_command_skips_and_says_so(tmp_path, capsys):
    from napari_hybridseg.cli import main
    from napari_hybridseg.core.network.models import build_model, save_model
    from napari_hybridseg.core.training.config import ModelConfig

    run = tmp_path / "run"
    save_model(build_model(ModelConfig(input_size=32, encoder_weights=None), seed=0), run / "model",
               ModelConfig(input_size=32, encoder_weights=None))
    folder = tmp_path / "imgs"
    _save(folder / "good.png", _rgb(40, 40))
    (folder / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    assert main(["predict", str(run), str(folder), "--out", str(tmp_path / "out"), "--quiet", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert f"skipped {folder / 'bad.png'}" in captured.err and "skipped 1 unreadable" in captured.out


def test_large_images_are_tiled_in_batches_with_progress(monkeypatch):
    p = _predictor(train_scale=1.0, tile_size=32, tile_pixels=32 * 32 * 8)
    calls = []
    real = p._probs
    monkeypatch.setattr(p, "_probs", lambda x, tta: calls.append(x.shape[0]) or real(x, tta))
    progress = []
    p.tile_progress = lambda done, total: progress.append((done, total))
    labels, probs = p.predict(np.random.default_rng(0).random((200, 150)).astype(np.float32))
    assert labels.shape == (200, 150) and probs.shape == (2, 200, 150)
    total = progress[-1][1]
    assert progress[0] == (0, total) and progress[-1] == (total, total) and total == sum(calls)
    assert max(calls) == 8 and len(calls) == -(-total // 8)  # 8 tiles a forward, not one


def test_tiling_in_batches_gives_the_same_prediction_as_one_tile_at_a_time():
    img = np.random.default_rng(1).random((120, 100, 3)).astype(np.float32)
    one = _predictor(train_scale=1.0, tile_size=32, tile_pixels=32 * 32).predict(img)[1]
    many = _predictor(train_scale=1.0, tile_size=32, tile_pixels=32 * 32 * 64).predict(img)[1]
    assert np.allclose(one, many, atol=1e-4)


# ------------------------------------------------------------------------------------------------
# threads
# ------------------------------------------------------------------------------------------------
class _Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def _drive(tuner: ThreadTuner, cost, n: int, clock: _Clock) -> list[int]:
    used = []
    for _ in range(n):
        used.append(tuner.current)
        dt = cost(tuner.current)
        clock.t += dt
        tuner.record(dt)
    return used


def test_the_thread_tuner_keeps_all_cores_on_a_quiet_machine():
    clock, set_to = _Clock(), []
    tuner = ThreadTuner(4, clock=clock, set_threads=set_to.append)
    _drive(tuner, lambda n: 1.0 / n + 0.05, 20, clock)  # more threads, faster
    assert tuner.chosen == 4 and tuner.current == 4 and set_to[-1] == 4


def test_the_thread_tuner_drops_to_one_thread_when_a_competing_job_collapses_throughput():
    clock, set_to = _Clock(), []
    tuner = ThreadTuner(2, reprobe_s=1e9, clock=clock, set_threads=set_to.append)
    _drive(tuner, lambda n: 0.6 / n, 10, clock)  # quiet
    assert tuner.chosen == 2
    # another CPU job starts: two threads now wait for each other (46 s vs 4 s for 10 steps, as measured)
    used = _drive(tuner, lambda n: 4.6 if n == 2 else 0.4, 12, clock)
    assert tuner.chosen == 1 and used[-1] == 1 and set_to[-1] == 1  # noticed at once (1.8x slower), no timer
    # the job ends; the next timed re-probe goes back to two threads
    tuner.reprobe_s = 10.0
    tuner._next_probe = clock.t + 10.0
    _drive(tuner, lambda n: 0.6 / n, 40, clock)
    assert tuner.chosen == 2


def test_the_thread_count_is_left_alone_when_fixed(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert ThreadTuner.for_device(torch.device("cpu")) is None
    monkeypatch.delenv("OMP_NUM_THREADS")
    old = torch.get_num_threads()
    try:
        assert ThreadTuner.for_device(torch.device("cpu"), threads=1) is None and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(old)


def test_perf_predict_prints_seconds_per_megapixel(tmp_path, capsys):
    import json

    from napari_hybridseg.cli import main

    torch.set_num_threads(1)
    out = tmp_path / "p.json"
    assert main(["perf", "predict", "--sizes", "200,300", "--train-size", "32", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "200 x 200:" in printed and "s/MP" in printed
    rows = json.loads(out.read_text())["rows"]
    assert [r["side"] for r in rows] == [200, 300] and all(r["s_per_megapixel"] > 0 and r["tiles"] >= 1
                                                           for r in rows)
