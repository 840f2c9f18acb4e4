"""The annotator's whole journey through the plugin, with the real trainer on the sample data.

Open a copy of the sample project, annotate by setting layer data, train a
few steps of a tiny model, see the overlays and the sorted weights table,
stop a run, close, reopen: everything is still there. Tiny settings (32 px,
batch 2, one network) keep it to seconds on a shared 2-core CPU.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_hybridseg.core.data.collection import Role

pytestmark = [pytest.mark.gui, pytest.mark.slow]

TINY = {"model": {"input_size": 32}, "preview_every": 1, "dii_tau": 2, "checkpoint_every": 1000, "warmup_steps": 0,
        "augment": False}


@pytest.fixture
def journey(make_napari_viewer, tmp_path, one_thread):
    from napari_hybridseg.widgets import HybridSegWidget

    viewer = make_napari_viewer()
    w = HybridSegWidget(viewer)
    viewer.window.add_dock_widget(w, name="HybridSeg")
    w.train_panel.steps.value = 4
    w.train_panel.batch_size.value = 2
    w.train_panel.dcr.value = False
    w.train_panel.device.value = "cpu"
    w.train_panel.extra = dict(TINY)
    yield w, viewer, tmp_path
    w.runner.stop()
    w.runner.wait(30)


def test_open_annotate_train_review_stop_and_reload(journey, qtbot, make_napari_viewer):
    from napari_hybridseg.core.data.store import load_project

    w, viewer, tmp_path = journey
    project = w.open_sample_data(tmp_path / "sample")
    s = w.session
    n = len(s.collection)
    assert n > 10 and s.current_id == s.collection.ids[0]

    # annotate: a box on an unlabeled image, a mask on a weak one, a tag
    unlabeled = s.collection.unlabeled[0].id if s.collection.unlabeled else s.collection.weak[-1].id
    s.show(unlabeled)
    h, wd = s.current.shape
    s.layer("boxes").add_rectangles([np.array([[2.0, 2.0], [2.0, wd / 3], [h / 3, wd / 3], [h / 3, 2.0]])])
    weak_id = next(x.id for x in s.collection.weak if x.id != unlabeled)
    s.show(weak_id)  # saves the box
    mask = np.zeros((s.current.shape), np.uint8)
    mask[: h // 4, : wd // 4] = 1
    s.layer("mask").data = mask
    assert s.current.role is Role.STRONG or s.sync_current().role is Role.STRONG

    # train a few steps: the overlay appears for the image on screen, weights fill the table
    review_id = s.collection.weak[0].id
    s.show(review_id)
    assert w.start_training()
    assert w.train_panel.train_btn.text() == "Stop"
    assert w.runner.wait(240), "training did not finish"
    assert w.runner.last_done is not None and w.runner.last_done.reason == "finished"
    assert w.first_overlay_s is not None
    pred = s.layer("prediction")
    assert pred is not None and pred.data.shape == s.current.shape
    assert s.run_dir is not None and (s.run_dir / "model").is_dir()
    weights = w.review_panel.weights_in_order()
    assert len(weights) == len(s.collection.weak) and any(v is not None for v in weights)
    known = [v for v in weights if v is not None]
    assert known == sorted(known)
    first_pred = pred.data.copy()

    # after training, a new image on screen gets its prediction from the saved model
    other = w.review_panel.ids_in_order()[0]
    w.review_panel.select(other if other != review_id else w.review_panel.ids_in_order()[1])
    assert w.wait_for_predictions(60)
    assert s.layer("prediction") is pred  # updated in place, not re-added
    assert pred.data.shape == s.current.shape
    del first_pred

    # resume from the last model, then Stop right away: stops within a step, keeps a checkpoint
    w.train_panel.steps.value = 200
    assert w.start_training()
    qtbot.waitUntil(lambda: w.last_step is not None, timeout=120_000)
    w.toggle_training()
    assert w.runner.wait(120)
    done = w.runner.last_done
    assert done.reason == "stopped" and done.step < 200 + 4
    assert w.runner.last_start.start_step == 4  # continued from the first run

    # close napari: everything is on disk
    w.prepare_close(ask=False)
    reloaded = load_project(project)
    assert len(reloaded) == n
    assert len(reloaded[unlabeled].boxes) == 1
    assert reloaded[weak_id].role is Role.STRONG and reloaded[weak_id].mask.sum() == mask.sum()
    assert reloaded.sample_weights and all(st.history for st in reloaded.sample_weights.values())

    # a fresh widget on the same project restores the state
    from napari_hybridseg.widgets import HybridSegWidget

    w2 = HybridSegWidget(make_napari_viewer())
    w2.open_project(project)
    assert w2.wait_for_predictions(60)  # the reopened image gets its prediction from the saved model
    assert w2.session.layer("prediction") is not None
    assert w2.session.run_dir is not None
    assert w2.review_panel.weights_in_order()[0] is not None
    w2.session.show(unlabeled)
    assert len(w2.session.layer("boxes").data) == 1


def test_sample_data_copy_leaves_the_shipped_folder_untouched(tmp_path):
    from napari_hybridseg.core.data import sample_data
    from napari_hybridseg.widgets import copy_sample_project

    src = sample_data.sample_project_path()
    before = sorted((p.relative_to(src), p.stat().st_mtime_ns) for p in src.rglob("*") if p.is_file())
    dest = copy_sample_project(tmp_path / "copy")
    assert (dest / "project.json").is_file() and dest != src
    after = sorted((p.relative_to(src), p.stat().st_mtime_ns) for p in src.rglob("*") if p.is_file())
    assert before == after
