"""The napari plugin driven through its widgets, with a fast fake trainer.

The fake trainer speaks the core trainer's protocol (reports out, commands
in) so these tests check the widget's side of it quickly and exactly; the
journey with the real trainer is in ``test_widgets_journey.py``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from napari_hybridseg.core.data.collection import Box, Role
from napari_hybridseg.core.training.reports import (
    CheckpointReport,
    DoneReport,
    PreviewReport,
    RequestPreview,
    StartReport,
    StepReport,
    Stop,
    UpdateSamples,
    WeightsReport,
)
from napari_hybridseg.widgets._convert import box_to_rectangle, rectangle_to_box, weights_to_rgba
from napari_hybridseg.widgets.training import describe_error, merge_commands

pytestmark = pytest.mark.gui


class FakeTrainer:
    """A trainer generator with the core's signature; records the commands it receives."""

    def __init__(self, step_s: float = 0.01, fail_at: int | None = None):
        self.step_s = step_s
        self.fail_at = fail_at
        self.commands: list = []
        self.calls: list[dict] = []

    def __call__(self, collection, config, run_dir, *, init_from=None, preview_ids=()):
        self.calls.append({"config": config, "run_dir": Path(run_dir), "init_from": init_from,
                           "preview_ids": preview_ids, "collection": collection})
        run_dir = Path(run_dir)
        weak = [s for s in collection if s.role is Role.WEAK]
        cmd = yield StartReport("cpu (fake)", config.steps, 0, len(collection.strong), len(weak),
                                len(collection.unlabeled), str(run_dir))
        step, reason, queued = 0, "finished", []
        while True:
            if cmd is not None:
                self.commands.append(cmd)
            if isinstance(cmd, Stop):
                reason = "stopped"
                break
            if isinstance(cmd, UpdateSamples):
                for s in cmd.samples:
                    collection.samples[s.id] = s
            if isinstance(cmd, RequestPreview):
                labels = {i: (collection[i].load_image() > 128).astype(np.uint8) for i in cmd.sample_ids}
                pw = {i: (np.full(lbl.shape, 0.2, np.float32), np.ones(lbl.shape, np.float32))
                      for i, lbl in labels.items()}
                queued.append(PreviewReport(step, labels, {i: v.astype(np.float32) for i, v in labels.items()}, pw))
            if queued:
                cmd = yield queued.pop(0)
                continue
            if step >= config.steps:
                break
            step += 1
            if self.fail_at == step:
                import torch

                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            time.sleep(self.step_s)
            if step % 2 == 0:
                # corrupted weak labels sink, clean ones rise: what DII should do
                queued.append(WeightsReport(step, {
                    s.id: max(0.0, 0.5 - 0.05 * step) if s.corrupted else min(1.0, 0.5 + 0.05 * step)
                    for s in collection if s.role is Role.WEAK}))
            cmd = yield StepReport(step, config.steps, {"total": 1.0 / step, "strong": 0.5 / step}, 1e-3,
                                   self.step_s, self.step_s * (config.steps - step), "cpu (fake)")
        (run_dir / "model").mkdir(parents=True, exist_ok=True)
        (run_dir / "model" / "config.json").write_text("{}")
        yield CheckpointReport(step, str(run_dir / "model"))
        yield DoneReport(step, reason, str(run_dir / "model"), 0.1)


class ThresholdPredictor:
    """Stands in for core.predict.Predictor: bright pixels are foreground."""

    def predict(self, image):
        labels = (np.asarray(image) > 128).astype(np.uint8)
        return labels, labels.astype(np.float32)


@pytest.fixture
def widget(make_napari_viewer, tiny_collection, tmp_path):
    from napari_hybridseg.core.data.store import save_project
    from napari_hybridseg.widgets import HybridSegWidget

    viewer = make_napari_viewer()
    fake = FakeTrainer()
    w = HybridSegWidget(viewer, train_fn=fake)
    viewer.window.add_dock_widget(w, name="HybridSeg")
    save_project(tiny_collection, tmp_path / "proj")
    w.open_project(tmp_path / "proj")
    w.train_panel.steps.value = 6
    w.train_panel.extra = {"preview_every": 2}
    w.fake = fake
    w._load_predictor = lambda run_dir: ThresholdPredictor()
    yield w
    w.runner.stop()
    w.runner.wait(10)


