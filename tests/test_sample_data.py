"""The synthetic demo project: shipped, small, reproducible, learnable, with visible label noise."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.ndimage import uniform_filter

from napari_hybridseg import _sample_data
from napari_hybridseg.core.data import sample_data as sd
from napari_hybridseg.core.data.collection import Role
from napari_hybridseg.core.data.store import load_project


@pytest.fixture(scope="module")
def demo():
    return load_project(sd.sample_project_path())


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / max(1.0, float(a.sum() + b.sum()))


def test_shipped_project_is_the_one_described(demo):
    assert sd.sample_project_path() == sd.shipped_sample_dir()
    assert demo.counts() == {"samples": 40, "strong": 7, "weak": 27, "unlabeled": 6, "boxes": 16, "points": 20,
                             "tags": 3, "classes": 2, "corrupted": 6}
    assert [c.name for c in demo.classes] == ["polyp", "scleral spur"]
    colon = [s for s in demo if s.meta["modality"] == "colonoscopy"]
    oct_ = [s for s in demo if s.meta["modality"] == "as-oct"]
    assert len(colon) == 24 and len(oct_) == 16
    assert all(s.load_image().shape == (256, 256, 3) for s in colon)
    assert all(s.load_image().shape == (256, 256) for s in oct_)
    # every non-strong image keeps its true mask for evaluation
    assert all(s.reference_mask is not None for s in demo if s.role is not Role.STRONG)


def test_shipped_project_is_small():
    total = sum(p.stat().st_size for p in sd.shipped_sample_dir().rglob("*") if p.is_file())
    assert total <= 5 * 1024 * 1024


def test_regenerating_reproduces_the_shipped_project(tmp_path):
    out = sd.write_sample_project(tmp_path / "demo", seed=0)
    shipped = sd.shipped_sample_dir()
    assert json.loads((out / "project.json").read_text()) == json.loads((shipped / "project.json").read_text())
    for ann in (shipped / "annotations").glob("*.json"):
        assert json.loads((out / "annotations" / ann.name).read_text()) == json.loads(ann.read_text())
    fresh, ref = load_project(out), load_project(shipped)
    for s in ref:
        assert np.array_equal(fresh[s.id].load_image(), s.load_image())
        for key in ("mask", "reference_mask"):
            a, b = getattr(fresh[s.id], key), getattr(s, key)
            assert (a is None and b is None) or np.array_equal(a, b)


def test_objects_are_clearly_visible(demo):
    """A one-line colour/brightness rule already finds most of each object: a small network will too."""
    colon, oct_ = [], []
    for s in demo:
        truth = (s.mask if s.mask is not None else s.reference_mask) > 0
        if not truth.any():
            continue
        img = s.load_image().astype(float)
        if img.ndim == 3:
            colon.append(_dice(img[..., 0] - img[..., 1] > 130, truth))
        else:
            oct_.append(_dice(uniform_filter(img, 5) > 150, truth))
    assert np.mean(colon) > 0.7 and np.mean(oct_) > 0.6


def test_corrupted_weak_labels_are_really_wrong(demo):
    corrupted = [s for s in demo if s.corrupted]
    assert sorted(s.corruption for s in corrupted) == ["background", "flipped", "inflated", "moved_outside",
                                                       "moved_outside", "shifted"]
    for s in corrupted:
        truth = s.reference_mask
        if s.corruption in ("shifted", "background"):
            for b in s.boxes:
                assert not truth[int(b.y0):int(np.ceil(b.y1)), int(b.x0):int(np.ceil(b.x1))].any()
        elif s.corruption == "moved_outside":
            assert all(truth[int(p.y), int(p.x)] == 0 for p in s.points)
        elif s.corruption == "flipped":
            assert s.tags == ["no polyp"] and truth.any()
    # and the clean ones are right
    for s in demo:
        if s.role is Role.WEAK and not s.corrupted:
            truth = s.reference_mask
            assert all(truth[int(p.y), int(p.x)] == p.label for p in s.points)
            for b in s.boxes:
                assert truth[int(b.y0):int(np.ceil(b.y1)), int(b.x0):int(np.ceil(b.x1))].any()


def test_installed_copy_without_the_shipped_folder_generates_a_cached_one(tmp_path, monkeypatch):
    monkeypatch.setattr(sd, "shipped_sample_dir", lambda: tmp_path / "not_shipped")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    path = sd.sample_project_path()
    assert path.is_relative_to(tmp_path / "cache") and load_project(path).counts()["samples"] == 40
    assert sd.sample_project_path() == path  # generated once


def test_napari_sample_providers_return_layer_tuples():
    colon = _sample_data.colonoscopy_sample()
    assert [t[2] for t in colon] == ["image", "labels", "shapes"]
    images, masks, boxes = colon
    assert images[0].shape == (24, 256, 256, 3) and images[1]["rgb"] is True
    assert masks[0].shape == (24, 256, 256) and masks[0][:4].any() and not masks[0][4:].any()
    assert len(boxes[0]) == 16 and boxes[0][0].shape == (4, 3)
    octs = _sample_data.asoct_sample()
    assert [t[2] for t in octs] == ["image", "labels", "points"]
    assert octs[0][0].shape == (16, 256, 256) and octs[2][0].shape == (20, 3)
    assert set(np.unique(octs[1][0])) == {0, 2}


@pytest.mark.gui
def test_sample_data_opens_from_napari_file_menu(make_napari_viewer):
    """What File > Open Sample > HybridSeg does, through the npe2 manifest."""
    viewer = make_napari_viewer()
    viewer.open_sample("napari-hybridseg", "colonoscopy")
    viewer.open_sample("napari-hybridseg", "asoct")
    kinds = [(layer.name, type(layer).__name__) for layer in viewer.layers]
    assert kinds == [("colonoscopy images", "Image"), ("colonoscopy strong masks", "Labels"),
                     ("colonoscopy boxes", "Shapes"), ("AS-OCT images", "Image"),
                     ("AS-OCT strong masks", "Labels"), ("AS-OCT landmark points", "Points")]
    boxes = viewer.layers["colonoscopy boxes"]
    assert boxes.nshapes == 16 and set(boxes.shape_type) == {"rectangle"}
