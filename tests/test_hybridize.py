"""make_hybrid: seeded strong/weak split, weak labels from masks, corruption as BENCHMARK.md describes."""

from __future__ import annotations

import numpy as np
import pytest

from napari_hybridseg.core.data.collection import Box, Collection, Point, Role, Sample, TagImplies
from napari_hybridseg.core.data.hybridize import (
    boxes_from_mask,
    components,
    corrupt_boxes,
    corrupt_points,
    make_hybrid,
    points_from_mask,
)


def _disk(h, w, cy, cx, r):
    rr, cc = np.mgrid[0:h, 0:w]
    return (rr - cy) ** 2 + (cc - cx) ** 2 <= r**2


def full_collection(n: int = 20, size: int = 64, seed: int = 0) -> Collection:
    rng = np.random.default_rng(seed)
    c = Collection()
    for i in range(n):
        mask = np.zeros((size, size), np.uint8)
        if i % 5 != 4:  # every fifth image has no object (like BUSI "normal")
            cy, cx = rng.integers(16, size - 16, 2)
            mask[_disk(size, size, cy, cx, 7)] = 1
        c.add(Sample(f"s{i:02d}", image=np.zeros((size, size), np.uint8), mask=mask))
    return c


def test_components_drop_specks_but_keep_a_lone_tiny_object():
    m = np.zeros((20, 20), bool)
    m[0, 0] = True
    m[5:15, 5:15] = True
    assert [(bbox, int(crop.sum())) for bbox, crop in components(m)] == [((5, 5, 15, 15), 100)]
    tiny = np.zeros((20, 20), bool)
    tiny[3:5, 3:5] = True
    tiny[10, 10] = True
    assert [bbox for bbox, _ in components(tiny)] == [(3, 3, 5, 5)]  # the largest survives


def test_boxes_from_mask_per_component_and_label():
    m = np.zeros((30, 30), np.uint8)
    m[0, 0] = 1  # speck
    m[2:10, 3:12] = 1
    m[15:25, 15:27] = 2
    boxes = boxes_from_mask(m, id_prefix="x")
    assert [(b.as_tuple(), b.label, b.id) for b in boxes] == [
        ((3.0, 2.0, 12.0, 10.0), 1, "x-b0"), ((15.0, 15.0, 27.0, 25.0), 2, "x-b1")]


def test_deep_points_from_mask_lie_deep_inside_each_component():
    m = np.zeros((40, 40), np.uint8)
    m[_disk(40, 40, 10, 10, 6)] = 1
    m[_disk(40, 40, 28, 28, 8)] = 1
    pts = points_from_mask(m, np.random.default_rng(0), placement="deep")
    assert len(pts) == 2
    for p, (cy, cx, r) in zip(pts, [(10, 10, 6), (28, 28, 8)]):
        assert np.hypot(p.y - 0.5 - cy, p.x - 0.5 - cx) <= r / 2 + 1
        assert m[int(p.y), int(p.x)] == 1


def test_split_is_seeded_and_uses_the_fraction():
    c = full_collection()
    a = make_hybrid(c, strong_fraction=0.25, weak="box", seed=3)
    b = make_hybrid(c, strong_fraction=0.25, weak="box", seed=3)
    other = make_hybrid(c, strong_fraction=0.25, weak="box", seed=4)
    assert len(a.strong) == 5
    assert [s.id for s in a.strong] == [s.id for s in b.strong] != [s.id for s in other.strong]
    assert a.meta["hybrid"]["strong"] == 5 and a.meta["hybrid"]["weak_samples"] == 15


def test_input_collection_is_not_changed():
    c = full_collection()
    make_hybrid(c, strong_fraction=0.1, weak="point", noise=0.5, seed=0)
    assert all(s.mask is not None and not s.points and not s.corrupted for s in c)