# -- pure conversions ------------------------------------------------------------
def test_box_round_trips_through_a_napari_rectangle():
    box = Box(3.0, 5.0, 11.0, 9.0, label=2, id="b1")
    corners = box_to_rectangle(box)
    # napari data (row, col) of pixel centres: the box's first pixel (row 5, col 3) sits at the corner + 0.5
    assert corners.min(axis=0).tolist() == [4.5, 2.5]
    back = rectangle_to_box(corners, 2, "b1")
    assert back == box


def test_weights_map_to_magenta_low_and_teal_high():
    rgba = weights_to_rgba([0.0, 1.0, None])
    assert rgba[0, 0] > rgba[0, 1] and rgba[0, 2] > rgba[0, 1]  # magenta at 0
    assert rgba[1, 1] > rgba[1, 0] and rgba[1, 2] > rgba[1, 0]  # teal at 1
    assert rgba[2].tolist() != rgba[0].tolist()  # unweighted has its own colour


def test_merge_commands_keeps_every_update_and_stop_wins():
    from napari_hybridseg.core.data.collection import Sample

    a1, a2, b = Sample("a", tags=["x"]), Sample("a", tags=["y"]), Sample("b")
    now, rest = merge_commands([UpdateSamples((a1,)), RequestPreview(("a",)), UpdateSamples((a2, b)),
                                RequestPreview(("b",))])
    assert isinstance(now, UpdateSamples)
    assert [s.tags for s in now.samples] == [["y"], []]  # newest copy of "a" wins, "b" kept
    assert rest == [RequestPreview(("a", "b"))]
    assert merge_commands([UpdateSamples((a1,)), Stop()]) == (Stop(), [])


def test_training_errors_say_what_to_do():
    import torch

    from napari_hybridseg.core.errors import NoStrongMaskError

    assert "input size" in describe_error(torch.OutOfMemoryError("CUDA out of memory"))
    assert "full mask" in describe_error(NoStrongMaskError("no image has a strong mask"))


# -- session and layers ------------------------------------------------------------
def test_opening_a_project_shows_the_first_sample_in_named_layers(widget):
    s = widget.session
    names = [lyr.name for lyr in widget.viewer.layers]
    for key in ("hybridseg image", "hybridseg mask", "hybridseg boxes", "hybridseg points"):
        assert key in names
    assert s.current_id == "img0"
    assert s.layer("mask").data.sum() == s.collection["img0"].mask.sum() > 0
    table = widget.data_panel.table
    assert table.rowCount() == 6
    # the table starts in navigation order (what Next/Previous walk through), not sorted by a column
    assert [table.item(r, 0).text() for r in range(6)] == s.collection.ids


def test_navigation_updates_layers_in_place_and_shows_boxes(widget):
    s = widget.session
    layers_before = {k: id(s.layer(k)) for k in ("image", "mask", "boxes", "points")}
    s.show("img2")
    assert {k: id(s.layer(k)) for k in layers_before} == layers_before
    boxes = s.layer("boxes")
    assert len(boxes.data) == 1
    assert rectangle_to_box(boxes.data[0], 1) .as_tuple() == s.collection["img2"].boxes[0].as_tuple()
    assert not s.layer("mask").data.any()  # a weak sample shows an empty mask layer
    s.step(1)
    assert s.current_id == "img3"


def test_drawn_box_and_point_are_saved_on_navigation_with_the_panel_class(widget, tmp_path):
    from napari_hybridseg.core.data.store import load_project

    s = widget.session
    s.collection.add_class("tumour")
    widget.data_panel.refresh()
    widget.data_panel.class_combo.setCurrentIndex(widget.data_panel.class_combo.findData(2))
    s.show("img5")  # unlabeled
    s.layer("boxes").add_rectangles([np.array([[4.5, 2.5], [4.5, 10.5], [8.5, 10.5], [8.5, 2.5]])])
    widget.data_panel.background_check.setChecked(True)
    s.layer("points").add([[20.0, 30.0]])
    assert "img5" in s.dirty
    s.step(-1)  # save-on-navigate
    saved = load_project(tmp_path / "proj")["img5"]
    assert [b.as_tuple() for b in saved.boxes] == [(3.0, 5.0, 11.0, 9.0)]
    assert saved.boxes[0].label == 2 and saved.boxes[0].id
    assert (saved.points[0].x, saved.points[0].y, saved.points[0].positive, saved.points[0].label) == \
        (30.5, 20.5, False, 2)
    assert saved.role is Role.WEAK


