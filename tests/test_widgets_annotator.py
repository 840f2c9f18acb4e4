"""The annotator's journey (issue 17), driven as a user drives napari: mouse clicks and strokes on the
layers through napari's own mouse callbacks, the panel's buttons, Ctrl+Z, re-docking the plugin.

Each test names the finding it guards; every one of them failed before the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from napari_hybridseg.core.collection import Role, Sample

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
    from napari_hybridseg.core.store import save_project

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
    from napari_hybridseg.core.store import load_project

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
    s.show("img5")
    mask = s.layer("mask")
    stroke(viewer, mask, [(10.0, 10.0), (10.0, 20.0), (14.0, 20.0)])
    assert mask.data.any()
    s.show("img1")  # a strong mask
    before = np.array(s.collection["img1"].mask)
    assert np.array_equal(mask.data, before)
    mask.undo()  # what Ctrl+Z does on the Labels layer
    assert np.array_equal(mask.data, before)
    s.step(1)  # the move saves img1: its mask must be what it was
    assert np.array_equal(_reload(project)["img1"].mask, before)


# -- finding 3 and deliverable 3: durable edits ----------------------------------------------------
def test_new_class_and_tag_meaning_are_saved_at_once(dock):
    from napari_hybridseg.core.collection import TagImplies

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
    from napari_hybridseg.core.collection import Collection
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
