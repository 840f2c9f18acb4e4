"""The data model: roles derived from annotations, ids, classes, tags, learned weights."""

from __future__ import annotations

import numpy as np
import pytest

from napari_hybridseg.core.data.collection import (
    Box,
    ClassInfo,
    Collection,
    Point,
    Role,
    Sample,
    TagImplies,
    WeightState,
    make_id,
)


def test_role_follows_the_annotations():
    s = Sample("a", image=np.zeros((4, 4), np.uint8))
    assert s.role is Role.UNLABELED
    s.tags.append("normal")
    assert s.role is Role.WEAK
    s.mask = np.zeros((4, 4), np.uint8)  # an all-zero mask is a strong "nothing here"
    assert s.role is Role.STRONG
    s.mask = None
    s.tags.clear()
    s.points.append(Point(1, 1))
    assert s.role is Role.WEAK


def test_collection_lists_samples_by_role():
    c = Collection()
    c.add(Sample("s", mask=np.zeros((2, 2), np.uint8)))
    c.add(Sample("w", boxes=[Box(0, 0, 1, 1)]))
    c.add(Sample("u"))
    assert [s.id for s in c.strong] == ["s"] and [s.id for s in c.weak] == ["w"] and [s.id for s in c.unlabeled] == [
        "u"]
    assert c.counts() == {"samples": 3, "strong": 1, "weak": 1, "unlabeled": 1, "boxes": 1, "points": 0, "tags": 0,
                          "classes": 1, "corrupted": 0}


def test_ids_are_file_name_safe_and_unique():
    assert make_id("benign (12)") == "benign_12"
    assert make_id("  ../x y.png ") == "x_y.png"
    assert make_id("???") == "sample"
    c = Collection()
    c.add(Sample(c.unique_id("a b")))
    assert c.unique_id("a b") == "a_b_2"
    with pytest.raises(ValueError, match="duplicate sample id 'a_b'"):
        c.add(Sample("a_b"))


def test_remove_drops_the_sample_and_its_learned_weights():
    c = Collection()
    c.add(Sample("a", boxes=[Box(0, 0, 1, 1, id="b1")]))
    c.add(Sample("b", boxes=[Box(0, 0, 1, 1, id="b2")]))
    for key in ("a", "b"):
        c.sample_weights[key] = WeightState()
    c.remove("a")
    assert c.ids == ["b"] and set(c.sample_weights) == {"b"}


def test_box_corners_are_sorted_and_area_is_positive():
    b = Box(5, 7, 1, 2)
    assert b.as_tuple() == (1.0, 2.0, 5.0, 7.0) and b.area == 20.0
    assert Box(0, 0, 1, 1).id != Box(0, 0, 1, 1).id  # fresh ids


def test_classes_channels_and_colours():
    c = Collection(classes=[ClassInfo("b", 5), ClassInfo("a", 2)])
    assert c.class_index(2) == 1 and c.class_index(5) == 2  # channels follow label values
    new = c.add_class("c")
    assert new.value == 6 and new.color.startswith("#")
    with pytest.raises(ValueError, match="already used"):
        c.add_class("d", 5)
    with pytest.raises(ValueError, match="already exists"):
        c.add_class("a")
    with pytest.raises(ValueError, match=">= 1"):
        ClassInfo("bg", 0)
    with pytest.raises(KeyError):
        c.class_by_value(99)


def test_tag_vocabulary():
    c = Collection()
    t = c.ensure_tag("normal", "absent", 1)
    assert t.implies is TagImplies.ABSENT and c.ensure_tag("normal") is t
    with pytest.raises(KeyError, match="not in the tag vocabulary"):
        c.tag_def("other")
    with pytest.raises(ValueError):
        c.ensure_tag("x", "sometimes")


def test_weight_history_is_recorded():
    w = WeightState()
    assert w.value == 0.5
    w.record(10, 0.7)
    w.record(20, 0.2)
    assert w.value == 0.2 and w.history == [(10, 0.7), (20, 0.2)]
    c = Collection()
    c.sample_weights["a"] = w
    assert c.weight_of("a") == 0.2 and c.weight_of("b") is None


def test_shape_comes_from_meta_without_loading(tmp_path):
    s = Sample("a", image_path=tmp_path / "missing.png", meta={"shape": [30, 40]})
    assert s.shape == (30, 40)
    with pytest.raises(ValueError, match="neither pixels nor an image path"):
        Sample("b").load_image()


def test_copy_shares_pixels_but_not_annotations_weights_or_meta():
    img, mask = np.zeros((4, 4), np.uint8), np.ones((4, 4), np.uint8)
    c = Collection()
    c.add(Sample("a", image=img, mask=mask, boxes=[Box(0, 0, 2, 2)], tags=["t"], meta={"k": [1]}))
    c.sample_weights["a"] = WeightState(0.7, [(1, 0.7)])
    c.meta["m"] = {"x": 1}
    d = c.copy()
    assert d["a"].image is img and d["a"].mask is mask
    d["a"].boxes[0].x1 = 3.0
    d["a"].tags.append("u")
    d["a"].meta["k"].append(2)
    d.sample_weights["a"].record(2, 0.1)
    d.meta["m"]["x"] = 2
    d.classes[0].name = "other"
    assert c["a"].boxes[0].x1 == 2.0 and c["a"].tags == ["t"] and c["a"].meta["k"] == [1]
    assert c.sample_weights["a"].history == [(1, 0.7)] and c.meta["m"]["x"] == 1 and c.classes[0].name == "lesion"
    e = c.copy(copy_masks=True)
    assert e["a"].mask is not mask and np.array_equal(e["a"].mask, mask) and e["a"].image is img