def test_layer_scale_and_translate_are_respected(widget):
    s = widget.session
    s.show("img5")
    pts = s.layer("points")
    pts.scale = (2.0, 2.0)  # e.g. the user set a pixel size on the annotation layer only
    pts.add([[10.0, 20.0]])  # data coords of the scaled layer = world (20, 40) = image pixel (20, 40)
    sample = s.sync_current()
    assert (sample.points[0].y, sample.points[0].x) == (20.5, 40.5)


def test_tags_and_mask_painting_change_the_role_and_survive_reload(widget, tmp_path):
    from napari_hybridseg.core.data.store import load_project

    s = widget.session
    s.show("img5")
    item = widget.data_panel.tag_list.item(0)
    from qtpy.QtCore import Qt

    item.setCheckState(Qt.CheckState.Checked)
    assert s.current.tags == ["normal"] and s.current.role is Role.WEAK
    mask = s.layer("mask")
    data = mask.data.copy()
    data[10:20, 10:20] = 1
    mask.data = data
    widget.prepare_close(ask=False)  # what closing napari does
    saved = load_project(tmp_path / "proj")["img5"]
    assert saved.tags == ["normal"] and saved.role is Role.STRONG and saved.mask.sum() == 100


# -- training ------------------------------------------------------------------------
def test_train_turns_into_stop_and_stop_stops_within_a_step(widget, qtbot):
    widget.fake.step_s = 0.05
    widget.train_panel.steps.value = 200
    widget.toggle_training()
    assert widget.train_panel.train_btn.text() == "Stop"
    qtbot.waitUntil(lambda: widget.last_step is not None, timeout=5000)
    widget.toggle_training()  # Stop
    assert widget.runner.wait(5)
    done = widget.runner.last_done
    assert done.reason == "stopped" and done.step < 200
    assert widget.train_panel.train_btn.text() == "Train"
    assert widget.session.run_dir == widget.fake.calls[0]["run_dir"]


def test_training_shows_previews_weights_and_a_sorted_review_table(widget, qtbot):
    widget.fake.step_s = 0.05
    widget.session.show("img2")
    widget.toggle_training()
    assert widget.runner.wait(10)
    s = widget.session
    pred = s.layer("prediction")
    assert pred is not None and pred.data.shape == (48, 48) and pred.data.any()
    assert s.layer("pixel_weights") is not None and widget.first_overlay_s is not None
    table_weights = widget.review_panel.weights_in_order()
    assert table_weights == sorted(table_weights)
    assert widget.review_panel.ids_in_order()[0] == "img3"  # the corrupted box sinks to the top
    assert s.collection.sample_weights["img3"].history  # history recorded for the plot
    edge = s.layer("boxes").edge_color[0]
    assert np.allclose(edge, weights_to_rgba([s.collection.weight_of("img2")])[0])
    widget.review_panel.select("img3")
    assert widget.review_panel.history.series["weight"][-1][1] == pytest.approx(
        s.collection.weight_of("img3"))


def test_edits_during_training_reach_the_trainer(widget, qtbot):
    widget.fake.step_s = 0.05
    widget.train_panel.steps.value = 100
    widget.session.show("img5")
    widget.toggle_training()
    widget.session.layer("boxes").add_rectangles([np.array([[1.5, 1.5], [1.5, 9.5], [9.5, 9.5], [9.5, 1.5]])])
    qtbot.waitUntil(lambda: any(isinstance(c, UpdateSamples) for c in widget.fake.commands), timeout=5000)
    widget.stop_training()
    assert widget.runner.wait(5)
    update = next(c for c in widget.fake.commands if isinstance(c, UpdateSamples))
    assert [s.id for s in update.samples] == ["img5"] and len(update.samples[0].boxes) == 1


def test_a_failing_trainer_notifies_and_leaves_the_panel_usable(widget, qtbot, monkeypatch):
    messages = []
    monkeypatch.setattr("napari_hybridseg.widgets._messages.notify", lambda kind, msg: messages.append((kind, msg)))
    widget.runner._train_fn = FakeTrainer(fail_at=2)
    widget.toggle_training()
    assert widget.runner.wait(10)
    assert messages and messages[-1][0] == "error" and "batch size" in messages[-1][1]
    assert widget.train_panel.train_btn.text() == "Train" and widget.train_panel.form.enabled


def test_train_without_any_mask_explains_instead_of_starting(widget, monkeypatch):
    messages = []
    monkeypatch.setattr("napari_hybridseg.widgets._messages.notify", lambda kind, msg: messages.append((kind, msg)))
    for s in widget.session.collection:
        s.mask = None
    assert widget.start_training() is False
    assert "full mask" in messages[0][1] and not widget.runner.running


