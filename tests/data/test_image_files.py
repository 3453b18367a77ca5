"""The one image reader (training, evaluation, dataset checks, the demo) on real files written here: 16-bit
PNG and TIFF (grayscale and colour), float TIFF, grayscale, RGBA and palette files, a decompression bomb,
label maps (8/16-bit, palette) and panoptic PNGs that are not 8-bit RGB."""
import struct
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from dinat_m2f.data.image_files import (
    ImageFileError,
    read_image_file,
    read_image_header,
    read_label_map,
    read_panoptic_png,
)

HEIGHT, WIDTH = 24, 40


def ramp16() -> np.ndarray:
    """16-bit grayscale values over the whole range (0..65535)."""
    return np.linspace(0, 65535, HEIGHT * WIDTH).round().astype(np.uint16).reshape(HEIGHT, WIDTH)


def expected8(values16: np.ndarray) -> np.ndarray:
    return np.round(values16 / 257.0)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_grayscale_is_scaled_to_8_bits(tmp_path, suffix):
    path = tmp_path / f"gray16{suffix}"
    cv2.imwrite(str(path), ramp16())
    rgb = read_image_file(str(path), "RGB")
    assert rgb.dtype == np.uint8 and rgb.shape == (HEIGHT, WIDTH, 3)
    for channel in range(3):
        assert np.abs(rgb[..., channel] - expected8(ramp16())).max() <= 1
    assert 100 < rgb.mean() < 155  # was all white (255) before


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16bit_colour_is_scaled_to_8_bits(tmp_path, suffix):
    path = tmp_path / f"rgb16{suffix}"
    rgb16 = np.stack([ramp16(), ramp16()[::-1], np.full((HEIGHT, WIDTH), 30000, np.uint16)], axis=-1)
    cv2.imwrite(str(path), rgb16[..., ::-1])  # OpenCV writes BGR
    rgb = read_image_file(str(path), "RGB")
    assert np.abs(rgb.astype(int) - expected8(rgb16)).max() <= 1
    bgr = read_image_file(str(path), "BGR")
    np.testing.assert_array_equal(bgr, rgb[..., ::-1])


def test_float_tiff_in_unit_range_is_scaled_and_other_floats_are_refused(tmp_path):
    values = np.linspace(0, 1, HEIGHT * WIDTH, dtype=np.float32).reshape(HEIGHT, WIDTH)
    cv2.imwrite(str(tmp_path / "unit.tif"), values)
    rgb = read_image_file(str(tmp_path / "unit.tif"), "RGB")
    assert np.abs(rgb[..., 0] - np.round(values * 255)).max() <= 1

    cv2.imwrite(str(tmp_path / "radiance.tif"), values * 1000)
    with pytest.raises(ImageFileError, match=r"radiance\.tif: float pixels with values in \[0\.0, 1000\.0\]"):
        read_image_file(str(tmp_path / "radiance.tif"), "RGB")
    with pytest.raises(ImageFileError, match=r"unit\.tif has float pixels"):
        read_label_map(str(tmp_path / "unit.tif"))


def test_grayscale_rgba_and_palette_images_read_as_rgb(tmp_path):
    gray = np.arange(HEIGHT * WIDTH, dtype=np.uint8).reshape(HEIGHT, WIDTH)
    Image.fromarray(gray).save(tmp_path / "gray.jpg", quality=100)
    rgba = np.dstack([gray, 255 - gray, np.full_like(gray, 7), np.full_like(gray, 128)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(gray).convert("P").save(tmp_path / "palette.png")
    assert np.abs(read_image_file(str(tmp_path / "gray.jpg"), "RGB")[..., 1].astype(int) - gray).max() <= 2
    np.testing.assert_array_equal(read_image_file(str(tmp_path / "rgba.png"), "RGB"), rgba[..., :3])
    assert read_image_file(str(tmp_path / "palette.png"), "RGB").shape == (HEIGHT, WIDTH, 3)


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_decompression_bomb(path, side=30000):
    """A 1 kB PNG whose header announces side x side grayscale pixels (900 megapixels for 30000)."""
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * (side + 1) * 4)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", rows) + png_chunk(b"IEND", b""))


def test_decompression_bomb_is_refused_naming_the_file(tmp_path):
    bomb = tmp_path / "bomb.png"
    write_decompression_bomb(bomb)
    for read in (lambda p: read_image_file(p, "RGB"), read_label_map, read_panoptic_png, read_image_header):
        with pytest.raises(ImageFileError, match=f"{bomb}.*decompression bomb"):
            read(str(bomb))


def test_label_maps_keep_their_values(tmp_path):
    labels16 = (np.arange(HEIGHT * WIDTH) * 50 % 1200).astype(np.uint16).reshape(HEIGHT, WIDTH)
    cv2.imwrite(str(tmp_path / "labels16.png"), labels16)
    np.testing.assert_array_equal(read_label_map(str(tmp_path / "labels16.png")), labels16)
    labels = (np.arange(HEIGHT * WIDTH) % 7).astype(np.uint8).reshape(HEIGHT, WIDTH)
    palette = Image.fromarray(labels, "P")
    palette.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] * 3)
    palette.save(tmp_path / "palette.png")
    np.testing.assert_array_equal(read_label_map(str(tmp_path / "palette.png")), labels)
    Image.fromarray(np.dstack([labels] * 3)).save(tmp_path / "rgb.png")
    with pytest.raises(ImageFileError, match=r"rgb\.png has 3 channels"):
        read_label_map(str(tmp_path / "rgb.png"))


def test_panoptic_png_must_be_8bit_rgb(tmp_path):
    ids = np.zeros((HEIGHT, WIDTH), np.uint16)
    ids[:, WIDTH // 2:] = 1000
    rgb = np.dstack([ids % 256, ids // 256, np.zeros_like(ids)]).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "good.png")
    np.testing.assert_array_equal(read_panoptic_png(str(tmp_path / "good.png")), rgb)
    Image.fromarray(np.dstack([rgb, np.full_like(ids, 255, dtype=np.uint8)]), "RGBA").save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(read_panoptic_png(str(tmp_path / "rgba.png")), rgb)

    cv2.imwrite(str(tmp_path / "gray16.png"), ids)  # ids stored as 16-bit gray: read as RGB they were all 255
    cv2.imwrite(str(tmp_path / "rgb16.png"), rgb.astype(np.uint16) * 257)
    Image.fromarray(rgb).convert("P").save(tmp_path / "palette.png")
    for name, description in [("gray16", "16-bit I;16"), ("rgb16", "16-bit RGB"), ("palette", "8-bit P")]:
        with pytest.raises(ImageFileError, match=f"Panoptic PNG .*{name}.png is {description}"):
            read_panoptic_png(str(tmp_path / f"{name}.png"))


def test_exif_orientation_is_applied_only_when_asked(tmp_path):
    pixels = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    pixels[:, : WIDTH // 4] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise
    Image.fromarray(pixels).save(tmp_path / "photo.jpg", exif=exif, quality=100)
    assert read_image_file(str(tmp_path / "photo.jpg"), "RGB").shape == (HEIGHT, WIDTH, 3)
    upright = read_image_file(str(tmp_path / "photo.jpg"), "RGB", apply_exif=True)
    assert upright.shape == (WIDTH, HEIGHT, 3)
    assert upright[: WIDTH // 4].mean() > 200 and upright[-WIDTH // 4:].mean() < 50
