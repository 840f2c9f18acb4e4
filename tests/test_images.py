"""Reading and normalising images and masks."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_hybridseg.core.data.images import (
    ImageError,
    as_image2d,
    read_image,
    read_mask,
    resize_image,
    resize_labels,
    to_float_rgb,
)


def test_rgba_is_reduced_to_rgb_with_a_warning():
    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0] = 9
    with pytest.warns(UserWarning, match="RGBA image reduced to RGB"):
        out = as_image2d(rgba)
    assert out.shape == (4, 5, 3) and (out[..., 0] == 9).all()


def test_single_channel_axis_is_squeezed_and_bool_becomes_uint8():
    assert as_image2d(np.zeros((4, 5, 1), np.uint16)).shape == (4, 5)
    out = as_image2d(np.eye(3, dtype=bool))
    assert out.dtype == np.uint8 and out.max() == 255


@pytest.mark.parametrize(("shape", "message"), [((4, 5, 2), "expected a 2D greyscale"), ((3, 4, 5, 3), "Stacks"),
                                                ((1, 8), "too small")])
def test_unusable_shapes_are_refused_with_advice(shape, message):
    with pytest.raises(ImageError, match=message):
        as_image2d(np.zeros(shape, np.uint8))


def test_read_image_png_jpeg_tiff(tmp_path):
    grey = np.arange(30, dtype=np.uint8).reshape(5, 6)
    Image.fromarray(grey).save(tmp_path / "g.png")
    Image.fromarray(np.stack([grey] * 3, -1)).save(tmp_path / "c.jpg", quality=100)
    tifffile.imwrite(tmp_path / "f.tif", grey.astype(np.float32) / 30)
    Image.fromarray(np.dstack([grey] * 4)).save(tmp_path / "a.png")  # RGBA file: alpha dropped silently
    assert np.array_equal(read_image(tmp_path / "g.png"), grey)
    assert read_image(tmp_path / "c.jpg").shape == (5, 6, 3)
    assert read_image(tmp_path / "f.tif").dtype == np.float32
    assert read_image(tmp_path / "a.png").shape == (5, 6, 3)


def test_read_image_errors_name_the_file(tmp_path):
    with pytest.raises(ImageError, match="x.png: file not found"):
        read_image(tmp_path / "x.png")
    (tmp_path / "bad.png").write_bytes(b"nope")
    with pytest.raises(ImageError, match="bad.png: cannot read image"):
        read_image(tmp_path / "bad.png")


def test_lossy_jpeg_mask_is_thresholded_at_127(tmp_path):
    m = np.zeros((16, 16), np.uint8)
    m[4:12, 4:12] = 255
    Image.fromarray(m).convert("RGB").save(tmp_path / "m.jpg", quality=60)
    assert len(np.unique(np.asarray(Image.open(tmp_path / "m.jpg")))) > 2  # really lossy
    out = read_mask(tmp_path / "m.jpg")
    assert set(np.unique(out)) == {0, 1} and abs(int(out.sum()) - 64) <= 4


@pytest.mark.parametrize("mode", ["1", "L", "RGB", "RGBA"])
def test_binary_masks_of_every_mode_become_0_1(tmp_path, mode):
    m = np.zeros((8, 8), np.uint8)
    m[2:5, 2:6] = 255
    Image.fromarray(m).convert(mode).save(tmp_path / "m.png")
    out = read_mask(tmp_path / "m.png")
    assert out.dtype == np.uint8 and np.array_equal(out, (m > 0).astype(np.uint8))


def test_sixteen_bit_binary_mask_is_thresholded_but_label_masks_are_kept(tmp_path):
    m = np.zeros((6, 6), np.uint16)
    m[1:3, 1:3] = 65535
    Image.fromarray(m).save(tmp_path / "b.png")
    assert read_mask(tmp_path / "b.png").max() == 1
    labels = np.array([[0, 1, 2], [3, 300, 0]], np.uint16)
    Image.fromarray(labels).save(tmp_path / "l.png")
    out = read_mask(tmp_path / "l.png")
    assert out.dtype == np.uint16 and np.array_equal(out, labels)
    assert read_mask(tmp_path / "l.png", binary=True).tolist() == [[0, 0, 0], [0, 0, 0]]  # 300 < 65535 / 2


def test_to_float_rgb_ranges():
    u8 = np.array([[0, 255], [51, 102]], np.uint8)
    out = to_float_rgb(u8)
    assert out.shape == (2, 2, 3) and out.dtype == np.float32 and out[0, 1, 2] == 1.0 and out[1, 0, 0] == 0.2
    u16 = np.linspace(0, 4095, 400).reshape(20, 20).astype(np.uint16)  # 12-bit data in a 16-bit container
    f = to_float_rgb(u16)
    assert f.min() == 0.0 and f.max() == 1.0 and 0.45 < f.mean() < 0.55
    assert to_float_rgb(np.full((3, 3), 7.0)).max() == 0.0  # constant: no division by zero


def test_resize_labels_is_nearest_and_keeps_values():
    labels = np.array([[0, 1], [2, 3]], np.uint8)
    up = resize_labels(labels, (4, 4))
    assert up.tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]
    assert np.array_equal(resize_labels(up, (2, 2)), labels)


def test_resize_image_is_bilinear_and_keeps_dtype():
    img = np.zeros((8, 8, 3), np.float32)
    img[:, 4:] = 1.0
    out = resize_image(img, (4, 4))
    assert out.shape == (4, 4, 3) and out.dtype == np.float32
    assert out[:, 0].max() < 0.1 and out[:, -1].min() > 0.9


def test_palette_masks_keep_their_indices_as_labels(tmp_path):
    labels = np.array([[0, 1, 1], [2, 2, 0]], np.uint8)
    im = Image.fromarray(labels, mode="P")
    im.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (256 * 3 - 9))  # VOC: label 1 is dark red
    im.save(tmp_path / "voc.png")
    assert np.array_equal(read_mask(tmp_path / "voc.png"), labels)
    assert read_mask(tmp_path / "voc.png", binary=True).tolist() == [[0, 1, 1], [1, 1, 0]]