def test_accepting_the_prediction_fills_the_mask_layer(widget):
    s = widget.session
    s.show("img2")
    s.set_prediction("img2", np.eye(48, dtype=np.uint8))
    widget.review_panel.accept_btn.click()
    assert np.array_equal(s.layer("mask").data, np.eye(48)) and s.current.role is Role.STRONG


def test_weights_csv_lists_every_sample(widget, tmp_path):
    widget.session.record_weights(5, {"img3": 0.1, "img2": 0.9})
    path = widget.export_weights_csv(tmp_path / "w.csv")
    lines = path.read_text().splitlines()
    assert lines[0].startswith("sample_id,role,weight")
    row = next(line for line in lines if line.startswith("img3,"))
    assert ",0.100000," in row and row.split(",")[6] == "1"
    assert len(lines) == 7


def test_every_panel_renders_after_a_run(widget, qtbot, tmp_path):
    """Each tab renders after a (fake) run. The pictures in docs/ come from a real run instead:
    ``hybridseg demo --train-steps 50 --panel-screenshots docs/images --quit`` (docs/plugin.md)."""
    widget.fake.step_s = 0.05
    widget.session.show("img2")
    widget.toggle_training()
    assert widget.runner.wait(10)
    widget.resize(420, 900)
    for i, name in enumerate(("data", "train", "review")):
        widget.tabs.setCurrentIndex(i)
        qtbot.wait(50)
        pix = widget.tabs.widget(i).widget().grab()
        assert pix.width() > 100 and pix.height() > 300 and pix.save(str(tmp_path / f"panel-{name}.png"))


def test_export_predictions_writes_one_png_per_image(widget, qtbot, tmp_path):
    import imageio.v3 as iio

    widget.session.run_dir = tmp_path / "run"  # the fixture's predictor stands in for the model
    worker = widget.export_predictions(tmp_path / "pred")
    with qtbot.waitSignal(worker.finished, timeout=20_000):
        pass
    files = sorted(p.name for p in (tmp_path / "pred").glob("*.png"))
    assert files == [f"img{i}.png" for i in range(6)]
    labels = iio.imread(tmp_path / "pred" / "img0.png")
    assert labels.shape == (48, 48) and set(np.unique(labels)) <= {0, 1} and labels.any()


def test_review_panel_exports_a_bioimageio_package(widget, qtbot, tmp_path):
    pytest.importorskip("bioimageio.core")
    from napari_hybridseg.cli import main
    from napari_hybridseg.core.prediction.bioimageio_export import check_package

    run = tmp_path / "real-run"  # a real (tiny) run: the export traces its network
    assert main(["train", str(tmp_path / "proj"), "--out", str(run), "--steps", "1", "--size", "32",
                 "--batch-size", "2", "--no-dcr", "--quiet", "--no-save-weights"]) == 0
    widget.session.run_dir = run
    assert widget.review_panel.export_bioimageio_btn.text().startswith("Export for bioimage.io")
    worker = widget.export_bioimageio(tmp_path / "model.zip")
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        pass
    assert check_package(tmp_path / "model.zip", reproduce=False) == ""


def test_no_widget_module_imports_torch():
    import subprocess
    import sys

    code = ("import sys, pkgutil, importlib, napari_hybridseg.widgets as w\n"
            "[importlib.import_module(m.name) for m in pkgutil.iter_modules(w.__path__, 'napari_hybridseg.widgets.')]\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_an_unreadable_image_warns_and_keeps_the_current_one(widget, tmp_path, monkeypatch):
    from napari.utils import notifications

    shown = []
    monkeypatch.setattr(notifications, "show_warning", lambda msg: shown.append(msg))
    s = widget.session
    broken = s.collection["img4"]
    broken.image, broken.image_path = None, tmp_path / "missing.png"
    s.show("img4")
    assert s.current_id == "img0" and shown and "missing.png" in shown[0]


def test_the_manifest_docks_the_widget_from_the_plugins_menu(make_napari_viewer, tiny_collection):
    from napari_hybridseg.widgets import HybridSegWidget

    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-hybridseg", "HybridSeg")
    assert isinstance(widget, HybridSegWidget)
    assert widget.watches_close  # saves on close, despite napari's proxy of the viewer
    widget.open_collection(tiny_collection)  # through napari's plugin proxy of the viewer
    assert "hybridseg image" in [layer.name for layer in viewer.layers]
