"""Weak label -> training targets (METHOD.md section 3), checked on small hand-made arrays."""

from __future__ import annotations

import numpy as np
import pytest

from napari_hybridseg.core.data.collection import Box, ClassInfo, Collection, Point, Role, Sample
from napari_hybridseg.core.data.images import resize_labels
from napari_hybridseg.core.supervision.targets import IGNORE, KNOWN_BG, KNOWN_FG, UNKNOWN, make_targets, mask_to_index

I = IGNORE  # a one-letter name keeps the hand-written arrays readable


def _sample(h=6, w=6, **kw) -> Sample:
    return Sample("s", image=np.zeros((h, w), np.uint8), **kw)


def test_box_outside_is_certain_background_inside_unknown():
    t = make_targets(_sample(boxes=[Box(1, 1, 3, 4)]), Collection(), (6, 6))
    # pixels whose centre lies inside x in [1, 3), y in [1, 4): cols 1-2, rows 1-3
    inside = np.zeros((6, 6), bool)
    inside[1:4, 1:3] = True
    assert np.array_equal(t.target, np.where(inside, I, 0))
    assert np.array_equal(t.certainty, np.where(inside, UNKNOWN, KNOWN_BG))
    assert np.array_equal(t.init_label, inside.astype(np.int64))
    assert t.boxes.tolist() == [[1, 1, 1, 4, 3]] and t.box_ids == [t.box_ids[0]]
    assert t.present.tolist() == [False, True] and t.tag_target.tolist() == [1.0]
    assert t.role is Role.WEAK


def test_point_is_a_disk_of_its_class_and_the_rest_unknown():
    s = _sample(5, 5, points=[Point(2.5, 2.5)])
    t = make_targets(s, Collection(), (5, 5), point_radius=1.0)
    expected = np.array([
        [I, I, I, I, I],
        [I, I, 1, I, I],
        [I, 1, 1, 1, I],
        [I, I, 1, I, I],
        [I, I, I, I, I],
    ])
    assert np.array_equal(t.target, expected)
    assert np.array_equal(t.certainty, np.where(expected == 1, KNOWN_FG, UNKNOWN))
    assert t.present[1] and len(t.point_ids) == 1


def test_background_click_marks_background():
    s = _sample(5, 5, points=[Point(0.5, 0.5, positive=False)])
    t = make_targets(s, Collection(), (5, 5), point_radius=1.0)
    assert t.target[0, 0] == 0 and t.target[0, 1] == 0 and t.target[1, 0] == 0 and t.target[1, 1] == I
    assert not t.present[1]


def test_absent_tag_makes_every_pixel_certain_background():
    c = Collection()
    c.ensure_tag("normal", "absent", 1)
    t = make_targets(_sample(4, 4, tags=["normal"]), c, (4, 4))
    assert (t.target == 0).all() and (t.certainty == KNOWN_BG).all()
    assert t.absent.tolist() == [False, True] and t.tag_target.tolist() == [0.0]


def test_present_tag_is_a_multiple_instance_constraint_only():
    c = Collection()
    c.ensure_tag("malignant", "present", 1)
    c.ensure_tag("note", "nothing")
    t = make_targets(_sample(4, 4, tags=["malignant", "note", "not-in-vocabulary"]), c, (4, 4))
    assert (t.target == I).all() and (t.certainty == UNKNOWN).all()
    assert t.present.tolist() == [False, True] and t.tag_target.tolist() == [1.0]


def test_strong_mask_maps_label_values_to_channels():
    c = Collection(classes=[ClassInfo("b", 5), ClassInfo("a", 2)])
    mask = np.array([[0, 2], [5, 5]], np.uint8)
    t = make_targets(_sample(2, 2, mask=mask), c, (2, 2))
    assert t.target.tolist() == [[0, 1], [2, 2]]
    assert t.certainty.tolist() == [[KNOWN_BG, KNOWN_FG], [KNOWN_FG, KNOWN_FG]]
    assert t.tag_target.tolist() == [1.0, 1.0] and t.role is Role.STRONG
    with pytest.raises(ValueError, match=r"label value\(s\) \[7\] that are not classes"):
        mask_to_index(np.array([[7]]), c, "s")