def test_weak_samples_keep_their_mask_only_as_reference():
    c = full_collection()
    h = make_hybrid(c, strong_fraction=0.2, weak="box", seed=0)
    for s in h.weak:
        assert s.mask is None and s.reference_mask is c[s.id].mask
        if c[s.id].mask.any():
            assert [b.as_tuple() for b in s.boxes] == [b.as_tuple() for b in boxes_from_mask(c[s.id].mask)]
        else:  # nothing to box: the weak label says "absent"
            assert not s.boxes and h.tag_def(s.tags[0]).implies is TagImplies.ABSENT
    for s in h.strong:
        assert s.reference_mask is None and not s.boxes


def test_dataset_boxes_win_over_derived_ones():
    c = full_collection(5)
    c["s00"].boxes = [Box(1, 2, 3, 4, id="own")]
    h = make_hybrid(c, strong_fraction=0.0, weak="box", ids=["s00"])
    assert [b.id for b in h["s00"].boxes] == ["own"]


def test_points_are_simulated_and_marked():
    h = make_hybrid(full_collection(), strong_fraction=0.1, weak="point", seed=0)
    with_obj = [s for s in h.weak if s.points]
    assert with_obj and all(s.meta["simulated_points"] for s in with_obj)
    for s in with_obj:
        assert all(s.reference_mask[int(p.y), int(p.x)] for p in s.points)


def test_tags_are_derived_where_the_dataset_has_none():
    h = make_hybrid(full_collection(), strong_fraction=0.1, weak="tag", seed=0)
    for s in h.weak:
        implies = h.tag_def(s.tags[0]).implies
        assert implies is (TagImplies.PRESENT if s.reference_mask.any() else TagImplies.ABSENT)
        assert not s.boxes and not s.points


def test_ids_restrict_hybridisation_to_a_split():
    c = full_collection()
    train = c.ids[:10]
    h = make_hybrid(c, strong_fraction=0.2, weak="box", noise=0.5, seed=0, ids=train)
    assert all(h[i].role is Role.STRONG and not h[i].corrupted for i in c.ids[10:])
    assert len([i for i in train if h[i].role is Role.STRONG]) == 2
    with pytest.raises(KeyError, match="unknown sample id"):
        make_hybrid(c, ids=["nope"])


@pytest.mark.parametrize("kind", ["box", "point", "tag"])
def test_noise_corrupts_the_requested_fraction_and_records_it(kind):
    c = full_collection(40)
    h = make_hybrid(c, strong_fraction=0.1, weak=kind, noise=0.3, seed=1)
    weak = [s for s in h.weak if (s.boxes if kind == "box" else s.points if kind == "point" else s.tags)]
    corrupted = [s for s in h if s.corrupted]
    assert len(corrupted) == round(0.3 * len(weak)) and h.meta["hybrid"]["corrupted"] == len(corrupted)
    for s in corrupted:
        assert s.role is Role.WEAK and s.corruption and "clean_weak" in s.meta


def test_corrupted_boxes_are_wrong_in_the_way_they_say():
    c = full_collection(60)
    h = make_hybrid(c, strong_fraction=0.0, weak="box", noise=1.0, seed=2)
    seen = set()
    for s in h:
        if not s.corrupted:
            continue
        seen.add(s.corruption)
        truth = s.reference_mask
        clean = s.meta["clean_weak"]["boxes"]
        for b, (x0, y0, x1, y1, _) in zip(s.boxes, clean):
            r0, c0, r1, c1 = int(b.y0), int(b.x0), int(np.ceil(b.y1)), int(np.ceil(b.x1))
            if s.corruption in ("shifted", "background"):
                assert not truth[r0:r1, c0:c1].any()  # off the object
                assert b.x1 <= x0 or b.x0 >= x1 or b.y1 <= y0 or b.y0 >= y1  # no overlap with the true box
            else:
                assert b.area >= 2 * (x1 - x0) * (y1 - y0)
                assert b.x0 <= x0 and b.y0 <= y0 and b.x1 >= x1 and b.y1 >= y1
            assert 0 <= b.x0 < b.x1 <= 64 and 0 <= b.y0 < b.y1 <= 64
    assert seen == {"shifted", "inflated", "background"}


