"""Importers: one synthetic mini-dataset per quirk of ../shared/data/README.md, plus the real folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_hybridseg.core.data.collection import Role, TagImplies
from napari_hybridseg.core.data.importers import DatasetError, import_dataset
from napari_hybridseg.core.data.store import load_project, save_project

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _save(path: Path, arr: np.ndarray, mode: str | None = None, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(arr)
    if mode:
        im = im.convert(mode)
    im.save(path, **kw)
    return path


def _disk(h: int, w: int, cy: int, cx: int, r: int) -> np.ndarray:
    rr, cc = np.mgrid[0:h, 0:w]
    return (rr - cy) ** 2 + (cc - cx) ** 2 <= r**2


def _rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------------------------
# kvasir
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def kvasir(tmp_path) -> Path:
    """Three frames of different sizes, JPEG masks (one with a speck at (0, 0)), a box JSON, a sessile CSV."""
    root = tmp_path / "kv"
    specs = {"a": (40, 50, [(20, 25, 8)]), "b": (30, 64, [(15, 15, 6), (15, 45, 6)]), "c": (48, 48, [(24, 24, 10)])}
    boxes = {}
    for name, (h, w, disks) in specs.items():
        _save(root / "images" / f"{name}.jpg", _rgb(h, w), quality=90)
        m = np.zeros((h, w), bool)
        for cy, cx, r in disks:
            m |= _disk(h, w, cy, cx, r)
        if name == "a":
            m[0, 0] = True  # the speck a naive box would stretch to the corner
        _save(root / "masks" / f"{name}.jpg", (m * 255).astype(np.uint8), "RGB", quality=75)
        boxes[name] = {"height": h, "width": w, "bbox": [
            {"label": "polyp", "xmin": cx - r, "ymin": cy - r, "xmax": cx + r + 1, "ymax": cy + r + 1}
            for cy, cx, r in disks]}
    boxes["c"]["bbox"][0]["xmin"] -= 9  # a JSON box that disagrees with its mask (README: 20 such images)
    boxes["zzz"] = {"height": 5, "width": 5, "bbox": []}  # an id with no image
    (root / "kavsir_bboxes.json").write_text(json.dumps(boxes))
    (root / "kvasir_sessile_subset.csv").write_text("image_id,kvasir_sessile\na,1\nb,0\nc,0\n")
    return root


def test_kvasir_boxes_masks_and_sessile_tags(kvasir):
    c = import_dataset(kvasir, "kvasir")
    assert c.ids == ["a", "b", "c"] and [k.name for k in c.classes] == ["polyp"]
    assert all(s.role is Role.STRONG for s in c)
    assert [len(s.boxes) for s in c] == [1, 2, 1]
    assert c["b"].boxes[1].as_tuple() == (39.0, 9.0, 52.0, 22.0)
    # 1 = in the Kvasir-Sessile subset; 0 means nothing, so no tag
    assert c["a"].tags == ["sessile"] and c["b"].tags == [] and c.tag_def("sessile").implies is TagImplies.NOTHING
    notes = " ".join(c.meta["import"]["notes"])
    assert "1 id(s) match no image: zzz" in notes


def test_kvasir_lossy_jpeg_masks_are_thresholded(kvasir):
    c = import_dataset(kvasir, "kvasir")
    m = c["c"].mask
    assert set(np.unique(m)) == {0, 1} and m.dtype == np.uint8
    assert abs(int(m.sum()) - int(_disk(48, 48, 24, 24, 10).sum())) < 15


def test_kvasir_box_mask_disagreement_ignores_specks_and_is_reported(kvasir):
    c = import_dataset(kvasir, "kvasir")
    assert c["a"].mask[0, 0] == 1  # the dataset's mask is kept as it is
    assert c["a"].meta["box_mask_diff_px"] <= 1  # the speck does not count
    assert c["c"].meta["box_mask_diff_px"] >= 9
    assert "1 image(s) whose dataset boxes differ from their mask" in " ".join(c.meta["import"]["notes"])


def test_kvasir_images_are_not_decoded_at_import(kvasir):
    c = import_dataset(kvasir, "kvasir")
    assert all(s.image is None for s in c)
    assert c["b"].meta["shape"] == [30, 64] and c["b"].shape == (30, 64)


def test_kvasir_box_json_of_a_different_size_is_rescaled(kvasir):
    data = json.loads((kvasir / "kavsir_bboxes.json").read_text())
    data["a"].update(height=80, width=100)  # twice the real size
    data["a"]["bbox"][0].update(xmin=34, ymin=24, xmax=66, ymax=58)
    (kvasir / "kavsir_bboxes.json").write_text(json.dumps(data))
    c = import_dataset(kvasir, "kvasir")
    assert c["a"].boxes[0].as_tuple() == (17.0, 12.0, 33.0, 29.0)
    assert any("boxes rescaled" in n for n in c.meta["import"]["notes"])


def test_kvasir_broken_box_json_names_file_and_line(kvasir):
    (kvasir / "kavsir_bboxes.json").write_text('{\n "a": {"bbox": [}\n}')
    with pytest.raises(DatasetError, match=r"kavsir_bboxes\.json: line 2"):
        import_dataset(kvasir, "kvasir")


def test_kvasir_without_box_json_imports_masks(kvasir):
    (kvasir / "kavsir_bboxes.json").unlink()
    c = import_dataset(kvasir, "kvasir")
    assert len(c) == 3 and not any(s.boxes for s in c)


def test_kvasir_hybrid_import_uses_the_dataset_boxes(kvasir):
    c = import_dataset(kvasir, "kvasir", strong_fraction=0.34, weak="box", seed=1)
    assert c.counts()["strong"] == 1 and c.counts()["weak"] == 2
    for s in c.weak:
        assert s.meta["dataset_boxes"] and s.reference_mask is not None
    if "c" in {s.id for s in c.weak}:
        assert c["c"].boxes[0].x0 == 5.0  # the JSON box, not the mask's


# ------------------------------------------------------------------------------------------------
# busi
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def busi(tmp_path) -> Path:
    root = tmp_path / "BUSI" / "Dataset_BUSI_with_GT"  # the release's wrapper folder
    h, w = 32, 40
    grey = (np.arange(h * w).reshape(h, w) % 251).astype(np.uint8)
    lesion = _disk(h, w, 16, 12, 5)
    lesion2 = _disk(h, w, 16, 30, 4)
    # benign (1): grey image, 1-bit mask; benign (2): RGB image (a colour overlay), two masks, one RGBA
    _save(root / "benign" / "benign (1).png", grey)
    _save(root / "benign" / "benign (1)_mask.png", (lesion * 255).astype(np.uint8), "1")
    _save(root / "benign" / "benign (2).png", np.stack([grey] * 3, -1))
    _save(root / "benign" / "benign (2)_mask.png", (lesion * 255).astype(np.uint8), "RGB")
    _save(root / "benign" / "benign (2)_mask_1.png", (lesion2 * 255).astype(np.uint8), "RGBA")
    # malignant (1) is a byte copy of benign (1) with the other tag (BUSI: benign (433) == malignant (145))
    (root / "malignant").mkdir()
    (root / "malignant" / "malignant (1).png").write_bytes((root / "benign" / "benign (1).png").read_bytes())
    _save(root / "malignant" / "malignant (1)_mask.png", (lesion * 255).astype(np.uint8), "1")
    # normal: empty masks, saved as RGB as in the release
    _save(root / "normal" / "normal (1).png", grey[::-1].copy())
    _save(root / "normal" / "normal (1)_mask.png", np.zeros((h, w), np.uint8), "RGB")
    (root / "normal" / ".DS_Store").write_bytes(b"junk")
    return root.parent


def test_busi_tags_from_folders_and_normal_means_absent(busi):
    c = import_dataset(busi, "busi")
    assert c.ids == ["benign_1", "benign_2", "malignant_1", "normal_1"]
    assert [s.tags for s in c] == [["benign"], ["benign"], ["malignant"], ["normal"]]
    assert c.tag_def("normal").implies is TagImplies.ABSENT and c.tag_def("normal").class_value == 1
    assert c.tag_def("malignant").implies is TagImplies.PRESENT
    assert c["normal_1"].mask is not None and not c["normal_1"].mask.any()
    assert "normal: 1 of 1 mask(s) are empty" in c.meta["import"]["notes"]


def test_busi_grey_and_rgb_images_and_every_mask_mode(busi):
    c = import_dataset(busi, "busi")
    assert c["benign_1"].load_image().ndim == 2 and c["benign_2"].load_image().shape == (32, 40, 3)
    for sid in ("benign_1", "malignant_1"):
        assert set(np.unique(c[sid].mask)) == {0, 1}
        assert (c[sid].mask.astype(bool) == _disk(32, 40, 16, 12, 5)).all()


def test_busi_several_masks_are_ored(busi):
    c = import_dataset(busi, "busi")
    expected = _disk(32, 40, 16, 12, 5) | _disk(32, 40, 16, 30, 4)
    assert (c["benign_2"].mask.astype(bool) == expected).all()
    assert c["benign_2"].meta["mask_source"] == ["benign (2)_mask.png", "benign (2)_mask_1.png"]


def test_busi_identical_images_share_a_group_and_the_conflict_is_reported(busi):
    c = import_dataset(busi, "busi")
    assert c["benign_1"].group == c["malignant_1"].group is not None
    assert c["malignant_1"].meta["duplicate_of"] == "benign_1"
    assert any("conflicting tags" in n for n in c.meta["import"]["notes"])
    assert c["benign_2"].group is None


def test_busi_tag_implications_can_be_overridden(busi):
    c = import_dataset(busi, "busi", tag_implies={"benign": "nothing"})
    assert c.tag_def("benign").implies is TagImplies.NOTHING and c.tag_def("benign").class_value is None


def test_busi_import_survives_a_save_and_load(busi, tmp_path):
    c = import_dataset(busi, "busi")
    save_project(c, tmp_path / "p")
    loaded = load_project(tmp_path / "p")
    assert loaded.counts() == c.counts() and loaded["malignant_1"].group == c["malignant_1"].group


# ------------------------------------------------------------------------------------------------
# folder
# ------------------------------------------------------------------------------------------------
def test_folder_matches_mask_suffixes_and_formats(tmp_path):
    root = tmp_path / "ds"
    m = (_disk(20, 24, 10, 12, 5) * 255).astype(np.uint8)
    _save(root / "images" / "p1.png", _rgb(20, 24))
    _save(root / "masks" / "p1_mask.png", m)
    _save(root / "images" / "p2.jpg", _rgb(20, 24, 1))
    _save(root / "masks" / "p2-seg.jpg", m, quality=70)
    _save(root / "images" / "p3.tif", _rgb(20, 24, 2))
    _save(root / "masks" / "P3_GT.tif", m)  # other case, other suffix
    _save(root / "images" / "p4.png", _rgb(20, 24, 3))  # no mask: unlabeled
    _save(root / "masks" / "stray_mask.png", m)  # no image
    (root / "images" / "._p1.png").write_bytes(b"\x00\x05\x16\x07")  # macOS resource fork
    c = import_dataset(root, "folder")
    assert c.ids == ["p1", "p2", "p3", "p4"]
    assert [s.role.value for s in c] == ["strong", "strong", "strong", "unlabeled"]
    for sid in ("p1", "p2", "p3"):
        assert set(np.unique(c[sid].mask)) == {0, 1}
    assert any("1 mask file(s) match no image" in n for n in c.meta["import"]["notes"])
    assert [k.name for k in c.classes] == ["lesion"]


def test_folder_label_masks_keep_their_values_and_make_classes(tmp_path):
    root = tmp_path / "ds"
    labels = np.zeros((16, 16), np.uint8)
    labels[2:6, 2:6] = 1
    labels[8:12, 8:14] = 3
    _save(root / "images" / "x.png", _rgb(16, 16))
    _save(root / "masks" / "x.png", labels)
    big = np.zeros((16, 16), np.uint16)
    big[1:4, 1:4] = 1000
    _save(root / "images" / "y.png", _rgb(16, 16))
    _save(root / "labels_unused" / "keep.txt".replace(".txt", ".png"), labels)  # another folder is ignored
    _save(root / "masks" / "y.png", big)
    c = import_dataset(root, "folder")
    assert set(np.unique(c["x"].mask)) == {0, 1, 3}
    assert c["y"].mask.dtype == np.uint16 and c["y"].mask.max() == 1000
    assert [k.value for k in c.classes] == [1, 3, 1000]


def test_folder_binary_option_forces_thresholding(tmp_path):
    root = tmp_path / "ds"
    mask = np.zeros((8, 8), np.uint8)
    mask[2:5, 2:5] = 200
    mask[5:8, 5:8] = 100
    _save(root / "images" / "x.png", _rgb(8, 8))
    _save(root / "masks" / "x.png", mask)
    assert set(np.unique(import_dataset(root, "folder")["x"].mask)) == {0, 100, 200}  # a small label set
    assert set(np.unique(import_dataset(root, "folder", masks="labels")["x"].mask)) == {0, 100, 200}
    forced = import_dataset(root, "folder", binary_masks=True)
    assert forced["x"].mask.sum() == 9 and forced.meta["import"]["masks"] == {"mode": "binary", "threshold": 127}
    assert import_dataset(root, "folder", masks="binary", mask_threshold=50)["x"].mask.sum() == 18


# ------------------------------------------------------------------------------------------------
# the dataset-level mask decision
# ------------------------------------------------------------------------------------------------
def _soft_edged(h: int, w: int, cy: int, cx: int, r: int) -> np.ndarray:
    """A 0/255 disk with anti-aliased edges: a blurred binary mask, as resampling or a paint tool makes."""
    from scipy.ndimage import gaussian_filter

    return np.clip(np.rint(gaussian_filter(_disk(h, w, cy, cx, r) * 255.0, 1.5)), 0, 255).astype(np.uint8)


def _notes(c) -> str:
    return "\n".join(c.meta["import"]["notes"])


def test_soft_edged_binary_masks_are_binary_not_dozens_of_classes(tmp_path):
    root = tmp_path / "ds"
    for i, (cy, cx) in enumerate([(20, 20), (28, 34), (16, 40)]):
        _save(root / "images" / f"{i}.png", _rgb(48, 56, i))
        _save(root / "masks" / f"{i}.png", _soft_edged(48, 56, cy, cx, 9))
    assert len(np.unique(np.asarray(Image.open(root / "masks" / "0.png")))) > 30  # dozens of grey values
    c = import_dataset(root, "folder")
    assert [k.name for k in c.classes] == ["lesion"]
    for i, (cy, cx) in enumerate([(20, 20), (28, 34), (16, 40)]):
        m = c[str(i)].mask
        assert set(np.unique(m)) == {0, 1}
        assert abs(int(m.sum()) - int(_disk(48, 56, cy, cx, 9).sum())) < 20  # thresholded at half range
    assert c.meta["import"]["masks"] == {"mode": "binary", "threshold": 127}
    assert "masks read as binary" in _notes(c) and "soft-edged" in _notes(c) and "--masks labels" in _notes(c)
    # asked for, the values stay labels
    assert len(import_dataset(root, "folder", masks="labels").classes) > 30


def test_a_label_set_spread_over_files_is_one_decision(tmp_path):
    """File a holds 0/2 only, file b 0/1/3: decided per file, a would be thresholded and lose its class."""
    root = tmp_path / "ds"
    a = np.zeros((16, 16), np.uint8)
    a[2:8, 2:8] = 2
    b = np.zeros((16, 16), np.uint8)
    b[1:5, 1:5] = 1
    b[9:14, 9:14] = 3
    for name, m in (("a", a), ("b", b)):
        _save(root / "images" / f"{name}.png", _rgb(16, 16))
        _save(root / "masks" / f"{name}.png", m)
    c = import_dataset(root, "folder")
    assert c["a"].mask.max() == 2 and set(np.unique(c["b"].mask)) == {0, 1, 3}
    assert [k.value for k in c.classes] == [1, 2, 3]
    assert "label images" in _notes(c) and "--masks binary" in _notes(c)


def test_rgb_colour_coded_masks_are_mapped_by_colour(tmp_path):
    root = tmp_path / "ds"
    red, green = (255, 0, 0), (0, 255, 0)
    for i in range(2):
        m = np.zeros((20, 24, 3), np.uint8)
        m[2:8, 2:10] = red
        m[10:18, 12:22] = green
        if i == 1:
            m[0, 0] = (250, 5, 3)  # a near-red pixel (lossy edge): nearest colour, not a class of its own
        _save(root / "images" / f"{i}.png", _rgb(20, 24, i))
        _save(root / "masks" / f"{i}.png", m)
    c = import_dataset(root, "folder")
    assert [(k.name, k.value, k.color) for k in c.classes] == [("red", 1, "#ff0000"), ("green", 2, "#00ff00")]
    m = c["1"].mask
    assert (m[2:8, 2:10] == 1).all() and (m[10:18, 12:22] == 2).all() and m[0, 0] == 1
    assert (m == 0).sum() == 20 * 24 - 48 - 80 - 1
    assert "colour-coded" in _notes(c) and "red #ff0000 -> 1, green #00ff00 -> 2" in _notes(c)
    # the grey level (red is grey 76, green 150) only when asked
    grey = import_dataset(root, "folder", masks="binary")
    assert grey["0"].mask[4, 4] == 0 and grey["0"].mask[12, 15] == 1
    with pytest.raises(DatasetError, match="--masks rgb"):
        import_dataset(root, "folder", masks="labels")


def test_palette_of_rgb_masks_asked_for_on_grey_masks(tmp_path):
    root = tmp_path / "ds"
    m = np.zeros((12, 12), np.uint8)
    m[2:6, 2:6] = 255
    _save(root / "images" / "x.png", _rgb(12, 12))
    _save(root / "masks" / "x.png", m)
    c = import_dataset(root, "folder", masks="rgb")
    assert [k.name for k in c.classes] == ["white"] and c["x"].mask.sum() == 16


def test_every_mask_decision_is_a_note(tmp_path):
    root = tmp_path / "ds"
    m = np.zeros((12, 12), np.uint8)
    m[2:6, 2:6] = 255
    _save(root / "images" / "x.png", _rgb(12, 12))
    _save(root / "masks" / "x.png", m)
    for mode, expected in (("auto", "values 0 and 255 only"), ("binary", "as asked"), ("labels", "as asked"),
                           ("rgb", "as asked")):
        c = import_dataset(root, "folder", masks=mode)
        assert expected in _notes(c), mode
    with pytest.raises(DatasetError, match="unknown mask mode"):
        import_dataset(root, "folder", masks="grey")


def test_folder_mask_of_another_size_is_resized_and_reported(tmp_path):
    root = tmp_path / "ds"
    _save(root / "images" / "x.png", _rgb(20, 30))
    _save(root / "masks" / "x.png", (np.ones((10, 15)) * 255).astype(np.uint8))
    c = import_dataset(root, "folder")
    assert c["x"].mask.shape == (20, 30) and c["x"].mask.all()
    assert any("resized" in n for n in c.meta["import"]["notes"])


def test_folder_without_images_folder_says_what_is_expected(tmp_path):
    (tmp_path / "ds").mkdir()
    with pytest.raises(DatasetError, match="expected a subfolder images/"):
        import_dataset(tmp_path / "ds", "folder")


def test_unreadable_mask_names_the_file(tmp_path):
    root = tmp_path / "ds"
    _save(root / "images" / "x.png", _rgb(8, 8))
    (root / "masks").mkdir()
    (root / "masks" / "x.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"x\.png"):
        import_dataset(root, "folder")


# ------------------------------------------------------------------------------------------------
# images, errors
# ------------------------------------------------------------------------------------------------
def test_images_layout_is_recursive_and_all_unlabeled(tmp_path):
    _save(tmp_path / "ds" / "a.png", _rgb(8, 8))
    _save(tmp_path / "ds" / "sub" / "a.jpg", _rgb(8, 9))
    (tmp_path / "ds" / "notes.txt").write_text("not an image")
    c = import_dataset(tmp_path / "ds", "images")
    assert c.ids == ["a", "sub_a"] and all(s.role is Role.UNLABELED for s in c)
    assert c["sub_a"].shape == (8, 9)


def test_unknown_layout_and_missing_folder_are_clear_errors(tmp_path):
    with pytest.raises(DatasetError, match="unknown layout 'coco'; choose one of kvasir, folder, busi, images"):
        import_dataset(tmp_path, "coco")
    with pytest.raises(DatasetError, match="no such folder"):
        import_dataset(tmp_path / "nope", "images")
    with pytest.raises(DatasetError, match="expected class folders"):
        import_dataset(tmp_path, "busi")


# ------------------------------------------------------------------------------------------------
# the real datasets
# ------------------------------------------------------------------------------------------------
@pytest.fixture
def shared() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not available")
    return SHARED_DATA


@pytest.mark.shared_data
def test_real_kvasir_seg(shared):
    c = import_dataset(shared / "Kvasir-SEG", "kvasir")
    counts = c.counts()
    assert counts["samples"] == 1000 and counts["strong"] == 1000 and counts["boxes"] == 1071
    assert counts["tags"] == 196  # the Kvasir-Sessile subset
    assert sum(len(s.boxes) == 1 for s in c) == 945
    assert all(s.image is None for s in c)  # sizes from headers
    assert len({tuple(s.meta["shape"]) for s in c}) > 300
    # specks do not make the derived boxes span the image: most images agree with their JSON box
    diffs = [s.meta["box_mask_diff_px"] for s in c if "box_mask_diff_px" in s.meta]
    assert sum(d <= 5 for d in diffs) >= 950


@pytest.mark.shared_data
def test_real_busi(shared):
    c = import_dataset(shared / "BUSI", "busi")
    counts = c.counts()
    assert counts["samples"] == 780 and counts["tags"] == 780
    by_tag = {t: sum(t in s.tags for s in c) for t in ("benign", "malignant", "normal")}
    assert by_tag == {"benign": 437, "malignant": 210, "normal": 133}
    assert sum(len(s.meta["mask_source"]) > 1 for s in c) == 17
    assert not any(s.mask.any() for s in c if "normal" in s.tags)
    assert all(s.mask.any() for s in c if "normal" not in s.tags)
    assert c["benign_433"].group == c["malignant_145"].group is not None


def test_folder_accepts_original_and_ground_truth_folder_names(tmp_path):
    """CVC-ClinicDB and ETIS ship Original/ and Ground Truth/ with TIFFs of the same name."""
    root = tmp_path / "cvc"
    _save(root / "Original" / "1.tif", _rgb(12, 16))
    _save(root / "Ground Truth" / "1.tif", (_disk(12, 16, 6, 8, 3) * 255).astype(np.uint8))
    c = import_dataset(root, "folder")
    assert c["1"].role is Role.STRONG and c["1"].mask.max() == 1
