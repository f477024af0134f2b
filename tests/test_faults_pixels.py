"""Fault matrix, pixels: an image decodes as it is shown. 16-bit PNGs are scaled to 8 bits (not clipped to white),
depth targets keep their 16 bits, and the EXIF orientation of phone photos is applied."""
import numpy as np
import pytest
from PIL import Image

from mimzoo.data import decode_image
from mimzoo.data.dense.common import read_uint16
from mimzoo.data.images import open_image


def test_a_16_bit_grayscale_png_is_scaled_not_clipped(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (64, 1))
    Image.fromarray(ramp).save(tmp_path / "wide.png")
    out = decode_image(tmp_path / "wide.png", 32).float()
    expected = np.round(ramp.astype(np.float64) / 257)
    assert out.mean().item() == pytest.approx(expected.mean(), abs=2)  # clipped, it would be ~252
    assert (out[0] == out[1]).all() and (out[0] == out[2]).all()  # grey stays grey


def test_depth_targets_keep_their_16_bits(tmp_path):
    depth = (np.arange(24 * 32).reshape(24, 32) * 80).astype(np.uint16)
    Image.fromarray(depth).save(tmp_path / "depth.png")
    assert np.array_equal(read_uint16(tmp_path / "depth.png"), depth.astype(np.float32))


@pytest.mark.parametrize("orientation, top_left_is_red", [(1, True), (3, False), (6, True), (8, False)])
def test_the_exif_orientation_is_applied(tmp_path, orientation, top_left_is_red):
    # stored landscape, left half red: 3 turns it upside down, 6 (90 degrees clockwise) puts the red half on top,
    # 8 (counter-clockwise) at the bottom
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20, 0] = 255
    pixels[:, 20:, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(pixels).save(tmp_path / "phone.jpg", exif=exif, quality=95)
    image = open_image(tmp_path / "phone.jpg")
    assert image.size == ((40, 20) if orientation in (1, 3) else (20, 40))
    corner = np.asarray(image.convert("RGB"))[2, 2]
    assert (corner[0] > 200) == top_left_is_red and (corner[2] > 200) != top_left_is_red