def test_corrupted_points_lie_outside_the_object():
    h = make_hybrid(full_collection(30), strong_fraction=0.0, weak="point", noise=1.0, seed=0)
    corrupted = [s for s in h if s.corrupted]
    assert corrupted
    for s in corrupted:
        assert s.corruption == "moved_outside"
        assert all(s.reference_mask[int(p.y), int(p.x)] == 0 for p in s.points)


def test_flipped_tags_use_the_dataset_vocabulary():
    c = full_collection(30)
    c.ensure_tag("benign", "present", 1)
    c.ensure_tag("normal", "absent", 1)
    for s in c:
        s.tags = ["benign" if s.mask.any() else "normal"]
    h = make_hybrid(c, strong_fraction=0.0, weak="tag", noise=1.0, seed=0)
    for s in h:
        assert s.corrupted and s.corruption == "flipped"
        assert s.tags == (["normal"] if s.reference_mask.any() else ["benign"])


def test_box_corruption_that_cannot_fit_is_refused():
    truth = np.ones((10, 10), np.uint8)  # the object fills the image: no background to move to
    boxes = [Box(0, 0, 10, 10)]
    rng = np.random.default_rng(0)
    assert corrupt_boxes(boxes, truth, "shifted", rng) is None
    assert corrupt_boxes(boxes, truth, "inflated", rng) is None
    assert corrupt_points([Point(5, 5)], truth, rng) is None


def test_corruption_keeps_annotation_ids():
    truth = np.zeros((64, 64), np.uint8)
    truth[20:30, 20:30] = 1
    out = corrupt_boxes([Box(20, 20, 30, 30, id="keep")], truth, "shifted", np.random.default_rng(0))
    assert out[0].id == "keep"


@pytest.mark.parametrize(("kwargs", "message"), [({"strong_fraction": 1.5}, "strong_fraction"),
                                                 ({"noise": -0.1}, "noise"), ({"weak": "scribble"}, "weak")])
def test_bad_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_hybrid(full_collection(3), **kwargs)


def test_simulated_clicks_land_near_the_boundary_too_and_background_clicks_are_far_from_objects():
    """Issue 19: a user clicks where it is quick, not at the centroid; the choice is recorded."""
    from scipy.ndimage import distance_transform_edt

    from napari_hybridseg.core.data.hybridize import points_from_mask

    yy, xx = np.mgrid[0:80, 0:80]
    mask = (((yy - 40) ** 2 + (xx - 40) ** 2) <= 20**2).astype(np.uint8)
    depth = distance_transform_edt(mask)
    rng = np.random.default_rng(0)
    anywhere = [points_from_mask(mask, rng)[0] for _ in range(200)]
    deep = [points_from_mask(mask, rng, placement="deep")[0] for _ in range(200)]
    d_any = np.array([depth[int(p.y), int(p.x)] for p in anywhere])
    d_deep = np.array([depth[int(p.y), int(p.x)] for p in deep])
    assert (d_any >= 1).all() and (d_deep >= 10).all()  # always inside
    assert (d_any < 5).mean() > 0.2  # 29% measured over 2,000 draws; "deep" clicks: none
    pts = points_from_mask(mask, rng, background=3, id_prefix="x")
    neg = [p for p in pts if not p.positive]
    assert len(pts) == 4 and len(neg) == 3 and [p.id for p in pts] == ["x-p0", "x-p1", "x-p2", "x-p3"]
    bg_dist = distance_transform_edt(mask == 0)
    assert all(bg_dist[int(p.y), int(p.x)] >= 4 for p in neg)
    with pytest.raises(ValueError, match="placement"):
        points_from_mask(mask, rng, placement="centre")


def test_make_hybrid_records_the_click_model():
    hyb = make_hybrid(full_collection(), strong_fraction=0.25, weak="point", background_clicks=1, seed=0)
    weak = [s for s in hyb if s.points]
    assert weak and all(s.meta["simulated_points"] == {"placement": "anywhere", "background": 1} for s in weak)
    assert all(sum(not p.positive for p in s.points) == 1 for s in weak)
    assert hyb.meta["hybrid"]["clicks"] == {"placement": "anywhere", "background": 1}
