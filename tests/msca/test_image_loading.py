"""Exemplar and label files: every bit depth scaled (not clipped), EXIF orientation applied, a
bound on decoded pixels checked from the header."""
import numpy as np
import pytest
from PIL import Image

from msca.data.folder import load_image, load_label


def test_16bit_greyscale_is_scaled_not_clipped(tmp_path):
    """Pillow's convert('RGB') clipped every value above 255: 99.5% white."""
    ramp = (np.arange(64 * 64).reshape(64, 64) * 16).astype(np.uint16)  # 0 .. 65520
    path = tmp_path / "grey16.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I;16")
    img = load_image(path)
    assert img.shape == (3, 64, 64)
    expected = ramp / 65535.0 * 2 - 1
    assert np.abs(img[0].numpy() - expected).max() < 2.5 / 255
    assert (img[0] > 0.99).float().mean() < 0.01  # not white
    assert np.array_equal(img[0].numpy(), img[2].numpy())  # grey stays grey


@pytest.mark.parametrize("mode", ["L", "LA", "P", "RGBA", "1"])
def test_other_modes_become_rgb(tmp_path, mode):
    grey = (np.arange(32 * 32).reshape(32, 32) % 256).astype(np.uint8)
    im = Image.fromarray(grey, "L").convert(mode)
    path = tmp_path / f"im_{mode}.png"
    im.save(path)
    img = load_image(path)
    assert img.shape == (3, 32, 32)
    assert img.min() >= -1 and img.max() <= 1


def test_exif_orientation_is_applied(tmp_path):
    """A photo stored 40 wide x 20 high with orientation 6 (rotate 90 degrees clockwise to
    view) is 20 wide x 40 high upright; its top-left red corner ends up top-right."""
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:5, :5] = (255, 0, 0)
    im = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.png"
    im.save(path, exif=exif.tobytes())
    img = load_image(path)
    assert img.shape == (3, 40, 20)
    assert img[0, 0, -1] > 0.9 and img[0, 0, 0] < -0.9
    lab = np.zeros((20, 40), np.uint8)
    lab[:5, :5] = 3
    lpath = tmp_path / "rotated_label.png"
    Image.fromarray(lab).save(lpath, exif=exif.tobytes())
    label = load_label(lpath, None, num_classes=5)
    assert tuple(label.shape) == (40, 20) and int(label[0, -1]) == 3


def test_decoded_pixel_bound(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    Image.new("RGB", (100, 50)).save(path)
    monkeypatch.setenv("MSCA_MAX_IMAGE_PIXELS", "4000")
    with pytest.raises(ValueError, match=r"image .*big\.png: 100x50 is 0\.0 megapixels, more "
                       r"than the limit .*MSCA_MAX_IMAGE_PIXELS"):
        load_image(path)
    with pytest.raises(ValueError, match=r"label .*big\.png: 100x50"):
        load_label(path, None, num_classes=5)
    monkeypatch.setenv("MSCA_MAX_IMAGE_PIXELS", "5000")
    assert load_image(path).shape == (3, 50, 100)


def test_default_bound_refuses_a_10000_square_png_from_its_header(tmp_path):
    """The issue's 97 KB PNG of 10000 x 10000 (3.9 GB once decoded): refused before
    decoding, so this test stays fast and small."""
    path = tmp_path / "huge.png"
    Image.new("L", (10000, 10000)).save(path, optimize=False)
    with pytest.raises(ValueError, match=r"10000x10000 is 100\.0 megapixels"):
        load_image(path)


def test_corrupt_file_is_named(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(ValueError, match=r"cannot read image .*broken\.png"):
        load_image(path)
