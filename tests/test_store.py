"""The project folder: exact round trips, atomic writes, clear errors on broken files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from napari_hybridseg.core.data.collection import Box, ClassInfo, Collection, Point, Sample, TagDef, WeightState
from napari_hybridseg.core.data.store import (
    StoreError,
    export_coco,
    is_project,
    load_project,
    save_project,
    save_sample,
    save_weights,
)


# ------------------------------------------------------------------------------------------------
# a canonical, comparable view of a collection
# ------------------------------------------------------------------------------------------------
def snapshot(c: Collection) -> dict:
    def arr(a):
        return None if a is None else (str(np.asarray(a).dtype), np.asarray(a).tolist())

    return {
        "classes": [(k.name, k.value, k.color) for k in c.classes],
        "tags": [(t.name, t.implies.value, t.class_value) for t in c.tag_defs],
        "meta": {k: v for k, v in c.meta.items() if k != "project_dir"},
        "samples": [
            {
                "id": s.id,
                "shape": s.shape,
                "pixels": arr(s.load_image()),
                "mask": arr(s.mask),
                "reference_mask": arr(s.reference_mask),
                "boxes": [(b.id, b.x0, b.y0, b.x1, b.y1, b.label) for b in s.boxes],
                "points": [(p.id, p.x, p.y, p.label, p.positive) for p in s.points],
                "tags": list(s.tags),
                "group": s.group,
                "corrupted": s.corrupted,
                "corruption": s.corruption,
                "meta": {k: v for k, v in s.meta.items() if k != "shape"},
            }
            for s in c
        ],
        "sample_weights": {k: (v.value, list(v.history)) for k, v in c.sample_weights.items()},
    }


finite = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False)
text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=8)
json_value = st.recursive(st.none() | st.booleans() | st.integers(-10**6, 10**6) | finite | text,
                          lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
                          max_leaves=6)


@st.composite
def collections_(draw) -> Collection:
    n_classes = draw(st.integers(1, 3))
    values = draw(st.lists(st.integers(1, 300), min_size=n_classes, max_size=n_classes, unique=True))
    c = Collection(classes=[ClassInfo(f"c{v}", v, "#123456") for v in values], tag_defs=[])
    for name in draw(st.lists(st.text("abc xyz", min_size=1, max_size=6), max_size=3, unique=True)):
        c.tag_defs.append(TagDef(name, draw(st.sampled_from(["nothing", "absent", "present"])),
                                 draw(st.none() | st.sampled_from(values))))
    c.meta = draw(st.dictionaries(st.text("abcdef", min_size=1, max_size=4), json_value, max_size=2))
    ids = draw(st.lists(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,7}", fullmatch=True), max_size=4,
                        unique_by=str.lower))
    for sid in ids:
        h, w = draw(st.integers(2, 6)), draw(st.integers(2, 6))
        kind = draw(st.sampled_from(["grey8", "rgb8", "grey16", "float"]))
        rng = np.random.default_rng(draw(st.integers(0, 2**16)))
        if kind == "grey8":
            image = rng.integers(0, 256, (h, w), dtype=np.uint8)
        elif kind == "rgb8":
            image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        elif kind == "grey16":
            image = rng.integers(0, 65536, (h, w), dtype=np.uint16)
        else:
            image = rng.random((h, w, 3)).astype(np.float32)
        s = Sample(sid, image=image)
        if draw(st.booleans()):
            dtype = draw(st.sampled_from([np.uint8, np.uint16])) if max(values) <= 255 else np.uint16
            s.mask = rng.choice(np.array([0, *values], dtype=dtype), (h, w))
        if draw(st.booleans()):
            s.reference_mask = rng.integers(0, 2, (h, w), dtype=np.uint8)
        s.boxes = [Box(draw(finite), draw(finite), draw(finite), draw(finite), label=draw(st.sampled_from(values)),
                       id=f"b{i}") for i in range(draw(st.integers(0, 2)))]
        s.points = [Point(draw(finite), draw(finite), label=draw(st.sampled_from(values)),
                          positive=draw(st.booleans()), id=f"p{i}") for i in range(draw(st.integers(0, 2)))]
        s.tags = draw(st.lists(st.text("abc xyz", min_size=1, max_size=6), max_size=2))
        s.group = draw(st.none() | text)
        s.corrupted = draw(st.booleans())
        s.corruption = draw(st.none() | st.sampled_from(["shifted", "flipped"]))
        s.meta = draw(st.dictionaries(st.text("abc", min_size=1, max_size=3), json_value, max_size=2))
        c.add(s)
        if draw(st.booleans()):
            c.sample_weights[sid] = WeightState(draw(st.floats(0, 1)), [(i, draw(st.floats(0, 1))) for i in
                                                                        range(draw(st.integers(0, 3)))])
    return c


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(collection=collections_())
def test_save_then_load_reproduces_the_collection_exactly(collection, tmp_path_factory):
    root = tmp_path_factory.mktemp("proj")
    before = snapshot(collection)
    save_project(collection, root)
    loaded = load_project(root)
    assert snapshot(loaded) == before
    assert loaded.meta["project_dir"] == str(root.absolute())
    # saving what was loaded changes no byte of project.json: the format is a fixed point
    text = (root / "project.json").read_text()
    save_project(loaded, root)
    assert (root / "project.json").read_text() == text


def _small(tmp_path: Path) -> tuple[Collection, Path]:
    c = Collection()
    c.ensure_tag("normal", "absent", 1)
    img = np.arange(48, dtype=np.uint8).reshape(6, 8)
    c.add(Sample("a", image=img, mask=(img > 20).astype(np.uint8)))
    c.add(Sample("b", image=img, boxes=[Box(1, 1, 4, 4, id="b1")], tags=["normal"]))
    c.add(Sample("c", image=img))
    root = tmp_path / "proj"
    save_project(c, root)
    return c, root


def test_project_layout_is_the_documented_one(tmp_path):
    c, root = _small(tmp_path)
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == [
        "annotations", "images", "masks", "project.json", "weights.json"]
    assert [p.name for p in root.iterdir() if p.name.startswith(".")] == [".hybridseg.lock"]  # no journal left
    project = json.loads((root / "project.json").read_text())
    assert project["format"] == "napari-hybridseg-project" and project["version"] == 1
    entry = {e["id"]: e for e in project["samples"]}
    assert entry["a"]["mask"] == "masks/a.png" and entry["a"]["annotations"] is None
    assert entry["b"]["annotations"] == "annotations/b.json" and entry["b"]["image"] == "images/b.png"
    assert entry["a"]["shape"] == [6, 8]
    ann = json.loads((root / "annotations" / "b.json").read_text())
    assert ann["version"] == 1 and ann["boxes"][0] == {"id": "b1", "x0": 1.0, "y0": 1.0, "x1": 4.0, "y1": 4.0,
                                                       "label": 1}
    assert np.asarray(Image.open(root / "masks" / "a.png")).dtype == np.uint8
    assert is_project(root) and not is_project(tmp_path)
    # in-memory pixels now live in the project
    assert c["a"].image_path == (root / "images" / "a.png").absolute()


def test_images_are_referenced_relatively_unless_copied(tmp_path):
    src = tmp_path / "data" / "x.png"
    src.parent.mkdir()
    Image.fromarray(np.full((4, 5), 7, np.uint8)).save(src)
    c = Collection()
    c.add(Sample("x", image_path=src))
    save_project(c, tmp_path / "p1")
    assert json.loads((tmp_path / "p1" / "project.json").read_text())["samples"][0]["image"] == "../data/x.png"
    save_project(c, tmp_path / "p2", copy_images=True)
    assert json.loads((tmp_path / "p2" / "project.json").read_text())["samples"][0]["image"] == "images/x.png"
    assert (tmp_path / "p2" / "images" / "x.png").read_bytes() == src.read_bytes()
    # the project folder moves with its images: relative paths still resolve
    os.rename(tmp_path / "p2", tmp_path / "moved")
    assert load_project(tmp_path / "moved")["x"].load_image().tolist() == [[7] * 5] * 4


def test_load_reads_image_size_from_the_project_without_decoding(tmp_path):
    _, root = _small(tmp_path)
    loaded = load_project(root)
    assert loaded["a"].image is None and loaded["a"].shape == (6, 8)


def test_invalid_json_names_the_file_and_line_and_changes_nothing(tmp_path):
    _, root = _small(tmp_path)
    ann = root / "annotations" / "b.json"
    text = ann.read_text().splitlines()
    text[3] = text[3] + ",,"
    ann.write_text("\n".join(text))
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    with pytest.raises(StoreError, match=r"b\.json: line 4 column \d+: invalid JSON"):
        load_project(root)
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(format="something else"), "not a napari-hybridseg project"),
        (lambda d: d.update(version=99), "newer than this napari-hybridseg"),
        (lambda d: d["samples"][0].pop("shape"), "sample 'a' lacks the key 'shape'"),
        (lambda d: d["samples"][0].update(corrupted="yes"), "'corrupted' must be bool"),
        (lambda d: d["samples"].append(dict(d["samples"][0])), "appears twice"),
        (lambda d: d["samples"][0].update(shape=[3, 3]), "has shape"),
        (lambda d: d["classes"][0].update(value=0), "label value must be >= 1"),
    ],
)
def test_hand_edited_project_json_gives_a_clear_error(tmp_path, edit, message):
    _, root = _small(tmp_path)
    path = root / "project.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    with pytest.raises(StoreError, match=message) as info:
        load_project(root)
    assert str(path.parent) in str(info.value)


def test_missing_mask_file_is_reported(tmp_path):
    _, root = _small(tmp_path)
    (root / "masks" / "a.png").unlink()
    with pytest.raises(StoreError, match=r"a\.png: mask listed in project\.json is missing"):
        load_project(root)


def test_failed_save_writes_nothing(tmp_path):
    c, root = _small(tmp_path)
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    c["c"].mask = np.zeros((2, 2), np.uint8)  # wrong shape: found before any write
    c["b"].tags.append("new")
    with pytest.raises(StoreError, match="mask has shape"):
        save_project(c, root)
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    c, root = _small(tmp_path)
    before = (root / "annotations" / "b.json").read_bytes()
    c["b"].boxes.append(Box(0, 0, 2, 2))

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("napari_hybridseg.core.data.store_journal._dumps", boom)
    with pytest.raises(OSError, match="disk full"):
        save_sample(c, root, "b")
    assert (root / "annotations" / "b.json").read_bytes() == before
    assert not [p for p in root.rglob("*.tmp")]


def test_save_sample_writes_only_that_sample(tmp_path):
    c, root = _small(tmp_path)
    project_before = (root / "project.json").read_bytes()
    mask_before = (root / "masks" / "a.png").stat().st_mtime_ns
    c["b"].boxes[0].x1 = 5.0
    save_sample(c, root, "b")
    assert (root / "project.json").read_bytes() == project_before  # entry unchanged: not rewritten
    assert (root / "masks" / "a.png").stat().st_mtime_ns == mask_before
    assert load_project(root)["b"].boxes[0].x1 == 5.0
    # a new mask changes the entry; clearing the annotations removes the file
    c["b"].mask = np.ones((6, 8), np.uint8)
    c["b"].boxes, c["b"].tags = [], []
    save_sample(c, root, "b")
    loaded = load_project(root)
    assert loaded["b"].role.value == "strong" and not (root / "annotations" / "b.json").exists()


def test_save_sample_adds_a_new_sample(tmp_path):
    c, root = _small(tmp_path)
    c.add(Sample("d", image=np.zeros((3, 3), np.uint8), points=[Point(1, 1, id="p")]))
    save_sample(c, root, "d")
    loaded = load_project(root)
    assert loaded.ids == ["a", "b", "c", "d"] and loaded["d"].points[0].id == "p"


def test_resave_removes_files_of_deleted_samples(tmp_path):
    c, root = _small(tmp_path)
    c.remove("a")
    save_project(c, root)
    assert not (root / "masks" / "a.png").exists()
    assert load_project(root).ids == ["b", "c"]


def test_uint16_labels_and_bool_masks_are_stored(tmp_path):
    c = Collection(classes=[ClassInfo("big", 1000)])
    c.add(Sample("a", image=np.zeros((3, 4), np.uint8), mask=np.array([[0, 1000] * 2] * 3, np.uint16)))
    c.add(Sample("b", image=np.zeros((3, 4), np.uint8), mask=np.eye(3, 4, dtype=bool)))
    save_project(c, tmp_path / "p")
    loaded = load_project(tmp_path / "p")
    assert loaded["a"].mask.dtype == np.uint16 and loaded["a"].mask.max() == 1000
    assert loaded["b"].mask.dtype == np.uint8 and loaded["b"].mask.sum() == 3


def test_masks_that_cannot_be_pngs_are_refused(tmp_path):
    c = Collection()
    c.add(Sample("a", image=np.zeros((3, 4), np.uint8), mask=np.full((3, 4), -1, np.int32)))
    with pytest.raises(StoreError, match="0..65535"):
        save_project(c, tmp_path / "p")
    assert not (tmp_path / "p" / "project.json").exists()


def test_weights_are_saved_separately(tmp_path):
    c, root = _small(tmp_path)
    c.sample_weights["b"] = WeightState(0.5)
    c.sample_weights["b"].record(10, 0.25)
    save_weights(c, root)
    loaded = load_project(root)
    assert loaded.sample_weights["b"].value == 0.25 and loaded.sample_weights["b"].history == [(10, 0.25)]
    assert json.loads((root / "weights.json").read_text())["annotations"] == {}  # older readers need the key


def test_old_per_annotation_weights_are_ignored_on_load(tmp_path):
    """Older versions wrote per-box/point weights under "annotations"; nothing learns them now."""
    c, root = _small(tmp_path)
    c.sample_weights["b"] = WeightState(0.25, [(10, 0.25)])
    save_weights(c, root)
    data = json.loads((root / "weights.json").read_text())
    data["annotations"] = {"b1": {"value": 0.9, "history": [[10, 0.9]]}}
    (root / "weights.json").write_text(json.dumps(data))
    loaded = load_project(root)
    assert loaded.sample_weights["b"].history == [(10, 0.25)] and not hasattr(loaded, "annotation_weights")
    del data["annotations"]
    (root / "weights.json").write_text(json.dumps(data))
    assert load_project(root).sample_weights["b"].value == 0.25


def test_project_files_are_readable_by_others(tmp_path):
    _, root = _small(tmp_path)
    umask = os.umask(0)
    os.umask(umask)
    for name in ("project.json", "masks/a.png", "images/a.png"):
        assert (root / name).stat().st_mode & 0o777 == 0o666 & ~umask  # as open() would, not mkstemp's 0600


def test_export_coco_has_boxes_points_and_weights(tmp_path):
    c = Collection()
    c.add(Sample("a", image=np.zeros((10, 20), np.uint8), boxes=[Box(2, 3, 7, 9, id="bx")]))
    c.add(Sample("b", image=np.zeros((10, 20), np.uint8),
                 points=[Point(4.5, 5.5, id="pt"), Point(1, 1, positive=False, id="bg")]))
    c.sample_weights["a"] = WeightState(0.2)
    out = export_coco(c, tmp_path / "coco.json")
    coco = json.loads(out.read_text())
    assert [im["hybridseg_sample_id"] for im in coco["images"]] == ["a", "b"]
    assert coco["images"][0]["height"] == 10 and coco["images"][0]["width"] == 20
    box, pt, bg = coco["annotations"]
    assert box["bbox"] == [2.0, 3.0, 5.0, 6.0] and box["area"] == 30.0 and box["weight"] == 0.2
    assert box["image_id"] == 1 and box["category_id"] == 1 and box["hybridseg_id"] == "bx"
    assert pt["keypoints"] == [4.5, 5.5, 2] and pt["positive"] is True and "weight" not in pt
    assert bg["positive"] is False and pt["image_id"] == 2
    assert coco["categories"] == [{"id": 1, "name": "lesion", "supercategory": "", "keypoints": ["point"],
                                   "skeleton": []}]


def test_data_errors_are_hybridseg_errors_and_still_value_errors():
    """Callers choose a message by type (HybridsegError), and old ``except ValueError`` keeps working."""
    from napari_hybridseg.core.data.images import ImageError
    from napari_hybridseg.core.data.importers import DatasetError
    from napari_hybridseg.core.data.locks import LockedError
    from napari_hybridseg.core.errors import HybridsegError

    for kind in (StoreError, DatasetError, ImageError):
        assert issubclass(kind, HybridsegError) and issubclass(kind, ValueError)
    assert issubclass(LockedError, HybridsegError) and issubclass(LockedError, RuntimeError)