def test_two_classes_of_boxes():
    c = Collection(classes=[ClassInfo("a", 1), ClassInfo("b", 2)])
    t = make_targets(_sample(4, 4, boxes=[Box(0, 0, 2, 2, label=1), Box(2, 2, 4, 4, label=2)]), c, (4, 4))
    assert t.init_label.tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 2, 2], [0, 0, 2, 2]]
    assert t.present.tolist() == [False, True, True]


def test_box_partly_outside_is_clipped_with_a_warning():
    with pytest.warns(UserWarning, match="extends outside the image; clipped"):
        t = make_targets(_sample(4, 4, boxes=[Box(-3, 2, 2, 9)]), Collection(), (4, 4))
    assert t.boxes.tolist() == [[1, 2, 0, 4, 2]]


def test_box_entirely_outside_is_ignored_with_a_warning():
    with pytest.warns(UserWarning, match="lies outside the image; ignored"):
        t = make_targets(_sample(4, 4, boxes=[Box(10, 10, 12, 12)]), Collection(), (4, 4))
    assert len(t.boxes) == 0


def test_point_outside_is_clipped_to_the_border_with_a_warning():
    with pytest.warns(UserWarning, match="lies outside the image; clipped to the border"):
        t = make_targets(_sample(5, 5, points=[Point(7.0, -2.0)]), Collection(), (5, 5), point_radius=1.0)
    assert t.target[0, 4] == 1


def test_unknown_class_is_an_error_not_a_silent_drop():
    with pytest.raises(ValueError, match="has class 3, not in the class list"):
        make_targets(_sample(boxes=[Box(0, 0, 2, 2, label=3)]), Collection(), (6, 6))


def test_targets_are_consistent_under_resizing():
    """Targets built at half size equal the full-size targets resized (box edges on even pixels)."""
    c = Collection()
    s = Sample("s", image=np.zeros((16, 24), np.uint8), boxes=[Box(4, 2, 12, 10), Box(16, 8, 22, 14)])
    full = make_targets(s, c, (16, 24))
    half = make_targets(s, c, (8, 12))
    assert np.array_equal(half.target, resize_labels(full.target, (8, 12)))
    assert np.array_equal(half.init_label, resize_labels(full.init_label, (8, 12)))
    assert np.array_equal(half.boxes[:, 1:], full.boxes[:, 1:] // 2)
    m = np.zeros((16, 24), np.uint8)
    m[2:10, 4:12] = 1
    strong = Sample("m", image=np.zeros((16, 24), np.uint8), mask=m)
    assert np.array_equal(make_targets(strong, c, (8, 12)).target,
                          resize_labels(make_targets(strong, c, (16, 24)).target, (8, 12)))


def _flip_sample(s: Sample, axis: int) -> Sample:
    h, w = s.shape
    boxes = [Box(b.x0, h - b.y1, b.x1, h - b.y0, b.label, id=b.id) if axis == 0 else
             Box(w - b.x1, b.y0, w - b.x0, b.y1, b.label, id=b.id) for b in s.boxes]
    points = [Point(p.x, h - p.y, p.label, p.positive, id=p.id) if axis == 0 else
              Point(w - p.x, p.y, p.label, p.positive, id=p.id) for p in s.points]
    mask = None if s.mask is None else np.flip(s.mask, axis).copy()
    return Sample(s.id, image=np.flip(s.image, axis).copy(), mask=mask, boxes=boxes, points=points, tags=s.tags)


@pytest.mark.parametrize("axis", [0, 1])
def test_targets_are_consistent_under_flips(axis):
    c = Collection()
    samples = [
        Sample("b", image=np.zeros((10, 14), np.uint8), boxes=[Box(1, 2, 6, 9), Box(9, 0, 14, 4)]),
        Sample("p", image=np.zeros((10, 14), np.uint8), points=[Point(3.5, 4.5), Point(10.5, 2.5, positive=False)]),
        Sample("m", image=np.zeros((10, 14), np.uint8),
               mask=np.pad(np.ones((3, 5), np.uint8), ((1, 6), (2, 7)))),
    ]
    for s in samples:
        flipped_then_targets = make_targets(_flip_sample(s, axis), c, (10, 14), point_radius=2.0)
        targets_then_flipped = make_targets(s, c, (10, 14), point_radius=2.0).flip(axis)
        for key in ("target", "certainty", "init_label", "boxes"):
            assert np.array_equal(getattr(flipped_then_targets, key), getattr(targets_then_flipped, key)), (s.id, key)
