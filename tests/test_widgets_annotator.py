"""The annotator's journey (issue 17), driven as a user drives napari: mouse clicks and strokes on the
layers through napari's own mouse callbacks, the panel's buttons, Ctrl+Z, re-docking the plugin.

Each test names the finding it guards; every one of them failed before the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from napari_hybridseg.core.data.collection import Role, Sample

pytestmark = pytest.mark.gui


@dataclass
class _MouseEvent:
    """What napari's vispy canvas hands a layer's mouse callbacks (napari's own tests use the same)."""

    type: str
    is_dragging: bool = False
    modifiers: list = field(default_factory=list)
    position: tuple = (0, 0)  # world coordinates
    pos: np.ndarray = field(default_factory=lambda: np.zeros(2))
    view_direction: list | None = None
    up_direction: list | None = None
    dims_displayed: list = field(default_factory=lambda: [0, 1])
    button: int = 1
    handled: bool = False


def _event(**kwargs):
    from napari.utils._proxies import ReadOnlyWrapper

    return ReadOnlyWrapper(_MouseEvent(**kwargs), exceptions=("handled",))


def click(viewer, layer, position):
    """A left click at world ``position`` on ``layer`` in its current mode (the active layer)."""
    from napari.utils.interactions import mouse_press_callbacks, mouse_release_callbacks

    viewer.layers.selection.active = layer
    mouse_press_callbacks(layer, _event(type="mouse_press", position=tuple(position)))
    mouse_release_callbacks(layer, _event(type="mouse_release", position=tuple(position)))


def stroke(viewer, layer, positions):
    """A brush stroke (press, drag, release) through world ``positions`` on a Labels layer in paint mode."""
    from napari.utils.interactions import mouse_move_callbacks, mouse_press_callbacks, mouse_release_callbacks

    viewer.layers.selection.active = layer
    layer.mode = "paint"
    mouse_press_callbacks(layer, _event(type="mouse_press", position=tuple(positions[0])))
    for pos in positions[1:]:
        mouse_move_callbacks(layer, _event(type="mouse_move", is_dragging=True, position=tuple(pos)))
    mouse_release_callbacks(layer, _event(type="mouse_release", position=tuple(positions[-1])))


@pytest.fixture
def project(tiny_collection, tmp_path):
    from napari_hybridseg.core.data.store import save_project

    save_project(tiny_collection, tmp_path / "proj")
    return tmp_path / "proj"


@pytest.fixture
def dock(make_napari_viewer, project, monkeypatch):
    """The plugin docked through its manifest on a saved 6-image project, as a user adds it."""
    monkeypatch.setenv("HYBRIDSEG_NO_WARMUP", "1")
    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget("napari-hybridseg", "HybridSeg")
    widget.open_project(project)
    return widget, viewer, project


def _reload(project):
    from napari_hybridseg.core.data.store import load_project

    return load_project(project)


# -- finding 1: a point click, then Next ------------------------------------------------------------
def test_point_click_then_next_navigates_and_the_next_click_is_saved_as_drawn(dock, qtbot):
    w, viewer, project = dock
    s = w.session
    s.show("img5")  # no points
    pts = s.layer("points")
    pts.mode = "add"
    click(viewer, pts, (20.0, 30.0))
    assert len(pts.data) == 1 and pts.selected_data == {0}  # napari selects the new point
    w.data_panel.next_btn.click()  # img0 (wraps), no points: used to raise IndexError in current_size
    assert s.current_id == "img0"
    assert w.data_panel.position_label.text().endswith("img0")
    assert np.array_equal(s.layer("image").data, s.collection["img0"].load_image())
    pts.mode = "add"
    click(viewer, pts, (10.0, 12.0))  # a foreground click of class 1 on img0
    w.data_panel.next_btn.click()
    saved = _reload(project)
    assert [(p.x, p.y) for p in saved["img5"].points] == [(30.5, 20.5)]
    (p,) = saved["img0"].points
    assert (p.x, p.y, p.label, p.positive) == (12.5, 10.5, 1, True)


# -- finding 2: Ctrl+Z after navigation -----------------------------------------------------------
def test_undo_after_navigation_leaves_the_other_images_mask_unchanged(dock):
    w, viewer, project = dock
    s = w.session
    before = np.array(s.collection["img1"].mask)  # a strong mask
    rr, cc = np.nonzero(before)
    cy, cx = float(rr.mean()), float(cc.mean())
    s.show("img5")
    mask = s.layer("mask")
    # a stroke on img5 where img1's object lies: undoing it replays "these pixels were 0"
    stroke(viewer, mask, [(cy - 3, cx - 3), (cy - 3, cx + 3), (cy + 3, cx + 3)])
    assert mask.data.any()
    s.show("img1")
    assert np.array_equal(mask.data, before)
    mask.undo()  # what Ctrl+Z does on the Labels layer
    assert np.array_equal(mask.data, before)
    s.step(1)  # the move saves img1: its mask must be what it was
    assert np.array_equal(_reload(project)["img1"].mask, before)


# -- finding 3 and deliverable 3: durable edits ----------------------------------------------------
def test_new_class_and_tag_meaning_are_saved_at_once(dock):
    from napari_hybridseg.core.data.collection import TagImplies

    w, viewer, project = dock
    panel = w.data_panel
    panel.new_class_edit.setText("polyp")
    panel.add_class_btn.click()
    panel.new_tag_edit.setText("lesion present")
    assert not panel.add_tag_btn.isEnabled()  # its meaning is chosen, not defaulted to "nothing"
    panel.tag_implies.setCurrentIndex(panel.tag_implies.findData(TagImplies.PRESENT.value))
    panel.add_tag_btn.click()
    on_disk = _reload(project)  # no Save, no Train, no close: a crash now keeps both
    assert [c.name for c in on_disk.classes] == ["lesion", "polyp"]
    assert on_disk.tag_def("lesion present").implies is TagImplies.PRESENT
    assert w.session.current_class == 2 and panel.class_combo.currentData() == 2


def test_edits_of_the_image_on_screen_are_saved_once_they_settle(dock, qtbot):
    w, viewer, project = dock
    s = w.session
    s.show("img5")
    boxes = s.layer("boxes")
    boxes.add_rectangles([np.array([[4.5, 2.5], [4.5, 10.5], [8.5, 10.5], [8.5, 2.5]])])
    stroke(viewer, s.layer("mask"), [(30.0, 30.0), (30.0, 36.0)])
    assert not _reload(project)["img5"].boxes  # not yet: the edit has not settled
    qtbot.waitUntil(lambda: w.autosaves >= 1, timeout=5000)  # no navigation, no Save
    saved = _reload(project)["img5"]
    assert [b.as_tuple() for b in saved.boxes] == [(3.0, 5.0, 11.0, 9.0)]
    assert saved.role is Role.STRONG and saved.mask.any()


# -- finding 4: images already open in napari; re-docking ---------------------------------------------
def test_opening_a_folder_over_open_images_puts_the_named_image_on_top(make_napari_viewer, tmp_path, monkeypatch):
    import imageio.v3 as iio

    monkeypatch.setenv("HYBRIDSEG_NO_WARMUP", "1")
    folder = tmp_path / "frames"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        iio.imwrite(folder / f"f{i}.png", rng.integers(0, 255, (40, 50, 3), dtype=np.uint8))
    viewer = make_napari_viewer()
    for i in range(3):
        viewer.add_image(iio.imread(folder / f"f{i}.png"), name=f"f{i}", rgb=True)  # what viewer.open makes
    _dock, w = viewer.window.add_plugin_dock_widget("napari-hybridseg", "HybridSeg")
    w.data_panel.open_images(folder)  # the Data tab's Images... with this folder chosen
    s = w.session
    top_image = [lyr for lyr in viewer.layers if lyr.__class__.__name__ == "Image" and lyr.visible][-1]
    assert top_image is s.layer("image")
    assert np.array_equal(top_image.data, s.current.load_image())
    assert w.data_panel.position_label.text().endswith(s.current_id)
    assert [lyr.name for lyr in viewer.layers][:3] == ["f0", "f1", "f2"]  # the user's stay, visible
    assert all(viewer.layers[f"f{i}"].visible for i in range(3))
    # every annotation layer of ours sits above every layer of the user's
    ours = [viewer.layers.index(s.layer(k)) for k in ("image", "mask", "boxes", "points")]
    assert min(ours) > 2


def test_re_docking_reuses_the_layers_instead_of_duplicating_them(dock, qtbot):
    w, viewer, project = dock
    viewer.add_image(np.zeros((48, 48), np.uint8), name="my own image")
    names_before = sorted(lyr.name for lyr in viewer.layers)
    viewer.window.remove_dock_widget(viewer.window.dock_widgets["HybridSeg (napari-hybridseg)"].parent())
    _dock, w2 = viewer.window.add_plugin_dock_widget("napari-hybridseg", "HybridSeg")
    assert w2 is not w
    w2.open_project(project)
    w2.session.show("img2")
    assert sorted(lyr.name for lyr in viewer.layers) == names_before  # no "hybridseg image [1]"
    image = w2.session.layer("image")
    top_image = [lyr for lyr in viewer.layers if lyr.__class__.__name__ == "Image"][-1]
    assert top_image is image and np.array_equal(image.data, w2.session.collection["img2"].load_image())
    # the taken-over layers are live: an edit on them is recorded and saved
    w2.session.layer("boxes").add_rectangles([np.array([[1.5, 1.5], [1.5, 9.5], [9.5, 9.5], [9.5, 1.5]])])
    w2.session.step(1)
    assert len(_reload(project)["img2"].boxes) == 2


# -- finding 5: re-frame the view for a larger image ---------------------------------------------------
def test_the_view_is_reframed_when_the_next_image_is_larger(make_napari_viewer, tmp_path, monkeypatch):
    from napari_hybridseg.core.data.collection import Collection
    from napari_hybridseg.widgets import HybridSegWidget

    monkeypatch.setenv("HYBRIDSEG_NO_WARMUP", "1")
    viewer = make_napari_viewer(show=True)
    w = HybridSegWidget(viewer)
    viewer.window.add_dock_widget(w, name="HybridSeg")
    coll = Collection()
    coll.add(Sample("small", image=np.zeros((240, 320), np.uint8)))
    coll.add(Sample("large", image=np.zeros((360, 480), np.uint8)))
    w.open_collection(coll)
    w.session.show("large")
    center = np.asarray(viewer.camera.center)[-2:]
    assert np.allclose(center, [179.5, 239.5], atol=1.0)  # the centre of the 480 x 360 image


# -- deliverable 2: work from what is in the viewer --------------------------------------------------
def test_the_selected_layers_become_a_project_edited_in_place(make_napari_viewer, tmp_path, monkeypatch):
    monkeypatch.setenv("HYBRIDSEG_NO_WARMUP", "1")
    monkeypatch.setenv("HYBRIDSEG_PROJECTS_DIR", str(tmp_path / "projects"))
    viewer = make_napari_viewer()
    rng = np.random.default_rng(1)
    image = viewer.add_image(rng.integers(0, 255, (40, 60), dtype=np.uint8), name="scan 1")
    labels = np.zeros((40, 60), np.uint8)
    labels[5:15, 5:20] = 1
    my_mask = viewer.add_labels(labels, name="my mask")
    my_points = viewer.add_points([[30.0, 40.0]], name="my clicks")
    viewer.add_image(np.zeros((40, 60), np.uint8), name="not selected")
    _dock, w = viewer.window.add_plugin_dock_widget("napari-hybridseg", "HybridSeg")
    n_layers = len(viewer.layers)
    viewer.layers.selection = {image, my_mask, my_points}
    project = w.use_selected_layers()
    s = w.session
    assert project is not None and project.parent == tmp_path / "projects"
    assert s.current_id == "scan_1" and s.current.role is Role.STRONG and len(s.current.points) == 1
    # the user's layers are the ones shown and edited: no copy of the image, nothing hidden
    assert s.layer("image") is image and s.layer("mask") is my_mask and s.layer("points") is my_points
    assert "hybridseg image" not in [lyr.name for lyr in viewer.layers]
    assert all(lyr.visible for lyr in viewer.layers)
    assert len(viewer.layers) == n_layers + 2  # our boxes layer and the (empty) prediction layer
    # an edit in the user's own Points layer is saved to the project
    my_points.add([[10.0, 50.0]])
    assert w.autosave()
    saved = _reload(project)["scan_1"]
    assert sorted((p.x, p.y) for p in saved.points) == [(40.5, 30.5), (50.5, 10.5)]
    assert saved.mask.sum() == labels.sum()


def test_using_layers_without_an_image_selected_explains(dock, monkeypatch):
    w, viewer, _project = dock
    messages = []
    monkeypatch.setattr("napari_hybridseg.widgets._messages.notify", lambda kind, msg: messages.append(msg))
    viewer.layers.selection = {w.session.layer("boxes")}
    assert w.use_selected_layers() is None and "Image layer" in messages[-1]


# -- deliverable 4: guidance ------------------------------------------------------------------------
def test_the_suggestion_goes_to_the_least_trusted_weak_image_then_the_least_sure_unlabeled(dock, qtbot):
    w, viewer, project = dock
    s = w.session
    panel = w.data_panel
    assert "Page Down" in panel.keys_label.text() and "S" in panel.keys_label.text()
    s.record_weights(4, {"img2": 0.9, "img3": 0.05, "img4": 0.7})
    w._uncertainty.update({"img5": 0.4})
    assert w.suggest()[0] == "img3"  # 1 - 0.05 beats the unlabeled image's 0.4
    panel.suggest_btn.click()
    assert s.current_id == "img3" and "img5" in panel.suggest_label.text()
    w._keys["s"](viewer)  # the S key: the next suggestion (img3 is on screen now)
    assert s.current_id == "img5"
    w._keys["n"](viewer)
    assert s.current_id == "img0"
    w._keys["p"](viewer)
    assert s.current_id == "img5"


def test_keys_are_bound_in_the_viewer(dock):
    w, viewer, _project = dock
    keymap = {str(k) for k in viewer.keymap}
    for key in ("PageDown", "PageUp", "N", "P", "S"):
        assert any(key.lower() == k.lower() for k in keymap), (key, keymap)


def test_uncertainty_of_a_prediction():
    from napari_hybridseg.widgets.dock import uncertainty

    sure = np.zeros((2, 4, 4), np.float32)
    sure[0] = 1.0
    unsure = np.full((2, 4, 4), 0.5, np.float32)
    assert uncertainty(sure) == 0.0 and uncertainty(unsure) == pytest.approx(1.0)


# -- finding 6: colours that mean one thing -----------------------------------------------------------
def test_weight_colours_are_not_class_or_overlay_colours_and_classes_can_be_edited(dock, monkeypatch):
    from qtpy.QtGui import QColor

    from napari_hybridseg.widgets._convert import UNWEIGHTED_RGBA, hex_to_rgba, weights_to_rgba

    w, viewer, project = dock
    s = w.session
    panel = w.data_panel
    for name in ("b", "c", "d", "e", "f", "g"):
        panel.new_class_edit.setText(name)
        panel.add_class_btn.click()
    class_rgb = np.array([hex_to_rgba(c.color)[:3] for c in s.collection.classes])
    scale = weights_to_rgba(np.linspace(0, 1, 21))[:, :3]
    dist = np.linalg.norm(scale[:, None, :] - class_rgb[None, :, :], axis=-1)
    assert dist.min() > 0.2, "a weight colour is close to a class colour"
    assert np.linalg.norm(scale - np.asarray(UNWEIGHTED_RGBA[:3]), axis=1).min() > 0.2
    assert "lesion" in panel.legend.text() and "learned weight" in panel.legend.text()
    # recolour, rename, delete (an unused class only)
    panel.class_combo.setCurrentIndex(panel.class_combo.findData(1))
    monkeypatch.setattr("qtpy.QtWidgets.QColorDialog.getColor", lambda *a, **k: QColor("#123456"))
    panel.color_class_btn.click()
    assert s.collection.class_by_value(1).color == "#123456"
    assert np.allclose(s.layer("mask").colormap.map(1)[:3], hex_to_rgba("#123456")[:3], atol=0.01)
    monkeypatch.setattr("qtpy.QtWidgets.QInputDialog.getText", lambda *a, **k: ("polyp", True))
    panel.rename_class_btn.click()
    messages = []
    monkeypatch.setattr("napari_hybridseg.widgets._messages.notify", lambda kind, msg: messages.append(msg))
    panel.delete_class_btn.click()  # class 1 is in img0's and img1's masks
    assert "polyp" in [c.name for c in s.collection.classes] and "2 masks" in messages[-1]
    panel.class_combo.setCurrentIndex(panel.class_combo.findData(7))
    panel.delete_class_btn.click()
    on_disk = _reload(project)
    assert [c.name for c in on_disk.classes][:2] == ["polyp", "b"] and 7 not in [c.value for c in on_disk.classes]
    assert on_disk.class_by_value(1).color == "#123456"


# -- finding 7: status texts follow what happened --------------------------------------------------------
def test_status_texts_follow_the_annotations_and_the_last_model(dock, qtbot, tmp_path):
    from napari_hybridseg.widgets import HybridSegWidget

    w, viewer, project = dock
    s = w.session
    panel = w.data_panel
    assert "2 strong, 3 weak, 1 unlabeled" in panel.project_label.text()
    s.show("img5")
    s.layer("boxes").add_rectangles([np.array([[1.5, 1.5], [1.5, 9.5], [9.5, 9.5], [9.5, 1.5]])])
    assert "2 strong, 4 weak, 0 unlabeled" in panel.project_label.text()
    # Prediction -> mask: the Review table no longer lists the image as weak
    s.show("img2")
    s.set_prediction("img2", np.eye(48, dtype=np.uint8))
    w.review_panel.accept_btn.click()
    qtbot.waitUntil(lambda: "img2" not in w.review_panel.ids_in_order(), timeout=3000)
    # a project trained before: the Train tab names its model, the heatmap comes back with it
    run = project / "runs" / "20260101-000000"
    (run / "model").mkdir(parents=True)
    (run / "run.json").write_text('{"step": 40}')
    np.savez_compressed(run / HybridSegWidget.PIXEL_WEIGHTS_FILE, img0=np.full((48, 48), 0.3, np.float16))
    w.session.save()
    w2 = HybridSegWidget(make_viewer := viewer)
    del make_viewer
    w2._load_predictor = lambda run_dir: _Threshold()
    w2.open_project(project)
    assert "Last model" in w2.train_panel.status.text() and "step 40" in w2.train_panel.status.text()
    assert w2.session.current_id == "img0"
    heat = w2.session.layer("pixel_weights")
    assert heat is not None and heat.visible and w2.review_panel.show_pixel_weights.isChecked()
    w2.wait_for_predictions(10)


class _Threshold:
    def predict(self, image):
        labels = (np.asarray(image) > 128).astype(np.uint8)
        return labels, np.stack([1.0 - labels, labels]).astype(np.float32)


def test_stopping_before_the_first_weight_update_does_not_send_to_the_review(dock, qtbot):
    from tests.test_widgets import FakeTrainer

    w, viewer, _project = dock
    w.runner._train_fn = FakeTrainer(step_s=0.01)
    w.train_panel.steps.value = 1  # the fake trainer reports weights every 2 steps
    w._load_predictor = lambda run_dir: _Threshold()
    assert w.start_training()
    assert w.runner.wait(10)
    text = w.train_panel.status.text()
    assert "before the first weight update" in text and "Review tab" not in text
    w.wait_for_predictions(10)


# -- finding 8: the loss plot ----------------------------------------------------------------------------
def test_the_loss_plot_always_draws_the_total_explains_the_terms_and_fits_its_labels(qtbot):
    from napari_hybridseg.core.training.reports import StepReport
    from napari_hybridseg.widgets.train_panel import TrainPanel

    panel = TrainPanel()
    qtbot.addWidget(panel)
    panel.resize(420, 700)
    panel.show()
    terms = {"strong": 0.5, "aux": 0.1, "pce": 0.2, "box": 0.3, "mil": 0.05, "pair": 0.001, "pixel": 123.4}
    for step in (1, 2, 3):
        panel.on_step(StepReport(step, 10, {**terms, "total": 124.5 / step}, 1e-3, 0.1, 1.0, "cpu"))
    assert panel.plot.drawn_names()[0] == "total" and len(panel.plot.drawn_names()) == 8
    assert "total:" in panel.plot.toolTip() and "box:" in panel.plot.toolTip()
    assert "<b>box</b>" in panel.terms_label.text()
    panel.plot.grab()  # renders the plot (paintEvent)
    fm = panel.plot.fontMetrics()
    assert panel.plot.plot_rect.left() >= fm.horizontalAdvance("1.2e+02") + 4  # the y labels are not clipped


# -- finding 9: setup friction ------------------------------------------------------------------------------
def test_images_asks_for_one_folder_and_reopens_its_project(dock, tmp_path, monkeypatch):
    import imageio.v3 as iio

    w, viewer, _project = dock
    folder = tmp_path / "my images"
    folder.mkdir()
    for i in range(2):
        iio.imwrite(folder / f"a{i}.png", np.full((20, 30), 40 * i, np.uint8))
    asked = []
    monkeypatch.setattr("napari_hybridseg.widgets.data_panel.QFileDialog.getExistingDirectory",
                        lambda *a, **k: asked.append(a) or str(folder))
    w.data_panel.open_folder_btn.click()
    assert len(asked) == 1  # one dialog: the images; the project goes beside them
    assert w.session.project_path == tmp_path / "my images_hybridseg" and len(w.session.collection) == 2
    w.session.show(w.session.collection.ids[1])
    w.session.layer("boxes").add_rectangles([np.array([[1.5, 1.5], [1.5, 9.5], [9.5, 9.5], [9.5, 1.5]])])
    w.data_panel.open_folder_btn.click()  # the same folder again: its project, with the box
    assert len(asked) == 2 and sum(len(s.boxes) for s in w.session.collection) == 1


def test_every_control_has_a_tooltip_and_nothing_is_cut_off_in_a_1500_px_window(make_napari_viewer, project,
                                                                                 monkeypatch, qtbot):
    from qtpy.QtWidgets import QAbstractButton, QComboBox, QLineEdit

    monkeypatch.setenv("HYBRIDSEG_NO_WARMUP", "1")
    viewer = make_napari_viewer(show=True)
    _dock, w = viewer.window.add_plugin_dock_widget("napari-hybridseg", "HybridSeg")
    w.open_project(project)
    viewer.window._qt_window.resize(1500, 950)
    qtbot.wait(200)
    panel = w.data_panel
    controls = [c for c in panel.findChildren((QAbstractButton, QComboBox, QLineEdit)) if c.isVisibleTo(panel)]
    review = [c for c in w.review_panel.findChildren((QAbstractButton,)) if c.isVisibleTo(w.review_panel)]
    missing = [c.text() if hasattr(c, "text") else c.objectName() for c in [*controls, *review] if not c.toolTip()]
    assert not missing, f"controls without a tooltip: {missing}"
    w.show_tab(panel)
    qtbot.wait(50)
    scroll = w.tabs.currentWidget()
    assert scroll.widget() is panel
    view_w = scroll.viewport().width()
    for c in [*controls, panel.table]:
        right = c.mapTo(scroll.viewport(), c.rect().topRight()).x()
        assert right <= view_w, f"{c!r} ends at {right} px, the dock shows {view_w}"
    header = panel.table.horizontalHeader()
    assert header.length() <= panel.table.viewport().width() + 1  # every column, the tags column too
    combo = panel.class_combo
    assert combo.width() >= combo.fontMetrics().horizontalAdvance("lesion (1)") + 20
