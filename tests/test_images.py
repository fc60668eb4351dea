"""Reading the CLI's inputs."""

import base64

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from gradex import images


def test_load_rgb_converts_colour_modes(tmp_path):
    Image.new("RGBA", (5, 4), (10, 20, 30, 255)).save(tmp_path / "a.png")
    Image.new("P", (5, 4)).save(tmp_path / "p.png")
    assert images.load_rgb(tmp_path / "a.png").getpixel((0, 0)) == (10, 20, 30)
    assert images.load_rgb(tmp_path / "p.png").size == (5, 4)


def _pixels(path):
    image = images.load_rgb(path)
    assert image.mode == "RGB"
    return np.asarray(image).astype(int)


def _ramp(dtype, high, width=64, height=8):
    return np.tile(np.linspace(0, high, width), (height, 1)).astype(dtype)


# These were refused as "not an RGB image" before issue 14; a grey photo is a photo.
@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_grey_images_become_rgb_with_three_equal_channels(tmp_path, suffix):
    ramp = _ramp(np.uint8, 255)
    path = tmp_path / f"grey{suffix}"
    Image.fromarray(ramp, mode="L").save(path)
    rgb = _pixels(path)
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
    assert np.abs(rgb[..., 0] - ramp).max() <= (0 if suffix == ".png" else 8)


def test_one_bit_images_become_black_and_white(tmp_path):
    path = tmp_path / "bw.png"
    Image.fromarray(_ramp(np.uint8, 255) > 127).convert("1").save(path)
    assert set(np.unique(_pixels(path))) == {0, 255}


def test_16_bit_images_are_scaled_by_their_range_not_clipped(tmp_path):
    ramp = _ramp(np.uint16, 65535)
    path = tmp_path / "grey16.png"
    Image.fromarray(ramp).save(path)
    with Image.open(path) as stored:
        assert stored.mode == "I;16"  # really 16 bits on disk
    rgb = _pixels(path)
    np.testing.assert_array_equal(rgb[..., 1], np.rint(ramp / 257).astype(int))
    assert 120 < rgb[0, 32, 0] < 135  # the middle of the ramp is mid-grey, not clipped white


def test_float_images_in_0_1_are_scaled_to_8_bits(tmp_path):
    ramp = _ramp(np.float32, 1.0)
    path = tmp_path / "float.tiff"
    Image.fromarray(ramp, mode="F").save(path)
    np.testing.assert_array_equal(_pixels(path)[..., 2], np.rint(ramp * 255).astype(int))


def test_transparency_is_composited_on_white(tmp_path):
    rgba = np.zeros((4, 3, 4), np.uint8)
    rgba[..., :3] = (200, 0, 0)
    rgba[:, 0, 3], rgba[:, 1, 3], rgba[:, 2, 3] = 0, 255, 128
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "rgba.png")
    row = _pixels(tmp_path / "rgba.png")[0]
    assert tuple(row[0]) == (255, 255, 255)  # fully transparent: the white behind it
    assert tuple(row[1]) == (200, 0, 0)
    assert abs(row[2][1] - 127) <= 1 and abs(row[2][0] - 228) <= 1  # half way to white
    grey_alpha = Image.fromarray(rgba[..., [0, 3]], mode="LA")
    grey_alpha.save(tmp_path / "la.png")
    assert tuple(_pixels(tmp_path / "la.png")[0, 0]) == (255, 255, 255)
    palette = Image.new("P", (2, 2), 1)
    palette.putpalette([0, 0, 0, 0, 0, 255])
    palette.save(tmp_path / "p.png", transparency=1)
    assert tuple(_pixels(tmp_path / "p.png")[0, 0]) == (255, 255, 255)


def test_cmyk_images_become_rgb(tmp_path):
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")
    red, green, blue = _pixels(tmp_path / "cmyk.jpg")[4, 4]
    assert red > 240 and green < 15 and blue < 15


def _upright_and_phone_photo(tmp_path, orientation=6):
    """An upright photo, and the same photo as a phone stores it: pixels rotated, an EXIF tag
    saying how to turn them back (6: rotate 90 degrees clockwise to display)."""
    rng = np.random.default_rng(0)
    upright = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    upright.save(tmp_path / "upright.png")
    turn = {6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}[orientation]
    exif = Image.Exif()
    exif[0x0112] = orientation
    upright.transpose(turn).save(tmp_path / "phone.png", exif=exif)
    return tmp_path / "upright.png", tmp_path / "phone.png"


@pytest.mark.parametrize("orientation", [6, 8])
def test_exif_orientation_is_applied(tmp_path, orientation):
    upright, phone = _upright_and_phone_photo(tmp_path, orientation)
    np.testing.assert_array_equal(_pixels(phone), _pixels(upright))


def test_the_dataset_job_and_the_server_read_photos_as_the_cli_does(tmp_path):
    """One reading of a photo for the three surfaces: decoding in the dataset job is load_rgb,
    and the server's payloads go through the same as_rgb."""
    from gradex.dataset.decoding import decode
    from gradex.serve.payloads import v1_instances

    upright, phone = _upright_and_phone_photo(tmp_path)
    Image.fromarray(_ramp(np.uint16, 65535)).save(tmp_path / "grey16.png")
    to_tensor = torchvision.transforms.v2.functional.pil_to_tensor
    for path in (phone, tmp_path / "grey16.png"):
        expected = to_tensor(images.load_rgb(path))
        image, reason = decode(str(path), to_tensor)
        assert reason is None and torch.equal(image, expected)
        body = {"instances": [{"image": {"b64": base64.b64encode(path.read_bytes()).decode()}}]}
        (served,) = v1_instances(
            body, preprocess=to_tensor, class_names=["a"], max_pixels=10**6, max_instances=1
        )
        assert torch.equal(served.image, expected)
    assert torch.equal(to_tensor(images.load_rgb(phone)), to_tensor(images.load_rgb(upright)))


def test_unreadable_files_are_refused_by_name(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("not a picture")
    with pytest.raises(images.ImageError, match="notes.jpg: cannot read as an image"):
        images.load_rgb(path)
    with pytest.raises(images.ImageError, match="missing.png: cannot read"):
        images.load_rgb(tmp_path / "missing.png")


def test_folders_expand_to_their_images(tmp_path):
    for name in ("b.png", "a.JPG", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in images.expand_inputs([tmp_path])] == ["a.JPG", "b.png"]


def test_a_recursive_walk_is_sorted_skips_hidden_files_and_follows_no_folder_links(tmp_path):
    for name in ("b/z.png", "b/a.png", "a.jpg", ".git/x.png", "c/.thumb.png", "c/d/e.webp"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "c" / "loop").symlink_to(tmp_path)  # a link back up the tree
    found = images.find_images([tmp_path], recursive=True)
    assert [p.relative_to(tmp_path).as_posix() for p in found.files] == [
        "a.jpg",
        "b/a.png",
        "b/z.png",
        "c/d/e.webp",
    ]
    flat = images.find_images([tmp_path])
    assert [p.name for p in flat.files] == ["a.jpg"]
    assert flat.skipped_folders == 2  # b and c; a hidden .git is no one's input
